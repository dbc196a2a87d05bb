"""What the HTML report and the dataset card show beyond `summarize`: score
histograms (kept records and the rejects that carry the score), lengths in tokens,
knob coverage, per-teacher figures, diversity, AI proxy words, dedup clusters and a
sample of records and rejects. Reads the data batch by batch; text statistics stop
after `max_records` records (said in the output).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smolforge.report.stats import (
    _DUP_OF,
    _WORD,
    _iter_rejects,
    _recipe,
    _score_columns,
    reject_key,
    summarize,
    teacher_key,
    teachers_of,
    text_columns,
)
from smolforge.stats import histogram
from smolforge.store import data_files, load_manifest
from smolforge.text import approx_tokens


class Tokens:
    """Token counts: the bundled SmolLM2 tokenizer (llama.cpp, vocabulary only) when
    available, else an approximation of 4 characters per token."""

    def __init__(self, kind: str = "auto"):
        if kind not in ("auto", "smollm2", "approx"):
            raise ValueError(f"unknown tokenizer {kind!r} (auto, smollm2, approx)")
        self.kind = kind
        self._llama = None
        self._loaded = kind == "approx"
        self.name = "approximate: characters / 4"
        if kind == "smollm2":
            self._load()

    def _load(self) -> None:
        """Load the vocabulary on first use (a run without text never pays for it)."""
        self._loaded = True
        try:
            import llama_cpp

            from smolforge.engines.models import resolve_model_path

            with _quiet_stderr():  # llama.cpp warns about the context of a vocabulary-only load
                self._llama = llama_cpp.Llama(str(resolve_model_path("smollm2-135m")), vocab_only=True,
                                              verbose=False)
            self.name = "SmolLM2-135M tokenizer (bundled GGUF vocabulary)"
        except Exception:
            if self.kind == "smollm2":
                raise

    def __call__(self, text: str) -> int:
        if not self._loaded:
            self._load()
        if self._llama is not None:
            return len(self._llama.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False))
        return approx_tokens(text)

    def close(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C-level writes to stderr (file descriptor 2) for a moment."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Diversity:
    """distinct-1/2 (Li et al. 2016: distinct n-grams / all n-grams, lower-cased
    words) and the compression ratio of Shaib et al. 2024 (raw bytes / gzip bytes of
    all texts joined: repetitive text compresses more, so a higher ratio is less
    diverse), plus the most common three-word openings."""

    def __init__(self) -> None:
        self.uni: set[str] = set()
        self.bi: set[tuple[str, str]] = set()
        self.n_uni = self.n_bi = 0
        self.raw = 0
        self._gz = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip format
        self.gz = 0
        self.openings: Counter = Counter()
        self.texts = 0

    def add(self, text: str) -> None:
        w = [x.lower() for x in _WORD.findall(text)]
        self.uni.update(w)
        self.bi.update(zip(w, w[1:]))
        self.n_uni += len(w)
        self.n_bi += max(len(w) - 1, 0)
        data = (text + "\n").encode("utf-8", "replace")
        self.raw += len(data)
        self.gz += len(self._gz.compress(data))
        self.openings[" ".join(text.split()[:3])] += 1
        self.texts += 1

    def result(self) -> dict:
        gz = self.gz + len(self._gz.flush())
        top = self.openings.most_common(10)
        return {
            "texts": self.texts,
            "distinct_1": round(len(self.uni) / self.n_uni, 4) if self.n_uni else None,
            "distinct_2": round(len(self.bi) / self.n_bi, 4) if self.n_bi else None,
            "compression_ratio": round(self.raw / gz, 4) if gz else None,
            "openings": [{"opening": o, "count": n} for o, n in top],
            "top10_openings_share": round(sum(n for _, n in top) / self.texts, 4) if self.texts else None,
        }


def _short(rec: dict, limit: int = 2000) -> dict:
    return {k: (v[:limit] + "…" if isinstance(v, str) and len(v) > limit else v)
            for k, v in rec.items() if k != "meta"}


def _add_teacher(per_teacher: dict[str, dict], meta: dict, r: dict, text: str, n_tok: int, hits: int,
                 scores: list[str]) -> None:
    """Count one record's text for each teacher in its provenance."""
    for t in teachers_of(meta) or [{"engine": None, "model": None}]:
        name = teacher_key(t) if t.get("model") else "no teacher (real / source text)"
        e = per_teacher.setdefault(name, {"kept": 0, "tokens": [], "proxy": 0, "words": 0,
                                          "scores": {c: [] for c in scores}, "div": Diversity()})
        e["kept"] += 1
        e["tokens"].append(n_tok)
        e["proxy"] += hits
        e["words"] += len(re.findall(r"[a-z]+", text.lower()))
        e["div"].add(text)
        for c in scores:
            if isinstance(r.get(c), (int, float)):
                e["scores"][c].append(r[c])


def _source_knobs(run_dir: Path) -> Counter | None:
    """Knob combinations the first stage produced (before any filter)."""
    dirs = sorted((run_dir / "stages").glob("00-*"))
    if not dirs:
        return None
    combos: Counter = Counter()
    for path in sorted(dirs[0].glob("shard-*[0-9].parquet")):
        pf = pq.ParquetFile(path)
        if "meta" not in pf.schema_arrow.names:
            return None
        for b in pf.iter_batches(batch_size=65536, columns=["meta"]):
            for m in b.column("meta").to_pylist():
                k = (json.loads(m) if m else {}).get("knobs")
                if k:
                    combos[_combo(k)] += 1
    return combos


def _combo(knobs: dict) -> str:
    return " | ".join(f"{k}={v}" for k, v in sorted(knobs.items()))


def profile(run_dir: str | Path, *, column: str | None = None, tokenizer: str = "auto",
            max_records: int = 20000, sample_records: int = 200, rejects_per_rule: int = 20,
            max_rejects: int = 500, summary: dict | None = None) -> dict[str, Any]:
    """The report's figures (see the module docstring); `summary` is `summarize`'s.
    Text figures (lengths, diversity, proxy words) are per text column (`columns`,
    see `text_columns`); the top-level ones and the per-teacher ones are the first
    column's (the recipe's response)."""
    from smolforge.report.proxy import ProxyCounter, reference

    run_dir = Path(run_dir)
    summary = summary or summarize(run_dir)
    manifest = load_manifest(run_dir)
    recipe = _recipe(run_dir)
    files = data_files(run_dir)
    schema = pq.read_schema(files[0]) if files else pa.schema([])
    scores = _score_columns(schema, recipe)
    score_vals: dict[str, list] = {c: [] for c in scores}
    rejected_scores: dict[str, list] = {c: [] for c in scores}
    tok = Tokens(tokenizer)
    cols = text_columns(schema, recipe, column)
    per_col = {c: {"lengths": [], "div": Diversity(), "proxy": ProxyCounter(), "seen": 0} for c in cols}
    combos: Counter = Counter()
    knob_names: set[str] = set()
    per_teacher: dict[str, dict] = {}
    samples: list[dict] = []
    total = 0
    try:
        for path in files:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            for batch in pf.iter_batches(batch_size=4096):
                rows = batch.to_pylist()
                total += len(rows)
                for r in rows:
                    for c in scores:
                        if c in names:
                            score_vals[c].append(r.get(c))
                    meta = json.loads(r["meta"]) if isinstance(r.get("meta"), str) and r["meta"] else {}
                    if meta.get("knobs"):
                        combos[_combo(meta["knobs"])] += 1
                        knob_names |= set(meta["knobs"])
                    if len(samples) < sample_records:
                        samples.append({"kind": "kept", "stage": "", "reason": "", "id": r.get("id"),
                                        "record": _short(r)})
                    for k, c in enumerate(cols):
                        text, acc = r.get(c), per_col[c]
                        if acc["seen"] >= max_records or not isinstance(text, str):
                            continue
                        acc["seen"] += 1
                        n_tok = tok(text)
                        acc["lengths"].append(n_tok)
                        acc["div"].add(text)
                        hits = acc["proxy"].add(text)
                        if k == 0:
                            _add_teacher(per_teacher, meta, r, text, n_tok, hits, scores)
    finally:
        tok.close()

    # rejects: per teacher, dedup clusters, a sample per rule
    rej_teacher: Counter = Counter()
    clusters: dict[str, Counter] = {}
    per_rule: Counter = Counter()
    reject_samples: list[dict] = []
    for r in _iter_rejects(run_dir, ["id", "stage", "reason", "record"]):
        m = _DUP_OF.search(r["reason"])
        if m:
            clusters.setdefault(r["stage"], Counter())[m.group(1)] += 1
        try:
            rec = json.loads(r["record"])
        except (TypeError, ValueError):
            rec = {"raw": r["record"]}
        meta = rec.get("meta") if isinstance(rec, dict) and isinstance(rec.get("meta"), dict) else {}
        for t in teachers_of(meta):
            rej_teacher[teacher_key(t)] += 1
        for c in scores:  # a record dropped after it was scored: where the cut fell
            if isinstance(rec, dict) and isinstance(rec.get(c), (int, float)) and not isinstance(rec[c], bool):
                rejected_scores[c].append(rec[c])
        key = reject_key(r["stage"], r["reason"])
        if per_rule[key] < rejects_per_rule and len(reject_samples) < max_rejects:
            per_rule[key] += 1
            reject_samples.append({"kind": "rejected", "stage": r["stage"], "reason": r["reason"],
                                   "rule": key[1], "id": r["id"],
                                   "record": _short(rec) if isinstance(rec, dict) else {"raw": rec}})

    ref = reference()

    def proxy_result(counter: ProxyCounter) -> dict:
        prox = counter.result()
        prox["reference"] = {"corpus": ref["corpus"], "method": ref["method"], "words": ref["words"],
                             "per_1000_words": ref["per_1000_words"], "entries": ref["entries"]}
        prox["ratio_to_reference"] = {
            k: (round(v / ref["per_1000_words"][k], 2) if ref["per_1000_words"].get(k) else None)
            for k, v in prox["per_1000_words"].items()}
        return prox

    by_column = {c: {"lengths": histogram(a["lengths"]) if a["lengths"] else {"n": 0, "bins": []},
                     "diversity": a["div"].result(), "proxy_words": proxy_result(a["proxy"]),
                     "text_records_profiled": a["seen"]} for c, a in per_col.items()}
    first = by_column[cols[0]] if cols else {
        "lengths": {"n": 0, "bins": []}, "diversity": Diversity().result(),
        "proxy_words": proxy_result(ProxyCounter()), "text_records_profiled": 0}

    teachers = []
    lic_by_name = {t["key"]: t for t in summary.get("teachers", [])}
    for name, e in sorted(per_teacher.items()):
        kept, rej = e["kept"], rej_teacher.get(name, 0)
        d = e["div"].result()
        teachers.append({
            "teacher": name, "kept": kept, "rejected": rej,
            "keep_rate": round(kept / (kept + rej), 4) if kept + rej else None,
            "mean_tokens": round(statistics.fmean(e["tokens"]), 1) if e["tokens"] else None,
            "mean_scores": {c: round(statistics.fmean(v), 3) for c, v in e["scores"].items() if v},
            "proxy_per_1000_words": round(e["proxy"] * 1000 / e["words"], 3) if e["words"] else None,
            "distinct_2": d["distinct_2"],
            "licence": lic_by_name.get(name, {}).get("licence"),
            "training": lic_by_name.get(name, {}).get("training"),
        })
    source = _source_knobs(run_dir)
    coverage: dict[str, Any] | None = None
    if combos or source:
        produced = set(source or {})
        coverage = {
            "knobs": sorted(knob_names),
            "combinations_kept": len(combos),
            "combinations_generated": len(produced) if source is not None else None,
            "lost": sorted(produced - set(combos))[:50],
            "kept": [{"combination": c, "count": n, "generated": (source or {}).get(c)}
                     for c, n in combos.most_common()][:200],
        }
    dedup = {st: {"clusters": len(c), "removed": sum(c.values()),
                  "sizes": dict(sorted(Counter(n + 1 for n in c.values()).items())),
                  "largest": [{"kept": k, "size": n + 1} for k, n in c.most_common(5)]}
             for st, c in clusters.items()}
    return {
        "column": cols[0] if cols else None,
        "columns": by_column,
        "records": total,
        "text_records_profiled": first["text_records_profiled"],
        "max_records": max_records,
        "tokenizer": tok.name,
        "lengths": first["lengths"],
        "scores": {c: histogram(v, rejected=rejected_scores[c]) for c, v in score_vals.items()},
        "diversity": first["diversity"],
        "proxy_words": first["proxy_words"],
        "teachers": teachers,
        "knob_coverage": coverage,
        "dedup_clusters": dedup,
        "contamination": summary.get("contamination", {}),
        "stage_summaries": {s["name"]: s["summary"] for s in manifest.get("stages", []) if s.get("summary")},
        "samples": samples + reject_samples,
    }
