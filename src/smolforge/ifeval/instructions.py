"""IFEval's 25 verifiable instructions (Zhou et al. 2023, "Instruction-Following
Evaluation for Large Language Models", google-research/instruction_following_eval)
and an offline subset of IFBench's (Pyatkin et al. 2025, allenai/IFBench).

Each instruction has IFEval's id, its parameter names (the keys of a `kwargs`
dict), IFEval's description text, a seeded sampler for its parameters and a
checker. The checkers follow the reference code line by line (as packaged by pip
`if-verifiable`), including its quirks: keywords are regular expressions, "less
than" is strict and "at least" is inclusive, `number_paragraphs` splits on `***`,
`nth_paragraph_first_word` on blank lines.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smolforge.expr import ExprError, compile_regex
from smolforge.ifeval import text as T
from smolforge.text import loads_json


def _rx(pattern: str, flags: str = "") -> Any:
    """A regex built from an instruction's parameters (data, not code): RE2, linear in
    the response, so a crafted keyword such as `(a+)+$` cannot hang a run. Unlike
    Python's `re`, its `\\b` and `\\w` are ASCII; lookaround and backreferences are a
    ValueError naming the parameter's own text (the record is rejected as bad
    constraint data). `flags`: RE2's inline flags, e.g. `(?i)`."""
    try:
        return compile_regex(flags + pattern, "IFEval keywords use")
    except ExprError as e:
        raise ExprError(str(e).replace(repr(flags + pattern), repr(pattern), 1)) from None


RELATIONS = ("less than", "at least")

LANGUAGES = {
    "en": "English", "es": "Spanish", "pt": "Portuguese", "ar": "Arabic", "hi": "Hindi",
    "fr": "French", "ru": "Russian", "de": "German", "ja": "Japanese", "it": "Italian",
    "bn": "Bengali", "uk": "Ukrainian", "th": "Thai", "ur": "Urdu", "ta": "Tamil",
    "te": "Telugu", "bg": "Bulgarian", "ko": "Korean", "pl": "Polish", "he": "Hebrew",
    "fa": "Persian", "vi": "Vietnamese", "ne": "Nepali", "sw": "Swahili", "kn": "Kannada",
    "mr": "Marathi", "gu": "Gujarati", "pa": "Punjabi", "ml": "Malayalam", "fi": "Finnish",
}

CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
ENDING_OPTIONS = ("Any other questions?", "Is there anything else I can help with?")
SECTION_SPLITTERS = ("Section", "SECTION")
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")

# Keywords drawn for keyword constraints: IFEval's word list
# (instructions_util.WORD_LIST, Apache-2.0).
WORD_LIST = tuple("""
western sentence signal spot opposite bottom potato welcome morning good agency
primary wish responsibility press problem steal brush read type beat growth lock
bone case equal comfortable region performance walk medicine film thing rock
total competition ease south gather parking world plenty breath claim trade dear
highlight street matter decision mess agreement studio coach assist brain wing
style private top brown leg buy procedure method speed high company valuable pie
analyst session pattern district pleasure dinner swimming joke order plate
department motor cell spend cabinet difference power examination engine horse
dimension pay toe curve literature bother fire possibility debate activity
passage hello cycle background quiet author effect actor page bicycle error
throat attack character phone tea increase outcome file specific inspector
internal potential staff building employer shoe hand direction garden purchase
interview study recognition member spiritual oven sandwich weird passenger
particular response reaction size variation cancel candy exit guest condition
fly price weakness convert hotel great mouth mind song sugar suspect telephone
ear roof paint refrigerator organization jury reward engineering day possession
crew bar road description celebration score mark letter shower suggestion sir
luck national progress hall stroke theory offer story tax definition history
ride medium opening glass elevator stomach question ability leading village
computer city grand confidence candle priest recommendation point necessary body
desk secret horror noise culture warning water round diet flower bus tough
permission week prompt connection abuse height save corner border stress drive
stop rip meal listen confusion girlfriend living relation significance plan
creative atmosphere blame invite housing paper drink roll silver drunk age damage
smoke environment pack savings influence tourist rain post sign grandmother run
profit push clerk final wine swim pause stuff singer funeral average source scene
tradition personal snow nobody distance sort sensitive animal major negotiation
click mood period arrival expression holiday repeat dust closet gold bad sail
combination clothes emphasis duty black step school jump document professional
lip chemical front wake while inside watch row subject penalty balance possible
adult aside sample appeal wedding depth king award wife blow site camp music safe
gift fault guess act shame drama capital exam stupid record sound swing novel
minimum ratio machine shape lead operation salary cloud affair hit chapter stage
quantity access army chain traffic kick analysis airport time vacation philosophy
ball chest thanks place mountain advertising red past rent return tour house
construction net native war figure fee spray user dirt shot task stick friend
software promotion interaction surround block purpose practice conflict routine
requirement bonus hole state junior sweet catch tear fold wall editor life
position pound respect bathroom coat script job teach birth view resolve theme
employee doubt market education serve recover tone harm miss union understanding
cow river association concept training recipe relationship reserve depression
proof hair revenue independent lift assignment temporary amount loss edge track
check rope estimate pollution stable message delivery perspective mirror
assistant representative witness nature judge fruit tip devil town emergency
upper drop stay human neck speaker network sing resist league trip signature
lawyer importance gas choice engineer success part external worker simple quarter
student heart pass spite shift rough lady grass community garage youth standard
skirt promise blind television disease commission positive energy calm presence
tune basis preference head common cut somewhere presentation current thought
revolution effort master implement republic floor principle stranger shoulder
grade button tennis police collection account register glove divide professor
chair priority combine peace extension maybe evening frame sister wave code
application mouse match counter bottle half cheek resolution back knowledge make
discussion screw length accident battle dress knee log package it turn hearing
newspaper layer wealth profile imagination answer weekend teacher appearance meet
bike rise belt crash bowl equivalent support image poem risk excitement remote
secretary public produce plane display money sand situation punch customer title
shake mortgage option number pop window extent nothing experience opinion
departure dance indication boy material band leader sun beautiful muscle farmer
variety fat handle director opportunity calendar outside pace bath fish
consequence put owner go doctor information share hurt protection career finance
force golf garbage aspect kid food boot milk respond objective reality raw ring
mall one impact area news international series impress mother shelter strike
loan month seat anything entertainment familiar clue year glad supermarket
natural god cost conversation tie ruin comfort earth storm percentage assistance
budget strength beginning sleep other young unit fill store desire hide value cup
maintenance nurse function tower role class camera database panic nation basket
ice art spirit chart exchange feedback statement reputation search hunt exercise
nasty notice male yard annual collar date platform plant fortune passion
friendship spread cancer ticket attitude island active object service buyer bite
card face steak proposal patient heat rule resident broad politics west knife
expert girl design salt baseball grab inspection cousin couple magazine cook
dependent security chicken version currency ladder scheme kitchen employment
local attention manager fact cover sad guard relative county rate lunch program
initiative gear bridge breast talk dish guarantee beer vehicle reception woman
substance copy lecture advantage park cold death mix hold scale tomorrow blood
request green cookie church strip forever beyond debt tackle wash following feel
maximum sector sea property economics menu bench try language start call solid
address income foot senior honey few mixture cash grocery link map form factor
pot model writer farm winter skill anywhere birthday policy release husband lab
hurry mail equipment sink pair driver consideration leather skin blue boat sale
brick two feed square dot rush dream location afternoon manufacturer control
occasion trouble introduction advice bet eat kill category manner office estate
pride awareness slip crack client nail shoot membership soft anybody web official
individual pizza interest bag spell profession queen deal resource ship guy
chocolate joint formal upstairs car resort abroad dealer associate finger surgery
comment team detail crazy path tale initial arm radio demand single draw yellow
contest piece quote pull commercial shirt contribution cream channel suit
discipline instruction concert speech low effective hang scratch industry
breakfast lay join metal bedroom minute product rest temperature many give
argument print purple laugh health credit investment sell setting lesson egg
middle marriage level evidence phrase love self benefit guidance affect you dad
anxiety special boyfriend test blank payment soup obligation reply smile deep
complaint addition review box towel minor fun soil issue cigarette internet gain
tell entry spare incident family refuse branch can pen grandfather constant tank
uncle climate ground volume communication kind poet child screen mine quit gene
lack charity memory tooth fear mention marketing reveal reason court season
freedom land sport audience classroom law hook win carry eye smell distribution
research country dare hope whereas stretch library if delay college plastic book
present use worry champion goal economy march election reflection midnight slide
inflation action challenge guitar coast apple campaign field jacket sense way
visual remove weather trash cable regret buddy beach historian courage sympathy
truck tension permit nose bed son person base meat usual air meeting worth game
independence physical brief play raise board she key writing pick command party
yesterday spring candidate physics university concern development change string
target instance room bitter bird football normal split impression wood long
meaning stock cap leadership media ambition fishing essay salad repair today
designer night bank drawing inevitable phase vast chip anger switch cry twist
personality attempt storage being preparation bat selection white technology
contract side section station till structure tongue taste truth difficulty group
limit main move feeling light example mission might wait wheel shop host classic
alternative cause agent consist table airline text pool craft range fuel tool
partner load entrance deposit hate article video summer feature extreme mobile
hospital flight fall pension piano fail result rub gap system report suck
ordinary wind nerve ask shine note line mom perception brother reference bend
charge treat trick term homework bake bid status project strategy orange let
enthusiasm parent concentrate device travel poetry business society kiss end
vegetable employ schedule hour brave focus process movie illegal general coffee
ad highway chemistry psychology hire bell conference relief show neat funny
weight quality club daughter zone touch tonight shock burn excuse name survey
landscape advance satisfaction bread disaster item hat prior shopping visit east
photo home idea father comparison cat pipe winner count lake fight prize
foundation dog keep ideal fan struggle peak safety solution hell conclusion
population strain alarm measurement second train race due insurance boss tree
monitor sick course drag appointment slice still care patience rich escape
emotion royal female childhood government picture will sock big gate oil cross
pin improvement championship silly help sky pitch man diamond most transition
work science committee moment fix teaching dig specialist complex guide people
dead voice original break topic data degree reading recording bunch reach
judgment lie regular set painting mode list player bear north wonder carpet heavy
officer negative clock unique baby pain assumption disk iron bill drawer look
double mistake finish future brilliant contact math rice leave restaurant
discount sex virus bit trust event wear juice failure bug context mud whole wrap
intention draft pressure cake dark explanation space angle word efficiency
management habit star chance finding transportation stand criticism flow door
injury insect surprise apartment
""".split())  # noqa: SIM905

Kwargs = dict[str, Any]


@dataclass(frozen=True)
class Instruction:
    """One verifiable instruction type."""

    id: str
    params: tuple[str, ...]
    describe: Callable[[Kwargs], str]
    check: Callable[[str, Kwargs], bool]
    sample: Callable[[random.Random, str], Kwargs]
    source: str = "ifeval"
    required: tuple[str, ...] = field(default=())

    def description(self, kwargs: Kwargs) -> str:
        return self.describe(self.normalize(kwargs))

    def normalize(self, kwargs: Kwargs | None) -> Kwargs:
        """IFEval's parameters for this instruction: unknown keys and null values
        dropped (the public IFEval file, loaded with `datasets`, has every key of
        every instruction in each dict, null where unused), required ones present."""
        kw = {k: v for k, v in (kwargs or {}).items() if v is not None and k in self.params}
        missing = [k for k in self.required if k not in kw]
        if missing:
            raise ValueError(f"{self.id}: missing parameter(s) {', '.join(missing)}")
        return kw

    def follows(self, response: str, kwargs: Kwargs) -> bool:
        """Strict check of one response (IFEval: an empty response never follows)."""
        return bool(response.strip()) and bool(self.check(response, self.normalize(kwargs)))


REGISTRY: dict[str, Instruction] = {}


def _add(id: str, params: tuple[str, ...], describe, check, sample, source="ifeval",
         required: tuple[str, ...] | None = None) -> None:
    REGISTRY[id] = Instruction(id, params, describe, check, sample, source,
                               params if required is None else required)


def _rel(kw: Kwargs, key: str, count: int, threshold: int) -> bool:
    rel = kw[key]
    if rel not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {rel!r}")
    return count < threshold if rel == RELATIONS[0] else count >= threshold


def _words(rng: random.Random, k: int) -> list[str]:
    return rng.sample(WORD_LIST, k)


def _none(rng: random.Random, prompt: str) -> Kwargs:
    return {}


def _language_of(text: str) -> str | None:
    """The language py3langid finds, or None when there is nothing to detect
    (IFEval's langdetect raises then, and IFEval counts the check as followed)."""
    if not any(c.isalpha() for c in text):
        return None
    from smolforge.stages.quality.language import _load_identifier

    lang, _ = _load_identifier().classify(text.replace("\n", " "))
    return str(lang)


# --- keywords -------------------------------------------------------------------------
_add("keywords:existence", ("keywords",),
     lambda kw: f"Include keywords {sorted(kw['keywords'])} in the response.",
     lambda r, kw: all(_rx(k, "(?i)").search(r) for k in kw["keywords"]),
     lambda rng, p: {"keywords": sorted(_words(rng, 2))})
_add("keywords:frequency", ("keyword", "frequency", "relation"),
     lambda kw: f"In your response, the word {kw['keyword'].strip()} should appear "
                f"{kw['relation']} {kw['frequency']} times.",
     lambda r, kw: _rel(kw, "relation",
                        len(_rx(kw["keyword"].strip(), "(?i)").findall(r)),
                        kw["frequency"]),
     lambda rng, p: {"keyword": _words(rng, 1)[0], "frequency": rng.randint(1, 3),
                     "relation": rng.choice(RELATIONS)})
_add("keywords:forbidden_words", ("forbidden_words",),
     lambda kw: f"Do not include keywords {sorted(set(kw['forbidden_words']))} in the response.",
     lambda r, kw: not any(_rx(r"\b" + w + r"\b", "(?i)").search(r) for w in kw["forbidden_words"]),
     lambda rng, p: {"forbidden_words": sorted(_words(rng, 2))})


def _letter(kw: Kwargs) -> str:
    letter = str(kw["letter"]).strip().lower()
    if len(letter) != 1 or not ("a" <= letter <= "z"):
        raise ValueError(f"letter must be one ASCII letter, got {kw['letter']!r}")
    return letter


_add("keywords:letter_frequency", ("letter", "let_frequency", "let_relation"),
     lambda kw: f"In your response, the letter {_letter(kw)} should appear "
                f"{kw['let_relation']} {kw['let_frequency']} times.",
     lambda r, kw: _rel(kw, "let_relation", Counter(r.lower())[_letter(kw)], kw["let_frequency"]),
     lambda rng, p: {"letter": rng.choice(string.ascii_lowercase),
                     "let_frequency": rng.randint(1, 10), "let_relation": rng.choice(RELATIONS)})

# --- language -------------------------------------------------------------------------
_add("language:response_language", ("language",),
     lambda kw: f"Your ENTIRE response should be in {LANGUAGES[kw['language']]} language, "
                "no other language is allowed.",
     lambda r, kw: (lang := _language_of(r)) is None or lang == kw["language"],
     lambda rng, p: {"language": rng.choice(sorted(LANGUAGES))})

# --- length constraints ---------------------------------------------------------------
_add("length_constraints:number_sentences", ("num_sentences", "relation"),
     lambda kw: f"Your response should contain {kw['relation']} {kw['num_sentences']} sentences.",
     lambda r, kw: _rel(kw, "relation", T.count_sentences(r), kw["num_sentences"]),
     lambda rng, p: {"num_sentences": rng.randint(1, 20), "relation": rng.choice(RELATIONS)})


def _paragraphs_ok(r: str, kw: Kwargs) -> bool:
    parts = re.split(r"\s?\*\*\*\s?", r)
    n = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                n -= 1
            else:
                return False
    return n == kw["num_paragraphs"]


_add("length_constraints:number_paragraphs", ("num_paragraphs",),
     lambda kw: f"There should be {kw['num_paragraphs']} paragraphs. "
                "Paragraphs are separated with the markdown divider: ***",
     _paragraphs_ok,
     lambda rng, p: {"num_paragraphs": rng.randint(1, 5)})
_add("length_constraints:number_words", ("num_words", "relation"),
     lambda kw: f"Answer with {kw['relation']} {kw['num_words']} words.",
     lambda r, kw: _rel(kw, "relation", T.count_words(r), kw["num_words"]),
     lambda rng, p: {"num_words": rng.randint(100, 500), "relation": rng.choice(RELATIONS)})


def _nth_first_word(r: str, kw: Kwargs) -> bool:
    nth, want = kw["nth_paragraph"], str(kw["first_word"]).lower()
    paragraphs = re.split(r"\n\n", r)
    n = sum(1 for p in paragraphs if p.strip())
    if nth > n:
        return False
    paragraph = paragraphs[nth - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        first += ch.lower()
    return n == kw["num_paragraphs"] and first == want


def _sample_nth(rng: random.Random, p: str) -> Kwargs:
    n = rng.randint(2, 5)
    return {"num_paragraphs": n, "nth_paragraph": rng.randint(1, n), "first_word": _words(rng, 1)[0]}


_add("length_constraints:nth_paragraph_first_word", ("num_paragraphs", "nth_paragraph", "first_word"),
     lambda kw: f"There should be {kw['num_paragraphs']} paragraphs. Paragraphs and only "
                "paragraphs are separated with each other by two new lines as if it was "
                f"'\\n\\n' in python. Paragraph {kw['nth_paragraph']} must start with word "
                f"{str(kw['first_word']).lower()}.",
     _nth_first_word, _sample_nth)

# --- detectable content ---------------------------------------------------------------
_add("detectable_content:number_placeholders", ("num_placeholders",),
     lambda kw: f"The response must contain at least {kw['num_placeholders']} placeholders "
                "represented by square brackets, such as [address].",
     lambda r, kw: len(_rx(r"\[.*?\]").findall(r)) >= kw["num_placeholders"],
     lambda rng, p: {"num_placeholders": rng.randint(1, 4)})


def _postscript(r: str, kw: Kwargs) -> bool:
    marker = str(kw["postscript_marker"]).strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(_rx(pattern, "(?m)").findall(r.lower()))


_add("detectable_content:postscript", ("postscript_marker",),
     lambda kw: "At the end of your response, please explicitly add a postscript starting "
                f"with {str(kw['postscript_marker']).strip()}",
     _postscript, lambda rng, p: {"postscript_marker": rng.choice(POSTSCRIPT_MARKERS)})

# --- detectable format ----------------------------------------------------------------
_add("detectable_format:number_bullet_lists", ("num_bullets",),
     lambda kw: f"Your answer must contain exactly {kw['num_bullets']} bullet points. Use the "
                "markdown bullet points such as:\n* This is point 1. \n* This is point 2",
     lambda r, kw: (len(re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE))
                    + len(re.findall(r"^\s*-.*$", r, flags=re.MULTILINE))) == kw["num_bullets"],
     lambda rng, p: {"num_bullets": rng.randint(1, 5)})
_add("detectable_format:constrained_response", (),
     lambda kw: f"Answer with one of the following options: {CONSTRAINED_RESPONSE_OPTIONS}",
     lambda r, kw: any(o in r.strip() for o in CONSTRAINED_RESPONSE_OPTIONS), _none)


def _highlights(r: str, kw: Kwargs) -> bool:
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", r)
             if h.removeprefix("**").removesuffix("**").strip())
    return n >= kw["num_highlights"]


_add("detectable_format:number_highlighted_sections", ("num_highlights",),
     lambda kw: f"Highlight at least {kw['num_highlights']} sections in your answer with "
                "markdown, i.e. *highlighted section*.",
     _highlights, lambda rng, p: {"num_highlights": rng.randint(1, 4)})


def _sections(r: str, kw: Kwargs) -> bool:
    splitter = str(kw["section_spliter"]).strip()
    return len(_rx(r"\s?" + splitter + r"\s?\d+\s?").split(r)) - 1 >= kw["num_sections"]


def _describe_sections(kw: Kwargs) -> str:
    s = str(kw["section_spliter"]).strip()
    return (f"Your response must have {kw['num_sections']} sections. Mark the beginning of "
            f"each section with {s} X, such as:\n{s} 1\n[content of section 1]\n{s} 2\n"
            "[content of section 2]")


_add("detectable_format:multiple_sections", ("section_spliter", "num_sections"),
     _describe_sections, _sections,
     lambda rng, p: {"section_spliter": rng.choice(SECTION_SPLITTERS), "num_sections": rng.randint(1, 5)})


def _json(r: str, kw: Kwargs) -> bool:
    v = (r.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON")
         .removeprefix("```").removesuffix("```").strip())
    try:
        loads_json(v)  # nested past MAX_JSON_DEPTH: not followed (a ValueError), no RecursionError
    except ValueError:
        return False
    return True


_add("detectable_format:json_format", (),
     lambda kw: "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
     _json, _none)
_add("detectable_format:title", (),
     lambda kw: "Your answer must contain a title, wrapped in double angular brackets, such as "
                "<<poem of joy>>.",
     lambda r, kw: any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r)),
     _none)

# --- combination ----------------------------------------------------------------------


def _two_responses(r: str, kw: Kwargs) -> bool:
    valid = []
    parts = r.split("******")
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


_add("combination:two_responses", (),
     lambda kw: "Give two different responses. Responses and only responses should be "
                "separated by 6 asterisk symbols: ******.",
     _two_responses, _none)
_add("combination:repeat_prompt", ("prompt_to_repeat",),
     lambda kw: "First repeat the request word for word without change, then give your answer "
                "(1. do not say any words or characters before repeating the request; 2. the "
                "request you need to repeat does not include this sentence)",
     lambda r, kw: r.strip().lower().startswith(str(kw["prompt_to_repeat"]).strip().lower()),
     lambda rng, p: {"prompt_to_repeat": p})

# --- start / end ----------------------------------------------------------------------
_add("startend:end_checker", ("end_phrase",),
     lambda kw: f"Finish your response with this exact phrase {str(kw['end_phrase']).strip()}. "
                "No other words should follow this phrase.",
     lambda r, kw: r.strip().strip('"').lower().endswith(str(kw["end_phrase"]).strip().lower()),
     lambda rng, p: {"end_phrase": rng.choice(ENDING_OPTIONS)})
_add("startend:quotation", (),
     lambda kw: "Wrap your entire response with double quotation marks.",
     lambda r, kw: len(v := r.strip()) > 1 and v[0] == '"' and v[-1] == '"', _none)

# --- change case ----------------------------------------------------------------------
_add("change_case:capital_word_frequency", ("capital_frequency", "capital_relation"),
     lambda kw: "In your response, words with all capital letters should appear "
                f"{kw['capital_relation']} {kw['capital_frequency']} times.",
     lambda r, kw: _rel(kw, "capital_relation", T.count_capital_words(r), kw["capital_frequency"]),
     lambda rng, p: {"capital_frequency": rng.randint(1, 20), "capital_relation": rng.choice(RELATIONS)})
_add("change_case:english_capital", (),
     lambda kw: "Your entire response should be in English, and in all capital letters.",
     lambda r, kw: r.isupper() and _language_of(r) in (None, "en"), _none)
_add("change_case:english_lowercase", (),
     lambda kw: "Your entire response should be in English, and in all lowercase letters. "
                "No capital letters are allowed.",
     lambda r, kw: r.islower() and _language_of(r) in (None, "en"), _none)

# --- punctuation ----------------------------------------------------------------------
_add("punctuation:no_comma", (),
     lambda kw: "In your entire response, refrain from the use of any commas.",
     lambda r, kw: "," not in r, _none)

IFEVAL_IDS = tuple(REGISTRY)

# --- IFBench (offline subset) ---------------------------------------------------------


def _sample_range(rng: random.Random, p: str) -> Kwargs:
    lo = rng.randint(100, 500)
    return {"min_words": lo, "max_words": lo + rng.randint(int(lo * 0.05), int(lo * 0.1))}


_add("count:word_count_range", ("min_words", "max_words"),
     lambda kw: f"The response must contain between {kw['min_words']} and {kw['max_words']} words.",
     lambda r, kw: kw["min_words"] <= T.count_words(r) <= kw["max_words"],
     _sample_range, source="ifbench")
_add("count:unique_word_count", ("N",),
     lambda kw: f"Use at least {kw['N']} unique words in the response.",
     lambda r, kw: len({w.strip(string.punctuation + " ") for w in r.lower().split()}) >= kw["N"],
     lambda rng, p: {"N": rng.randint(100, 500)}, source="ifbench")

_KW_COUNTS = (1, 2, 3, 5, 7)
_add("count:keywords_multiple", ("keyword1", "keyword2", "keyword3", "keyword4", "keyword5"),
     lambda kw: (f"Include keyword {kw['keyword1'].strip()} once in your response, keyword "
                 f"{kw['keyword2'].strip()} twice in your response, keyword {kw['keyword3'].strip()} "
                 f"three times in your response, keyword {kw['keyword4'].strip()} five times in "
                 f"your response, and keyword {kw['keyword5'].strip()} seven times in your response."),
     lambda r, kw: all(r.lower().count(kw[f"keyword{i + 1}"].strip().lower()) == c
                       for i, c in enumerate(_KW_COUNTS)),
     lambda rng, p: {f"keyword{i + 1}": w for i, w in enumerate(_words(rng, 5))}, source="ifbench")


def _palindromes(r: str, kw: Kwargs) -> bool:
    words = r.translate(str.maketrans("", "", string.punctuation)).lower().split()
    return sum(1 for w in words if w == w[::-1] and len(w) >= 5) >= 10


_add("words:palindrome", (),
     lambda kw: "Include at least 10 single-word palindromes, each at least 5 characters long.",
     _palindromes, _none, source="ifbench")


def _nested(r: str, kw: Kwargs) -> bool:
    levels: list[str] = []
    depth = 0
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in r:
        if ch in "([{":
            levels.append(ch)
            depth = max(depth, len(levels))
        elif ch in ")]}":
            if levels and levels[-1] == pairs[ch]:
                levels.pop()
                if depth >= 5 and len(levels) < depth:
                    return True
            else:
                levels, depth = [], 0
    return False


_add("format:parentheses", (),
     lambda kw: "Nest parentheses (and [brackets {and braces}]) at least 5 levels deep.",
     _nested, _none, source="ifbench")

IFBENCH_IDS = tuple(i for i in REGISTRY if REGISTRY[i].source == "ifbench")

# --- IFEval's conflict table (instructions that cannot be combined) --------------------


def _conflicts() -> dict[str, set[str]]:
    every = set(REGISTRY)
    c: dict[str, set[str]] = {i: {i} for i in REGISTRY}
    c["language:response_language"] |= {
        "detectable_format:multiple_sections", "keywords:existence", "keywords:frequency",
        "keywords:forbidden_words", "startend:end_checker", "change_case:english_capital",
        "change_case:english_lowercase"}
    c["length_constraints:number_paragraphs"] |= {
        "length_constraints:nth_paragraph_first_word", "length_constraints:number_sentences"}
    c["length_constraints:nth_paragraph_first_word"] |= {"length_constraints:number_paragraphs"}
    c["detectable_format:constrained_response"] = set(every)
    c["detectable_format:multiple_sections"] |= {
        "language:response_language", "detectable_format:number_highlighted_sections"}
    c["detectable_format:json_format"] = every - {"keywords:forbidden_words", "keywords:existence"}
    c["combination:two_responses"] = every - {
        "keywords:forbidden_words", "keywords:existence", "language:response_language",
        "detectable_format:title", "punctuation:no_comma"}
    c["combination:repeat_prompt"] = every - {
        "keywords:existence", "detectable_format:title", "punctuation:no_comma"}
    c["change_case:capital_word_frequency"] |= {
        "change_case:english_lowercase", "change_case:english_capital"}
    c["change_case:english_lowercase"] |= {"change_case:english_capital"}
    c["startend:quotation"] |= {"detectable_format:title"}
    # IFBench additions: two word-count targets cannot both be met.
    c["count:word_count_range"] |= {"length_constraints:number_words", "count:unique_word_count"}
    # IFEval's conflict_make: symmetric, and everything conflicts with itself.
    for key in list(c):
        for k in list(c[key]):
            c[k].add(key)
        c[key].add(key)
    return c


CONFLICTS: dict[str, set[str]] = _conflicts()


def get(instruction_id: str) -> Instruction:
    try:
        return REGISTRY[instruction_id]
    except KeyError:
        from smolforge.registry import closest

        hint = closest(instruction_id, list(REGISTRY))
        raise ValueError(f"unknown instruction id {instruction_id!r}"
                         + (f" (did you mean {hint!r}?)" if hint else "")) from None


def compatible(ids: list[str]) -> bool:
    return all(b not in CONFLICTS[a] for i, a in enumerate(ids) for b in ids[i + 1:])


def sample_constraints(rng: random.Random, prompt: str, k: int, pool: list[str],
                       fixed: dict[str, Kwargs] | None = None) -> tuple[list[str], list[Kwargs]]:
    """Up to `k` mutually compatible instructions from `pool`, each with sampled
    parameters (overridden by `fixed[id]`)."""
    order = list(pool)
    rng.shuffle(order)
    ids: list[str] = []
    for i in order:
        if len(ids) == k:
            break
        if all(i not in CONFLICTS[j] for j in ids):
            ids.append(i)
    kwargs = []
    for i in ids:
        kw = REGISTRY[i].sample(rng, prompt)
        kw.update((fixed or {}).get(i, {}))
        kwargs.append(kw)
    return ids, kwargs
