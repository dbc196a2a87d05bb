"""Heuristic quality filters and language identification: real-looking documents
pass, crafted bad ones fail with a reason naming the rule and the measured value,
and every threshold can be changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from smolforge.context import EnginePool, StageContext
from smolforge.registry import stages
from smolforge.stages.heuristics import (
    C4Filter,
    FineWebFilter,
    GopherQuality,
    GopherRepetition,
    Length,
)
from smolforge.stages.langid import Language

GOOD = [
    # An encyclopedia-style article.
    """The Water Cycle

The water cycle describes how water moves between the oceans, the atmosphere and the land. Heat from the sun evaporates water from the surface of seas and lakes, and plants release water vapour through their leaves.
As the moist air rises, it cools and the vapour condenses into tiny droplets that form clouds. When the droplets grow heavy enough, they fall back to the ground as rain, snow or hail.
Some of that water soaks into the soil and becomes groundwater, which can stay underground for thousands of years. The rest runs off into streams and rivers that carry it back to the sea.
Scientists study the cycle because it shapes the weather, feeds the crops that we eat and decides how much fresh water is available to cities and farms.""",
    # A how-to blog post.
    """How to keep sourdough starter healthy

A sourdough starter is a living culture of wild yeast and bacteria, and it needs regular feeding to stay active. Most bakers discard half of the starter each day and replace it with equal weights of flour and water.
Keep the jar at room temperature if you bake often, or store it in the fridge and feed it once a week if you bake only on weekends. A healthy starter should double in size within six to eight hours of a feeding.
If a grey liquid collects on the surface, the culture is simply hungry. Pour the liquid off, feed the starter, and it will usually recover within a day or two.
Whole wheat or rye flour gives the microbes more nutrients than white flour, so a spoonful of either can help a sluggish starter come back to life.""",
    # A short news report.
    """City council approves new cycling lanes

The city council voted on Tuesday to build twelve kilometres of protected cycling lanes across the town centre, with work expected to begin in the spring.
Supporters said the lanes would make it safer for children to ride to school and would reduce traffic on the busiest streets. Several shop owners argued that the loss of parking spaces could hurt their business.
The council has promised to review the project after one year and to publish figures on how many people use the new lanes. Residents can comment on the detailed plans at the public library until the end of the month.""",
]

FILTERS = [GopherQuality(), GopherRepetition(), C4Filter(), FineWebFilter()]


def ctx(tmp_path: Path) -> StageContext:
    return StageContext(
        recipe_name="t", recipe_dir=tmp_path, seed=0, default_engine="llamacpp",
        pool=EnginePool(), cache=None,
    )


def rec(text: str) -> dict:
    return {"id": "r", "meta": {}, "text": text}


@pytest.mark.parametrize("doc", range(len(GOOD)))
@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: f.type)
def test_good_documents_pass(flt, doc):
    assert flt.check(rec(GOOD[doc])) is None


def test_stages_are_registered():
    for name in ["gopher_quality", "gopher_repetition", "c4_filter", "fineweb_filter", "length", "language"]:
        cls = stages.get(name)
        stage = cls.model_validate({"type": name, "column": "body"})
        assert stage.requires() == {"body"}


def test_process_keeps_and_rejects_with_reasons(tmp_path):
    batch = [rec(GOOD[0]), {"id": "bad", "meta": {}, "text": "too short"}]
    res = GopherQuality().process(batch, ctx(tmp_path))
    assert [r["id"] for r in res.kept] == ["r"]
    assert [(r.record["id"], r.reason) for r in res.rejected] == [
        ("bad", "gopher_quality: 2 words < 50")
    ]


PROSE = " ".join(GOOD[1].split("\n\n")[1:])  # plain paragraphs, about 200 words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A few words only.", "gopher_quality: 4 words < 50"),
        # mean word length: many one and two letter words
        (("I am to be at it so we go. " * 20), "gopher_quality: mean word length 1.89 < 3"),
        (
            "the and of " + " ".join(["internationalization telecommunications"] * 40),
            "gopher_quality: mean word length 18.4 > 10",
        ),
        (PROSE + " " + " ".join(f"#tag{i}" for i in range(60)), "gopher_quality: hash-to-word ratio"),
        (PROSE + " " + "wait... " * 80, "gopher_quality: ellipsis-to-word ratio"),
        (
            "\n".join(f"• the item number {i} with a few more words" for i in range(12)),
            "gopher_quality: bullet lines 1 > 0.9",
        ),
        (
            "\n".join(f"and then the story of line {i} went on and on..." for i in range(12)),
            "gopher_quality: ellipsis-ending lines 1 > 0.3",
        ),
        (
            "The table of the values: " + " ".join(f"{1000 + i} {2000 + 7 * i}" for i in range(40)),
            "gopher_quality: tokens with a letter",
        ),
        (
            " ".join(["Quick brown foxes jump over lazy dogs in sunny fields"] * 6),
            "gopher_quality: 0 stop words < 2",
        ),
    ],
)
def test_gopher_quality_rules(text, expected):
    reason = GopherQuality().check(rec(text))
    assert reason is not None and reason.startswith(expected), reason


def test_gopher_quality_thresholds_are_fields():
    g = GopherQuality()
    assert g.check(rec(GOOD[0])) is None
    assert GopherQuality(max_words=100).check(rec(GOOD[0])).startswith("gopher_quality: ")
    assert "> 100" in GopherQuality(max_words=100).check(rec(GOOD[0]))
    assert GopherQuality(min_stop_words=None, min_words=None).check(rec("Hello world")) is None
    assert GopherQuality(min_stop_words=50).check(rec(GOOD[2])).endswith("stop words < 50")
    # a custom column
    assert GopherQuality(column="body").check({"body": GOOD[0]}) is None
    assert GopherQuality(column="body").check({"text": GOOD[0]}) == "gopher_quality: 0 words < 50"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD[0] + "\n\n" + "\n\n".join(["Subscribe to our newsletter now."] * 6),
         "gopher_repetition: duplicate paragraph fraction 0.625 > 0.3"),
        ("\n".join(GOOD[2].splitlines()[:3] + ["Click here to read more."] * 3),
         "gopher_repetition: duplicate line fraction 0.4 > 0.3"),
        (GOOD[1] + "\n" + "\n".join([GOOD[1].splitlines()[2]] * 2),
         "gopher_repetition: duplicate line char fraction"),
        # the same 2-gram over and over inside otherwise varied words
        (" ".join(f"buy now word{i}" for i in range(60)), "gopher_repetition: top 2-gram char fraction"),
        # long repeated passages inside one paragraph
        (PROSE + " " + PROSE[:400] + " " + PROSE[:400], "gopher_repetition: duplicated 5-gram char fraction"),
    ],
)
def test_gopher_repetition_rules(text, expected):
    reason = GopherRepetition().check(rec(text))
    assert reason is not None and reason.startswith(expected), reason


def test_gopher_repetition_thresholds_are_fields():
    text = PROSE + " " + PROSE[:400] + " " + PROSE[:400]
    loose = GopherRepetition(dup_ngrams={5: 0.9}, top_ngrams={2: 0.9})
    assert loose.check(rec(text)) is None
    strict = GopherRepetition(dup_ngrams={10: 0.01})
    assert strict.check(rec(text)).startswith("gopher_repetition: duplicated 10-gram char fraction")
    assert GopherRepetition().check(rec("")) is None


def test_c4_rules():
    c4 = C4Filter()
    assert c4.check(rec(GOOD[0] + "\nLorem ipsum dolor sit amet, consectetur.")) == (
        'c4_filter: contains "lorem ipsum"'
    )
    assert c4.check(rec(GOOD[0] + "\nfunction f() { return 1; } is the code.")) == (
        'c4_filter: contains a curly bracket "{"'
    )
    junk = "\n".join([
        "Home | About | Contact",
        "Please enable JavaScript to view the comments.",
        "This site uses cookies to improve your experience.",
        "Read our privacy policy and terms of use.",
        "Copyright 2024",
        "Great article.",
        "We sell shoes. We sell hats.",
    ])
    assert c4.check(rec(junk)) == (
        "c4_filter: 2 sentences < 5; lines dropped: 2 no terminal punctuation, 2 policy,"
        " 1 javascript, 1 < 3 words"
    )
    assert C4Filter(min_sentences=2).check(rec(junk)) is None
    assert C4Filter(filter_curly_bracket=False).check(rec(GOOD[0] + "\nA {b} c d.")) is None


def test_c4_remove_lines_rewrites_kept_text(tmp_path):
    text = GOOD[0] + "\nPlease enable JavaScript to see the map.\nShare this"
    res = C4Filter(remove_lines=True).process([rec(text)], ctx(tmp_path))
    out = res.kept[0]["text"]
    assert "JavaScript" not in out and "Share this" not in out and "The Water Cycle" not in out
    assert out.startswith("The water cycle describes")
    # without remove_lines the text is left untouched
    assert C4Filter().process([rec(text)], ctx(tmp_path)).kept[0]["text"] == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\n".join(f"Menu entry number {i} of the long navigation list" for i in range(10)),
         "fineweb_filter: lines ending in punctuation 0 <= 0.12"),
        ("\n".join(["Short line."] * 3 + [GOOD[0].splitlines()[2]]),
         "fineweb_filter: short lines (<= 30 chars) 0.75 >= 0.67"),
        (GOOD[1] + "\n" + GOOD[1].splitlines()[2], "fineweb_filter: duplicated-line char fraction"),
        # a list: long lines (not short) of one or two words each
        ("\n".join(f"{w}-flavoured-handmade-artisanal-products." for w in
                   ["apples", "pears", "plums", "figs", "dates", "limes", "kiwis", "grapes", "melons", "lemons"]),
         "fineweb_filter: newlines per word 0.45 > 0.3"),
    ],
)
def test_fineweb_rules(text, expected):
    reason = FineWebFilter().check(rec(text))
    assert reason is not None and reason.startswith(expected), reason


def test_fineweb_thresholds_are_fields():
    text = "\n".join(f"Menu entry number {i} of the long navigation list" for i in range(10))
    assert FineWebFilter(line_punct_exclude_zero=True).check(rec(text)) is None
    dup = GOOD[1] + "\n" + GOOD[1].splitlines()[2]
    assert FineWebFilter(char_duplicates_ratio=0.5).check(rec(dup)) is None
    assert FineWebFilter(short_line_length=1000).check(rec(GOOD[0])).startswith(
        "fineweb_filter: short lines (<= 1000 chars) 1 >= 0.67"
    )


def test_length_bounds():
    assert Length().check(rec("")) is None
    assert Length(min_chars=10).check(rec("short")) == "length: 5 chars < 10"
    assert Length(max_chars=3).check(rec("short")) == "length: 5 chars > 3"
    assert Length(min_words=3).check(rec("two words")) == "length: 2 words < 3"
    assert Length(max_words=1).check(rec("two words")) == "length: 2 words > 1"
    assert Length(min_words=2, max_words=2, min_chars=1).check(rec("two words")) is None


def test_language_detects_writes_columns_and_filters(tmp_path):
    german = (
        "Der Wasserkreislauf beschreibt, wie sich das Wasser zwischen den Meeren, der "
        "Atmosphäre und dem Land bewegt. Die Sonne lässt Wasser verdunsten."
    )
    stage = Language()
    assert stage.provides() == {"language", "language_score"}
    res = stage.process([rec(GOOD[0]), {"id": "de", "meta": {}, "text": german}], ctx(tmp_path))
    assert [r["language"] for r in res.kept] == ["en"] and res.kept[0]["language_score"] > 0.9
    (rej,) = res.rejected
    assert rej.record["language"] == "de"
    assert rej.reason.startswith("language: de (") and rej.reason.endswith(") not in ['en']")
    # any language, custom columns
    both = Language(languages=[], language_column="lang", score_column="p")
    assert both.provides() == {"lang", "p"}
    res = both.process([rec(GOOD[0]), rec(german)], ctx(tmp_path))
    assert [r["lang"] for r in res.kept] == ["en", "de"]
    assert Language(languages=["de", "fr"]).check(rec(german)) is None
    # a score threshold nothing reaches
    assert Language(min_score=1.01).check(rec(GOOD[0])).startswith("language: en score ")


def _reference_ngram_fractions(text: str, n: int) -> tuple[float, float]:
    """(top n-gram, duplicated n-gram) char fractions the plain way, as datatrove
    computes them (strings and sets, no hashing)."""
    from collections import Counter

    from smolforge.stages.heuristics import all_tokens

    words = all_tokens(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    gram, count = Counter(grams).most_common(1)[0]
    top = count * len(" ".join(gram)) / len(text) if count > 1 else 0.0
    seen, chars, idx = set(), 0, 0
    while idx < len(grams):
        if grams[idx] in seen:
            chars += len("".join(grams[idx]))
            idx += n
        else:
            seen.add(grams[idx])
            idx += 1
    return top, chars / len(text)


@pytest.mark.parametrize("n", [2, 3, 5, 7, 10])
def test_ngram_fractions_match_plain_computation(n):
    texts = [
        PROSE + " " + PROSE[:400] + " " + PROSE[:400],
        " ".join(f"buy now word{i}" for i in range(60)),
        "a b c a b c a b c d e f a b c a b c " * 5,
        GOOD[0],
    ]
    for text in texts:
        top, dup = _reference_ngram_fractions(text, n)
        off = {"dup_line_frac": None, "dup_para_frac": None, "dup_line_char_frac": None,
               "dup_para_char_frac": None}
        got_top = GopherRepetition(**off, top_ngrams={n: 0.0}, dup_ngrams={}).check(rec(text))
        got_dup = GopherRepetition(**off, top_ngrams={}, dup_ngrams={n: 0.0}).check(rec(text))
        if top:
            assert got_top == f"gopher_repetition: top {n}-gram char fraction {top:.3g} > 0.0"
        else:
            assert got_top is None
        if dup:
            assert got_dup == f"gopher_repetition: duplicated {n}-gram char fraction {dup:.3g} > 0.0"
        else:
            assert got_dup is None
