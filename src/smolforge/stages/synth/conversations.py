"""`conversations`: multi-turn dialogues between a simulated user and the assistant.

UltraChat (Ding et al. 2023, *Enhancing Chat Language Models by Scaling High-quality
Instructional Conversations*, arXiv:2305.14233) builds dialogues with two models:
one plays the user, given what it wants, and writes each next user turn from the
conversation so far; the other answers as the assistant. SmolTalk, the SmolLM2
instruct mix (Allal et al. 2025, *SmolLM2: When Smol Goes Big*, arXiv:2502.02737),
is mostly such multi-turn conversations, and its small-model subset smol-smoltalk
keeps them short for models under 1B; docs/recipes.md says how these knobs map.

Each input record gives a persona and a goal (columns, or drawn from lists). Turns
alternate user / assistant; every step sends one request per open dialogue through
`ctx.generate`, so one batch advances all the shard's dialogues together. A turn is
checked as it comes (empty, cut at `max_tokens`, longer than `*_max_chars`, the user
speaking as the assistant, a repeat of that side's earlier turn, an assistant
refusal); a bad turn is asked again with another seed up to `retries` times, and if
it stays bad the dialogue is cut after the last good exchange. A dialogue ends at
`max_turns` exchanges or when the user writes `end_marker`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from smolforge.context import StageContext
from smolforge.engines.base import Engine, chat
from smolforge.paths import FILE
from smolforge.registry import stages
from smolforge.stages.base import MapStage, Record, Result
from smolforge.stages.llm import (
    EngineField,
    LoopLLM,
    first_completion,
    load_template,
    render_file,
    with_knobs,
)
from smolforge.stages.quality.text_quality import is_refusal
from smolforge.text.rouge import rouge_l

# A simulated user that opens like this has taken the assistant's part.
ASSISTANT_OPENINGS = ("assistant:", "ai:", "how can i help", "how can i assist", "how may i help",
                      "how may i assist", "as an ai", "i'm an ai", "i am an ai")
_USER_LABEL = re.compile(r"^\s*(?:user|me|you)\s*:\s*", re.I)
_MARKUP = re.compile(r"<\|[^|<>\s]{1,40}\|>")
KNOB_CHARS = 80


def _knob(text: str) -> str:
    return text if len(text) <= KNOB_CHARS else text[: KNOB_CHARS - 3] + "..."


@stages.register
class Conversations(LoopLLM, MapStage):
    """One dialogue per input record. The simulated user (`user_engine`, default the
    stage's engine; `user_temperature`, `user_max_tokens`) is prompted with
    `user_template_file` (variables `persona`, `goal`, `history`, `turn`,
    `end_marker`) and writes the next user turn; the assistant (`engine`,
    `temperature`, `max_tokens`, optional `system`) answers the conversation as chat
    messages. Persona and goal come from `persona_column` / `goal_column`, or, where
    the record has none, are drawn (seeded per record) from `personas` / `goals`.

    Turn checks, in order, each a reason: empty; cut at max_tokens
    (`drop_truncated`); longer than `user_max_chars` / `assistant_max_chars`; chat
    markup; the user speaking as the assistant; a repeat (ROUGE-L >= `max_similarity`)
    of an earlier turn of the same side, or an echo of the other side's last turn;
    an assistant refusal (text_quality's
    phrases). A bad turn is regenerated up to `retries` times with another seed,
    else the dialogue is cut after its last good exchange; a dialogue with fewer
    than `min_turns` exchanges is dropped with the reasons. Output: `output`
    (TRL conversational messages, a system turn first when `system` is set); knobs
    `persona`, `goal`, `turns`, `ended` (max_turns, end_marker or cut); the turn
    reasons and regenerations in `meta.<stage>`."""

    type: Literal["conversations"] = "conversations"
    output: str = Field("messages", description="column for the dialogue (list of {role, content})")
    persona_column: str = Field("persona", description="column with the user's persona (may be absent)")
    goal_column: str = Field("goal", description="column with the user's goal (may be absent)")
    personas: list[str] = Field(default_factory=list, description="personas drawn from when the record has none")
    goals: list[str] = Field(default_factory=list, description="goals drawn from when the record has none")
    system: str | None = Field(None, description="the assistant's system prompt (kept as the first message)")
    user_template_file: Annotated[str, FILE] = Field(
        "conversations/user.j2", description="the simulated user's prompt, relative to the recipe"
    )
    user_engine: EngineField = Field(None, description="engine for the user side (default: the stage's engine)")
    user_temperature: float = Field(0.9, ge=0, description="user-side sampling temperature")
    user_max_tokens: int = Field(64, ge=1, description="tokens per user turn")
    max_tokens: int = Field(192, ge=1, description="tokens per assistant turn")
    max_turns: int = Field(3, ge=1, le=64, description="user/assistant exchanges at most")
    min_turns: int = Field(1, ge=1, description="fewer exchanges: the dialogue is dropped")
    end_marker: str | None = Field("[DONE]", description="the user writes this to end the dialogue (null: off)")
    retries: int = Field(2, ge=0, le=16, description="regenerations of a bad turn before the cut")
    drop_truncated: bool = Field(True, description="a turn cut at max_tokens is bad")
    user_max_chars: int | None = Field(1000, ge=1, description="longer user turns are bad")
    assistant_max_chars: int | None = Field(4000, ge=1, description="longer assistant turns are bad")
    max_similarity: float = Field(0.8, gt=0, le=1, description="ROUGE-L F1 at which a turn repeats one")
    refusal: bool = Field(True, description="an assistant turn opening with a refusal is bad")

    @model_validator(mode="after")
    def _turn_bounds(self):
        if self.min_turns > self.max_turns:
            raise ValueError(f"min_turns ({self.min_turns}) > max_turns ({self.max_turns}): every dialogue "
                             "would be dropped")
        return self

    def provides(self) -> set[str]:
        return {self.output}

    def template_files(self) -> list[str]:
        return [self.user_template_file]

    def sides(self, ctx: StageContext) -> tuple[Engine, Engine]:
        """The assistant's engine and the simulated user's (the same one by default)."""
        return ctx.engine(self.engine), ctx.engine(self.user_engine if self.user_engine is not None else self.engine)

    def engines(self, ctx: StageContext) -> list[Engine]:
        assistant, user = self.sides(ctx)
        return [assistant] if user is assistant else [assistant, user]

    def fingerprint_extra(self, ctx: StageContext) -> Any:
        return {**super().fingerprint_extra(ctx), "user_engine": self.sides(ctx)[1].identity()}

    # -- the checks

    def check(self, role: str, text: str, finish_reason: str, earlier: list[str],
              other: str | None = None) -> str | None:
        """Why this turn is bad, or None; `earlier`: this side's turns so far, `other`:
        the other side's last turn (a small model often echoes it)."""
        if not text:
            return f"{role} turn empty"
        cap = self.user_max_tokens if role == "user" else self.max_tokens
        if self.drop_truncated and finish_reason == "length":
            return f"{role} turn cut at max_tokens ({cap})"
        limit = self.user_max_chars if role == "user" else self.assistant_max_chars
        if limit is not None and len(text) > limit:
            return f"{role} turn too long: {len(text)} chars > {limit}"
        m = _MARKUP.search(text)
        if m:
            return f"{role} turn contains chat markup {m.group(0)!r}"
        if role == "user" and text.lower().startswith(ASSISTANT_OPENINGS):
            return "user turn speaks as the assistant"
        for k, prev in enumerate(earlier):
            score = rouge_l(text, prev)
            if score >= self.max_similarity:
                return f"{role} turn repeats its turn {k + 1} (ROUGE-L {score:.2f} >= {self.max_similarity:g})"
        if other:
            score = rouge_l(text, other)
            if score >= self.max_similarity:
                return f"{role} turn echoes the other side's last turn (ROUGE-L {score:.2f} >= {self.max_similarity:g})"
        if role == "assistant" and self.refusal:
            phrase = is_refusal(text)
            if phrase:
                return f"assistant turn is a refusal {phrase!r}"
        return None

    def clean_user(self, text: str) -> tuple[str, bool]:
        """The user turn without a `User:` label or quotes, and whether it ends the dialogue."""
        t = _USER_LABEL.sub("", text.strip()).strip()
        if len(t) > 1 and t[0] == t[-1] == '"':
            t = t[1:-1].strip()
        done = bool(self.end_marker) and self.end_marker in t  # type: ignore[operator]
        return t, done

    # -- the loop

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        res = Result()
        assistant, user = self.sides(ctx)
        source = load_template(ctx, self.user_template_file)
        dialogues: list[dict[str, Any]] = []
        for rec in batch:
            persona = self._pick(rec, self.persona_column, self.personas, "persona", ctx)
            goal = self._pick(rec, self.goal_column, self.goals, "goal", ctx)
            if not goal:
                res.reject(rec, f"no goal: column {self.goal_column!r} empty and no `goals` list")
                continue
            dialogues.append({"rec": rec, "persona": persona or "a curious person", "goal": goal,
                              "turns": [], "ended": None, "reasons": [], "regenerated": 0, "prov": []})
        for turn in range(1, self.max_turns + 1):
            open_ = [d for d in dialogues if d["ended"] is None]
            if not open_:
                break
            self._step(ctx, user, "user", turn, open_, source)
            open_ = [d for d in open_ if d["ended"] is None]
            self._step(ctx, assistant, "assistant", turn, open_, source)
        for d in dialogues:
            self._finish(d, ctx, res)
        return res

    def _pick(self, rec: Record, column: str, pool: list[str], what: str, ctx: StageContext) -> str:
        value = rec.get(column)
        if value is not None and str(value).strip():
            return str(value).strip()
        return ctx.rng(what, rec["id"]).choice(pool) if pool else ""

    def _messages(self, d: dict[str, Any], pending_user: str | None = None) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for u, a in d["turns"]:
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        if pending_user is not None:
            msgs.append({"role": "user", "content": pending_user})
        return msgs

    def _step(self, ctx: StageContext, engine: Engine, role: str, turn: int,
              todo: list[dict[str, Any]], source: str) -> None:
        """One side's turn for every open dialogue: a request each, checks, and the
        bad ones asked again (another seed) until good or out of retries."""
        for attempt in range(self.retries + 1):
            if not todo:
                return
            reqs = []
            for d in todo:
                key = (role, d["rec"]["id"], turn, attempt)
                if role == "user":
                    prompt = render_file(source, {"persona": d["persona"], "goal": d["goal"], "turn": turn,
                                                  "history": self._messages(d)[1 if self.system else 0:],
                                                  "end_marker": self.end_marker or ""}, self.user_template_file)
                    reqs.append(self.request(ctx, key, messages=chat(prompt), max_tokens=self.user_max_tokens,
                                             temperature=self.user_temperature))
                else:
                    reqs.append(self.request(ctx, key, messages=self._messages(d, d["pending"])))
            again = []
            for d, req, resp in zip(todo, reqs, ctx.generate(engine, reqs)):
                comp = first_completion(resp)
                if comp is None:
                    reason = f"{role} turn {turn}: engine error: {resp.error or 'no completion'}"
                else:
                    text, done = comp.text.strip(), False
                    if role == "user":
                        text, done = self.clean_user(text)
                    if done:  # the user is satisfied: the dialogue ends after the last exchange
                        d["ended"] = "end_marker"
                        continue
                    earlier = [t[0 if role == "user" else 1] for t in d["turns"]]
                    other = d.get("pending") if role == "assistant" else (d["turns"][-1][1] if d["turns"] else None)
                    why = self.check(role, text, comp.finish_reason, earlier, other)
                    if why is None:
                        prov = self.provenance(engine, req, resp, comp, source if role == "user" else "")
                        d["prov"].append({"role": role, "turn": turn, "attempt": attempt, **prov})
                        if role == "user":
                            d["pending"] = text
                        else:
                            d["turns"].append((d.pop("pending"), text))
                        continue
                    reason = f"{role} turn {turn}: {why}"
                d["reasons"].append(reason if attempt == 0 else f"{reason} (retry {attempt})")
                again.append(d)
            if attempt < self.retries:
                for d in again:
                    d["regenerated"] += 1
            todo = again
        for d in todo:  # still bad: cut after the last good exchange
            d["ended"] = "cut"
            d.pop("pending", None)

    def _finish(self, d: dict[str, Any], ctx: StageContext, res: Result) -> None:
        ended = d["ended"] or "max_turns"
        n = len(d["turns"])
        rec = {**d["rec"], self.output: self._messages(d)}
        prov = {"turns": d["prov"], "reasons": d["reasons"], "regenerated": d["regenerated"]}
        rec = with_knobs(rec, {"persona": _knob(d["persona"]), "goal": _knob(d["goal"]), "turns": n,
                               "ended": ended}, ctx.stage_name, prov)
        if n < self.min_turns:
            why = "; ".join(d["reasons"]) if d["reasons"] else ended
            res.reject(rec, f"{n} exchanges < min_turns {self.min_turns} ({why})")
        else:
            res.keep(rec)
