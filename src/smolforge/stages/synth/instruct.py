"""Instruction synthesis in rounds: `self_instruct` and `evol_instruct`.

Both are global stages that loop internally: each round is one batch of requests
sent with `ctx.generate` (the engine batches it; the cache answers a re-run),
every choice is seeded from the recipe seed, and every record they write carries
its knobs (`round`, `operation` ...) in `meta.knobs`. `LoopLLM`
(`smolforge.stages.llm`) holds their request plumbing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Annotated, Literal

from pydantic import Field, model_validator

from smolforge.context import StageContext
from smolforge.engines.base import chat
from smolforge.paths import FILE
from smolforge.registry import stages
from smolforge.stages.base import GlobalStage, Record, Result, Shards
from smolforge.stages.llm import (
    LoopLLM,
    first_completion,
    input_records,
    load_template,
    new_meta,
    render_file,
    spread,
    with_knobs,
)
from smolforge.text import normalize, words
from smolforge.text.rouge import NoveltyFilter, tokenize

# ---------------------------------------------------------------- self-instruct

# Self-Instruct's filter (Wang et al. 2023, generate_instruction.py): tasks a text
# model cannot do.
NEEDS_MEDIA = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
               "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart",
               "diagram"]
_ENDS = re.compile(r"[.?!][\"')\]]*$")
_ITEM = re.compile(r"^\s*(?:[-*]\s*)?(?:\*\*)?(?:task|instruction)?\s*(\d+)\s*[.:)]\s*(?:\*\*)?\s*(.*)$", re.I)


def parse_tasks(text: str) -> list[str]:
    """Numbered tasks in a completion (`9. ...`, `Task 10: ...`); lines that follow
    an item without a number continue it. Unnumbered text is one task."""
    items: list[str] = []
    cur: str | None = None
    for line in text.splitlines():
        m = _ITEM.match(line)
        if m:
            if cur:
                items.append(cur)
            cur = m.group(2).strip()
        elif cur is not None and line.strip():
            cur += " " + line.strip()
    if cur:
        items.append(cur)
    if not items and text.strip():
        items = [" ".join(text.split())]
    return [t.strip().strip('"').strip() for t in items if t.strip()]


def media_word(instruction: str, blocklist: Sequence[str]) -> str | None:
    low = " ".join(tokenize(instruction))
    for w in blocklist:
        if re.search(rf"(?<!\w){re.escape(w.lower())}(?!\w)", low):
            return w
    return None


@stages.register
class SelfInstruct(LoopLLM, GlobalStage):
    """Self-Instruct (Wang et al. 2023, arXiv:2212.10560): grow a task pool from
    seed tasks. Each round sends `prompts_per_round` prompts, each showing `k`
    tasks from the pool (`generated_in_context` of them machine-generated once
    there are any, the rest seeds; the paper: 6 + 2) and asking for more. A new
    instruction is kept only if it has `min_words`..`max_words` words, does not
    need an image, file or other media (`blocklist`), does not start with
    punctuation, and its ROUGE-L F1 against every instruction kept so far (seeds
    included) is below `max_similarity` (0.7). Stops at `target` new instructions,
    after `patience` rounds that add nothing, or after `max_rounds`.

    Input records are the seed tasks (`column`). Output: the new instructions
    (`column`; knobs `round`, `origin: generated`), and the seeds themselves with
    `origin: seed` when `keep_seeds` (else they are dropped with that reason)."""

    type: Literal["self_instruct"] = "self_instruct"
    column: str = Field("instruction", description="the instruction column (seeds in, tasks out)")
    template_file: Annotated[str, FILE] = Field(
        "self_instruct/generate.j2", description="prompt; variables `examples` (list) and `n_new`"
    )
    target: int = Field(64, ge=1, description="stop once this many new instructions are kept")
    prompts_per_round: int = Field(8, ge=1, description="prompts sent together in one round")
    k: int = Field(8, ge=1, description="in-context tasks per prompt")
    generated_in_context: int = Field(
        2, ge=0, description="of the k, how many are generated ones (when there are any)"
    )
    n_new: int = Field(8, ge=1, description="new tasks asked for per prompt")
    max_rounds: int = Field(20, ge=1)
    patience: int = Field(1, ge=1, description="stop after this many rounds that add nothing")
    max_similarity: float = Field(0.7, gt=0, le=1, description="ROUGE-L F1 a new task must stay below")
    min_words: int = Field(3, ge=1)
    max_words: int = Field(150, ge=1)
    blocklist: list[str] = Field(
        default_factory=lambda: list(NEEDS_MEDIA),
        description="words that mark a task needing images, files or other media",
    )
    drop_truncated: bool = Field(
        True, description="drop the last task of a completion cut at max_tokens, unless it "
        "ends a sentence"
    )
    keep_seeds: bool = Field(False, description="also output the seed tasks (origin: seed)")
    max_tokens: int = Field(400, ge=1)
    temperature: float = Field(0.9, ge=0)

    @model_validator(mode="after")
    def _k_fits(self):
        if self.generated_in_context > self.k:
            raise ValueError(f"generated_in_context ({self.generated_in_context}) > k ({self.k})")
        return self

    def requires(self) -> set[str]:
        return {self.column}

    def provides(self) -> set[str]:
        return {self.column}

    def template_files(self) -> list[str]:
        return [self.template_file]

    def check_task(self, task: str) -> str | None:
        """Why a new task is dropped before the similarity test (None: it passes)."""
        n = len(words(task))
        if n < self.min_words:
            return f"too short: {n} words < {self.min_words}"
        if n > self.max_words:
            return f"too long: {n} words > {self.max_words}"
        w = media_word(task, self.blocklist)
        if w:
            return f"needs an image, file or other media: {w!r}"
        if not task[0].isalnum():
            return f"starts with punctuation: {task[:1]!r}"
        return None

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        name = ctx.stage_name
        results = [Result() for _ in range(len(shards))]
        novelty = NoveltyFilter(self.max_similarity)
        kept_ids: list[str] = []  # by novelty index
        seeds: list[str] = []
        for i, rec in input_records(shards):
            text = str(rec.get(self.column) or "").strip()
            if not text:
                results[i].reject(rec, f"seed task without {self.column!r}")
                continue
            seeds.append(text)
            novelty.add(text)
            kept_ids.append(rec["id"])
            if self.keep_seeds:
                results[i].keep(with_knobs(rec, {"origin": "seed", "round": 0}))
            else:
                results[i].reject(rec, "seed task, used as an in-context example (keep_seeds: false)")
        new = self._rounds(seeds, novelty, kept_ids, ctx, name)
        for i, part in enumerate(spread(new, len(shards))):
            for rec, reason in part:
                if reason is None:
                    results[i].keep(rec)
                else:
                    results[i].reject(rec, reason)
        yield from enumerate(results)

    def _rounds(self, seeds: list[str], novelty: NoveltyFilter, kept_ids: list[str],
                ctx: StageContext, name: str) -> list[tuple[Record, str | None]]:
        out: list[tuple[Record, str | None]] = []
        if not seeds:
            return out
        engine = self.llm(ctx)
        source = load_template(ctx, self.template_file)
        generated: list[str] = []
        counter = idle = 0
        for rnd in range(1, self.max_rounds + 1):
            prompts = []
            for j in range(self.prompts_per_round):
                rng = ctx.rng("round", rnd, j)
                g = min(self.generated_in_context, len(generated))
                examples = rng.sample(generated, g) + rng.sample(seeds, min(self.k - g, len(seeds)))
                rng.shuffle(examples)
                prompts.append(render_file(source, {"examples": examples, "n_new": self.n_new},
                                           self.template_file))
            reqs = [self.request(ctx, ("round", rnd, j), messages=chat(p))
                    for j, p in enumerate(prompts)]
            added = 0
            for j, resp in enumerate(ctx.generate(engine, reqs)):
                comp = first_completion(resp)
                knobs = {"origin": "generated", "round": rnd}
                if comp is None:
                    rec = {"id": f"{name}-{counter:06d}", self.column: None, "prompt": prompts[j],
                           "meta": new_meta(ctx)}
                    counter += 1
                    out.append((with_knobs(rec, knobs), f"engine error: {resp.error or 'no completion'}"))
                    continue
                prov = self.provenance(engine, reqs[j], resp, comp, source)
                tasks = parse_tasks(comp.text)
                for t_idx, task in enumerate(tasks):
                    rec = with_knobs({"id": f"{name}-{counter:06d}", self.column: task,
                                      "meta": new_meta(ctx)}, knobs, name, prov)
                    counter += 1
                    if len(generated) >= self.target:
                        reason = f"target of {self.target} new instructions already reached"
                    elif (self.drop_truncated and comp.finish_reason == "length"
                          and t_idx == len(tasks) - 1 and not _ENDS.search(task)):
                        reason = f"cut off at max_tokens ({self.max_tokens}): last task of the completion"
                    else:
                        reason = self.check_task(task)
                    if reason is None:
                        match = novelty.add_if_novel(task)
                        if match is not None:
                            reason = (f"too similar to {kept_ids[match.index]}: ROUGE-L "
                                      f"{match.score:.2f} >= {self.max_similarity:g}")
                        else:
                            kept_ids.append(rec["id"])
                            generated.append(task)
                            added += 1
                    out.append((rec, reason))
            idle = 0 if added else idle + 1
            if len(generated) >= self.target or idle >= self.patience:
                break
        return out


# ---------------------------------------------------------------- evol-instruct

# WizardLM's in-depth methods (Xu et al. 2023, arXiv:2304.12244, Appendix A), the
# `{{ method }}` of the depth template.
DEPTH_METHODS: dict[str, str] = {
    "add_constraints": "Please add one more constraint or requirement into #The Given Prompt#.",
    "deepen": "If #The Given Prompt# contains inquiries about certain issues, the depth and "
    "breadth of the inquiry can be increased.",
    "concretize": "Please replace general concepts with more specific concepts.",
    "increase_reasoning": "If #The Given Prompt# can be solved with just a few simple thinking "
    "processes, you can rewrite it to explicitly request multiple-step reasoning.",
    "complicate_input": "Please add complex input data to #The Given Prompt#, such as a table, "
    "a piece of code, a JSON object or a formula, that the prompt asks to work with.",
}
BREADTH = "breadth"
# The rewriter's own vocabulary: an evolved prompt that contains it copied the
# evolution prompt instead of rewriting (WizardLM's elimination rule 4).
MARKERS = ["#The Given Prompt#", "#Given Prompt#", "#Rewritten Prompt#", "#Created Prompt#",
           "given prompt", "rewritten prompt", "created prompt"]
_LABEL = re.compile(r"^\s*(?:\*\*)?#*\s*(?:the\s+)?(?:rewritten|created|new)\s+prompt\s*#*\s*:?\s*(?:\*\*)?\s*",
                    re.I)
# Function words: an answer made only of these (and punctuation) says nothing
# (WizardLM's elimination rule 3); new words among these are no new information.
_STOP_TEXT = (
    "a an the and or but if then else of to in on at by for with about as into from up down "
    "over under is are was were be been being am do does did have has had i you he she it we "
    "they me him her us them my your his its our their this that these those there here what "
    "which who whom whose when where why how not no yes so than too very can could will would "
    "shall should may might must just also only all any some each more most such own same "
    "please"
)
STOPWORDS = frozenset(_STOP_TEXT.split())


def clean_rewrite(text: str) -> str:
    """The rewriter's answer without a leading label like `#Rewritten Prompt#:`."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def content_words(text: str) -> set[str]:
    return {w for w in tokenize(text) if w not in STOPWORDS}


def eliminate(parent: str, evolved: str, answer: str | None, *, markers: Sequence[str] = MARKERS,
              min_new_words: int = 1, min_answer_words: int = 3,
              refusal_max_words: int = 80) -> str | None:
    """WizardLM's elimination rules for one evolution (None: it survives):
    1. no information gained: the evolved prompt adds fewer than `min_new_words`
       content words to its parent (identical prompts add none);
    2. the rewriter's markers (`#Rewritten Prompt#`, "given prompt" ...) copied in;
    3. the answer is a refusal ("sorry" in an answer under `refusal_max_words`
       words, or a refusal opening), or near-empty (fewer than
       `min_answer_words` words that are not stop words)."""
    from smolforge.stages.quality.text_quality import is_refusal

    if not evolved.strip():
        return "empty rewrite"
    low = evolved.lower()
    for m in markers:
        if m.lower() in low:
            return f"rewriter marker copied into the prompt: {m!r}"
    if normalize(evolved) == normalize(parent):
        return "no information gained vs the parent: the prompt is unchanged"
    gained = content_words(evolved) - content_words(parent)
    if len(gained) < min_new_words:
        return (f"no information gained vs the parent: {len(gained)} new content words "
                f"< {min_new_words}")
    if answer is None:
        return None
    n_words = len(words(answer))
    if "sorry" in tokenize(answer) and n_words < refusal_max_words:
        return f"refusal: 'sorry' in a {n_words}-word answer (< {refusal_max_words})"
    phrase = is_refusal(answer)
    if phrase:
        return f"refusal: answer opens with {phrase!r}"
    n_content = len([w for w in tokenize(answer) if w not in STOPWORDS])
    if n_content < min_answer_words:
        return f"near-empty answer: {n_content} content words < {min_answer_words}"
    return None


@stages.register
class EvolInstruct(LoopLLM, GlobalStage):
    """Evol-Instruct (WizardLM, Xu et al. 2023, arXiv:2304.12244): make
    instructions harder over `rounds`. Each round, every instruction in the pool
    is rewritten by one operation drawn from `operations` (seeded per instruction
    and round): in-depth (`add_constraints`, `deepen`, `concretize`,
    `increase_reasoning`, `complicate_input`: `depth_template` with that entry of
    `methods`) or in-breadth (`breadth`: `breadth_template`, a new prompt of the
    same domain, rarer). The evolved prompt is answered (`answer_max_tokens`),
    then the elimination rules (`eliminate`) drop failed evolutions with their
    reason; a failed instruction stays in the pool for the next round, as in the
    paper. Every surviving evolution is a record: `column` (the evolved prompt),
    `response_column` (its answer), `parent_id`, `evolved_from`; knobs `operation`
    and `round`. Input instructions are output too with `keep_inputs`."""

    type: Literal["evol_instruct"] = "evol_instruct"
    column: str = Field("instruction", description="the instruction column (in and out)")
    response_column: str = Field("text", description="column for the answer")
    rounds: int = Field(2, ge=1, description="evolution rounds (WizardLM: 4)")
    operations: list[str] = Field(
        default_factory=lambda: [*DEPTH_METHODS, BREADTH],
        min_length=1,
        description="operations drawn from, uniformly (repeat one to weight it)",
    )
    methods: dict[str, str] = Field(
        default_factory=lambda: dict(DEPTH_METHODS),
        description="in-depth operation -> the method text of the depth template",
    )
    depth_template: Annotated[str, FILE] = Field("evol_instruct/depth.j2", description="variables `instruction`, `method`")
    breadth_template: Annotated[str, FILE] = Field("evol_instruct/breadth.j2", description="variable `instruction`")
    strip_label: bool = Field(True, description="remove a leading `#Rewritten Prompt#:` label")
    markers: list[str] = Field(default_factory=lambda: list(MARKERS))
    min_new_words: int = Field(1, ge=0, description="content words an evolution must add")
    min_answer_words: int = Field(3, ge=0, description="content words an answer must have")
    refusal_max_words: int = Field(80, ge=0, description="'sorry' in a shorter answer is a refusal")
    keep_inputs: bool = Field(False, description="also output the input instructions (round 0)")
    max_tokens: int = Field(256, ge=1, description="tokens for the rewrite")
    answer_max_tokens: int = Field(512, ge=1, description="tokens for the answer")
    answer_temperature: float = Field(0.7, ge=0)

    @model_validator(mode="after")
    def _ops_have_methods(self):
        unknown = [op for op in self.operations if op != BREADTH and op not in self.methods]
        if unknown:
            raise ValueError(
                f"operation {unknown[0]!r} has no entry in `methods` "
                f"(known: {', '.join([*self.methods, BREADTH])})"
            )
        return self

    def requires(self) -> set[str]:
        return {self.column}

    def provides(self) -> set[str]:
        return {self.column, self.response_column, "parent_id", "evolved_from"}

    def template_files(self) -> list[str]:
        return [self.depth_template, self.breadth_template]

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        results = [Result() for _ in range(len(shards))]
        pool: list[tuple[int, Record]] = []  # (shard, current version)
        for i, rec in input_records(shards):
            if not str(rec.get(self.column) or "").strip():
                results[i].reject(rec, f"input without {self.column!r}")
                continue
            pool.append((i, rec))
            if self.keep_inputs:
                results[i].keep(with_knobs(rec, {"operation": "none", "round": 0}))
            else:
                results[i].reject(rec, "input instruction, evolved (keep_inputs: false)")
        engine = self.llm(ctx)
        templates = {"depth": load_template(ctx, self.depth_template),
                     "breadth": load_template(ctx, self.breadth_template)}
        roots = [rec["id"] for _, rec in pool]
        for rnd in range(1, self.rounds + 1):
            ops = [ctx.rng("op", root, rnd).choice(self.operations) for root in roots]
            prompts = []
            for (_, rec), op in zip(pool, ops):
                kind = "breadth" if op == BREADTH else "depth"
                vars_ = {"instruction": rec[self.column], "method": self.methods.get(op, "")}
                path = self.breadth_template if op == BREADTH else self.depth_template
                prompts.append(render_file(templates[kind], vars_, path))
            reqs = [self.request(ctx, ("rewrite", root, rnd), messages=chat(p))
                    for root, p in zip(roots, prompts)]
            rewrites = ctx.generate(engine, reqs)
            evolved: list[Record | None] = []
            reasons: list[str | None] = []
            for (_, rec), op, root, req, resp in zip(pool, ops, roots, reqs, rewrites):
                comp = first_completion(resp)
                src = templates["breadth" if op == BREADTH else "depth"]
                new = {
                    "id": f"{root}.{rnd}",
                    self.column: "",
                    self.response_column: None,
                    "parent_id": rec["id"],
                    "evolved_from": rec[self.column],
                }
                new = with_knobs({**rec, **new}, {"operation": op, "round": rnd})
                if comp is None:
                    evolved.append(new)
                    reasons.append(f"engine error: {resp.error or 'no completion'}")
                    continue
                text = clean_rewrite(comp.text) if self.strip_label else comp.text.strip()
                new[self.column] = text
                new["meta"][ctx.stage_name] = {"rewrite": self.provenance(engine, req, resp, comp, src)}
                evolved.append(new)
                reasons.append(self._eliminate(rec[self.column], text, None))
            # Answer only the evolutions that survived the prompt-side rules.
            todo = [k for k, r in enumerate(reasons) if r is None]
            areqs = [
                self.request(ctx, ("answer", roots[k], rnd),
                             messages=chat(evolved[k][self.column]),
                             max_tokens=self.answer_max_tokens, temperature=self.answer_temperature)
                for k in todo
            ]
            for k, areq, aresp in zip(todo, areqs, ctx.generate(engine, areqs)):
                new = evolved[k]
                comp = first_completion(aresp)
                if comp is None:
                    reasons[k] = f"engine error (answer): {aresp.error or 'no completion'}"
                    continue
                new[self.response_column] = comp.text.strip()
                new["meta"][ctx.stage_name]["answer"] = self.provenance(engine, areq, aresp, comp)
                reasons[k] = self._eliminate(pool[k][1][self.column], new[self.column], comp.text)
            for k, (new, reason) in enumerate(zip(evolved, reasons)):
                shard = pool[k][0]
                if reason is None:
                    results[shard].keep(new)
                    pool[k] = (shard, new)  # the next round evolves the new version
                else:
                    results[shard].reject(new, reason)
        yield from enumerate(results)

    def _eliminate(self, parent: str, evolved: str, answer: str | None) -> str | None:
        return eliminate(parent, evolved, answer, markers=self.markers,
                         min_new_words=self.min_new_words, min_answer_words=self.min_answer_words,
                         refusal_max_words=self.refusal_max_words)
