"""Figures about a run, computed from its directory (manifest, data, rejects).

`summarize` is what `show` prints (and `show --json` emits): stages, the funnel,
rejects by stage and rule, knobs, teachers and their licences. `profile` adds what
the HTML report and the dataset card show: score histograms (kept records and the
rejects that carry the score), lengths in tokens, knob coverage, per-teacher
figures, diversity, AI proxy words, dedup clusters and a sample of records and
rejects. Both read the data batch by batch, so memory stays
bounded for big runs; text statistics stop after `max_records` records (said in the
output).
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

from smolforge.licences import Licence, by_id, model_licence
from smolforge.stages.base import is_engine_error
from smolforge.stats import histogram
from smolforge.store import data_files, load_manifest
from smolforge.text import approx_tokens

_PAREN = re.compile(r"\s*\([^()]*\)\s*$")
_QUOTED = re.compile(r"('[^']*'|\"[^\"]*\")")
_ID = re.compile(r"\b\w+-\d{6}(?:\.\w+)*\b")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")
_DUP_OF = re.compile(r"\bduplicate of (\w+-\d{6}(?:\.\w+)*)")
_WORD = re.compile(r"\w+")


def reason_group(reason: str) -> str:
    """Collapse the record-specific parts of a reason (raw answers, trailing
    details, ids and numbers outside quotes) so that drops group by rule."""
    head = reason.split(": '", 1)[0].split(': "', 1)[0]
    head = _PAREN.sub("", head)
    parts = _QUOTED.split(head)
    return "".join(
        p if i % 2 else _NUM.sub("<n>", _ID.sub("<id>", p)) for i, p in enumerate(parts)
    ).strip()


def reject_key(stage: str, reason: str) -> tuple[str, str]:
    """(stage, group) of one reject; contamination groups by benchmark."""
    if reason.startswith("contaminated: "):
        bench = reason[len("contaminated: "):].split(" item ", 1)[0]
        return stage, f"contaminated: {bench}"
    return stage, reason_group(reason)


def count_knobs(metas: list[str | None], counts: dict[str, Counter]) -> None:
    """Add each knob value (`meta.knobs`: audience, style, persona, round ...) to `counts`."""
    for m in metas:
        for k, v in (json.loads(m) if m else {}).get("knobs", {}).items():
            counts.setdefault(k, Counter())[v] += 1


def first_five(text: str) -> str:
    """The first five words (splitting only the start of a long text)."""
    words = text[:400].split()
    if len(words) <= 5 and len(text) > 400:
        words = text.split()
    return " ".join(words[:5])


def teachers_of(meta: dict) -> list[dict]:
    """The generations in a record's provenance: dicts with a `model` and a
    `finish_reason` (generate, magpie, instruct ... write these), judges excluded
    (a judge's words are not in the data)."""
    found: list[dict] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            if "model" in node and ("finish_reason" in node or "tokens" in node):
                found.append({"stage": key, "engine": node.get("engine"), "model": node.get("model"),
                              "licence": node.get("licence")})
                return
            for k, v in node.items():
                if k not in ("judges", "knobs", "sampling"):
                    walk(v, key or k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)

    walk(meta, "")
    return found


def teacher_name(t: dict) -> str:
    return f"{t.get('engine') or '?'}:{t.get('model') or '?'}"


def teacher_key(t: dict) -> str:
    """One teacher per model and licence (the same file can be declared differently)."""
    return teacher_name(t) + (f" [{t['licence']}]" if t.get("licence") else "")


def _licence_of(t: dict, manifest_engines: list[dict]) -> Licence:
    if t.get("licence"):
        return by_id(t["licence"], "meta")
    for e in manifest_engines:  # configured in the recipe, for stages that don't record it
        if e.get("model") == t.get("model") and e.get("licence"):
            return by_id(e["licence"], "config")
    return model_licence(t.get("model"), t.get("engine") == "llamacpp")


def _iter_rejects(run_dir: Path, columns: list[str]) -> Iterator[dict]:
    path = run_dir / "rejects" / "rejects.parquet"
    if path.exists():
        for b in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=columns):
            yield from b.to_pylist()


def summarize(run_dir: str | Path, samples: int = 3, column: str | None = None) -> dict[str, Any]:
    """Everything `show` prints: stages (with their `summary`), the funnel, rejects
    grouped by stage and rule, contamination per benchmark, knobs, first words and
    mean words per text column (`text_columns`: the recipe's generated ones, or
    `column`), teachers with their licences and the licence warnings, sample records."""
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    out: dict[str, Any] = {
        "run": str(run_dir),
        "recipe": manifest.get("recipe"),
        "status": manifest.get("status"),
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
        "attempts": len(manifest.get("attempts", [])),
        "stages": manifest.get("stages", []),
        "data": manifest.get("data", {}),
        "engine_failures": manifest.get("engine_failures", {"requests": 0, "records": 0}),
        "target": manifest.get("target"),  # `target: {records: N}`: the rounds it took
        "engines": [
            {k: e.get(k) for k in ("type", "model", "base_url", "licence") if e.get(k) is not None}
            for e in manifest.get("engines", [])
        ],
    }
    for e, spec in zip(out["engines"], manifest.get("engines", [])):  # every engine's licence, resolved
        lic = (by_id(spec["licence"]) if spec.get("licence")
               else model_licence(spec.get("model"), spec.get("type") == "llamacpp"))
        e["licence"], e["training"] = lic.id, lic.training
    out["partial"] = partial(run_dir, manifest, _recipe(run_dir))
    if out["partial"] and not out["stages"]:  # killed before the manifest's stage table was written
        out["stages"] = [s for s in out["partial"]["stages"] if s["shards_done"]]
    stages = out["stages"]
    out["completion_tokens"] = sum(s.get("completion_tokens", 0) for s in stages)
    llm_secs = sum(s.get("seconds", 0) for s in stages if s.get("completion_tokens"))
    out["tokens_per_s"] = round(out["completion_tokens"] / llm_secs, 1) if llm_secs else None
    groups: Counter = Counter()
    leaks: Counter = Counter()
    examples: dict[tuple, str] = {}
    for r in _iter_rejects(run_dir, ["stage", "reason"]):
        key = reject_key(r["stage"], r["reason"])
        if key[1].startswith("contaminated: "):
            leaks[key[1][len("contaminated: "):]] += 1
        groups[key] += 1
        examples.setdefault(key, r["reason"])
    out["contamination"] = dict(leaks)
    # Engine failures are not quality drops: a re-run retries them.
    out["rejects"] = [
        {"stage": s, "reason": g, "count": n, "example": examples[(s, g)][:300],
         "kind": "engine" if is_engine_error(examples[(s, g)]) else "quality"}
        for (s, g), n in groups.most_common()
    ]
    out["quality_rejects"] = sum(g["count"] for g in out["rejects"] if g["kind"] == "quality")
    out["funnel"] = funnel(stages, out["rejects"])
    out["samples"] = []
    knobs: dict[str, Counter] = {}
    teachers: dict[str, dict] = {}
    has_meta = False
    seen: dict[str | None, tuple[list, list[dict]]] = {}
    files = data_files(run_dir)
    tcols = text_columns(pq.read_schema(files[0]), _recipe(run_dir), column) if files else []
    per_col = {c: {"first_words": Counter(), "texts": 0, "words": 0} for c in tcols}
    for path in files:  # batch by batch: memory stays bounded for big runs
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if len(out["samples"]) < samples and pf.metadata.num_rows:
            rows = next(pf.iter_batches(batch_size=samples - len(out["samples"]))).to_pylist()
            for r in rows:
                r.pop("meta", None)
            out["samples"] += rows
        cols = [c for c in ("id", "meta", *tcols) if c in names]
        has_meta = has_meta or "meta" in cols
        for batch in pf.iter_batches(batch_size=65536, columns=cols) if cols else ():
            if "meta" in cols:
                metas = batch.column("meta").to_pylist()
                ids = batch.column("id").to_pylist() if "id" in cols else [None] * len(metas)
                for rid, m in zip(ids, metas):
                    # Provenance repeats (a source's rows share theirs): decode each once.
                    if (parsed := seen.get(m)) is None:
                        meta = json.loads(m) if m else {}
                        parsed = seen[m] = (list(meta.get("knobs", {}).items()), teachers_of(meta))
                        if len(seen) > 4096:
                            seen.clear()
                    knob_items, found = parsed
                    for k, v in knob_items:
                        knobs.setdefault(k, Counter())[v] += 1
                    for t in found:
                        entry = teachers.setdefault(teacher_key(t), {**t, "records": 0, "ids": []})
                        entry["records"] += 1
                        entry["licence"] = entry.get("licence") or t.get("licence")
                        if len(entry["ids"]) < 20 and rid is not None:
                            entry["ids"].append(rid)
            for c in tcols:
                if c not in cols:
                    continue
                acc = per_col[c]
                for t in batch.column(c).to_pylist():
                    if isinstance(t, str):
                        acc["first_words"][first_five(t)] += 1
                        acc["texts"] += 1
                        acc["words"] += len(t.split())
    if has_meta:
        out["knobs"] = {k: c.most_common(10) for k, c in knobs.items()}
    out["text_columns"] = {c: {"texts": a["texts"],
                               "mean_words": round(a["words"] / a["texts"], 1) if a["texts"] else None,
                               "first_words": a["first_words"].most_common(5)} for c, a in per_col.items()}
    if tcols:
        out["first_words"] = per_col[tcols[0]]["first_words"].most_common(5)
    out["teachers"], out["licence_warnings"] = _licences(teachers, manifest.get("engines", []))
    out["judge_warnings"] = judge_warnings(out["stages"])
    return out


def _holder_alive(run_dir: Path) -> bool:
    """Whether the process named in the run's lock file still exists (the kernel
    drops the lock itself when a process dies, even by kill -9; the pid stays)."""
    try:
        pid = int((run_dir / ".lock").read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stages_on_disk(run_dir: str | Path, recipe: dict | None = None) -> list[dict]:
    """What the stage directories hold: per stage, the shards committed (of how many,
    when known), whether the stage finished, and the sums of the committed shards'
    stats. Stages run one after another, so the list stops after the first stage that
    did not finish: a directory beyond it is an older attempt's."""
    from smolforge.store import StageDir

    run_dir = Path(run_dir)
    types = [st.get("type") for st in (recipe or {}).get("stages", []) or [] if isinstance(st, dict)]
    rows: list[dict] = []
    prev_shards: int | None = None
    for d in sorted((run_dir / "stages").glob("[0-9][0-9]-*")):
        if not d.is_dir() or d.name.endswith(".new"):
            continue
        sd = StageDir(d, "")
        index, done = int(d.name[:2]), sd.done
        committed = sd.done_shards()
        row: dict[str, Any] = {"name": d.name[3:], "type": types[index] if index < len(types) else "",
                               "complete": done is not None, "shards_done": len(committed),
                               "shards": done["shards"] if done else (prev_shards if index else None)}
        for j in committed:
            for k, v in sd.shard_stats(j).items():
                if isinstance(v, (int, float)):
                    row[k] = row.get(k, 0) + v
        rows.append(row)
        if done is None:
            break
        prev_shards = done["shards"]
    return rows


def partial(run_dir: Path, manifest: dict, recipe: dict) -> dict | None:
    """For a run that did not finish (interrupted, failed, or killed while its
    manifest still says running): its state, what finished per stage, and the
    command that resumes it. None for a finished run or one still in progress."""
    status = manifest.get("status")
    if status in ("done", "incomplete"):
        return None
    if status == "running" and _holder_alive(run_dir):
        return None
    state = {"running": "stopped without finishing (killed? the process is gone)",
             "interrupted": "interrupted", "failed": "failed"}.get(str(status), str(status))
    last = (manifest.get("attempts") or [{}])[-1]
    # A CLI run recorded its command; an API run is resumed by the same smolforge.run(...) call.
    resume = manifest.get("command") or f"smolforge run <recipe file or {manifest.get('recipe')}> --out {run_dir}"
    if manifest.get("cwd") and manifest["cwd"] != os.getcwd():
        resume = f"cd {manifest['cwd']} && {resume}"
    return {"state": state, "error": last.get("error"), "stages": stages_on_disk(run_dir, recipe),
            "resume": resume,
            "note": "re-run the same command to resume: finished shards are kept, cached answers are reused"}


def judge_warnings(stages: list[dict]) -> list[str]:
    """`stage: signal` for every judge or rate stage whose self-check (its summary's
    `judge_check`, see `smolforge.stages.judges.judge.judge_check`) found it degenerate."""
    return [f"{s['name']}: {d}" for s in stages
            for d in (((s.get("summary") or {}).get("judge_check") or {}).get("degenerate") or [])]


def funnel(stages: list[dict], rejects: list[dict]) -> list[dict]:
    """Per stage: records in, kept, rejected by rule, and records the stage created
    (fan-out, real records added by a mix): in + added = kept + rejected, exactly."""
    rows = []
    for s in stages:
        reasons = [{"reason": g["reason"], "count": g["count"], "kind": g["kind"]}
                   for g in rejects if g["stage"] == s["name"]]
        n_in, n_out, n_rej = s.get("in", 0), s.get("out", 0), s.get("rejected", 0)
        rows.append({"stage": s["name"], "type": s.get("type"), "in": n_in, "out": n_out,
                     "rejected": n_rej, "added": n_out + n_rej - n_in, "reasons": reasons})
    return rows


def _licences(teachers: dict[str, dict], engines: list[dict]) -> tuple[list[dict], list[dict]]:
    rows, warnings = [], []
    for key, t in sorted(teachers.items()):
        lic = _licence_of(t, engines)
        name = teacher_name(t)
        rows.append({"teacher": name, "key": key, "engine": t["engine"], "model": t["model"], "records": t["records"],
                     "licence": lic.id, "licence_name": lic.name, "training": lic.training,
                     "note": lic.note, "url": lic.url, "licence_source": lic.source})
        if lic.warns:
            warnings.append({
                "teacher": name, "licence": lic.id, "training": lic.training, "note": lic.note,
                "records": t["records"], "example_ids": t["ids"],
                "message": f"{t['records']} record(s) come from {name} under {lic.name} "
                           f"({lic.training}): {lic.note}",
            })
    return rows, warnings


def list_rejects(run_dir: str | Path, stage: str | None = None, reason: str | None = None,
                 limit: int | None = None) -> list[dict]:
    """Rejected records, optionally of one stage and whose reason contains `reason`
    (or whose rule group equals it); each with its stage, reason, rule and record."""
    out = []
    for r in _iter_rejects(Path(run_dir), ["id", "stage", "reason", "record"]):
        if stage is not None and r["stage"] != stage:
            continue
        group = reject_key(r["stage"], r["reason"])[1]
        if reason is not None and reason not in r["reason"] and reason != group:
            continue
        try:
            rec = json.loads(r["record"])
        except (TypeError, ValueError):
            rec = {"raw": r["record"]}
        out.append({"id": r["id"], "stage": r["stage"], "reason": r["reason"], "rule": group, "record": rec})
        if limit is not None and len(out) >= limit:
            break
    return out


# ------------------------------------------------------------------ profile


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


def _score_columns(schema: pa.Schema, recipe: dict) -> list[str]:
    declared = []
    for st in recipe.get("stages", []) or []:
        if st.get("type") == "judge":
            declared.append(st.get("column", "score"))
        elif "classif" in str(st.get("type")) or st.get("type") == "score":
            declared += [st.get("score_column", "score")] + list(st.get("model_columns") or [])
    numeric = {f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)}
    found = [c for c in declared if c in numeric]
    found += sorted(c for c in numeric if "score" in c and not c.endswith("_spread") and c not in found)
    return list(dict.fromkeys(found))


def text_columns(schema: pa.Schema, recipe: dict, column: str | None = None) -> list[str]:
    """The text columns to profile: `column` when named, else every generated text
    column the recipe declared that the data has (the response first; a preference
    run's chosen and rejected), else `text`. Raises ValueError for an unknown `column`."""
    from smolforge.columns import UnknownColumn, declared

    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if column is not None:
        if column not in schema.names:
            raise UnknownColumn(f"--column {column}: no such column in the data (columns: {', '.join(schema.names)})")
        return [column]
    found = [c for c in declared(recipe).text_columns() if c in strings]
    return found or (["text"] if "text" in strings else [])


def _recipe(run_dir: Path) -> dict:
    from smolforge.columns import run_recipe

    return run_recipe(run_dir)


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
