"""`verify_code`: run a code column against a tests column in a sandbox.

Keeps only "code that has been verified to not error" (Nemotron-4 340B technical
report, arXiv:2406.11704) and that passes its tests, as in execution-filtered code
data (Code Llama's self-instruct, arXiv:2308.12950; OSS-Instruct/Magicoder,
arXiv:2312.02120). Tests are assert statements (MBPP style), pytest-style
`def test_*()` functions, or HumanEval's `check(candidate)` with an entry point;
a tiny runner inside the sandbox collects and runs them (no pytest needed).

Every record gets `exec_passed`, `exec_reason` (passed, failed, error, wall_time,
cpu_time, memory, processes, network, output_limit, ... see
`smolforge.sandbox.REASONS`), `exec_tests` (JSON list of {name, passed, error,
time}), `exec_stdout` / `exec_stderr` (tails), `exec_time` (seconds) and
`exec_code` (the code that ran, after markdown extraction). Failing records are
dropped with a reason naming the failed tests or the limit hit (`keep_failed:
true` keeps them, e.g. for preference pairs).

The sandbox is bubblewrap (docs/verify-code.md); `sandbox: none` runs code
unisolated and needs `allow_unsandboxed: true`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Literal

from pydantic import Field, model_validator

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.sandbox import Job, Limits, RunResult, open_sandbox
from smolforge.stages.base import GlobalStage, MapStage, Record, Result, Shards, Stage

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_LANG_TAGS = {"python": {"", "python", "python3", "py", "pycon"}}


def extract_code(text: str, language: str = "python", blocks: str = "first") -> str:
    """The code in a chat answer: the first fenced block tagged for `language` (or
    untagged), or all of them joined (`blocks="all"`: a model's "example usage"
    blocks come along). An unclosed fence (the answer hit max_tokens) counts only
    when no closed block exists. Text without fences is returned as it is."""
    if "```" not in text:
        return text
    tags = _LANG_TAGS.get(language, {"", language})
    found = [body for tag, body in _FENCE.findall(text) if tag.lower() in tags]
    picked = [body for body in found if not _unclosed(text, body)] or found
    if not picked:
        return ""
    picked = picked[:1] if blocks == "first" else picked
    return "\n\n".join(b.strip("\n") for b in picked) + "\n"


def _unclosed(text: str, body: str) -> bool:
    """Whether `body` runs to the end of `text` without a closing fence."""
    return text.rstrip().endswith(body.rstrip()) and not text.rstrip().endswith("```")


class _VerifyCodeConfig(Stage):
    """Run `code` against `tests` in the sandbox; keep the records that pass.

    Without `vote_group` a map stage (shard by shard); with it a global stage, so
    that every solution of a problem votes, whichever shard it is in."""

    type: Literal["verify_code"] = "verify_code"
    code: str = Field("code", description="column with the code (or a chat answer holding it)")
    tests: str = Field("tests", description="column with the tests")
    language: Literal["python"] = Field("python", description="language of code and tests")
    style: Literal["auto", "assert", "pytest", "check"] = Field(
        "auto", description="how tests are written: asserts, test_* functions, HumanEval check(candidate)")
    entry_point: str | None = Field(None, description="column naming the function `check` is called with")
    extract: bool = Field(True, description="take code from ``` fences when a column holds them")
    blocks: Literal["first", "all"] = Field("first", description="with extract: the first fenced block, or all")
    limits: Limits = Field(default_factory=Limits, description="per-run limits (docs/verify-code.md)")
    workers: int = Field(2, ge=1, le=64, description="sandboxes running at once")
    sandbox: Literal["auto", "bwrap", "none"] = Field("auto", description="isolation backend")
    allow_unsandboxed: bool = Field(False, description="required with sandbox: none (code runs as you)")
    seccomp: bool = Field(True, description="bwrap: also block non-AF_UNIX sockets, io_uring, ptrace by seccomp")
    vote_group: str | None = Field(
        None, description="column shared by the candidate solutions of one problem (e.g. `problem`): "
        "tests most of them fail are voted out (CodeT)")
    vote_min: float = Field(0.5, gt=0, le=1, description="share of a problem's solutions a test needs to pass")
    keep_failed: bool = Field(False, description="keep failing records (exec_passed false) instead of dropping")

    @model_validator(mode="after")
    def _opt_in(self):
        if self.sandbox == "none" and not self.allow_unsandboxed:
            raise ValueError("sandbox: none runs the code unisolated, with your user's rights; "
                             "set allow_unsandboxed: true to accept that (docs/verify-code.md)")
        # the kind follows vote_group: the runner picks map or global by class
        kind = VerifyCodeVoted if self.vote_group else VerifyCode
        if type(self) is not kind:
            object.__setattr__(self, "__class__", kind)
        return self

    def requires(self) -> set[str]:
        return ({self.code, self.tests} | ({self.entry_point} if self.entry_point else set())
                | ({self.vote_group} if self.vote_group else set()))

    def provides(self) -> set[str]:
        return {"exec_passed", "exec_reason", "exec_tests", "exec_stdout", "exec_stderr", "exec_time",
                "exec_code"}

    def _text(self, rec: Record, col: str) -> str:
        v = rec.get(col)
        s = v if isinstance(v, str) else ("" if v is None else str(v))
        return extract_code(s, self.language, self.blocks) if self.extract else s

    def _prepare(self, batch: list[Record]) -> tuple[Result, list[tuple[Record, Job]]]:
        """The records without code or tests rejected; the others as jobs."""
        res = Result()
        todo: list[tuple[Record, Job]] = []
        for rec in batch:
            code, tests = self._text(rec, self.code), self._text(rec, self.tests)
            if not code.strip():
                res.reject(rec, f"verify_code: no code in column {self.code!r}")
                continue
            if not tests.strip():
                res.reject(rec, f"verify_code: no tests in column {self.tests!r}")
                continue
            ep = rec.get(self.entry_point) if self.entry_point else None
            todo.append((rec, Job(code=code, tests=tests, language=self.language, style=self.style,
                                  entry_point=ep if isinstance(ep, str) and ep else None)))
        return res, todo

    def _execute(self, jobs: list[Job]) -> list[RunResult]:
        if not jobs:
            return []
        opts = {"seccomp": self.seccomp} if self.sandbox != "none" else {}
        with open_sandbox(self.sandbox, allow_unsandboxed=self.allow_unsandboxed, limits=self.limits,
                          workers=min(self.workers, len(jobs)), **opts) as sb:
            return sb.run(jobs)

    def _finish(self, res: Result, todo: list[tuple[Record, Job]], results: list[RunResult]) -> Result:
        """Keep or reject each run record; count the reasons."""
        reasons: Counter[str] = Counter()
        for (rec, job), r in zip(todo, results):
            reasons[r.reason] += 1
            out = {
                **rec,
                "exec_passed": r.passed,
                "exec_reason": r.reason,
                "exec_tests": json.dumps([t.__dict__ for t in r.tests]),
                "exec_stdout": r.stdout,
                "exec_stderr": r.stderr,
                "exec_time": round(r.wall_s, 4),
                "exec_code": job.code,
            }
            if r.passed or self.keep_failed:
                res.keep(out)
            else:
                res.reject(out, f"verify_code: {r.summary()}")
        if todo:
            res.counts.update({"passed": reasons.get("passed", 0),
                               "failed": sum(reasons.values()) - reasons["passed"]})
            res.counts.update({f"reason_{k}": v for k, v in reasons.items()})
            res.counts["tests_run"] = sum(len(r.tests) for r in results)
        return res

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        """One batch: run it, vote within it (all of a global stage's input when
        called by `process_all`)."""
        res, todo = self._prepare(batch)
        if not todo:
            return res
        results = self._execute([job for _, job in todo])
        if self.vote_group:
            voted_out = self._vote([rec for rec, _ in todo], results)
            if voted_out:
                res.counts["tests_voted_out"] = voted_out
        return self._finish(res, todo, results)

    def _vote(self, recs: list[Record], results: list[RunResult]) -> int:
        """CodeT-style agreement (Chen et al. 2022, arXiv:2207.10397), simplified:
        among the solutions of one problem (same `vote_group` value, same tests), a
        test that fewer than `vote_min` of them pass is taken to be wrong and no
        longer counts; a solution passes if it passes every remaining test (at
        least one). Runs that hit a limit or did not load stay failed. Returns how
        many tests were voted out."""
        voted_out = 0
        groups: dict[str, list[int]] = {}
        for i, rec in enumerate(recs):
            groups.setdefault(json.dumps(rec.get(self.vote_group), default=str), []).append(i)
        for idx in groups.values():
            ran = [i for i in idx if results[i].reason in ("passed", "failed")]
            if len(ran) < 2:
                continue
            support: Counter[str] = Counter()
            for i in ran:
                support.update(t.name for t in results[i].tests if t.passed)
            names = {t.name for i in ran for t in results[i].tests}
            wrong = {n for n in names if support[n] < self.vote_min * len(ran)}
            voted_out += len(wrong)
            for i in ran:
                r = results[i]
                r.tests = [t for t in r.tests if t.name not in wrong]
                r.passed = bool(r.tests) and all(t.passed for t in r.tests)
                r.reason = "passed" if r.passed else ("failed" if r.tests else "error")
                if wrong:
                    r.error = f"tests voted out (passed by < {self.vote_min:g} of {len(ran)} solutions): " + \
                        ", ".join(sorted(wrong))
        return voted_out


@stages.register
class VerifyCode(_VerifyCodeConfig, MapStage):
    __doc__ = _VerifyCodeConfig.__doc__


class VerifyCodeVoted(_VerifyCodeConfig, GlobalStage):
    """`verify_code` with `vote_group`: a global stage, so the vote sees every
    solution of a problem across shards and the verdicts do not depend on
    `shard_size`. The code runs in one sandbox for the whole input."""

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        parts = [(i, *self._prepare(shards[i])) for i in range(len(shards))]
        todo = [item for _, _, items in parts for item in items]
        results = self._execute([job for _, job in todo])
        voted_out = self._vote([rec for rec, _ in todo], results)
        k = 0
        for i, res, items in parts:
            if voted_out and k == 0 and items:
                res.counts["tests_voted_out"] = voted_out  # once, in the first shard that ran
            self._finish(res, items, results[k:k + len(items)])
            k += len(items)
            yield i, res
