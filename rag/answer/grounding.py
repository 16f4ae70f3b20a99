"""Is an answer backed by the passages it cites? A word-level check, no model.

Why: the small local models (Qwen2.5-Coder 0.5B/1.5B, SmolLM2-135M) invent, and what they
invent is exactly what a reader acts on: a name, an amount, an error code, a date. A wrong
"EUR 1,500" reads as confidently as the right "EUR 1,200", so the answer is checked
sentence by sentence against the passages it cites, and a sentence the passages do not
back is left out, or the whole answer becomes a refusal: refusing misleads nobody.

How, for each sentence of the answer:

- its *content words* are kept: stop words, filler ("according to the documents") and the
  ``[n]`` citation markers are dropped; identifiers (``E-342``, ``QH-640``), numbers,
  dates, amounts and names stay;
- each is looked up in the passages the sentence cites ([1] is ``passages[0]``), or in all
  of them when it cites none; words are compared after the same normalisation the
  evaluation uses (``rag.answer.text.normalise``: case, accents, ``1,200`` = ``1200``,
  ``€`` = ``EUR``, ``eight`` = ``8``) and a small suffix stripper, so "approves",
  "approval" and "approved" match;
- numbers, identifiers and names are *facts*: one that is missing makes the sentence
  unsupported whatever the share of other words found, since "E-343" differs from
  "E-342" by one character and in everything that matters;
- otherwise the sentence is supported when at least ``min_support`` of its content words
  are found. A sentence citing a passage that does not exist is unsupported.

A refusal ("The documents don't say.") is always supported and never an answer; so is a
sentence of pure filler ("Sure!"). What the check cannot see: negation ("is not" and "is"
share their content words), reasoning (a claim of EUR 1,200 approved under a rule "up to
EUR 5,000": the 1,200 is not in the passage, so that sentence counts as unsupported), and
words of another language than English (the stop words are English; capitalised German
nouns count as names).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal, NamedTuple

from rag.answer.text import CITATION, citations, normalise, says_refusal
from rag.choices import DEFAULT_MIN_SUPPORT

if TYPE_CHECKING:
    from rag.retrieval import Hit

# The share of a sentence's content words that must be in its passages. A first guess, to
# be chosen from the gold set; facts (numbers, identifiers, names) must be there anyway.
# What the prompt tells the model to reply when the passages do not answer.
DONT_SAY = "The documents don't say."

Mode = Literal["refuse", "mark"]
Kind = Literal["word", "name", "number", "id"]
FACTS: frozenset[Kind] = frozenset({"name", "number", "id"})

# Function words and answer filler; compared after normalisation (lower case, no accents,
# apostrophes split: "don't" is "don" + "t"). Negations are here too: a word check cannot
# tell "is" from "is not", and passages say "cannot" or "never" as often as "not".
STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing done down during
    each either else etc even ever every few for from further had has have having he her
    here hers herself him himself his how however i if in into is it its itself just least
    less let like may me might more most must my myself neither no nor not now of off on
    once only onto or other our ours ourselves out over own per please quite rather same
    shall she should so some such than that the their theirs them themselves then there
    these they this those though through thus to too under until up upon us very via was we
    were what whatever when whenever where whether which while who whom whose why will with
    within without would yes yet you your yours yourself yourselves
    s t d ll m re ve don doesn didn isn aren wasn weren won wouldn couldn shouldn hasn haven
    hadn cannot st nd rd th
    according answer answers context document documents passage passages question
    information mentioned mentions noted say says said stated states provided given listed
    shown sure okay ok note mean means meant get gets got getting
    """.split()  # noqa: SIM905
)

# Longest first: the first that leaves a stem of three letters or more is stripped, and
# stripping repeats, so "approvals" -> "approval" -> "approv" and "speeds" -> "speed" -> "spe"
# meet "speed" -> "spe". Crude next to Porter, but it only has to make variants of the same
# word meet; merging two unrelated words makes the check a little more lenient, never wrong
# about a number or a name, which are compared whole.
_SUFFIXES = (
    "ational", "ations", "ation", "ements", "ement", "ments", "ment", "nesses", "ness",
    "ingly", "ings", "ing", "edly", "ied", "ies", "ed", "als", "al", "ers", "er", "es", "ly",
    "s", "e", "y",
)  # fmt: skip
_TO_I = {"ied", "ies", "y"}  # "apply", "applied", "applies" -> "appli"


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A tiny suffix stripper for lower-case English words (no NLTK, no data files)."""
    previous = ""
    while word != previous:
        previous = word
        for suffix in _SUFFIXES:
            if not word.endswith(suffix) or len(word) - len(suffix) < 3:
                continue
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                continue  # "access", "status", "analysis"
            word = word[: -len(suffix)] + ("i" if suffix in _TO_I else "")
            break
    return word


# --------------------------------------------------------------------------------------------
# Terms: the comparable pieces of a text
# --------------------------------------------------------------------------------------------


class Term(NamedTuple):
    """A content word of a text: ``key`` is what is compared, ``text`` what is shown.
    (A named tuple: texts are cut into thousands of these, and tuples are quick to make.)"""

    key: str
    kind: Kind
    text: str


_TOKEN = r"\w+(?:[-_/.:'’]\w+|,\d+)*"
# Tokens that may be identifiers: a letter first, and a digit or a hyphen in them.
_IDENTIFIER = re.compile(rf"(?<![-\w'’/.:,])(?=[^\W\d_])(?=[-\w'’/.:,]*[\d-]){_TOKEN}")
_WORD = re.compile(r"[^\W\d_]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)*")
_ONE = re.compile(r"\bone\b", re.IGNORECASE)
_ONE_WORD = "qqoneqq"  # survives ``normalise`` unchanged
_CAPS_CODE = re.compile(r"[A-Z]{2,}(?:-[A-Z0-9]+)+")  # SRV-DIAG, QM-USB, RMA-QM
_DIGIT = re.compile(r"\d")
_ID_PARTS = re.compile(r"[-_/.:,]")


def _is_identifier(token: str) -> bool:
    """E-342, QH-640, SKY-2941, v1, DP7-SEAL-KIT, SRV-DIAG; not 1,200 or 2.4kg (amounts)."""
    if token[0].isalpha() and _DIGIT.search(token):
        return True
    return token[0].isupper() and "-" in token and bool(_CAPS_CODE.fullmatch(token))


def _fold(word: str) -> str:
    """A single word as ``normalise`` leaves it: lower case, accents off."""
    if word.isascii():
        return word.lower()
    decomposed = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", word).lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _names(text: str) -> dict[str, str]:
    """Words that look like names, normalised -> as written: capitalised, and not a
    sentence's first word unless the next is capitalised too ("Ilse Brouwer approves", but
    not "Refunds are")."""
    words = _WORD.findall(text)
    capital = [w[0].isupper() and w.lower() not in STOP_WORDS for w in words]
    found: dict[str, str] = {}
    for i, word in enumerate(words):
        if capital[i] and (i > 0 or (len(words) > 1 and capital[1])):
            found.setdefault(_fold(word), word)
    return found


def terms(text: str) -> tuple[Term, ...]:
    """The content words of one sentence (or line), in order, citation markers left out.

    Identifiers are kept whole (``E-342`` is one term, key ``e342``); the rest goes through
    ``normalise`` (so ``€1,200`` gives the word ``eur`` and the number ``1200``) and words
    are stemmed. A capitalised word is a name (see ``_names``): the first word of ``text`` is
    taken to open a sentence.
    """
    return (_ANALYSED.get(text) or analyse([text])[0])[0]


def vocabulary(text: str) -> frozenset[str]:
    """Every key a term of ``text`` could be looked up by: its words' stems, its numbers,
    its identifiers whole (``e342``), in pieces (``e``, ``342``) and by their leading parts
    (``QH-640-EU`` is also ``qh640``)."""
    return (_ANALYSED.get(text) or analyse([text])[0])[1]


Analysis = tuple[tuple[Term, ...], frozenset[str]]
_ANALYSED: dict[str, Analysis] = {}
_CACHE_SIZE = 16384
_SEPARATOR = "qqsepqq"  # between texts normalised together; survives ``normalise``


def analyse(texts: Sequence[str]) -> list[Analysis]:
    """``(terms(t), vocabulary(t))`` for each text, remembered for the next call.

    Texts not seen before are normalised in one ``normalise`` call, joined by a separator
    word: its fixed cost (a dozen regular-expression passes) is then paid once for all the
    sentences of the passages, which is what keeps ``rag.answer.extractive`` within milliseconds.
    """
    known = {t: _ANALYSED.get(t) for t in texts}
    new = [t for t, analysis in known.items() if analysis is None]
    if new:
        if len(_ANALYSED) + len(new) > _CACHE_SIZE:
            _ANALYSED.clear()
        prepared = [_prepare(t) for t in new]
        joined = normalise(f" {_SEPARATOR} ".join(plain for plain, *_ in prepared)).split()
        groups: list[list[str]] = [[]]
        for token in joined:
            if token == _SEPARATOR:
                groups.append([])
            else:
                groups[-1].append(token)
        for text, (_, found, keys, names), tokens in zip(new, prepared, groups, strict=True):
            known[text] = _ANALYSED[text] = _finish(found, keys, names, tokens)
    return [known[t] for t in texts]  # type: ignore[misc]  # all filled in above


def _prepare(text: str) -> tuple[str, list[Term], set[str], dict[str, str]]:
    """Identifiers out (kept whole), names found: what must be read before ``normalise``."""
    if "[" in text:
        text = CITATION.sub(" ", text)
    found: list[Term] = []
    keys: set[str] = set()
    rest = []
    last = 0
    for match in _IDENTIFIER.finditer(text):
        token = match.group()
        if _is_identifier(token):
            pieces = normalise(token)
            found.append(Term(pieces.replace(" ", ""), "id", token))
            keys.update(pieces.split())
            keys.update(_id_prefixes(token))
            rest.append(text[last : match.start()])
            last = match.end()
    rest.append(text[last:])
    plain = " ".join(rest)
    names = _names(plain) if not plain.islower() else {}
    # "one" is a number to ``normalise`` ("one extra day" = "1 extra day") but more often a
    # pronoun ("the one that", "one-time"); as a term it is a word, so never a fact, while
    # the vocabulary has "1" for it too, so "1 extra day" still finds "one extra day".
    return _ONE.sub(_ONE_WORD, plain), found, keys, names


def _finish(
    found: list[Term], keys: set[str], names: dict[str, str], tokens: list[str]
) -> Analysis:
    for token in tokens:
        if token == _ONE_WORD:
            found.append(Term("one", "word", "one"))
            keys.add("1")
        elif token[0].isdigit():
            if _NUMBER.fullmatch(token):
                found.append(Term(token, "number", token))
        elif token.isalpha() and token not in STOP_WORDS:
            kind: Kind = "name" if token in names else "word"
            found.append(Term(stem(token), kind, names.get(token, token)))
    keys.update(t.key for t in found)
    return tuple(found), frozenset(keys)


def _id_prefixes(identifier: str) -> list[str]:
    """ "QH-640-EU" is also "QH-640": the keys of its leading parts that hold a digit."""
    parts = _ID_PARTS.split(identifier)
    prefixes = ("".join(parts[:n]) for n in range(1, len(parts)))
    return [normalise(p).replace(" ", "") for p in prefixes if _DIGIT.search(p)]


# --------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """A sentence as it stands in the answer: ``text[start:end]`` is it, citations included."""

    text: str
    start: int
    end: int


# A full stop (or ! ?), closing quotes or brackets, then any citations written after it: they
# belong to the sentence before ("... 14 days. [1] The next ...").
_END = re.compile(r"[.!?]+[\"'”’)]*(?:\s*\[\d+(?:\s*,\s*\d+)*\])*(?=\s|$)")
_ABBREVIATIONS = frozenset(
    "e.g i.e eg ie approx appr ca incl excl no nr vs mr mrs ms dr prof st fig max min".split()  # noqa: SIM905
)
_LINE = re.compile(r"[^\n]+")
_LAST_WORD = re.compile(r"([\w.]+)[.!?]*$")
_TAG = re.compile(r"\([^()]{1,40}\)[.!?]?")


def split_sentences(text: str) -> list[Span]:
    """Sentences, one per line at least; citations stay with the sentence they follow.

    A full stop ends a sentence when whitespace follows and the next word does not start in
    lower case, and it is not an abbreviation's ("e.g.", "approx.", "B.V. with"); "2.4 kg"
    has no whitespace after its point. A piece with no words, such as a lone "[1]" on the
    next line, or a short one in brackets ("(SKY-2941)") joins the sentence before.
    """
    spans: list[Span] = []
    for line in _LINE.finditer(text):
        start = line.start()
        for end in _ends(line.group()):
            _add(spans, text, start, line.start() + end)
            start = line.start() + end
        _add(spans, text, start, line.end())
    return spans


def _ends(line: str) -> list[int]:
    ends = []
    for match in _END.finditer(line):
        after = line[match.end() :].lstrip()
        if not after:
            continue
        if after[0].islower():
            continue
        before = _LAST_WORD.search(line[: match.start() + 1])
        if before and before.group(1).lower().rstrip(".") in _ABBREVIATIONS:
            continue
        ends.append(match.end())
    return ends


def _add(spans: list[Span], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    if not piece.strip():
        return
    lead = len(piece) - len(piece.lstrip())
    start, end = start + lead, start + len(piece.rstrip())
    alone = CITATION.sub("", text[start:end]).strip()
    if spans and (not _WORD.search(alone) or _TAG.fullmatch(alone)):
        # "[1]" alone, or "(SKY-2941)" after a sentence: part of the sentence before
        start = spans.pop().start
    spans.append(Span(text[start:end], start, end))


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentenceCheck:
    """One sentence of the answer and what the passages say to it.

    ``cited`` are the passage numbers it cites, as written; ``checked`` those it was looked
    up in (all passages when it cites none). ``support`` is the share of its content words
    found (1.0 when it has none); ``facts`` are its numbers, identifiers and names.
    """

    text: str
    cited: tuple[int, ...]
    checked: tuple[int, ...]
    words: tuple[str, ...]
    missing: tuple[str, ...]
    facts: tuple[str, ...]
    missing_facts: tuple[str, ...]
    support: float
    supported: bool
    refusal: bool
    reason: str
    recite: tuple[int, ...] = ()  # backed, but by these passages, not the ones it cites

    @property
    def shown(self) -> str:
        """The sentence as it should be shown: its citations put right where ``recite`` says."""
        if not self.recite:
            return self.text
        marks = "".join(f"[{n}]" for n in self.recite)
        first = CITATION.search(self.text)
        if first is None:  # pragma: no cover - recite is only set for a sentence that cites
            return self.text
        rest = CITATION.sub("", self.text[first.end() :])
        return f"{self.text[: first.start()]}{marks}{rest}"

    @property
    def content(self) -> bool:
        """Says something (not a refusal, not pure filler)."""
        return bool(self.words) and not self.refusal


@dataclass(frozen=True)
class Grounding:
    """The verdict on a whole answer, sentence by sentence."""

    text: str
    sentences: tuple[SentenceCheck, ...]
    min_support: float

    @property
    def supported(self) -> bool:
        """Every sentence is backed by its passages (refusals and filler are)."""
        return all(s.supported for s in self.sentences)

    @property
    def answered(self) -> bool:
        """The answer says something: a sentence that is neither refusal nor filler."""
        return any(s.content for s in self.sentences)

    @property
    def refusal(self) -> bool:
        return not self.answered and any(s.refusal for s in self.sentences)

    @property
    def unsupported(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if not s.supported]

    @property
    def support(self) -> float:
        """The weakest sentence's support: what a threshold chosen on gold data is set on."""
        return min((s.support for s in self.sentences if s.content), default=1.0)


@dataclass(frozen=True)
class _Passage:
    padded: str  # normalised, with a space either side: " ... e 342 ... "
    vocabulary: frozenset[str]

    @classmethod
    def of(cls, text: str) -> _Passage:
        return _passage(text)

    def has(self, term: Term) -> bool:
        if term.key in self.vocabulary:
            return True
        # "QH 640" in a passage is the identifier "QH-640" too.
        return term.kind == "id" and f" {normalise(term.text)} " in self.padded


@lru_cache(maxsize=256)
def _passage(text: str) -> _Passage:
    """The chain checks an answer a sentence at a time against the same passages: each is
    normalised once, not once per sentence."""
    return _Passage(f" {normalise(text)} ", vocabulary(text))


def check(
    answer_text: str,
    passages: Sequence[str],
    min_support: float = DEFAULT_MIN_SUPPORT,
    question: str = "",
) -> Grounding:
    """Check each sentence of an answer against the numbered passages ([1] = ``passages[0]``).

    Pure Python, a few milliseconds for four passages: fine to call on the event loop. See
    the module docstring for what counts as supported. The ``question``'s numbers count as
    given: "A claim of EUR 1,200 needs the department head [1]" restates the question's
    amount under a rule for "above EUR 500"; names and identifiers of the question are not
    given, or "The Albatross carries 2.4 kg [1]" would pass on a passage about the Wren.
    """
    indexed = [_Passage.of(p) for p in passages]
    asked = " ".join(t.text for t in terms(question) if t.kind == "number")
    given = _Passage.of(asked) if asked else None
    sentences: list[SentenceCheck] = []
    for span in split_sentences(answer_text):
        # After a refusal, advice with no citation and no fact of its own ("Try asking HR
        # about it.", or NOTHING_FOUND's "The closest passages are listed below") is part of
        # the refusal, not a claim about the documents.
        refusing = bool(sentences) and sentences[-1].refusal
        sentences.append(_check_sentence(span.text, indexed, min_support, refusing, given))
    return Grounding(answer_text, tuple(sentences), min_support)


def _check_sentence(
    text: str,
    passages: list[_Passage],
    min_support: float,
    refusing: bool = False,
    given: _Passage | None = None,
) -> SentenceCheck:
    cited = tuple(dict.fromkeys(citations(text)))
    wrong = [n for n in cited if not 1 <= n <= len(passages)]
    valid = tuple(n for n in cited if 1 <= n <= len(passages))
    checked = valid or tuple(range(1, len(passages) + 1))
    unique = _unique(terms(text))
    facts = [t for t in unique if t.kind in FACTS]
    if _is_refusal(text, unique) or (refusing and not cited and not facts):
        return SentenceCheck(
            text=text,
            cited=cited,
            checked=checked,
            words=tuple(t.text for t in unique),
            missing=(),
            facts=tuple(t.text for t in facts),
            missing_facts=(),
            support=1.0,
            supported=True,
            refusal=True,
            reason="a refusal",
        )
    missing, missing_facts, support = _support(unique, [passages[n - 1] for n in checked], given)
    recite: tuple[int, ...] = ()
    if valid and not wrong and (missing_facts or support < min_support):
        recite = _better_citation(unique, passages, min_support, given)
    where = _where(checked, cited)
    if recite:
        reason = f"cites {where}, but its words are in {_where(recite, recite)}"
    elif wrong:
        reason = f"cites [{', '.join(map(str, wrong))}], but there are {len(passages)} passages"
    elif missing_facts:
        shown = ", ".join(f"'{t.text}'" for t in missing_facts)
        reason = f"{shown} {'is' if len(missing_facts) == 1 else 'are'} not in {where}"
    elif support < min_support:
        reason = f"only {support:.0%} of its words are in {where}"
    elif not unique:
        reason = "no content words"
    else:
        reason = f"{support:.0%} of its words are in {where}"
    return SentenceCheck(
        text=text,
        cited=cited,
        checked=checked,
        words=tuple(t.text for t in unique),
        missing=tuple(t.text for t in missing),
        facts=tuple(t.text for t in facts),
        missing_facts=tuple(t.text for t in missing_facts),
        support=support,
        supported=bool(recite) or (not wrong and not missing_facts and support >= min_support),
        refusal=False,
        reason=reason,
        recite=recite,
    )


def _support(
    unique: Sequence[Term], pool: Sequence[_Passage], given: _Passage | None = None
) -> tuple[list[Term], list[Term], float]:
    """The terms none of ``pool`` holds (nor ``given``, the question's numbers), the facts
    among them, and the share found."""
    pool = [*pool, given] if given is not None else pool
    missing = [t for t in unique if not any(p.has(t) for p in pool)]
    support = 1 - len(missing) / len(unique) if unique else 1.0
    return missing, [t for t in missing if t.kind in FACTS], support


def _better_citation(
    unique: Sequence[Term],
    passages: Sequence[_Passage],
    min_support: float,
    given: _Passage | None = None,
) -> tuple[int, ...]:
    """The passages that do back a sentence that cites the wrong one, or () if none do.

    Small models often copy the right fact and cite the passage next to it ("2.4 kg [3]"
    when [1] says it). The fact is not invented, so the sentence is kept and its citation
    put right, rather than dropped: the reader gets the fact and the passage that holds it.
    One passage that backs it alone is preferred; else the fewest that do together.
    """
    for number, passage in enumerate(passages, 1):
        _, facts, support = _support(unique, [passage], given)
        if not facts and support >= min_support:
            return (number,)
    _, facts, support = _support(unique, passages, given)
    if facts or support < min_support:
        return ()
    needed = {
        next(n for n, p in enumerate(passages, 1) if p.has(t)) for t in unique if t.kind in FACTS
    }
    return tuple(sorted(needed)) or tuple(range(1, len(passages) + 1))


def _unique(found: Sequence[Term]) -> list[Term]:
    """One term per key, in order; a key seen as a fact anywhere is a fact."""
    by_key: dict[str, Term] = {}
    for term in found:
        if term.key not in by_key or (term.kind in FACTS and by_key[term.key].kind not in FACTS):
            by_key[term.key] = term
    return list(by_key.values())


def _is_refusal(text: str, found: Sequence[Term]) -> bool:
    """Says the documents do not answer, and carries no number or identifier of its own:
    "The documents don't say, but it is 5 kg [1]" is a claim and is checked as one."""
    return says_refusal(text) and not any(t.kind in ("number", "id") for t in found)


def _where(checked: tuple[int, ...], cited: tuple[int, ...]) -> str:
    if not checked:
        return "any passage (there are none)"
    if not cited:
        return "any passage"
    return "".join(f"[{n}]" for n in checked)


# --------------------------------------------------------------------------------------------
# What to show
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enforced:
    """The answer to show: ``answered`` is false when it is (or became) a refusal."""

    text: str
    answered: bool
    left_out: int
    grounding: Grounding


def enforce(
    answer_text: str,
    passages: Sequence[str],
    min_support: float = DEFAULT_MIN_SUPPORT,
    mode: Mode = "mark",
    question: str = "",
) -> Enforced:
    """The answer with what its passages do not back taken out.

    ``mode="refuse"``: any unsupported sentence turns the whole answer into ``DONT_SAY``.
    ``mode="mark"``: unsupported sentences are dropped and a short note says how many, so
    the reader knows something was left out and why; when nothing that says anything is
    left, the answer is ``DONT_SAY``. A refusal stays as the model wrote it.
    """
    if mode not in ("refuse", "mark"):
        raise ValueError(f"mode must be 'refuse' or 'mark', got {mode!r}")
    grounding = check(answer_text, passages, min_support, question)
    dropped = len(grounding.unsupported)
    if not grounding.answered:
        text = answer_text.strip() if grounding.refusal and not dropped else DONT_SAY
        return Enforced(text, False, dropped, grounding)
    if not dropped and not any(sentence.recite for sentence in grounding.sentences):
        return Enforced(answer_text.strip(), True, 0, grounding)
    kept = [
        (span, sentence)
        for span, sentence in zip(split_sentences(answer_text), grounding.sentences, strict=True)
        if sentence.supported
    ]
    if mode == "refuse" or not any(sentence.content for _, sentence in kept):
        return Enforced(DONT_SAY, False, dropped, grounding)
    parts: list[str] = []
    previous: Span | None = None
    for span, sentence in kept:
        if previous is not None:
            parts.append("\n" if "\n" in answer_text[previous.end : span.start] else " ")
        parts.append(sentence.shown)
        previous = span
    if not dropped:
        return Enforced("".join(parts), True, 0, grounding)
    return Enforced("".join(parts) + "\n\n" + left_out_note(dropped), True, dropped, grounding)


def left_out_note(dropped: int) -> str:
    """What the reader is told when sentences were taken out of an answer."""
    return f"({dropped} sentence{'s' if dropped > 1 else ''} left out: not found in the passages)"


def passages_of(hits: Sequence[Hit]) -> list[str]:
    """The passage texts to check an answer against, as numbered for the model: each hit's
    source label first, since the model was shown it and may name the file."""
    return [f"{hit.label()}\n{hit.document.page_content}" for hit in hits]
