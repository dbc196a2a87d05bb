"""`export --format hf` and `smolforge push`: a Hugging Face dataset folder with its card.

The folder is what the Hub's dataset viewer and `datasets.load_dataset(DIR)` read:
`data/<split>-00000-of-00001.parquet` (one file per value of the `split` column,
which the `split` and `anneal` stages write; `train` when there is none) and a
`README.md` whose YAML front matter declares the configs, features, splits, size
category, licence and tags, followed by the card text (the recipe, its teachers
and their licences, every filter with its counts, decontamination, known limits),
built from the same figures as `show` and `smolforge report`.

`push` exports into a temporary folder and uploads it with `huggingface_hub`
(`create_repo`, `upload_folder`); the token comes only from the environment
(`HF_TOKEN`) and is written nowhere.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from smolforge.report.profiling import profile
from smolforge.report.stats import summarize
from smolforge.store import (
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    own_file,
    read_data,
    read_regular,
    sha256,
)

SPLIT_COLUMN = "split"
MARKER = ".smolforge-export.json"
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")


class CardError(ValueError):
    pass


def size_category(n: int) -> str:
    """The Hub's `size_categories` bucket for n records."""
    if n < 1000:
        return "n<1K"
    bounds = [(10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"), (10**7, "1M<n<10M"),
              (10**8, "10M<n<100M"), (10**9, "100M<n<1B")]
    for hi, name in bounds:
        if n < hi:
            return name
    return "n>1T" if n >= 10**12 else "1B<n<10B"


def feature(t: pa.DataType) -> Any:
    """An Arrow type as the card's `dataset_info.features` YAML (the `datasets` spelling)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return {"dtype": "string"}
    if pa.types.is_boolean(t):
        return {"dtype": "bool"}
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return {"dtype": {"halffloat": "float16", "float": "float32", "double": "float64"}.get(str(t), str(t))}
    if pa.types.is_null(t):
        return {"dtype": "null"}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = feature(t.value_type)
        return {"list": inner.get("dtype", inner)}
    if pa.types.is_struct(t):
        return {"struct": [{"name": f.name, **feature(f.type)} for f in t]}
    return {"dtype": str(t)}


def _features(schema: pa.Schema) -> list[dict]:
    return [{"name": f.name, **feature(f.type)} for f in schema]


def _splits(table: pa.Table) -> dict[str, pa.Table]:
    if SPLIT_COLUMN not in table.column_names:
        return {"train": table}
    import pyarrow.compute as pc

    col = table.column(SPLIT_COLUMN)
    out = {}
    for name in sorted({str(v) for v in col.to_pylist() if v is not None}):
        if not _SPLIT_NAME.match(name):
            raise CardError(f"split name {name!r} is not valid on the Hub (letters, digits, _ and .)")
        out[name] = table.filter(pc.equal(col, name)).drop_columns([SPLIT_COLUMN])
    if col.null_count:
        raise CardError(f"{col.null_count} record(s) have no {SPLIT_COLUMN!r}; set it for every record")
    return out


# What export_hf writes in a folder: the only names of a marker's `files` it may replace or remove.
_EXPORT_FILE = re.compile(r"^(README\.md|data/\w+(\.\w+)*-00000-of-00001\.parquet)$")


def _own_files(to: Path, force: bool) -> dict[str, str | None]:
    """The files an earlier export wrote in `to` (relative name -> sha256 when the
    marker kept it), read from its MARKER; only names export writes, with no link
    on the way, count. A non-empty folder without a marker is refused (unless
    `force`: then nothing in it counts as ours)."""
    if to.is_symlink():
        raise CardError(f"{to}: is a symbolic link; export never writes through a link (name the folder itself)")
    if to.exists() and not to.is_dir():
        raise CardError(f"{to}: exists and is not a folder")
    if not to.is_dir() or not any(to.iterdir()):
        return {}
    marker = to / MARKER
    try:
        info = json.loads(read_regular(marker))
        files = info.get("files", [])
        hashes = info.get("sha256") or {}
        if not (isinstance(files, list) and isinstance(hashes, dict)):
            raise ValueError("not a list of files")
    except FileNotFoundError:
        if force:
            return {}
        raise CardError(f"{to}: the folder is not empty and was not written by smolforge export; "
                        "choose another --to (or --force to write into it; its other files are kept)") from None
    except (OSError, ValueError, AttributeError):
        if force:
            return {}
        raise CardError(f"{to / MARKER}: damaged; export does not know which files it wrote there "
                        "(--force to write into the folder anyway; its other files are kept)") from None
    return {rel: hashes.get(rel) for rel in files
            if own_file(to, rel, _EXPORT_FILE) is not None}


def _is_ours(path: Path, want: str | None) -> bool:
    """An earlier export's file, unchanged since (when its hash was kept)."""
    if want is None:
        return True
    try:
        return sha256(read_regular(path)) == want
    except OSError:
        return False


def export_hf(run_dir: str | Path, to: str | Path, licence: str | None = None,
              tokenizer: str = "auto", *, force: bool = False) -> int:
    """Write the folder. Each file goes under a temporary name and is renamed into
    place; a file export did not write (or that changed since it wrote it) is
    replaced only with `force`; files of an earlier export that this one does not
    write again (a split that is gone) are removed, nothing else."""
    run_dir, to = Path(run_dir), Path(to)
    table = read_data(run_dir)
    splits = _splits(table)
    old = _own_files(to, force)
    new = {f"data/{name}-00000-of-00001.parquet": t for name, t in splits.items()}
    for rel in [*new, "README.md", MARKER]:
        p = to / rel
        if (to / "data").is_symlink() or (p.is_symlink() and not force):
            raise CardError(f"{p if p.is_symlink() else to / 'data'}: is a symbolic link; "
                            "export never writes through a link")
        if rel != MARKER and not force and (p.exists() or p.is_symlink()) \
                and not (rel in old and _is_ours(p, old[rel])):
            raise CardError(f"{p}: exists and was not written by smolforge export (or changed since); "
                            "--force to replace it, or choose another --to")
    summary = summarize(run_dir)
    prof = profile(run_dir, tokenizer=tokenizer, sample_records=0, max_rejects=0, summary=summary)
    readme = card(summary, prof, splits, licence, _recipe_text(run_dir)).encode()
    (to / "data").mkdir(parents=True, exist_ok=True)
    # The marker first names what is about to be written, so that an export cut short
    # (kill, full disk) is still known as ours by the next one.
    writing = [*new, "README.md"]
    atomic_write_json(to / MARKER, {"run": str(run_dir), "files": list(dict.fromkeys([*old, *writing])),
                                    "sha256": {r: h for r, h in old.items() if h and r not in writing}})
    hashes = {}
    for rel, t in new.items():
        with atomic_file(to / rel) as f:
            pq.write_table(t, f, compression="zstd")
        hashes[rel] = sha256((to / rel).read_bytes())
    atomic_write_bytes(to / "README.md", readme)
    hashes["README.md"] = sha256(readme)
    for rel, want in old.items():
        p = to / rel
        if rel not in hashes and own_file(to, rel, _EXPORT_FILE) is not None and _is_ours(p, want):
            p.unlink(missing_ok=True)
    atomic_write_json(to / MARKER, {"run": str(run_dir), "files": list(hashes), "sha256": hashes})
    return table.num_rows


def _recipe_text(run_dir: Path) -> str:
    try:
        return (run_dir / "recipe.yaml").read_text()
    except OSError:
        return ""


def front_matter(summary: dict, splits: dict[str, pa.Table], licence: str | None) -> dict:
    n = sum(t.num_rows for t in splits.values())
    schema = next(iter(splits.values())).schema
    return {
        "license": licence or "other",
        "tags": ["synthetic", "smolforge", f"smolforge-recipe-{summary['recipe']}"],
        "size_categories": [size_category(n)],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}],
        "dataset_info": {
            "features": _features(schema),
            "splits": [{"name": s, "num_examples": t.num_rows} for s, t in splits.items()],
        },
    }


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str("" if v is None else v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _benchmarks_checked(recipe_text: str) -> list[str]:
    try:
        recipe = yaml.safe_load(recipe_text) or {}
    except yaml.YAMLError:
        return []
    names = []
    for st in recipe.get("stages", []) or []:
        if st.get("type") == "decontaminate":
            for b in st.get("benchmarks", []) or []:
                names.append(b.get("name") or Path(str(b.get("path", "?"))).name)
    return names


def card(summary: dict, prof: dict, splits: dict[str, pa.Table], licence: str | None, recipe_text: str) -> str:
    s, p = summary, prof
    fm = yaml.safe_dump(front_matter(s, splits, licence), sort_keys=False, allow_unicode=True)
    n = sum(t.num_rows for t in splits.values())
    out = [f"---\n{fm}---\n", f"# {s['recipe']}\n",
           f"Synthetic data built with smolforge, recipe `{s['recipe']}`: "
           f"{n} records ({', '.join(f'{k}: {t.num_rows}' for k, t in splits.items())}), "
           f"{s['completion_tokens']} tokens generated, run finished {s.get('finished_at')} "
           f"(status `{s['status']}`).\n"]
    if not licence:
        out.append("The dataset's own licence is not set (`other`): choose one with "
                   "`smolforge export --format hf --license ...`, in line with the teachers' terms below.\n")

    out.append("## Teachers and their licences\n")
    if s.get("teachers"):
        out.append(_md_table(["teacher", "records", "licence", "training other models on the outputs", "terms"],
                             [[t["teacher"], t["records"], t["licence_name"], t["training"], t["note"]]
                              for t in s["teachers"]]) + "\n")
    else:
        out.append("No record was generated by a model (real or rule-made text only).\n")
    for w in s.get("licence_warnings", []):
        out.append(f"> **Licence warning:** {w['message']}. Affected: every record whose `meta` names this "
                   f"teacher (e.g. {', '.join(w['example_ids'][:5])}).\n")
    for w in s.get("judge_warnings", []):
        out.append(f"> **Degenerate judge:** {w}: its scores are not a quality signal.\n")

    out.append("## Recipe\n")
    out.append(_md_table(["stage", "type", "in", "kept", "rejected"],
                         [[r["stage"], r["type"], r["in"], r["out"], r["rejected"]] for r in s["funnel"]]) + "\n")
    if recipe_text:
        out.append("<details><summary>recipe.yaml</summary>\n\n```yaml\n" + recipe_text.strip() + "\n```\n</details>\n")

    out.append("## Filters and their counts\n")
    rows = [[g["stage"], g["reason"], g["count"], g["kind"]] for g in s["rejects"]]
    out.append(_md_table(["stage", "rule", "records dropped", "kind"], rows) + "\n" if rows
               else "No record was dropped.\n")

    out.append("## Decontamination\n")
    checked = _benchmarks_checked(recipe_text)
    hits = s.get("contamination", {})
    if checked or hits:
        out.append(_md_table(["benchmark", "records removed"],
                             [[b, hits.get(b, 0)] for b in dict.fromkeys(checked + list(hits))]) + "\n")
    else:
        out.append("**No decontamination stage ran**: records were not checked against any benchmark.\n")

    out.append("## Statistics\n")
    d, px = p["diversity"], p["proxy_words"]
    stats = [["records", n]]
    for c, f in p["columns"].items():  # every generated text column, the recipe's response first
        fd, fpx = f["diversity"], f["proxy_words"]
        stats += [[f"{c}: mean length ({p['tokenizer']})", f["lengths"].get("mean")],
                  [f"{c}: distinct-1 / distinct-2", f"{fd['distinct_1']} / {fd['distinct_2']}"],
                  [f"{c}: compression ratio (raw / gzip)", fd["compression_ratio"]]]
        for k, v in fpx["per_1000_words"].items():
            stats.append([f"{c}: AI proxy words ({k}) per 1,000 words",
                          f"{v} (reference {fpx['reference']['per_1000_words'][k]})"])
    for c, h in p["scores"].items():
        if h.get("n"):
            stats.append([f"{c}: mean (min-max)", f"{h['mean']} ({h['min']}-{h['max']})"])
    out.append(_md_table(["figure", "value"], stats) + "\n")
    if d["openings"]:
        out.append("Most common openings: " + "; ".join(f"\"{o['opening']}\" x{o['count']}"
                                                         for o in d["openings"][:5]) + ".\n")

    out.append("## Known limits\n")
    limits = [
        "Synthetic text can be fluent and wrong: scores from an LLM judge are a model's opinion, "
        "not verification.",
        "Licence entries come from GGUF metadata, the engine configuration or smolforge's table of model "
        "families: a summary for review, not legal advice.",
        "Decontamination matches word n-grams: paraphrased benchmark items can pass.",
        f"Proxy-word rates are compared with technical documentation ({px['reference']['corpus']}); "
        "genre differences move them too.",
    ]
    fails = s.get("engine_failures") or {}
    if fails.get("records"):
        limits.append(f"{fails['records']} record(s) failed for engine reasons and are missing.")
    if s["status"] != "done":
        limits.append(f"The run's status is `{s['status']}`: the data may be incomplete.")
    out.append("\n".join(f"- {x}" for x in limits) + "\n")
    return "\n".join(out)


# ------------------------------------------------------------------ push


def push(run_dir: str | Path, repo_id: str, private: bool = False, licence: str | None = None,
         endpoint: str | None = None) -> str:
    """Export `run_dir` as a dataset folder and upload it to `repo_id`; returns the
    commit URL. The token is read from HF_TOKEN and only handed to huggingface_hub."""
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise CardError("set HF_TOKEN in the environment to push (the token is never written anywhere)")
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    with tempfile.TemporaryDirectory(prefix="smolforge-push-") as tmp:
        export_hf(run_dir, Path(tmp) / "dataset", licence=licence)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(Path(tmp) / "dataset"), repo_id=repo_id, repo_type="dataset",
                                 commit_message=f"smolforge: {Path(run_dir).name}",
                                 ignore_patterns=[MARKER])
    return str(getattr(info, "commit_url", info))

