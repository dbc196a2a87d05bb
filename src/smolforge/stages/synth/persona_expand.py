"""`persona_expand`: Persona Hub's persona-to-persona expansion, with near-duplicate
personas removed.

Persona Hub (Ge et al. 2024, *Scaling Synthetic Data Creation with 1,000,000,000
Personas*, arXiv:2406.20094) collects personas two ways: text-to-persona (who
would read, write or like this text? — a `generate` stage in the `personas`
recipe) and persona-to-persona, which follows interpersonal relations from a
persona to new ones ("a patient of this nurse", "a colleague of this chef"), for
several hops. It then removes near-duplicate personas before using them to drive
generation (math problems, user prompts, knowledge-rich texts).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import Field

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
    with_knobs,
)
from smolforge.text.rouge import NoveltyFilter

RELATIONS = [
    "a close colleague",
    "a family member",
    "a client or customer",
    "a teacher or mentor",
    "a student or apprentice",
    "a friendly rival",
    "a neighbour",
    "a supplier or service provider",
]
_LABEL = re.compile(r"^(?:(?:new\s+)?persona|answer|a)\s*:\s*", re.I)
KNOB_CHARS = 80  # persona text in meta.knobs is cut here (the column has it whole)


def _knob(persona: str) -> str:
    return persona if len(persona) <= KNOB_CHARS else persona[: KNOB_CHARS - 3] + "..."


def clean_persona(text: str) -> str:
    """The first paragraph of the answer, without a `Persona:` label or quotes."""
    t = _LABEL.sub("", text.strip()).split("\n\n")[0].strip()
    return " ".join(t.strip('"').split())


@stages.register
class PersonaExpand(LoopLLM, GlobalStage):
    """Persona-to-persona for `hops` rounds: every persona of the previous hop gets
    `fanout` related personas, each for a relation drawn from `relations` (seeded
    per persona). Near-duplicates are removed as they come, inputs first: a
    persona whose ROUGE-L F1 with a kept one reaches `max_similarity` (0.8) is
    dropped with that reason and not expanded further (Persona Hub deduplicates
    with MinHash and embeddings; on one-sentence personas ROUGE-L does the same
    job with no model). Output: the kept input personas (hop 0) and the new ones,
    with `expanded_from`; knobs `persona`, `hop` and `persona_relation`."""

    type: Literal["persona_expand"] = "persona_expand"
    column: str = Field("persona", description="the persona column (in and out)")
    template_file: Annotated[str, FILE] = Field(
        "personas/expand.j2", description="prompt; variables `persona` and `relation`"
    )
    hops: int = Field(1, ge=0, description="expansion rounds (0: only remove near-duplicates)")
    fanout: int = Field(1, ge=1, le=16, description="new personas per persona and hop")
    relations: list[str] = Field(default_factory=lambda: list(RELATIONS), min_length=1)
    max_similarity: float = Field(
        0.8, gt=0, le=1, description="ROUGE-L F1 at which a persona is a near-duplicate"
    )
    min_words: int = Field(3, ge=0, description="shorter new personas are dropped")
    max_tokens: int = Field(80, ge=1)
    temperature: float = Field(0.8, ge=0)

    def requires(self) -> set[str]:
        return {self.column}

    def provides(self) -> set[str]:
        return {self.column, "expanded_from"}

    def template_files(self) -> list[str]:
        return [self.template_file]

    def process_all(self, shards: Shards, ctx: StageContext) -> Iterator[tuple[int, Result]]:
        name = ctx.stage_name
        results = [Result() for _ in range(len(shards))]
        seen = NoveltyFilter(self.max_similarity)
        kept_ids: list[str] = []

        def admit(shard: int, rec: Record) -> bool:
            text = str(rec.get(self.column) or "")
            if len(text.split()) < self.min_words:
                results[shard].reject(rec, f"persona too short: {len(text.split())} words < {self.min_words}")
                return False
            match = seen.add_if_novel(text)
            if match is not None:
                results[shard].reject(rec, f"near-duplicate persona of {kept_ids[match.index]}: "
                                           f"ROUGE-L {match.score:.2f} >= {self.max_similarity:g}")
                return False
            kept_ids.append(rec["id"])
            results[shard].keep(rec)
            return True

        frontier: list[tuple[int, Record]] = []
        for i, rec in input_records(shards):
            text = clean_persona(str(rec.get(self.column) or ""))
            rec = with_knobs({**rec, self.column: text}, {"persona": _knob(text), "hop": 0})
            if admit(i, rec):
                frontier.append((i, rec))
        engine = self.llm(ctx)
        source = load_template(ctx, self.template_file)
        for hop in range(1, self.hops + 1):
            jobs = []
            for shard, rec in frontier:
                rels = ctx.rng("relation", rec["id"]).sample(
                    self.relations, min(self.fanout, len(self.relations))
                )
                while len(rels) < self.fanout:  # more fanout than relations: repeat
                    rels.append(self.relations[len(rels) % len(self.relations)])
                for k, rel in enumerate(rels):
                    jobs.append((shard, rec, k, rel))
            prompts = [render_file(source, {"persona": rec[self.column], "relation": rel},
                                   self.template_file) for _, rec, _, rel in jobs]
            reqs = [self.request(ctx, ("expand", rec["id"], k), messages=chat(p))
                    for (_, rec, k, _), p in zip(jobs, prompts)]
            frontier = []
            for (shard, rec, k, rel), req, resp in zip(jobs, reqs, ctx.generate(engine, reqs)):
                comp = first_completion(resp)
                text = clean_persona(comp.text) if comp else ""
                new = {"id": f"{rec['id']}.{k}", self.column: text, "expanded_from": rec[self.column],
                       "meta": new_meta(ctx)}
                prov = self.provenance(engine, req, resp, comp, source) if comp else None
                new = with_knobs(new, {"persona": _knob(text), "hop": hop, "persona_relation": rel},
                                 name, prov)
                if comp is None:
                    results[shard].reject(new, f"engine error: {resp.error or 'no completion'}")
                elif admit(shard, new):
                    frontier.append((shard, new))
        yield from enumerate(results)
