"""An answer with no generator: the passage sentences that best answer the question, quoted.

Why: a quote cannot invent. When the model's answer fails the grounding check, or there
is no model to ask, the one or two sentences of the retrieved passages that best match
the question, quoted with their passage number (``"Refunds are possible within 14 days."
[2]``), are an answer the reader can check at a glance; and when even the best sentence
matches the question poorly, there is no answer (``None``: refuse).

How: the passages are cut into units (sentences of prose, and whole lines for headings,
bullets and table rows, which have no full stop); each unit is scored by the question's
content words it contains, weighted by their rarity among all units (BM25's IDF, with a
mild length normalisation), as a share of the question's total weight, so 1.0 means every
question word is there and the threshold means the same for every question. A heading's
and a table header's words count half for the units under them ("Wingspan | 2.9 m" under
"Heron QH-640 Technical Specifications"). The score is then raised for passages the
search ranked higher, and for a unit holding what the question asks for: an amount of
money for "price / cost / fee", a number for "how many / how long", a date for "when", a
name for "who".

Words are compared exactly as in ``rag.answer.grounding`` (same normalisation, stop words and
stems; one home for them), so a quoted answer passes the grounding check.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from rag.answer.grounding import Term, analyse, split_sentences, terms, vocabulary
from rag.choices import DEFAULT_MIN_QUOTE_SCORE

# Best score below which there is no answer. A first guess, to be chosen from the gold set
# (``candidates`` gives the scores).
MAX_SENTENCES = 2
# A second sentence is quoted only when its own words bring this share of the question's
# weight that the first lacks ("What is the hotel limit in Paris, and the daily
# allowance?"), and it scores at least this share of the threshold (it answers only part).
SECOND_MIN_GAIN = 0.25
SECOND_MIN_SHARE = 0.5
CONTEXT_WEIGHT = 0.5  # a heading's or table header's words, for the units under them
RANK_BONUS = 0.1  # x 1/rank: the search's order breaks near-ties
TYPE_BONUS = 0.25  # the unit holds what the question asks for
FACT_WEIGHT = 2.0  # a name or identifier in the question ("Lyon", "QH-640") weighs double
# A unit with no word beyond the question's ("Amber double blink", a table's label cell or a
# heading that repeats the question) only echoes it; the answer is what comes with it.
ECHO_FACTOR = 0.5
BM25_K1, BM25_B = 1.2, 0.3
MAX_ROW_LINES = 4  # a table row of a PDF, one cell (or part of one) per line
WRAPPED_MIN = 50  # characters: a shorter line is never taken for wrapped prose

# Words that say what kind of answer is wanted, not what it is about.
QUESTION_WORDS = frozenset(
    """
    what which who whom whose when where why how many much long far often quickly soon
    old big large high tell know find give explain describe happen happens
    """.split()  # noqa: SIM905
)
_ASKS_NUMBER = re.compile(
    r"\bhow (many|much|long|far|high|often|quickly|fast|big|large|heavy|old|soon|wide|deep)\b"
    r"|\b(price|cost|costs|fee|percentage|percent|rate|amount|number|size|weight|length|"
    r"wingspan|payload|torque|temperature|speed|limit|minimum|maximum|duration|"
    r"extension|score)\b",
    re.IGNORECASE,
)
_ASKS_MONEY = re.compile(
    r"\b(price|prices|cost|costs|fee|fees|pay|charge|charged|budget|rate)\b", re.IGNORECASE
)
_MONEY = re.compile(
    r"(?:[€$£]|\b(?:EUR|USD|GBP|CHF|euros?|dollars?)\b)\s?\d|\d\s?(?:€|\b(?:EUR|euros?)\b)",
    re.IGNORECASE,
)
_ASKS_DATE = re.compile(r"\bwhen\b|\b(what|which) (date|day|time|year|month)\b", re.IGNORECASE)
_ASKS_NAME = re.compile(r"\bwho(m|se)?\b", re.IGNORECASE)
_MONTHS = """
    january february march april may june july august september october november december
    monday tuesday wednesday thursday friday saturday sunday
    """.split()  # noqa: SIM905
_DATE = re.compile(
    r"\b(" + "|".join(_MONTHS) + r")\b|\b(19|20)\d\d\b|\b\d{1,2}:\d\d\b", re.IGNORECASE
)


@dataclass(frozen=True)
class Candidate:
    """A unit of a passage and how well it answers the question (higher is better)."""

    passage: int  # 1-based, as cited
    text: str  # as quoted: markdown markers tidied, table cells joined with " | "
    score: float
    matched: frozenset[str]  # the question's term keys in the unit itself
    covered: frozenset[str]  # ... in the unit or the headings above it

    def quoted(self) -> str:
        return f'"{self.text}" [{self.passage}]'


@dataclass(frozen=True)
class _Unit:
    text: str
    context: tuple[str, ...]  # the headings (and table header) above it
    line: bool = False  # a line of its own: one sentence at most, not joined to others
    fragment: bool = False  # ... and not a sentence either: a PDF table cell, say
    pieces: tuple[str, ...] = ()  # of a run of lines: the lines; its first is the label
    quotable: bool = True  # not the chunk's contextual header, which the document lacks


def extract(
    question: str,
    passages: Sequence[str],
    min_score: float = DEFAULT_MIN_QUOTE_SCORE,
    max_sentences: int = MAX_SENTENCES,
) -> str | None:
    """The best one or two sentences, quoted and cited, or None when none is good enough.

    ``passages`` are the numbered passage texts in rank order ([1] = ``passages[0]``).
    Deterministic, pure Python, a few milliseconds for four passages of 1,000 characters
    (fine to call on the event loop). A second sentence is added only when it holds a good
    share of the question that the first, and the headings above it, lack (a question in
    two parts).
    """
    ranked, weights = _ranked(question, passages)
    if not ranked or ranked[0].score < min_score:
        return None
    chosen = [ranked[0]]
    total = sum(weights.values())
    while len(chosen) < max_sentences:
        covered = frozenset().union(*(c.covered for c in chosen))
        quoted = " ".join(c.text for c in chosen)

        def gain(candidate: Candidate, covered: frozenset[str] = covered) -> float:
            return sum(weights[k] for k in candidate.matched - covered) / total

        floor = min_score * SECOND_MIN_SHARE
        extra = [c for c in ranked if c.score >= floor and c.text not in quoted]
        best = max(extra, key=lambda c: (gain(c), c.score), default=None)
        if best is None or gain(best) < SECOND_MIN_GAIN:
            break
        chosen.append(best)
    return " ".join(c.quoted() for c in chosen)


def candidates(question: str, passages: Sequence[str]) -> list[Candidate]:
    """Every unit of every passage scored against the question, best first (ties: the
    earlier passage, then the earlier unit). What a threshold is chosen from."""
    return _ranked(question, passages)[0]


def _ranked(question: str, passages: Sequence[str]) -> tuple[list[Candidate], dict[str, float]]:
    asked = _question_terms(question)
    units = [(number, unit) for number, p in enumerate(passages, 1) for unit in _units(p)]
    if not asked or not units:
        return [], {}
    analyse([unit.text for _, unit in units])  # headings are units too: contexts are known
    weights = _idf(asked, [vocabulary(unit.text) for _, unit in units])
    for key, kind in asked.items():
        if kind in ("name", "id"):
            weights[key] *= FACT_WEIGHT
    total = sum(weights.values())
    units += _windows(units, asked)
    analysed = [_analysed(unit) for _, unit in units]
    average = sum(len(found) for found, _ in analysed) / len(analysed) or 1.0
    wants_money = bool(_ASKS_MONEY.search(question))
    wants_number = not wants_money and bool(_ASKS_NUMBER.search(question))
    wants_date = bool(_ASKS_DATE.search(question))
    wants_name = bool(_ASKS_NAME.search(question))
    scored = []
    contexts: dict[tuple[str, ...], frozenset[str]] = {}
    for index, ((number, unit), (found, own)) in enumerate(zip(units, analysed, strict=True)):
        if not unit.quotable:
            continue
        context = contexts.get(unit.context)
        if context is None:
            context = contexts[unit.context] = frozenset().union(
                *(vocabulary(c) for c in unit.context)
            )
        matched = frozenset(k for k in asked if k in own)
        inherited = frozenset(k for k in asked if k not in matched and k in context)
        norm = (BM25_K1 + 1) / (1 + BM25_K1 * (1 - BM25_B + BM25_B * len(found) / average))
        coverage = (
            sum(weights[k] for k in matched) * norm
            + CONTEXT_WEIGHT * sum(weights[k] for k in inherited)
        ) / total
        holds = (
            (wants_money and bool(_MONEY.search(unit.text)))
            or (wants_number and _has_number(found, asked))
            or (wants_date and bool(_DATE.search(unit.text)))
            or (wants_name and _has_name(found, asked))
        )
        echo = all(t.key in asked for t in found)
        score = coverage * (1 + RANK_BONUS / number) * (1 + TYPE_BONUS * holds)
        score *= ECHO_FACTOR if echo else 1.0
        candidate = Candidate(number, unit.text, score, matched, matched | inherited)
        scored.append((-score, number, index, candidate))
    scored.sort(key=lambda item: item[:3])
    return [candidate for *_, candidate in scored], weights


def _analysed(unit: _Unit) -> tuple[tuple[Term, ...], frozenset[str]]:
    """A unit's terms and vocabulary; a run of lines has its lines' (each cached)."""
    if not unit.pieces:
        return terms(unit.text), vocabulary(unit.text)
    found = tuple(t for piece in unit.pieces for t in terms(piece))
    return found, frozenset().union(*(vocabulary(piece) for piece in unit.pieces))


def _windows(units: list[tuple[int, _Unit]], asked: dict[str, str]) -> list[tuple[int, _Unit]]:
    """A short line that is not a sentence and the one to three lines after it, joined: a
    PDF table comes out one cell per line ("Maximum payload" / "2.4 kg"; a long cell takes
    two), and the answer is the row, not a cell. Only from a line that holds a word of the
    question (the row's label): "6.1 kg | Maximum payload" is a value and the next label;
    and a code the question names starts its row ("List price | WB-48" is a header and
    the next row)."""
    runs = []
    for i, (number, unit) in enumerate(units):
        label = vocabulary(unit.text)
        if not unit.fragment or not any(k in label for k in asked):
            continue
        codes = [k for k, kind in asked.items() if kind == "id" and k not in label]
        for size in range(2, MAX_ROW_LINES + 1):
            run = units[i : i + size]
            if len(run) < size or not all(n == number and u.line for n, u in run):
                break
            if any(k in vocabulary(u.text) for _, u in run[1:] for k in codes):
                break  # the row of the code the question names starts at that code
            pieces = tuple(u.text for _, u in run)
            runs.append((number, _Unit(" | ".join(pieces), unit.context, pieces=pieces)))
    return runs


def _question_terms(question: str) -> dict[str, str]:
    """The question's term keys and their kinds, question words left out."""
    asked: dict[str, str] = {}
    for term in terms(question):
        if term.text.lower() not in QUESTION_WORDS:
            asked.setdefault(term.key, term.kind)
    return asked


def _idf(keys: Iterable[str], units: Sequence[frozenset[str]]) -> dict[str, float]:
    """BM25's IDF over the units: a word in every unit weighs little, a word in none most."""
    count = len(units)
    weights = {}
    for key in keys:
        df = sum(key in unit for unit in units)
        weights[key] = math.log(1 + (count - df + 0.5) / (df + 0.5))
    return weights


def _has_number(found: Sequence[Term], asked: dict[str, str]) -> bool:
    """A number, or a code ("What is the policy number?" -> "QM-TRV-88231"), not the
    question's own."""
    return any(t.kind in ("number", "id") and t.key not in asked for t in found)


def _has_name(found: Sequence[Term], asked: dict[str, str]) -> bool:
    return any(
        t.kind == "name" and t.key not in asked and t.text.lower() not in _MONTHS for t in found
    )


# --------------------------------------------------------------------------------------------
# Passages into units
# --------------------------------------------------------------------------------------------

_MD_HEADING = re.compile(r"(#{1,6})\s+(.*?)\s*#*")
_RULE = re.compile(r"[-=_*~\s|:+]{3,}")  # ----, ====, |---|---|, setext underlines
_BULLET = re.compile(r"(?:[-*+•·▪◦‣]|\d{1,2}[.)]|[a-z][.)])\s+")
_ALIGNED = re.compile(r"\S(?: {2,}|\t)\S")  # "Phone extension:     2100"
_MARKUP = re.compile(r"\*\*|__|`")
_MARKED = re.compile(r"[*_`]")
_RULE_CHARS = frozenset("-=_*~|:+")
_UNDERLINE = re.compile(r"[-=]{3,}")
_TERMINAL = re.compile(r"[.!?:;]$")
_LABELLED = re.compile(r"\w: \S")


@lru_cache(maxsize=2048)  # the same chunks come back for question after question
def _units(passage: str) -> tuple[_Unit, ...]:
    """Sentences of prose, and whole lines for headings, bullets and table rows.

    Prose wrapped at a fixed width (PDF pages, plain-text files) is joined again first: a
    line joins the one before when that one does not end a sentence and either ran to
    nearly the full width or the new line starts in lower case. Lines laid out as a list
    or table (a bullet, a "|", aligned columns) are units of their own.
    """
    lines = [line.rstrip() for line in passage.splitlines()]
    # Prose wrapped at a width runs to near it; a short line (a cell, a list) is not wrapped.
    wrapped = max(0.7 * max((len(line) for line in lines), default=0), WRAPPED_MIN)
    units: list[_Unit] = []
    header = table_header = ""
    sections: dict[int, str] = {}  # heading level -> the latest heading of that level
    pending: list[str] = []  # prose lines being joined
    previous = ""  # the last line added to ``pending``, as it stood

    def context() -> tuple[str, ...]:
        return tuple(h for h in [header, *(sections[k] for k in sorted(sections))] if h)

    def flush() -> None:
        spans = split_sentences(" ".join(pending))
        line = len(pending) == 1 and len(spans) == 1
        # A cell, not "Phone extension:     2100", which has its label and value already.
        fragment = line and not _TERMINAL.search(pending[0]) and not _LABELLED.search(pending[0])
        for span in spans:
            text = " ".join(span.text.split())
            units.append(_Unit(text, context(), line, fragment))
        pending.clear()

    for i, raw in enumerate(lines):
        line = " ".join((_MARKUP.sub("", raw) if _MARKED.search(raw) else raw).split())
        following = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if not line or (line[0] in _RULE_CHARS and _RULE.fullmatch(line)):
            flush()
            continue
        # The chunk's contextual header: a first line with a blank line and more after it.
        first = i == 0 and i + 1 < len(lines) and not following and any(lines[i + 1 :])
        heading = _heading(line, first, following)
        if heading is not None:
            flush()
            text, level = heading
            if level == 0:
                units.append(_Unit(text, (), quotable=False))
                header = text
            else:
                sections = {k: v for k, v in sections.items() if k < level}
                units.append(_Unit(text, context()))
                sections[level] = text
            table_header = ""
            continue
        if "|" in line:
            flush()
            cells = " | ".join(c.strip() for c in line.strip("|").split("|") if c.strip())
            units.append(_Unit(cells, (*context(), table_header) if table_header else context()))
            table_header = table_header or cells
            continue
        table_header = ""
        bullet = _BULLET.match(line)
        text = line[bullet.end() :] if bullet else line
        laid_out = bool(bullet or _ALIGNED.search(raw))
        carries_on = bool(pending) and not _TERMINAL.search(pending[-1])
        if not (carries_on and (text[:1].islower() or (not laid_out and len(previous) >= wrapped))):
            flush()
        pending.append(text)
        previous = "" if laid_out else raw
        if laid_out and not following[:1].islower():
            flush()  # a list item or a "Label:   value" line ends with its line
    flush()
    return tuple(units)


def _heading(line: str, first: bool, following: str) -> tuple[str, int] | None:
    """The text and level of a heading line, or None.

    Level 0 is the passage's first line when a blank line follows (``first``): the chunk's
    contextual header ("Heron QH-640 Technical Specifications > Airframe"), context for
    every unit but not in the document itself, so never quoted. Then "# Title" (its number
    of #), a line underlined with ---- or ====, and a line of ALL-CAPS words ("WHO WE ARE";
    not "SRV-DIAG", a code on a line of its own).
    """
    match = _MD_HEADING.fullmatch(line) if line[0] == "#" else None
    if first:
        return (match.group(2) if match else line), 0
    if match:
        return match.group(2), len(match.group(1))
    if "|" in line:
        return None
    if following[:1] in ("-", "=") and _UNDERLINE.fullmatch(following):
        return line, 1 if following[0] == "=" else 2
    if line.isupper() and " " in line and sum(c.isalpha() for c in line) >= 4:
        return None if any(c.isdigit() for c in line) else (line, 2)
    return None
