"""`add_constraints` and `verify_constraints`: verifiable instruction-following data.

IFEval (Zhou et al. 2023) states checkable constraints ("no commas", "at least 300
words", "wrap it in JSON") and checks responses with code; Nemotron-4 340B and
Tülu 3 built IFEval-style training prompts the same way (seed prompt + sampled
constraints, responses kept only when they verify). Data uses IFEval's own columns:
`instruction_id_list` and `kwargs` (one dict of IFEval parameter names per
instruction), so the public IFEval file and these records are checked alike.
The library is `smolforge.ifeval`; docs/verify-constraints.md lists every id.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import Field, field_validator

from smolforge.context import StageContext
from smolforge.ifeval import IFBENCH_IDS, IFEVAL_IDS, REGISTRY, evaluate, get, sample_constraints
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result, Shards

ALL_PARAMS = tuple(dict.fromkeys(p for inst in REGISTRY.values() for p in inst.params))


def _known(ids: list[str]) -> list[str]:
    for i in ids:
        get(i)  # raises with the closest valid id
    return ids


@stages.register
class AddConstraints(MapStage):
    """For each prompt, 1-3 compatible instructions (IFEval's conflict table) with
    seeded parameters; their descriptions (IFEval's wording) are appended to the
    prompt, and `instruction_id_list` + `kwargs` written. Default pool: IFEval's
    25 types; `include_ifbench` adds the offline IFBench subset."""

    type: Literal["add_constraints"] = "add_constraints"
    column: str = Field("prompt", description="the seed prompt column")
    output: str | None = Field(
        None, description="column for the prompt with its constraints (default: overwrite `column`)")
    min_constraints: int = Field(1, ge=1, le=5)
    max_constraints: int = Field(3, ge=1, le=5)
    instructions: list[str] | None = Field(
        None, description="instruction ids to draw from (default: every IFEval id)")
    exclude: list[str] = Field(default_factory=list, description="instruction ids never drawn")
    include_ifbench: bool = Field(False, description="also draw the offline IFBench constraints")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="fixed parameters per id, e.g. {length_constraints:number_words: {relation: less than}}")
    joiner: str = Field(" ", description="text between the prompt and each description")
    prompt_to_repeat_column: str | None = Field(
        None, description="combination:repeat_prompt repeats this column (default: the seed prompt)")

    @field_validator("instructions", "exclude")
    @classmethod
    def _ids_known(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else _known(v)

    @field_validator("params")
    @classmethod
    def _params_known(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for iid, kw in v.items():
            inst = get(iid)
            bad = [k for k in kw if k not in inst.params]
            if bad:
                raise ValueError(f"{iid}: unknown parameter(s) {bad} (known: {list(inst.params)})")
        return v

    def pool(self) -> list[str]:
        ids = list(self.instructions) if self.instructions is not None else list(IFEVAL_IDS)
        if self.include_ifbench:
            ids += [i for i in IFBENCH_IDS if i not in ids]
        return [i for i in ids if i not in self.exclude]

    def requires(self) -> set[str]:
        return {self.column} | ({self.prompt_to_repeat_column} if self.prompt_to_repeat_column else set())

    def provides(self) -> set[str]:
        return {self.output or self.column, "instruction_id_list", "kwargs"}

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        pool = self.pool()
        if not pool:
            raise ValueError("add_constraints: no instruction ids left to draw from")
        per_id: Counter[str] = Counter()
        for rec in batch:
            prompt = rec.get(self.column)
            if not isinstance(prompt, str) or not prompt.strip():
                res.reject(rec, f"add_constraints: empty prompt (column {self.column!r})")
                continue
            rng = ctx.rng(rec["id"])
            k = rng.randint(self.min_constraints, max(self.min_constraints, self.max_constraints))
            base = rec.get(self.prompt_to_repeat_column) if self.prompt_to_repeat_column else prompt
            ids, kwargs = sample_constraints(rng, str(base), k, pool, self.params)
            text = prompt.rstrip()
            for iid, kw in zip(ids, kwargs, strict=True):
                text += self.joiner + REGISTRY[iid].description(kw)
            per_id.update(ids)
            # Every parameter name in every dict, null where unused: the layout of the
            # public IFEval set as `datasets` loads it. Parquet cannot store a list of
            # empty structs (a shard whose instructions all take no parameters), and one
            # struct type keeps shards' schemas equal.
            kwargs = [{k: kw.get(k) for k in ALL_PARAMS} for kw in kwargs]
            res.keep({**rec, self.output or self.column: text, "instruction_id_list": ids, "kwargs": kwargs})
        res.counts = {f"drawn:{i}": float(n) for i, n in per_id.items()}
        return res


@stages.register
class VerifyConstraints(MapStage):
    """Check each response against its `instruction_id_list` / `kwargs`, strict and
    loose as IFEval defines them (loose also tries the response without its first
    line, its last line, both, and without markdown asterisks). Writes per-instruction
    results and keeps the records that pass in `require` mode."""

    type: Literal["verify_constraints"] = "verify_constraints"
    response_column: str = Field("text", description="the response checked")
    prompt_column: str = Field("prompt", description="the prompt (for ids that need it)")
    require: Literal["strict", "loose", "none"] = Field(
        "strict", description="which check every instruction must pass to keep a record (none: keep all)")
    prefix: str = Field("ifeval_", description="prefix of the result columns")

    def requires(self) -> set[str]:
        return {self.response_column, "instruction_id_list", "kwargs"}

    def provides(self) -> set[str]:
        p = self.prefix
        return {f"{p}strict", f"{p}loose", f"{p}strict_all", f"{p}loose_all"}

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        p = self.prefix
        counts: Counter[str] = Counter()
        for rec in batch:
            ids = list(rec.get("instruction_id_list") or [])
            response = rec.get(self.response_column)
            response = "" if response is None else str(response)
            try:
                checks = evaluate(response, ids, rec.get("kwargs"), str(rec.get(self.prompt_column) or ""))
            except (ValueError, KeyError, TypeError) as e:
                res.reject(rec, f"verify_constraints: bad constraint data: {e}")
                continue
            strict = [c.strict for c in checks]
            loose = [c.loose for c in checks]
            out = {**rec, f"{p}strict": strict, f"{p}loose": loose,
                   f"{p}strict_all": all(strict), f"{p}loose_all": all(loose)}
            counts["instructions"] += len(checks)
            counts["strict_pass"] += sum(strict)
            counts["loose_pass"] += sum(loose)
            counts["records_strict_all"] += all(strict)
            counts["records_loose_all"] += all(loose)
            for c in checks:
                counts[f"strict_fail:{c.instruction_id}"] += not c.strict
            if self.require == "none":
                res.keep(out)
                continue
            failed = [c.instruction_id for c in checks if not (c.strict if self.require == "strict" else c.loose)]
            if not response.strip():
                res.reject(out, f"constraints failed ({self.require}): empty response")
            elif failed:
                res.reject(out, f"constraints failed ({self.require}): {', '.join(failed)}")
            else:
                res.keep(out)
        res.counts = {k: float(v) for k, v in counts.items()}
        return res

    def summary(self, out: Shards, ctx: StageContext) -> dict[str, Any] | None:
        """Per-instruction pass rates of the kept records (strict and loose)."""
        p = self.prefix
        seen: Counter[str] = Counter()
        ok_s: Counter[str] = Counter()
        ok_l: Counter[str] = Counter()
        for i in range(len(out)):
            for rec in out.columns(i, ["instruction_id_list", f"{p}strict", f"{p}loose"]):
                for iid, s, lo in zip(rec["instruction_id_list"] or [], rec[f"{p}strict"] or [],
                                      rec[f"{p}loose"] or [], strict=False):
                    seen[iid] += 1
                    ok_s[iid] += bool(s)
                    ok_l[iid] += bool(lo)
        if not seen:
            return None
        return {"kept_per_instruction": dict(seen),
                "strict_rate": {i: round(ok_s[i] / n, 4) for i, n in seen.items()},
                "loose_rate": {i: round(ok_l[i] / n, 4) for i, n in seen.items()}}
