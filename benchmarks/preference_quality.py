"""Do the `rate` stage's methods prefer good answers on the bundled SmolLM2-135M, or is it
position noise? (issue #26 item 7)

A labelled set built here: 16 factual questions, each with four candidates: a correct,
complete answer (written by hand) and three deliberately flawed ones: `truncated` (the
correct answer cut at 40% of its words, finish_reason "length"), `wrong` (fluent, same
length, false), `off_topic` (another question's correct answer). The real `rate` stage
scores every candidate with each method, and `pairs` (best_worst) makes one pair per
question. Prints ONE JSON object: per method, ROC AUC of the score (good vs flawed, and per
kind of flaw), the share of pairs whose chosen is the good answer, the judge's own
self-check (`judge_check`: position bias, degenerate signals), seconds and the load.

    python benchmarks/preference_quality.py                     # aspects (shipped) and pairwise
    python benchmarks/preference_quality.py --methods pairwise
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

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

# method -> rate stage fields; "shipped" is the ultrafeedback recipe's rate stage
METHODS: dict[str, dict] = {
    "shipped": {"method": "aspects", "rubric": "ultrafeedback", "shuffle": True, "structured": True,
                "max_tokens": 64},
    "pairwise": {"method": "pairwise"},
}


def items() -> list[dict]:
    out = []
    for k, (q, good, wrong) in enumerate(QA):
        words = good.split()
        cands = {
            "good": {"text": good, "finish_reason": "stop"},
            "truncated": {"text": " ".join(words[: max(3, int(len(words) * 0.4))]), "finish_reason": "length"},
            "wrong": {"text": wrong, "finish_reason": "stop"},
            "off_topic": {"text": QA[(k + 5) % len(QA)][1], "finish_reason": "stop"},
        }
        # a fixed, varied display order, so that position and quality are not confounded
        order = KINDS[k % 4:] + KINDS[: k % 4]
        out.append({"prompt": q, "candidates": [{**cands[kind], "teacher": kind} for kind in order]})
    return out


def auc(pos: list[float], neg: list[float]) -> float | None:
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return round(wins / (len(pos) * len(neg)), 3)


def run_method(name: str, fields: dict) -> dict:
    import smolforge as sf
    from smolforge.recipe import Recipe

    recipe = Recipe.from_dict({"name": f"pq-{name}", "seed": 42, "stages": [
        {"type": "items", "items": items()},
        {"type": "rate", **fields},
        {"type": "pairs", "strategy": "best_worst", "min_margin": 0.0}]})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        try:
            run = sf.run(recipe, out=f"{tmp}/run")
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
    scores: dict[str, list[float]] = {k: [] for k in KINDS}
    for rec in rated:
        for c in rec["candidates"]:
            if c.get("score") is not None:
                scores[c["teacher"]].append(c["score"])
    bad = [s for k in KINDS[1:] for s in scores[k]]
    answers = {q: good for q, good, _ in QA}
    chosen_good = [p["chosen"] == answers[p["prompt"]] for p in pairs]
    return {
        "auc_good_vs_flawed": auc(scores["good"], bad),
        "auc_per_flaw": {k: auc(scores["good"], scores[k]) for k in KINDS[1:]},
        "mean_score": {k: round(sum(v) / len(v), 3) if v else None for k, v in scores.items()},
        "pairs": len(pairs),
        "chosen_is_good": round(sum(chosen_good) / len(chosen_good), 3) if chosen_good else None,
        "judge_check": (rate.get("summary") or {}).get("judge_check"),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    result: dict = {"questions": len(QA), "candidates_per_question": len(KINDS),
                    "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    for name in args.methods.split(","):
        result[name] = run_method(name, METHODS[name])
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
