"""Do the `rate` stage's methods prefer good answers on the bundled SmolLM2-135M, or is it
position noise? (issue #26 item 7)

A labelled set built here: 16 factual questions, each with four candidates: a correct,
complete answer (written by hand) and three deliberately flawed ones: `truncated` (the
correct answer cut at 40% of its words, finish_reason "length"), `wrong` (fluent, same
length, false), `off_topic` (the correct answer of another question of the same split).
The questions are split by question into dev (even index) and holdout (odd index), 8
each; nothing of a holdout question (its answers, or an off-topic answer taken from it)
is in dev. The real `rate` stage scores every candidate with each method, and `pairs`
(best_worst, as shipped: a cut candidate is never chosen over a complete one) makes one
pair per question. Prints ONE JSON object: per method and split, ROC AUC of the score
(good vs flawed, and per kind of flaw; the judge's score alone, no finish_reason), the
share of pairs whose chosen is the good answer, the judge's own self-check
(`judge_check`: position bias, degenerate signals, over all 16), seconds and the load.

`--select` asks every question of POOL (plain and reverse-keyed yes/no questions) about
every candidate (`rate` method `criteria`) and keeps those whose own point (P(yes), or
P(no) for a reverse-keyed one) separates good from flawed answers on dev with AUC >=
KEEP_AUC: the questions the `ultrafeedback` rubric ships were chosen that way, on dev
only; the holdout figures of the chosen set are printed beside the dev ones.

    python benchmarks/preference_quality.py --methods criteria --select   # the choice
    python benchmarks/preference_quality.py                               # every method
    python benchmarks/preference_quality.py --methods pairwise
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

os.environ.setdefault("OMP_NUM_THREADS", "1")

QA = [  # (question, correct answer, fluent wrong answer)
    ("At what temperature does water boil at sea level?",
     "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level, where the air pressure is one atmosphere.",
     "Water boils at 50 degrees Celsius (122 degrees Fahrenheit) at sea level, where the air pressure is ten atmospheres."),
    ("What is the capital of France?",
     "The capital of France is Paris, which is also the country's largest city and sits on the river Seine.",
     "The capital of France is Marseille, which is also the country's smallest city and sits on the river Thames."),
    ("How many legs does a spider have?",
     "A spider has eight legs, attached to the front part of its body called the cephalothorax.",
     "A spider has six legs, attached to the back part of its body called the abdomen, like every insect."),
    ("What gas do plants take in for photosynthesis?",
     "Plants take in carbon dioxide from the air and, using sunlight and water, turn it into sugar and oxygen.",
     "Plants take in helium from the air and, using moonlight and salt, turn it into iron and nitrogen."),
    ("What is 12 multiplied by 12?",
     "12 multiplied by 12 is 144, because twelve groups of twelve make one hundred and forty-four.",
     "12 multiplied by 12 is 124, because twelve groups of twelve make one hundred and twenty-four."),
    ("Which planet is closest to the Sun?",
     "Mercury is the planet closest to the Sun; it orbits it in about 88 Earth days.",
     "Neptune is the planet closest to the Sun; it orbits it in about 3 Earth days."),
    ("Who wrote the play Romeo and Juliet?",
     "Romeo and Juliet was written by William Shakespeare in the 1590s.",
     "Romeo and Juliet was written by Charles Dickens in the 1950s."),
    ("What is the largest ocean on Earth?",
     "The Pacific Ocean is the largest ocean on Earth, covering about a third of its surface.",
     "The Arctic Ocean is the largest ocean on Earth, covering about nine tenths of its surface."),
    ("How many days are in a leap year?",
     "A leap year has 366 days: February gets a 29th day.",
     "A leap year has 360 days: February loses its last five days."),
    ("What is the chemical symbol for gold?",
     "The chemical symbol for gold is Au, from the Latin word aurum.",
     "The chemical symbol for gold is Gd, from the Greek word golda."),
    ("What do bees make from nectar?",
     "Bees make honey from nectar: they store it in wax cells and fan it until most of the water evaporates.",
     "Bees make milk from nectar: they store it in stone cells and freeze it until most of the sugar evaporates."),
    ("What is the freezing point of water in Celsius?",
     "Water freezes at 0 degrees Celsius at normal air pressure.",
     "Water freezes at 40 degrees Celsius at normal air pressure."),
    ("How many continents are there?",
     "There are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America and South America.",
     "There are three continents: Africa, Europe and the Moon, which counts as one since 1990."),
    ("What organ pumps blood through the human body?",
     "The heart pumps blood through the body, sending it through the arteries and receiving it back through the veins.",
     "The liver pumps blood through the body, sending it through the bones and receiving it back through the hair."),
    ("What is the square root of 81?",
     "The square root of 81 is 9, because 9 times 9 equals 81.",
     "The square root of 81 is 7, because 7 times 7 equals 81."),
    ("Which animal is known as the king of the jungle?",
     "The lion is known as the king of the jungle, although lions mostly live in grasslands and savannas.",
     "The goldfish is known as the king of the jungle, although goldfish mostly live in deserts and glaciers."),
]
KINDS = ("good", "truncated", "wrong", "off_topic")
SPLITS = ("dev", "holdout")


def split_of(k: int) -> str:
    return "dev" if k % 2 == 0 else "holdout"


# method -> rate stage fields; "recipe" is the ultrafeedback recipe's rate stage as shipped
METHODS: dict[str, dict] = {
    "recipe": {},  # read from the recipe file
    "criteria": {"method": "criteria", "rubric": "ultrafeedback"},  # all of the rubric's questions
    "aspects": {"method": "aspects", "rubric": "ultrafeedback", "shuffle": True, "structured": True,
                "max_tokens": 64},
    "pairwise": {"method": "pairwise"},
    # not run by default: the judge stage's `parse` on each candidate (SmolLM2-135M rarely writes "Rating: <n>")
    "single": {"method": "single", "max_tokens": 64},
}
DEFAULT_METHODS = "recipe,criteria,aspects,pairwise"

# Candidate yes/no questions for --select; each aimed at a flaw a small model might see.
POOL: dict[str, dict] = {
    # the four plain UltraFeedback aspects as questions (the rubric's criteria before the choice)
    "instruction_following": {"question": "Does the response address the instruction's task and respect every "
                              "restriction it states?"},
    "honesty": {"question": "Does the response avoid confident statements it cannot support, expressing "
                "uncertainty where it should?"},
    "truthfulness": {"question": "Is the response free of facts that contradict the world, the instruction or itself?"},
    "helpfulness": {"question": "Is the response correct, clear, relevant and not repetitive?"},
    "answers_question": {"question": "Does the response answer the question in the instruction?"},
    "complete": {"question": "Does the response end with a complete sentence?"},
    "correct": {"question": "Is the response factually correct?"},
    # reverse-keyed: "no" earns the point
    "cut_off": {"question": "Does the response stop in the middle of a sentence?", "reverse": True},
    "unfinished": {"question": "Is the response unfinished, as if it was cut off?", "reverse": True},
    "off_topic": {"question": "Is the response about a different topic than the instruction?", "reverse": True},
    "other_question": {"question": "Does the response answer a different question than the one asked?",
                       "reverse": True},
    "false_claim": {"question": "Does the response contain a false statement?", "reverse": True},
    "wrong": {"question": "Is the response wrong?", "reverse": True},
    "nonsense": {"question": "Does the response say something impossible or absurd?", "reverse": True},
}
KEEP_AUC = 0.6  # a question is kept when its own point reaches this dev AUC


def items() -> list[dict]:
    out = []
    for k, (q, good, wrong) in enumerate(QA):
        words = good.split()
        cands = {
            "good": {"text": good, "finish_reason": "stop"},
            "truncated": {"text": " ".join(words[: max(3, int(len(words) * 0.4))]), "finish_reason": "length"},
            "wrong": {"text": wrong, "finish_reason": "stop"},
            # another question of the same split (k + 4 keeps the parity), so the splits share no text
            "off_topic": {"text": QA[(k + 4) % len(QA)][1], "finish_reason": "stop"},
        }
        # a fixed, varied display order (each split sees all four rotations), so that
        # position and quality are not confounded
        r = (k // 2) % 4
        order = KINDS[r:] + KINDS[:r]
        out.append({"prompt": q, "split": split_of(k), "candidates": [{**cands[kind], "teacher": kind} for kind in order]})
    return out


def auc(pos: list[float], neg: list[float]) -> float | None:
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return round(wins / (len(pos) * len(neg)), 3)


def recipe_rate_fields() -> dict:
    """The `rate` stage of the shipped `ultrafeedback` recipe."""
    from importlib import resources

    import yaml

    recipe = yaml.safe_load((resources.files("smolforge") / "recipes" / "ultrafeedback.yaml").read_text())
    (rate,) = [{k: v for k, v in st.items() if k != "type"} for st in recipe["stages"] if st["type"] == "rate"]
    return rate


def run_rate(name: str, fields: dict, tmp: str) -> tuple[list[dict], list[dict], dict, float]:
    """(rated records, pairs, the rate stage's manifest entry, seconds) of one method."""
    import smolforge as sf
    from smolforge.recipe import Recipe

    recipe = Recipe.from_dict({"name": f"pq-{name}", "seed": 42, "stages": [
        {"type": "items", "items": items()},
        {"type": "rate", **fields},
        {"type": "pairs", "strategy": "best_worst", "min_margin": 0.0}]}, base_dir=Path(tmp))
    t0 = time.perf_counter()
    try:
        run = sf.run(recipe, out=f"{tmp}/run-{name}")
    except sf.RunIncomplete as e:  # e.g. every pair tied: still measured
        run = e.run
    seconds = time.perf_counter() - t0
    rate = next(s for s in run.manifest["stages"] if s["name"] == "rate")
    rated = []
    for sdir in sorted((run.path / "stages").glob("*-rate")):
        for f in sorted(sdir.glob("shard-*.parquet")):
            if not f.name.endswith(".rejects.parquet"):
                rated += pq.read_table(f).to_pylist()
    pairs = run.data().to_pylist() if run.manifest.get("data", {}).get("rows") else []
    return rated, pairs, rate, seconds


def figures(scored: list[tuple[str, str, float | None]], pairs: list[dict], split: str) -> dict:
    """AUC (good vs flawed, per flaw), mean score per kind and the chosen-is-good share of one split;
    `scored`: (split, kind, score) per candidate."""
    scores: dict[str, list[float]] = {k: [] for k in KINDS}
    unscored = 0
    for sp, kind, v in scored:
        if sp == split or split == "all":
            if v is None:
                unscored += 1
            else:
                scores[kind].append(v)
    bad = [s for k in KINDS[1:] for s in scores[k]]
    answers = {q: good for q, good, _ in QA}
    chosen = [p["chosen"] == answers[p["prompt"]] for p in pairs if split in (p["split"], "all")]
    n_q = sum(split in (split_of(k), "all") for k in range(len(QA)))
    return {
        "questions": n_q,
        "auc_good_vs_flawed": auc(scores["good"], bad),
        "auc_per_flaw": {k: auc(scores["good"], scores[k]) for k in KINDS[1:]},
        "mean_score": {k: round(sum(v) / len(v), 3) if v else None for k, v in scores.items()},
        "unscored": unscored,
        "pairs": len(chosen),
        "chosen_is_good": f"{sum(chosen)} of {n_q}",
    }


def run_method(name: str, fields: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rated, pairs, rate, seconds = run_rate(name, fields, tmp)
    scored = [(rec["split"], c["teacher"], c.get("score")) for rec in rated for c in rec["candidates"]]
    out: dict = {"fields": fields}
    out.update({sp: figures(scored, pairs, sp) for sp in (*SPLITS, "all")})
    out["judge_check"] = (rate.get("summary") or {}).get("judge_check")
    out["seconds"] = round(seconds, 1)
    return out


def select() -> dict:
    """Ask every POOL question about every candidate; keep, on dev only, the questions
    whose own point separates good from flawed answers (AUC >= KEEP_AUC); the balanced
    score of the kept set (the judge stage's Rubric.criteria_score) on dev and holdout."""
    import yaml

    from smolforge.stages.judges.judge import Rubric, load_rubric

    base = load_rubric("ultrafeedback")
    rubric = {"min_score": 0, "max_score": 1, "aspects": {"unused": "{{ instruction }}"},
              "criteria_template": base.criteria_template, "criteria": POOL}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "pool.yaml").write_text(yaml.safe_dump(rubric))
        rated, _, _, seconds = run_rate("pool", {"method": "criteria", "rubric": "pool.yaml"}, tmp)
    rows = [(rec["split"], c["teacher"], c["ratings"]) for rec in rated for c in rec["candidates"]]
    def point(q: str):  # the point a question earns: P(yes), or P(no) when reverse-keyed
        return (lambda r: 1 - r[q]) if POOL[q].get("reverse") else (lambda r: r[q])

    def auc_of(split: str, f) -> dict:
        vals: dict[str, list[float]] = {k: [] for k in KINDS}
        for sp, kind, r in rows:
            if sp == split and all(v is not None for v in r.values()):
                vals[kind].append(f(r))
        bad = [v for k in KINDS[1:] for v in vals[k]]
        return {"all": auc(vals["good"], bad), **{k: auc(vals["good"], vals[k]) for k in KINDS[1:]}}

    per_question = {q: {"reverse": bool(POOL[q].get("reverse")), "dev": auc_of("dev", point(q)),
                        "holdout": auc_of("holdout", point(q))} for q in POOL}
    kept = [q for q in POOL if (per_question[q]["dev"]["all"] or 0) >= KEEP_AUC]
    out: dict = {"keep_auc_on_dev": KEEP_AUC, "kept": kept,
                 "recipe_asks_the_kept": recipe_rate_fields().get("criteria") == kept,
                 "per_question": per_question, "seconds": round(seconds, 1)}
    plain4 = ["instruction_following", "honesty", "truthfulness", "helpfulness"]
    for label, chosen in (("kept", kept), ("plain_four", plain4)):
        if chosen:
            r = Rubric.model_validate({**rubric, "criteria": {q: POOL[q] for q in chosen}})
            out[f"score_{label}"] = {sp: auc_of(sp, lambda row, r=r, c=chosen: r.criteria_score({q: row[q] for q in c}))
                                     for sp in SPLITS}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"of {', '.join(METHODS)}")
    ap.add_argument("--select", action="store_true", help="choose the criteria on dev from POOL first")
    args = ap.parse_args()
    import platform
    import subprocess

    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")),
        platform.processor())
    result: dict = {"questions": len(QA), "dev": [q for k, (q, _, _) in enumerate(QA) if split_of(k) == "dev"],
                    "candidates_per_question": len(KINDS), "cpu": cpu,
                    "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    if args.select:
        result["select"] = select()
    for name in [m for m in args.methods.split(",") if m]:
        result[name] = run_method(name, recipe_rate_fields() if name == "recipe" else METHODS[name])
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
