"""`smolforge report` in a real browser: headless Chromium (Debian `chromium`) driven
by Playwright opens the file offline; no console errors, no network request, the
figures on the page equal `show --json`, the sample browser filters, and a
planted `</script>` in a record stays text."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, smolforge
from test_report_stats import INJECTION, build_run

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    run, planted = build_run(tmp)
    out = tmp / "report.html"
    p = smolforge("report", str(run), "--out", str(out))
    assert p.returncode == 0, p.stderr
    show = smolforge("show", str(run), "--json")
    assert show.returncode == 0, show.stderr
    return out, json.loads(show.stdout), planted


@pytest.fixture(scope="module")
def page(report):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "install Debian's chromium (apt-get install -y chromium)"
    out, _, _ = report
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        problems: list[str] = []
        requests: list[str] = []
        pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        pg.on("request", lambda r: requests.append(r.url))
        pg.goto(out.as_uri())
        pg.wait_for_load_state("load")
        pg.problems, pg.requests = problems, requests  # type: ignore[attr-defined]
        yield pg
        browser.close()


def test_opens_offline_without_errors(page, report):
    out, _, _ = report
    assert page.problems == []
    assert page.requests == [out.as_uri()]  # nothing but the file itself: no CDN, no font, no image
    html = out.read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert page.evaluate("window.__pwned") is None  # the planted </script> did not run
    shot = out.with_suffix(".png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep = ROOT / ".pytest_cache" / "report-screenshot.png"  # for a person to look at
    keep.parent.mkdir(exist_ok=True)
    shutil.copy(shot, keep)


def test_rendered_figures_equal_show_json(page, report):
    _, show, planted = report
    figs = dict(page.eval_on_selector_all("[data-fig]", "els => els.map(e => [e.dataset.fig, e.textContent])"))
    want = {"rows": str(show["data"]["rows"]), "status": show["status"]}
    for row in show["funnel"]:
        for k in ("in", "out", "rejected", "added"):
            want[f"funnel/{row['stage']}/{k}"] = str(row[k])
        for g in row["reasons"]:
            want[f"reject/{row['stage']}/{g['reason']}"] = str(g["count"])
    for bench, n in show["contamination"].items():
        want[f"contamination/{bench}"] = str(n)
    got = {k: v for k, v in figs.items() if k in want or k.split("/")[0] in ("funnel", "reject", "contamination")}
    assert got == want
    assert want["funnel/read/out"] == str(planted["rows"])
    # the waterfall draws one kept and one rejected bar per stage, with the same figures in their titles
    titles = page.eval_on_selector_all("#sf-waterfall rect title", "els => els.map(e => e.textContent)")
    for row in show["funnel"]:
        assert f"{row['stage']}: kept {row['out']}" in titles
        assert f"{row['stage']}: rejected {row['rejected']}" in titles


def test_sample_browser_filters(page, report):
    _, show, planted = report
    rows = page.locator("#sf-browser tbody tr")
    total = rows.count()
    assert total == show["data"]["rows"] + sum(g["count"] for g in show["rejects"])
    page.select_option("#sf-kind", "rejected")
    page.select_option("#sf-stage", "dedup")
    assert rows.count() == 3
    assert set(page.eval_on_selector_all("#sf-browser tbody tr", "els => els.map(e => e.dataset.stage)")) == {"dedup"}
    assert page.text_content("#sf-shown") == "3"
    page.select_option("#sf-stage", "long_enough")
    assert rows.count() == 2
    page.fill("#sf-q", "too short")
    assert rows.count() == 1 and "Too short." in rows.first.inner_text()
    page.fill("#sf-q", "")
    page.select_option("#sf-stage", "")
    rules = page.eval_on_selector_all("#sf-rule option", "els => els.map(e => e.value)")
    assert "contaminated: humaneval" in rules
    page.select_option("#sf-rule", "contaminated: humaneval")
    assert rows.count() == 1
    rows.first.locator("summary").click()  # expand the full record
    assert "has_close_elements" in rows.first.locator("pre").inner_text()
    page.select_option("#sf-rule", "")
    page.select_option("#sf-kind", "kept")
    page.fill("#sf-q", "window.__pwned")
    assert rows.count() == 1 and INJECTION in rows.first.inner_text()


def test_report_shows_the_profile_sections(page):
    text = page.inner_text("main")
    for heading in ("Funnel", "Rejects by stage and rule", "Duplicate clusters", "Scores and lengths",
                    "Knob coverage", "Diversity", "AI proxy words", "Sample browser"):
        assert heading in text
    assert "SmolLM2-135M tokenizer" in text  # the bundled tokenizer counted the lengths
    assert "audience=experts | style=poem" in text  # a knob combination the filters removed entirely


# Every text of every chart that reaches outside its chart's box (the SVG clips it).
OUTSIDE = """svgs => svgs.flatMap(svg => {
    const b = svg.getBoundingClientRect();
    return Array.from(svg.querySelectorAll('text')).filter(t => {
        const r = t.getBoundingClientRect();
        return r.left < b.left - 0.5 || r.right > b.right + 0.5 || r.top < b.top - 0.5 || r.bottom > b.bottom + 0.5;
    }).map(t => (svg.getAttribute('aria-label') || svg.id) + ': ' + t.textContent);
})"""


def test_every_chart_has_axis_titles(page):
    charts = page.eval_on_selector_all("main svg", """svgs => svgs.map(s => [s.getAttribute('aria-label'),
        (s.querySelector('text.sf-axis-x') || {}).textContent, (s.querySelector('text.sf-axis-y') || {}).textContent])""")
    assert len(charts) >= 5
    assert [c for c in charts if not (c[1] and c[2])] == []
    titles = {c[0]: (c[1], c[2]) for c in charts}
    assert titles["funnel"] == ("stage", "records")
    assert titles["score (judge / classifier score)"] == ("score", "records")
    assert titles["knob audience"] == ("audience", "records")


def test_no_chart_label_is_clipped(page):
    assert page.eval_on_selector_all("main svg", OUTSIDE) == []
    # long labels, the first one included (rotated labels used to run off the left edge)
    from smolforge.report.html import CSS, bars

    styles = [("textbook (academic)", 12), ("textbook (narrative)", 3), ("children's story", 7), ("wikiHow", 1)]
    ctx = page.context.browser.new_context()
    pg = ctx.new_page()
    pg.set_content(f"<html><head><style>{CSS}</style></head><body>" + bars(styles, "knob style") + bars(styles * 5, "knob style, 20 bars")
                   + "</body></html>")
    assert pg.eval_on_selector_all("svg", OUTSIDE) == []
    ctx.close()


def test_score_histogram_shows_kept_and_rejected(page, report):
    out, _, _ = report
    run = out.parent / "run"
    kept = [r["score"] for r in pq.read_table(run / "data").to_pylist()]
    rejected = [json.loads(r["record"])["score"] for r in pq.read_table(run / "rejects" / "rejects.parquet").to_pylist()]
    titles = page.eval_on_selector_all("svg[aria-label='score (judge / classifier score)'] rect title",
                                       "els => els.map(e => e.textContent)")
    for v in range(6):
        assert f"{v}: kept {kept.count(v)}" in titles
        assert f"{v}: rejected {rejected.count(v)}" in titles
    assert rejected.count(0) > 0 and kept.count(0) == 0  # the filter's drops are on the chart
    assert f"rejected n={len(rejected)}" in page.inner_text("main")


def test_not_a_run_is_an_error(tmp_path: Path):
    p = smolforge("report", str(tmp_path))
    assert p.returncode == 1 and "not a run directory" in p.stderr
