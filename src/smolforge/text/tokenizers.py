"""Word tokens and sentence counts for the heuristic filters.

`rules` (the default of every filter's `tokenizer` field) reproduces spaCy's blank
English tokenizer, which datatrove 0.10 uses for English words (so FineWeb's filters
decide as datatrove does), without needing spaCy: punctuation is split off one
character at a time (`f()` is `f ( )`, `====` four tokens), hyphens between letters
split (`state - of - the - art`), contractions split (`do n't`), abbreviations and URLs
stay whole. `spacy` calls spaCy itself (if installed). `regex` is our earlier
tokenizer: a word is a run of letters/digits joined by `'.,-`, and every other run of
symbols is one token. `count_sentences` counts as spaCy's sentencizer does.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Literal

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
