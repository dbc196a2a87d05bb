"""Judges that check themselves: position bias and a degenerate-judge signal in every
judge / rate / pairwise_judge stage's summary, `show`, the end of `smolforge run`
(stderr) and the preference export. The judges are canned answers served over real
HTTP (tests/faultproxy.py), so a judge that copies the display order, one that always
picks the first response, one that gives one score to everything, and one that reads
the texts are each known exactly."""

from __future__ import annotations

import json
import re

from conftest import smolforge, write_recipe
from faultproxy import canned_server, user_text

from smolforge.stages.judges.judge import judge_check

PROMPTS = [f"Question {i}: what is {i} plus {i}?" for i in range(4)]


def candidates(i: int) -> list[dict]:
    """Two good answers and two bad ones per prompt."""
    return [{"text": f"good answer {i}.{k}" if k % 2 == 0 else f"bad answer {i}.{k}", "teacher": f"t{k % 2}",
             "engine": "openai", "model": "m", "finish_reason": "stop"} for k in range(4)]


def openai(url: str, model: str = "judge") -> dict:
    return {"type": "openai", "base_url": url, "model": model, "retry_base_delay": 0.0, "max_retries": 0}


def rate_recipe(tmp_path, url: str, aspects: list[str] | None = None):
    return write_recipe(tmp_path / "r.yaml", {
        "name": "uf", "seed": 1, "shard_size": 8,
        "stages": [{"type": "items", "items": [{"prompt": p, "candidates": candidates(i)}
                                               for i, p in enumerate(PROMPTS)]},
                   {"type": "rate", "engine": openai(url), "aspects": aspects or ["helpfulness", "honesty"]},
                   {"type": "pairs"}]})


def texts_shown(body: dict) -> list[str]:
    prompt = user_text(body)
    return re.findall(r"<text (\d+)>\n(.*?)\n</text", prompt, re.S)


def by_position(body: dict) -> str:
    """Every text rated with its display position: the judge of issue 26."""
    return json.dumps({f"text_{k}": int(k) for k, _ in texts_shown(body)})


def by_content(body: dict) -> str:
    return json.dumps({f"text_{k}": 5 if t.startswith("good") else 2 for k, t in texts_shown(body)})


def test_judge_check_signals():
    pos = [1, 2, 3, 4] * 4
    assert judge_check([float(p) for p in pos], positions=pos)["degenerate"] == [
        "ratings equal their display position (100% of 16)"]
    follows = judge_check([float(p) + 0.5 for p in pos], positions=pos)
    assert follows["position_bias"]["spearman_rating_position"] == 1.0
    assert follows["degenerate"] == ["ratings follow the display position (Spearman 1.00)"]
    # ratings that follow quality, shown in shuffled orders: nothing flagged
    quality = [5.0, 2.0, 5.0, 2.0] * 4
    shuffled = [1, 2, 3, 4, 2, 1, 4, 3, 3, 4, 1, 2, 4, 3, 2, 1]
    ok = judge_check(quality, positions=shuffled)
    assert ok["degenerate"] == [] and ok["position_bias"]["mean_rating_by_position"] == {
        "1": 3.5, "2": 3.5, "3": 3.5, "4": 3.5}
    assert judge_check([3.0] * 10)["degenerate"] == ["one constant score: all 10 ratings are 3"]
    assert judge_check([3.0] * 7)["degenerate"] == []  # too few to say
    # pairwise: always "A" means the first-shown response always wins; the orders never agree
    first = judge_check([], orders=[(1.0, 0.0)] * 8)
    assert first["position_bias"] == {"pairs": 8, "order_agreement": 0.0, "first_shown_wins": 1.0}
    assert first["degenerate"] == ["the first-shown response wins 100% of 16 comparisons "
                                   "(the two orders agree on 0% of pairs)"]
    assert judge_check([], orders=[(0.9, 0.8), (0.2, 0.1)] * 4)["degenerate"] == []
    # a combined score that none of its criteria explains
    score = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    crit = {"a": [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], "b": [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]}
    assert judge_check(score, criteria=crit)["degenerate"] == [
        "the score is uncorrelated with every criterion (a, b)"]


def test_rate_that_copies_the_display_order_is_flagged_at_the_end_in_show_and_export(tmp_path):
    with canned_server(by_position) as server:
        r = smolforge("run", str(rate_recipe(tmp_path, server.url)), "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "degenerate judge rate: ratings equal their display position (100% of 32)" in r.stderr
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    check = next(s for s in stages if s["name"] == "rate")["summary"]["judge_check"]
    assert check["position_bias"]["mean_rating_by_position"] == {"1": 1.0, "2": 2.0, "3": 3.0, "4": 4.0}
    assert check["position_bias"]["spearman_rating_position"] == 1.0
    shown = smolforge("show", str(tmp_path / "run"), env={"COLUMNS": "250"})
    assert "degenerate judge rate: ratings equal their display position" in shown.stdout
    assert ('rate judge check (32 ratings): mean_rating_by_position={"1": 1.0, "2": 2.0, "3": 3.0, "4": 4.0}, '
            "spearman_rating_position=1, ratings_equal_to_position=1") in shown.stdout
    ex = smolforge("export", str(tmp_path / "run"), "--format", "dpo", "--to", str(tmp_path / "dpo.jsonl"))
    assert ex.returncode == 0, ex.stderr
    assert "degenerate judge rate: ratings equal their display position" in ex.stderr
    assert "chosen/rejected labels follow it" in ex.stderr
    report = smolforge("report", str(tmp_path / "run"), "--out", str(tmp_path / "report.html"),
                       "--tokenizer", "approx")
    assert report.returncode == 0, report.stderr
    assert "sf-judge-warning" in (tmp_path / "report.html").read_text()


def test_a_judge_that_reads_the_texts_is_not_flagged(tmp_path):
    with canned_server(by_content) as server:
        r = smolforge("run", str(rate_recipe(tmp_path, server.url)), "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "degenerate" not in r.stderr
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    check = next(s for s in stages if s["name"] == "rate")["summary"]["judge_check"]
    assert check["degenerate"] == [] and abs(check["position_bias"]["spearman_rating_position"]) < 0.5
    assert check["spearman_score_criterion"] == {"helpfulness": 1.0, "honesty": 1.0}
    ex = smolforge("export", str(tmp_path / "run"), "--format", "dpo", "--to", str(tmp_path / "dpo.jsonl"))
    assert ex.returncode == 0 and "degenerate" not in ex.stderr


def test_pairwise_judge_that_always_says_a_and_a_constant_judge(tmp_path):
    docs = [{"x": f"first text {i}", "y": f"second text {i}", "text": f"document number {i}"} for i in range(8)]
    with canned_server(lambda body: "A") as server:
        path = write_recipe(tmp_path / "p.yaml", {"name": "pw", "stages": [
            {"type": "items", "items": docs},
            {"type": "pairwise_judge", "a": "x", "b": "y", "engine": openai(server.url)}]})
        r = smolforge("run", str(path), "--out", str(tmp_path / "pw"))
    assert r.returncode == 0, r.stderr
    assert ("degenerate judge pairwise_judge: the first-shown response wins 100% of 16 comparisons "
            "(the two orders agree on 0% of pairs)") in r.stderr
    with canned_server(lambda body: "Score: 3") as server:
        path = write_recipe(tmp_path / "j.yaml", {"name": "j", "stages": [
            {"type": "items", "items": docs},
            {"type": "judge", "template": "Rate 0-5: {{ text }}", "engine": openai(server.url)}]})
        r = smolforge("run", str(path), "--out", str(tmp_path / "j"))
    assert r.returncode == 0, r.stderr
    assert "degenerate judge judge: one constant score: all 8 ratings are 3" in r.stderr


def test_rate_criteria_has_no_display_position_and_a_constant_judge_is_still_flagged(tmp_path):
    """`rate` with `method: criteria` judges each candidate alone: its self-check says
    there is no display position (no position figures to misread) and still flags a
    judge that answers "yes" to everything (one constant score), while a judge that
    reads the texts is not flagged."""
    from smolforge.stages.judges.judge import load_rubric

    reverse = {c.question for c in load_rubric("ultrafeedback").criteria.values() if c.reverse}

    def criteria_recipe(url: str):
        return write_recipe(tmp_path / "c.yaml", {
            "name": "uf", "seed": 1, "shard_size": 8,
            "stages": [{"type": "items", "items": [{"prompt": p, "candidates": candidates(i)}
                                                   for i, p in enumerate(PROMPTS)]},
                       {"type": "rate", "method": "criteria", "engine": openai(url)},
                       {"type": "pairs"}]})

    def reads(body: dict) -> str:  # yes to a plain question about a good answer, no about a bad one
        prompt = user_text(body)
        return "Yes" if ("Response: good" in prompt) != any(q in prompt for q in reverse) else "No"

    with canned_server(lambda body: "Yes") as server:
        r = smolforge("run", str(criteria_recipe(server.url)), "--out", str(tmp_path / "yes"), "--allow-empty")
    assert r.returncode == 0, r.stderr
    assert re.search(r"degenerate judge rate: one constant score: all 16 ratings are [\d.]+", r.stderr), r.stderr
    rate = next(s for s in json.loads((tmp_path / "yes" / "manifest.json").read_text())["stages"]
                if s["name"] == "rate")
    check = rate["summary"]["judge_check"]
    assert check["position_bias"] == {"shown": "one text per request: no display position"}
    assert "mean_rating_by_position" not in rate["summary"]
    shown = smolforge("show", str(tmp_path / "yes"), env={"COLUMNS": "250"})
    assert "rate judge check (16 ratings): shown=one text per request: no display position" in shown.stdout

    with canned_server(reads) as server:
        r = smolforge("run", str(criteria_recipe(server.url)), "--out", str(tmp_path / "reads"))
    assert r.returncode == 0, r.stderr
    assert "degenerate" not in r.stderr
    rate = next(s for s in json.loads((tmp_path / "reads" / "manifest.json").read_text())["stages"]
                if s["name"] == "rate")
    assert rate["summary"]["judge_check"]["degenerate"] == []
    assert rate["summary"]["mean_score_per_teacher"]["t0"] > rate["summary"]["mean_score_per_teacher"]["t1"]
