"""docs/writing-a-stage.md works as written: its filter and LLM stage register
(through the same decorator built-ins use) and its two tests pass, the LLM one on the
real bundled model."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

PAGE = ROOT / "docs" / "writing-a-stage.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


@pytest.fixture(scope="module")
def page() -> dict:
    """Run the page's stage definitions and tests in one namespace, once (a stage type
    registers once per process)."""
    blocks = _blocks()
    assert len(blocks) == 5  # filter, its test, LLM stage, its test, marked file fields
    ns: dict = {"__name__": "writing_a_stage"}
    for b in blocks:
        exec(compile(b, str(PAGE), "exec", dont_inherit=True), ns)
    return ns


def test_the_filter_from_the_page(page, tmp_path):
    page["test_max_digits_drops_tables"](tmp_path)


def test_the_llm_stage_from_the_page(page, tmp_path):
    page["test_title_writes_a_title_per_record"](tmp_path)


def test_the_marked_fields_of_the_page_are_file_fields(page):
    from smolforge.paths import path_fields

    ex = page["Example"](words_file="words.txt", inputs=["a/*.jsonl"])
    assert [(loc, kind) for loc, _, kind in path_fields(ex)] == [(("words_file",), "file"), (("inputs", 0), "glob")]


def test_the_page_stages_are_listed_with_their_fields(page):
    from smolforge import stage_reference

    ref = {s["type"]: s for s in stage_reference.reference()}
    assert ref["max_digits"]["doc"] == "Drop records that are mostly digits (tables, raw data dumps)."
    assert [f["name"] for f in ref["max_digits"]["fields"]] == ["column", "max_fraction"]
    assert "template" in [f["name"] for f in ref["title"]["fields"]]
