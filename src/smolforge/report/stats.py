"""Figures about a run, computed from its directory (manifest, data, rejects):
`summarize` is what `show` prints (and `show --json` emits): stages, the funnel,
rejects by stage and rule, knobs, teachers and their licences; `list_rejects`.
`report.profiling` adds what the HTML report and the dataset card show. Both read the
data batch by batch, so memory stays bounded for big runs.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smolforge.licences import Licence, by_id, model_licence
from smolforge.stages.base import is_engine_error
from smolforge.store import data_files, load_manifest

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
