"""Heuristic quality filters: Gopher quality and repetition, C4, FineWeb, length.

Each rule follows its paper as datatrove 0.10 implements it (the code behind
FineWeb): the same tokens, line splitting, denominators and comparisons, so that
with datatrove's thresholds a page gets the same decision (`benchmarks/
filters_agreement.py` measures it). Where we depart, the departure is a field,
off by default unless said otherwise. The defaults are the published thresholds;
every threshold is a field, and `None` switches a rule off. Every drop reason
names the rule and the measured value, e.g. `gopher_quality: mean word length 2.1 < 3`.

Tokens (`tokenizer` field): `rules` (default) reproduces spaCy's blank English
tokenizer, which datatrove 0.10 uses for English words, without needing spaCy:
punctuation is split off one character at a time (`f()` is `f ( )`, `====` four
tokens), hyphens between letters split (`state - of - the - art`), contractions
split (`do n't`), abbreviations and URLs stay whole. `spacy` calls spaCy itself
(if installed). `regex` is our earlier tokenizer: a word is a run of letters/
digits joined by `'.,-`, and every other run of symbols is one token.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from itertools import accumulate
from typing import Literal

import numpy as np
from pydantic import Field

from smolforge.context import StageContext
from smolforge.registry import stages
from smolforge.stages.base import FilterStage, Record, Result
from smolforge.text.ngrams import prefix_hashes, window_hashes, word_hashes

_WORD_PATTERN = r"\w+(?:['’.,\-]\w+)*"
_ANY_TOKEN = re.compile(rf"{_WORD_PATTERN}|[^\w\s]+")
_PARAGRAPH_SPLIT = re.compile(r"\n{2,}")
_LINES_SPLIT = re.compile(r"\n+")


def all_tokens(text: str) -> list[str]:
    """The `regex` tokens: words and symbol runs (one token per run of symbols)."""
    return _ANY_TOKEN.findall(text)


# ---------------------------------------------------------------------------
# Word tokens as datatrove 0.10 sees English text: spaCy's blank English
# tokenizer (prefix, suffix and infix rules, special cases, URLs), rebuilt on
# Python's `re` so that the core install needs no spaCy. Character classes are
# narrowed to Latin, Greek and Cyrillic letters; everything else follows
# spacy/lang/punctuation.py, spacy/lang/en/punctuation.py, the English and base
# tokenizer exceptions, and Tokenizer._split_affixes / _attach_tokens.

_LOWER = "a-z\u00df-\u00f6\u00f8-\u00ff\u0101-\u017f\u03ac-\u03ce\u0430-\u045f"
_UPPER = "A-Z\u00c0-\u00d6\u00d8-\u00de\u0100-\u017e\u0386-\u03ab\u0400-\u042f"
_ALPHA = _LOWER + _UPPER + "\u0180-\u024f\u1e00-\u1eff"
_PUNCT = r"… …… , : ; \! \? ¿ ؟ ¡ \( \) \[ \] \{ \} < > _ # \* & 。 ？ ！ ， 、 ； ： ～ · । ، ۔ ؛ ٪"
_QUOTES = r"\' \" ” “ ` ‘ ´ ’ ‚ , „ » « 「 」 『 』 （ ） 〔 〕 【 】 《 》 〈 〉 〈 〉 ⟦ ⟧"
_CURRENCY = (r"\$ £ € ¥ ฿ US\$ C\$ A\$ ₽ ﷼ ₴ ₠ ₡ ₢ ₣ ₤ ₥ ₦ ₧ ₨ ₩ ₪ ₫ € ₭ ₮ ₯ ₰ "
             r"₱ ₲ ₳ ₴ ₵ ₶ ₷ ₸ ₹ ₺ ₻ ₼ ₽ ₾ ₿")
_UNITS = ("km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft "
          "kg g mg µg t lb oz m/s km/h kmh mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K %")
_HYPHENS = "-|–|—|--|---|——|~"
# Unicode "other symbols" (So): the blocks that occur in Latin-script text.
_ICONS = (
    "[\u00a6\u00a9\u00ae\u00b0\u2100\u2101\u2103-\u2106\u2108\u2109\u2114\u2116\u2117"
    "\u211e-\u2123\u2125\u2127\u2129\u212e\u213a\u213b\u214a\u214c\u214d\u214f"
    "\u2195-\u2199\u219c-\u219f\u21a1\u21a2\u21a4\u21a5\u21a7-\u21ad\u21af-\u21cd\u21d0"
    "\u21d1\u21d3\u21d5-\u21f3\u2300-\u2307\u230c-\u231f\u2322-\u2328\u232b-\u237b"
    "\u237d-\u239a\u23b4-\u23db\u23e2-\u2426\u2440-\u244a\u249c-\u24e9\u2500-\u25b6"
    "\u25b8-\u25c0\u25c2-\u25f7\u2600-\u266e\u2670-\u2767\u2794-\u27bf\u2800-\u28ff"
    "\u2b00-\u2b2f\u2b45\u2b46\u2b4d-\u2b73\u2b76-\u2b95\u2b98-\u2bc8\u2bca-\u2bfe"
    "\ufffc\ufffd\U0001f000-\U0001f02b\U0001f030-\U0001f093\U0001f0a0-\U0001f0f5"
    "\U0001f110-\U0001f16b\U0001f170-\U0001f1ac\U0001f1e6-\U0001f202\U0001f210-\U0001f23b"
    "\U0001f300-\U0001f3fa\U0001f400-\U0001f6d4\U0001f6e0-\U0001f6ec\U0001f6f0-\U0001f6f9"
    "\U0001f700-\U0001f773\U0001f780-\U0001f7d8\U0001f800-\U0001f8ad\U0001f900-\U0001f9ff"
    "\U0001fa60-\U0001fa6d]"
)


def _merge(chars: str) -> str:
    return chars.strip().replace(" ", "|")


def _split(chars: str) -> list[str]:
    return chars.strip().split(" ")


_CONCAT_QUOTES = _QUOTES.replace(" ", "")
_PREFIX_RULES = (
    ["§", "%", "=", "—", "–", r"\+(?![0-9])"] + _split(_PUNCT) + [r"\.\.+", "…"]
    + _split(_QUOTES) + _split(_CURRENCY) + [_ICONS]
)
_SUFFIX_RULES = (
    _split(_PUNCT) + [r"\.\.+", "…"] + _split(_QUOTES) + [_ICONS]
    + ["'s", "'S", "’s", "’S", "—", "–"]
    + [
        r"(?<=[0-9])\+",
        r"(?<=°[FfCcKk])\.",
        rf"(?<=[0-9])(?:{_merge(_CURRENCY)})",
        rf"(?<=[0-9])(?:{_merge(_UNITS)})",
        rf"(?<=[0-9{_LOWER}%²\-\+{_merge(_PUNCT)}(?:{_CONCAT_QUOTES})])\.",
        rf"(?<=[{_UPPER}][{_UPPER}])\.",
    ]
)
_INFIX_RULES = [
    r"\.\.+",
    "…",
    _ICONS,
    r"(?<=[0-9])[+\-\*^](?=[0-9-])",
    rf"(?<=[{_LOWER}{_CONCAT_QUOTES}])\.(?=[{_UPPER}{_CONCAT_QUOTES}])",
    rf"(?<=[{_ALPHA}]),(?=[{_ALPHA}])",
    rf"(?<=[{_ALPHA}0-9])(?:{_HYPHENS})(?=[{_ALPHA}])",
    rf"(?<=[{_ALPHA}0-9])[:<>=/](?=[{_ALPHA}])",
]
_PREFIX = re.compile("|".join("^" + p for p in _PREFIX_RULES))
_SUFFIX = re.compile("|".join(p + "$" for p in _SUFFIX_RULES))
_INFIX = re.compile("|".join(_INFIX_RULES))
# spaCy's URL_MATCH without its IP-address branch.
_URL = re.compile(
    r"(?u)^(?:(?:[\w\+\-\.]{2,})://)?(?:\S+(?::\S*)?@)?"
    r"(?:(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{0,62})?"
    rf"[A-Za-z0-9\u00a1-\uffff]\.)+(?:[{_LOWER}]{{2,63}}))"
    r"(?::\d{2,5})?(?:[/?#]\S*)?$"
)

# Special cases kept as one token (spaCy's base and English exceptions).
_ONE_TOKEN = (
    "<space> C++ '' ' \\\") \\n \\t — a. b. c. d. e. f. g. h. i. j. k. l. m. n. o. p. q. r. s."
    " t. u. v. w. x. y. z. ä. ö. ü. doin doin' Doin Doin' goin goin' Goin Goin' nothin nothin'"
    " Nothin Nothin' nuthin nuthin' Nuthin Nuthin' ol ol' Ol Ol' somethin somethin' Somethin"
    " Somethin' em 'em ll 'll nuff 'nuff and/or w/o 're 'Cause 'cause 'cos 'Cos 'coz 'Coz 'cuz"
    " 'Cuz 'bout ma'am Ma'am o'clock O'clock lovin' Lovin' lovin Lovin havin' Havin' havin"
    " Havin 'S 's ‘S ‘s 'd Mt. Ak. Ala. Apr. Ariz. Ark. Aug. Calif. Colo. Conn. Dec. Del. Feb."
    " Fla. Ga. Ia. Id. Ill. Ind. Jan. Jul. Jun. Kan. Kans. Ky. La. Mar. Mass. Mich. Minn. Miss."
    " Neb. Nebr. Nev. Nov. Oct. Okla. Ore. Pa. Sep. Sept. Tenn. Va. Wash. Wis. Adm. Bros. co."
    " Co. Corp. Dr. Gen. Gov. Inc. Jr. Ltd. Md. Messrs. Mo. Mont. Mr. Mrs. Ms. Ph.D. Prof. Rep."
    " Rev. Sen. St. vs. N.C. N.D. N.H. N.J. N.M. N.Y. S.C. a.m. D.C. e.g. E.g. E.G. i.e. I.e."
    " I.E. p.m. v.s. XDD xD XD xDD"
    # emoticons
    " :) :-) :)) :-)) :))) :-))) (: (-: =) (= :] :-] [: [-: [= =] :o) (o: :} :-} 8) 8-) (-8 ;)"
    " ;-) (; (-; :( :-( :(( :-(( :((( :-((( ): )-: =( >:( :') :'-) :'( :'-( :/ :-/ =/ =| :| :-|"
    " ]= =[ :1 :P :-P :p :-p :O :-O :o :-o :0 :-0 :() >:o :* :-* :3 :-3 =3 :> :-> :X :-X :x"
    " :-x :D :-D ;D ;-D =D 8D 8-D ^_^ ^__^ ^___^ >.< >.> <.< ._. ;_; -_- -__- v.v V.V v_v V_V"
    " o_o o_O O_o O_O 0_o o_0 0_0 o.O O.o O.O o.o 0.0 o.0 0.o @_@ <3 <33 <333 </3 (^_^) (-_-)"
    " (._.) (>_<) (*_*) (¬_¬) ಠ_ಠ (ಠ_ಠ) ಠ︵ಠ ><(((*> ¯\\(ツ)/¯ (╯°□°）╯︵┻━┻"
)
_NT = "ai are ca could dare did do does had has have is may might must need ought sha should was were wo would"
_NT_VE = "ca could did do does had may might must need ought sha should wo would"
_VE = "could how i might must not should there these they those we what when where who why would you"
_LL_D = "he how i it she that there these they this those we what when where who why you"
_S = "he how it she that there this what when where who why"
_RE = "how there these they those we what when where who why you"
_EXCLUDE = {"Ill", "ill", "Its", "its", "Hell", "hell", "Shell", "shell", "Shed", "shed",
            "were", "Were", "Well", "well", "Whore", "whore"}


def _special_cases() -> dict[str, tuple[str, ...]]:
    """spaCy's English tokenizer exceptions: string -> its tokens."""
    exc: dict[str, tuple[str, ...]] = {s: (s,) for s in _ONE_TOKEN.split(" ")}

    def add(heads: str, *tails: str, apostrophe_free: bool = True) -> None:
        for head in heads.split():
            for h in {head, head.title()}:
                exc[h + "".join(tails)] = (h, *tails)
                if apostrophe_free:
                    bare = tuple(t.replace("'", "") for t in tails)
                    exc[h + "".join(bare)] = (h, *bare)

    add(_NT, "n't")
    add(_NT_VE, "n't", "'ve")
    add(_VE, "'ve")
    for tails in (("'ll",), ("'ll", "'ve"), ("'d",), ("'d", "'ve")):
        add(_LL_D, *tails)
    add(_S, "'s")
    add(_RE, "'re")
    add("i", "'m")
    add("i", "'m", "a")
    add("let", "'s", apostrophe_free=False)
    for h in range(1, 13):
        for period in ("a.m.", "am", "p.m.", "pm"):
            exc[f"{h}{period}"] = (str(h), period)
    for word, parts in {
        "y'all": ("y'", "all"), "yall": ("y", "all"), "cannot": ("can", "not"),
        "Cannot": ("Can", "not"), "gonna": ("gon", "na"), "Gonna": ("Gon", "na"),
        "gotta": ("got", "ta"), "Gotta": ("Got", "ta"), "c'mon": ("c'm", "on"),
        "C'mon": ("C'm", "on"), "how'd'y": ("how", "'d", "'y"), "How'd'y": ("How", "'d", "'y"),
    }.items():
        exc[word] = parts
    for word in _EXCLUDE:
        exc.pop(word, None)
    for word, parts in list(exc.items()):  # the same with a typographic apostrophe
        if "'" in word:
            exc.setdefault(word.replace("'", "’"), tuple(t.replace("'", "’") for t in parts))
    return exc


_SPECIALS = _special_cases()


def _affix_tokens(chunk: str, specials: bool = True) -> list[str]:
    """spaCy's `_split_affixes` + `_attach_tokens` on one whitespace-free chunk."""
    prefixes: list[str] = []
    suffixes: list[str] = []
    s = chunk
    last = -1
    while s and len(s) != last:
        if specials and s in _SPECIALS:
            break
        last = len(s)
        m = _PREFIX.match(s)
        pre = m.end() if m else 0
        if pre:
            minus_pre = s[pre:]
            if minus_pre and specials and minus_pre in _SPECIALS:
                prefixes.append(s[:pre])
                s = minus_pre
                break
        m = _SUFFIX.search(s[pre:])
        suf = m.end() - m.start() if m else 0
        if suf:
            minus_suf = s[:-suf]
            if minus_suf and specials and minus_suf in _SPECIALS:
                suffixes.append(s[-suf:])
                s = minus_suf
                break
        if pre and suf and pre + suf <= len(s):
            prefixes.append(s[:pre])
            suffixes.append(s[-suf:])
            s = s[pre:-suf]
        elif pre:
            prefixes.append(s[:pre])
            s = s[pre:]
        elif suf:
            suffixes.append(s[-suf:])
            s = s[:-suf]
    out = prefixes
    if s:
        if specials and s in _SPECIALS:
            out.extend(_SPECIALS[s])
        elif _URL.match(s):
            out.append(s)
        else:
            start = 0
            for m in _INFIX.finditer(s):
                if m.start() == 0:
                    continue
                if m.start() != start:
                    out.append(s[start : m.start()])
                if m.start() != m.end():
                    out.append(m.group())
                start = m.end()
            if s[start:]:
                out.append(s[start:])
    out.extend(reversed(suffixes))
    return out


def _merge_table() -> dict[str, list[tuple[tuple[str, ...], str]]]:
    """Special cases that affix splitting breaks apart (`:)` -> `:` `)`), by first
    piece: spaCy merges them back after tokenizing (its special-case matcher)."""
    table: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for s in _SPECIALS:
        if _PREFIX.match(s) or _SUFFIX.search(s) or _INFIX.search(s):
            pieces = tuple(_affix_tokens(s, specials=False))
            if len(pieces) > 1:
                table.setdefault(pieces[0], []).append((pieces, s))
    for entries in table.values():
        entries.sort(key=lambda e: -len(e[0]))
    return table


_MERGE = _merge_table()
_PLAIN = re.compile(r"[^\W\d_]+|\d+")  # letters only, or digits only: no rule splits them
_chunk_cache: dict[str, tuple[str, ...]] = {}


def _chunk_tokens(chunk: str) -> tuple[str, ...]:
    got = _chunk_cache.get(chunk)
    if got is not None:
        return got
    if _PLAIN.fullmatch(chunk) and chunk not in _SPECIALS:
        toks: list[str] = [chunk]
    elif chunk in _SPECIALS:
        toks = list(_SPECIALS[chunk])
    else:
        toks = _affix_tokens(chunk)
        if len(toks) > 1 and any(t in _MERGE for t in toks):
            toks = _merge_specials(toks)
    if len(_chunk_cache) > 200_000:
        _chunk_cache.clear()
    got = _chunk_cache[chunk] = tuple(toks)
    return got


def _merge_specials(toks: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(toks):
        for pieces, special in _MERGE.get(toks[i], ()):
            if tuple(toks[i : i + len(pieces)]) == pieces:
                out.extend(_SPECIALS[special])
                i += len(pieces)
                break
        else:
            out.append(toks[i])
            i += 1
    return out


def spacy_rules_tokens(text: str) -> list[str]:
    """Word tokens of `text` as spaCy's blank English tokenizer gives them, whitespace
    tokens dropped (datatrove's `split_into_words` for English)."""
    out: list[str] = []
    for chunk in text.split():
        out.extend(_chunk_tokens(chunk))
    return out


@functools.cache
def _spacy_tokenizer():
    import spacy  # optional: `pip install spacy`

    return spacy.blank("en").tokenizer


def spacy_tokens(text: str) -> list[str]:
    """Word tokens from spaCy itself (datatrove's `split_into_words` for English)."""
    return [s for t in _spacy_tokenizer()(text) if (s := t.text.strip())]


Tokenizer = Literal["rules", "spacy", "regex"]
_TOKENIZERS = {"rules": spacy_rules_tokens, "spacy": spacy_tokens, "regex": all_tokens}

# datatrove's PUNCTUATION_SET (utils/text.py): a token made only of these is a
# symbol, not a word, for the word count and the mean word length.
_TERMINAL = (
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e"
    "\u0964\u0965\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9"
    "\u17da\u1803\u1809\u1944\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d"
    "\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c\u2e53\u2e54"
    "\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d"
    "\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61"
    "\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86"
    "\U00010f87\U00010f88\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0"
    "\U000110c1\U00011141\U00011142\U00011143\U000111c5\U000111c6\U000111cd\U000111de"
    "\U000111df\U00011238\U00011239\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c"
    "\U000115c2\U000115c3\U000115c9\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce"
    "\U000115cf\U000115d0\U000115d1\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6"
    "\U000115d7\U00011641\U00011642\U0001173c\U0001173d\U0001173e\U00011944\U00011946"
    "\U00011a42\U00011a43\U00011a9b\U00011a9c\U00011c41\U00011c42\U00011ef7\U00011ef8"
    "\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44"
    "\U00016e98\U0001bc9f\U0001da88"
)
_PUNCTUATION = (
    "!/\u2014\u201d:\uff05\uff11\u3008&(\u3001\u2501\\\u3010#%\u300c\u300d\uff0c\u3011\uff1b"
    "+^]~\u201c\u300a\u201e';\u2019{|\u2236\xb4[=-`*\uff0e\uff08\u2013\uff1f\uff01\uff1a$"
    "\uff5e\xab\u3009,><\u300b)?\uff09\u3002\u2026@_.\"}\u25ba\xbb"
    + "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)]))
)
_SYMBOL_CHARS = frozenset(_PUNCTUATION) | frozenset(_TERMINAL)
# The sentencizer's sentence-final tokens (spaCy's default `punct_chars`, Latin part).
_SENT_END = frozenset("!.?\u0589\u061f\u06d4\u0700\u0701\u0702\u07f9\u0964\u0965\u104a"
                      "\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u1803\u1809\u1944\u1945"
                      "\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c\u3002\ufe52\ufe56\ufe57"
                      "\uff01\uff0e\uff1f\uff61")


def _is_symbol(token: str) -> bool:
    return all(c in _SYMBOL_CHARS for c in token)


def _text(record: Record, column: str) -> str:
    value = record.get(column)
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]


@stages.register
class GopherQuality(FilterStage):
    """Gopher quality rules (Rae et al. 2021, "Scaling Language Models", appendix A,
    MassiveText quality filter), as datatrove's GopherQualityFilter: 50..100,000
    words, mean word length 3..10, `#` and ellipsis counts <= 0.1 per token, <= 90%
    of lines starting with a bullet (`•` or `-`), <= 30% of lines ending with an
    ellipsis, >= 80% of tokens containing a letter, >= 2 of the 8 stop words
    (distinct, matched as whole tokens, case-sensitive). A word is a token that is
    not made only of punctuation; ratios are per token."""

    type: Literal["gopher_quality"] = "gopher_quality"
    column: str = Field("text", description="the text column checked")
    tokenizer: Tokenizer = Field("rules", description="rules (spaCy's, built in), spacy, regex")
    min_words: int | None = Field(50, description="fewest words (symbols excluded)")
    max_words: int | None = Field(100_000, description="most words")
    min_mean_word_length: float | None = Field(3, description="shortest mean word length")
    max_mean_word_length: float | None = Field(10, description="longest mean word length")
    max_symbol_word_ratio: float | None = Field(
        0.1, description="most '#' or '...' per token (each symbol on its own)"
    )
    max_bullet_lines_ratio: float | None = Field(
        0.9, description="largest share of lines starting with a bullet"
    )
    max_ellipsis_lines_ratio: float | None = Field(
        0.3, description="largest share of lines ending with an ellipsis"
    )
    min_alpha_words_ratio: float | None = Field(
        0.8, description="smallest share of tokens containing a letter"
    )
    min_stop_words: int | None = Field(2, description="fewest distinct stop words")
    stop_words: list[str] = Field(_STOP_WORDS, description="the stop words counted")
    stop_words_ignore_case: bool = Field(
        False, description="match stop words in any case (datatrove: exact case only)"
    )
    bullets: list[str] = Field(
        ["•", "-"], description="line starts counted as bullets (datatrove: • and -)"
    )

    def requires(self) -> set[str]:
        return {self.column}

    def check(self, record: Record) -> str | None:
        text = _text(record, self.column)
        tokens = _TOKENIZERS[self.tokenizer](text)
        words = [t for t in tokens if not _is_symbol(t)]
        n_tokens, n_words = len(tokens), len(words)
        if self.min_words is not None and n_words < self.min_words:
            return f"gopher_quality: {n_words} words < {self.min_words}"
        if self.max_words is not None and n_words > self.max_words:
            return f"gopher_quality: {n_words} words > {self.max_words}"
        if n_words == 0:
            return "gopher_quality: no words"

        mean_len = sum(map(len, words)) / n_words
        if self.min_mean_word_length is not None and mean_len < self.min_mean_word_length:
            return (
                f"gopher_quality: mean word length {_fmt(mean_len)} < {self.min_mean_word_length}"
            )
        if self.max_mean_word_length is not None and mean_len > self.max_mean_word_length:
            return (
                f"gopher_quality: mean word length {_fmt(mean_len)} > {self.max_mean_word_length}"
            )

        if self.max_symbol_word_ratio is not None:
            ratio = text.count("#") / n_tokens
            if ratio > self.max_symbol_word_ratio:
                return f"gopher_quality: hash-to-word ratio {_fmt(ratio)} > {self.max_symbol_word_ratio}"
            ratio = (text.count("...") + text.count("…")) / n_tokens
            if ratio > self.max_symbol_word_ratio:
                return (
                    f"gopher_quality: ellipsis-to-word ratio {_fmt(ratio)}"
                    f" > {self.max_symbol_word_ratio}"
                )

        if self.max_bullet_lines_ratio is not None or self.max_ellipsis_lines_ratio is not None:
            lines = text.splitlines() or [""]
            if self.max_bullet_lines_ratio is not None:
                bullets = tuple(self.bullets)
                ratio = sum(1 for s in lines if s.lstrip().startswith(bullets)) / len(lines)
                if ratio > self.max_bullet_lines_ratio:
                    return (
                        f"gopher_quality: bullet lines {_fmt(ratio)}"
                        f" > {self.max_bullet_lines_ratio}"
                    )
            if self.max_ellipsis_lines_ratio is not None:
                ratio = sum(1 for s in lines if s.rstrip().endswith(("...", "…"))) / len(lines)
                if ratio > self.max_ellipsis_lines_ratio:
                    return (
                        f"gopher_quality: ellipsis-ending lines {_fmt(ratio)}"
                        f" > {self.max_ellipsis_lines_ratio}"
                    )

        if self.min_alpha_words_ratio is not None:
            n_alpha = sum(1 for t in tokens if any(c.isalpha() for c in t))
            ratio = n_alpha / n_tokens
            if ratio < self.min_alpha_words_ratio:
                return (
                    f"gopher_quality: tokens with a letter {_fmt(ratio)}"
                    f" < {self.min_alpha_words_ratio}"
                )

        if self.min_stop_words:
            if self.stop_words_ignore_case:
                wanted = {w.lower() for w in self.stop_words}
                found = len(wanted.intersection(t.lower() for t in tokens))
            else:
                found = len(set(self.stop_words).intersection(tokens))
            if found < self.min_stop_words:
                return f"gopher_quality: {found} distinct stop words < {self.min_stop_words}"
        return None


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated elements, their characters): the first of each is not counted."""
    seen: set[str] = set()
    n = chars = 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


@stages.register
class GopherRepetition(FilterStage):
    """Gopher repetition rules (Rae et al. 2021, table A1), as datatrove's
    GopherRepetitionFilter: duplicate line fraction 0.30 and line character fraction
    0.20, duplicate paragraph fraction 0.30 and character fraction 0.20, top
    2/3/4-gram character fractions 0.20/0.18/0.16, duplicated 5..10-gram character
    fractions 0.15..0.10. Character fractions are over the whole text. The top
    n-gram counts even when it occurs once, as in datatrove (so a text of a few
    words is dropped); `top_ngram_min_count: 2` counts only repeated n-grams."""

    type: Literal["gopher_repetition"] = "gopher_repetition"
    column: str = Field("text", description="the text column checked")
    tokenizer: Tokenizer = Field("rules", description="rules (spaCy's, built in), spacy, regex")
    dup_line_frac: float | None = Field(0.3, description="largest share of duplicate lines")
    dup_para_frac: float | None = Field(0.3, description="largest share of duplicate paragraphs")
    dup_line_char_frac: float | None = Field(
        0.2, description="largest share of characters in duplicate lines"
    )
    dup_para_char_frac: float | None = Field(
        0.2, description="largest share of characters in duplicate paragraphs"
    )
    top_ngrams: dict[int, float] = Field(
        {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> largest character share of the most frequent n-gram",
    )
    top_ngram_min_count: int = Field(
        1, ge=1, description="the most frequent n-gram counts only if it occurs this often"
    )
    dup_ngrams: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> largest character share of duplicated n-grams",
    )

    def requires(self) -> set[str]:
        return {self.column}

    def check(self, record: Record) -> str | None:
        text = _text(record, self.column)
        n_chars = len(text)
        if n_chars == 0:
            return None

        paragraphs = _PARAGRAPH_SPLIT.split(text.strip())
        n_dup, dup_chars = _duplicates(paragraphs)
        frac = n_dup / len(paragraphs)
        if self.dup_para_frac is not None and frac > self.dup_para_frac:
            return f"gopher_repetition: duplicate paragraph fraction {_fmt(frac)} > {self.dup_para_frac}"
        frac = dup_chars / n_chars
        if self.dup_para_char_frac is not None and frac > self.dup_para_char_frac:
            return (
                f"gopher_repetition: duplicate paragraph char fraction {_fmt(frac)}"
                f" > {self.dup_para_char_frac}"
            )

        lines = _LINES_SPLIT.split(text)
        n_dup, dup_chars = _duplicates(lines)
        frac = n_dup / len(lines)
        if self.dup_line_frac is not None and frac > self.dup_line_frac:
            return f"gopher_repetition: duplicate line fraction {_fmt(frac)} > {self.dup_line_frac}"
        frac = dup_chars / n_chars
        if self.dup_line_char_frac is not None and frac > self.dup_line_char_frac:
            return (
                f"gopher_repetition: duplicate line char fraction {_fmt(frac)}"
                f" > {self.dup_line_char_frac}"
            )

        if not self.top_ngrams and not self.dup_ngrams:
            return None
        return self._ngram_rules(_TOKENIZERS[self.tokenizer](text), n_chars)

    def _ngram_rules(self, tokens: list[str], n_chars: int) -> str | None:
        # n-grams are compared by 64-bit hashes of their tokens (numpy), and only
        # the positions of n-grams that occur more than once are walked in Python.
        if not tokens:
            return None
        cum = list(accumulate(map(len, tokens), initial=0))
        prefix = prefix_hashes(word_hashes(tokens))

        for n, limit in sorted(self.top_ngrams.items()):
            if len(tokens) < n:
                continue
            _, first, counts = np.unique(
                window_hashes(prefix, n), return_index=True, return_counts=True
            )
            best = int(counts.max())
            if best < self.top_ngram_min_count:
                continue
            p = int(first[counts == best].min())  # the first of the most frequent
            frac = best * (cum[p + n] - cum[p] + n - 1) / n_chars
            if frac > limit:
                return f"gopher_repetition: top {n}-gram char fraction {_fmt(frac)} > {limit}"

        for n, limit in sorted(self.dup_ngrams.items()):
            if len(tokens) < n:
                continue
            grams = window_hashes(prefix, n)
            _, inverse, counts = np.unique(grams, return_inverse=True, return_counts=True)
            repeated = np.flatnonzero(counts[inverse] > 1)
            if not len(repeated):
                break  # no n-gram repeats, so no longer one does either
            frac = _duplicated_chars(repeated.tolist(), grams[repeated].tolist(), cum, n) / n_chars
            if frac > limit:
                return (
                    f"gopher_repetition: duplicated {n}-gram char fraction {_fmt(frac)} > {limit}"
                )
        return None


def _duplicated_chars(positions: list[int], grams: list[int], cum: list[int], n: int) -> int:
    """Characters (spaces excluded) of n-grams that repeat an earlier one, scanning
    left to right and jumping past each repeat, so overlapping repeats count once
    (datatrove's `find_all_duplicate`). Only positions of n-grams that occur more
    than once are given: the others never repeat and do not change the scan."""
    seen: set[int] = set()
    chars = resume = 0
    for p, gram in zip(positions, grams, strict=True):
        if p < resume:
            continue
        if gram in seen:
            chars += cum[p + n] - cum[p]
            resume = p + n
        else:
            seen.add(gram)
    return chars


_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
_C4_END = (".", "?", "!", '"', "'")
_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)


def _is_punct(token: str) -> bool:
    """spaCy's IS_PUNCT: every character is Unicode punctuation (category P*)."""
    return all(unicodedata.category(c).startswith("P") for c in token)


def count_sentences(tokens: list[str]) -> int:
    """Sentences as spaCy's sentencizer splits them (datatrove's C4 count): a new
    sentence starts at the first non-punctuation token after a `.`, `!` or `?` token."""
    if not tokens:
        return 0
    n, seen_end = 1, False
    for t in tokens:
        if t in _SENT_END:
            seen_end = True
        elif seen_end and not _is_punct(t):
            n += 1
            seen_end = False
    return n


@stages.register
class C4Filter(FilterStage):
    """C4 rules (Raffel et al. 2020, section 2.2; TFDS `c4_utils`), as datatrove's
    C4QualityFilter: a line survives if it ends in terminal punctuation (`. ? ! " '`,
    not an ellipsis), has at least 3 words, no word over 1,000 characters, and
    mentions neither "javascript" nor a cookie/terms-of-use policy; a page is
    dropped if a surviving line contains "lorem ipsum" or a curly bracket, or if
    its surviving lines hold fewer than 5 sentences (counted as spaCy's sentencizer
    does). With `remove_lines` the kept record's text becomes its surviving lines
    (as C4 does); by default the text is left as it is and only the page decision
    is made."""

    type: Literal["c4_filter"] = "c4_filter"
    column: str = Field("text", description="the text column checked")
    tokenizer: Tokenizer = Field("rules", description="tokens for the sentence count")
    remove_citations: bool = Field(True, description="strip [1], [edit], [citation needed]")
    filter_no_terminal_punct: bool = Field(True, description="drop lines without . ? ! \" '")
    min_sentences: int | None = Field(5, description="fewest sentences in surviving lines")
    min_words_per_line: int | None = Field(3, description="drop lines with fewer words")
    max_word_length: int | None = Field(1000, description="drop lines with a longer word")
    filter_lorem_ipsum: bool = Field(True, description="drop pages containing lorem ipsum")
    filter_javascript: bool = Field(True, description="drop lines mentioning javascript")
    filter_curly_bracket: bool = Field(True, description="drop pages containing '{'")
    filter_policy: bool = Field(True, description="drop lines about cookies/terms of use")
    remove_lines: bool = Field(False, description="rewrite kept texts to their surviving lines")

    def requires(self) -> set[str]:
        return {self.column}

    def _sentences(self, line: str) -> int:
        if self.tokenizer == "regex":
            return max(1, len(_SENTENCE_END.findall(line)))
        return count_sentences(_TOKENIZERS[self.tokenizer](line))

    def clean(self, text: str) -> tuple[str | None, list[str]]:
        """(reason or None, surviving lines)."""
        kept: list[str] = []
        dropped: Counter[str] = Counter()
        sentences = 0
        min_words = self.min_words_per_line or 0
        for raw in text.splitlines():
            line = raw.strip()
            words = line.split()
            if self.max_word_length is not None and any(
                len(w) > self.max_word_length for w in words
            ):
                dropped[f"word > {self.max_word_length} chars"] += 1
                continue
            if self.remove_citations:
                line = _CITATION.sub("", line)
            if self.filter_no_terminal_punct and (
                not line.endswith(_C4_END) or line.endswith("...")
            ):
                dropped["no terminal punctuation"] += 1
                continue
            if len(words) < min_words:
                dropped[f"< {min_words} words"] += 1
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return 'c4_filter: contains "lorem ipsum"', kept
            if self.filter_javascript and "javascript" in lower:
                dropped["javascript"] += 1
                continue
            if self.filter_curly_bracket and "{" in line:
                return 'c4_filter: contains a curly bracket "{"', kept
            if self.filter_policy and any(p in lower for p in _POLICY):
                dropped["policy"] += 1
                continue
            if self.min_sentences is not None:
                sentences += self._sentences(line)
            kept.append(line)
        if self.min_sentences is not None and sentences < self.min_sentences:
            why = ", ".join(f"{n} {k}" for k, n in dropped.most_common())
            lines = f"; lines dropped: {why}" if why else ""
            return f"c4_filter: {sentences} sentences < {self.min_sentences}{lines}", kept
        return None, kept

    def check(self, record: Record) -> str | None:
        return self.clean(_text(record, self.column))[0]

    def process(self, batch: list[Record], ctx: StageContext) -> Result:
        if not self.remove_lines:
            return super().process(batch, ctx)
        res = Result()
        for rec in batch:
            reason, kept = self.clean(_text(rec, self.column))
            if reason is None:
                res.keep({**rec, self.column: "\n".join(kept)})
            else:
                res.reject(rec, reason)
        return res


@stages.register
class FineWebFilter(FilterStage):
    """FineWeb's own rules (Penedo et al. 2024, "The FineWeb Datasets"), as
    datatrove's FineWebQualityFilter: on the non-blank lines, drop a page if fewer
    than 12% end in terminal punctuation (`stop_chars`: `.`, `!`, `?` and the other
    scripts' sentence ends; quotes do not count), more than 67% are at most 30
    characters, more than 10% of its characters are in duplicated lines, or it has
    more than 0.3 newlines per word. The paper's 0.1 duplicated-character threshold
    is the default (datatrove's code default is 0.01)."""

    type: Literal["fineweb_filter"] = "fineweb_filter"
    column: str = Field("text", description="the text column checked")
    tokenizer: Tokenizer = Field("rules", description="tokens for the newline ratio")
    line_punct_thr: float | None = Field(
        0.12, description="drop if the share of lines ending in punctuation is < this"
    )
    line_punct_exclude_zero: bool = Field(
        False, description="keep pages with no punctuated line at all"
    )
    stop_chars: list[str] | None = Field(
        None, description="line endings that count as punctuation (default: terminal punctuation)"
    )
    short_line_thr: float | None = Field(
        0.67, description="drop if the share of short lines is > this"
    )
    short_line_length: int = Field(30, description="a short line has at most this many chars")
    char_duplicates_ratio: float | None = Field(
        0.1, description="drop if the share of characters in duplicated lines is > this"
    )
    new_line_ratio: float | None = Field(
        0.3, description="drop if newlines per word is > this (lists)"
    )

    def requires(self) -> set[str]:
        return {self.column}

    def check(self, record: Record) -> str | None:
        text = _text(record, self.column)
        lines = [s for s in text.split("\n") if s.strip()]
        if not lines:
            return "fineweb_filter: no non-blank line"
        n_lines = len(lines)
        if self.line_punct_thr is not None:
            ends = tuple(self.stop_chars) if self.stop_chars is not None else tuple(_TERMINAL)
            ratio = sum(1 for s in lines if s.endswith(ends)) / n_lines
            if ratio < self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
                return (
                    f"fineweb_filter: lines ending in punctuation {_fmt(ratio)}"
                    f" < {self.line_punct_thr}"
                )
        if self.short_line_thr is not None:
            limit = self.short_line_length
            ratio = sum(1 for s in lines if len(s) <= limit) / n_lines
            if ratio > self.short_line_thr:
                return (
                    f"fineweb_filter: short lines (<= {limit} chars) {_fmt(ratio)}"
                    f" > {self.short_line_thr}"
                )
        if self.char_duplicates_ratio is not None:
            n_chars = len(text) - text.count("\n")
            ratio = _duplicates(lines)[1] / n_chars
            if ratio > self.char_duplicates_ratio:
                return (
                    f"fineweb_filter: duplicated-line char fraction {_fmt(ratio)}"
                    f" > {self.char_duplicates_ratio}"
                )
        if self.new_line_ratio is not None:
            n_words = len(_TOKENIZERS[self.tokenizer](text))
            ratio = text.count("\n") / n_words
            if ratio > self.new_line_ratio:
                return f"fineweb_filter: newlines per word {_fmt(ratio)} > {self.new_line_ratio}"
        return None


_WORD = re.compile(r"\w+")


@stages.register
class Length(FilterStage):
    """Length bounds on characters and/or words (`\\w+` runs). No bound by default."""

    type: Literal["length"] = "length"
    column: str = Field("text", description="the text column checked")
    min_chars: int | None = Field(None, description="fewest characters")
    max_chars: int | None = Field(None, description="most characters")
    min_words: int | None = Field(None, description="fewest words")
    max_words: int | None = Field(None, description="most words")

    def requires(self) -> set[str]:
        return {self.column}

    def check(self, record: Record) -> str | None:
        text = _text(record, self.column)
        n = len(text)
        if self.min_chars is not None and n < self.min_chars:
            return f"length: {n} chars < {self.min_chars}"
        if self.max_chars is not None and n > self.max_chars:
            return f"length: {n} chars > {self.max_chars}"
        if self.min_words is not None or self.max_words is not None:
            w = sum(1 for _ in _WORD.finditer(text))
            if self.min_words is not None and w < self.min_words:
                return f"length: {w} words < {self.min_words}"
            if self.max_words is not None and w > self.max_words:
                return f"length: {w} words > {self.max_words}"
        return None
