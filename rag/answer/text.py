"""The vocabulary of answers, in one place: how text is normalised for matching, which
phrases are a refusal, and what a citation looks like.

Why a module of its own: the chain (what counts as citing), the grounding check and the
extractive answer (what matches a passage) and the evaluation (what matches a gold
answer, what counts as declining) must agree on all three, and none of them should have
to import the others' dependencies to do so.
"""

from __future__ import annotations

import re
import unicodedata

NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "  # noqa: SIM905
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}


def normalise(text: str) -> str:
    """Canonical text for "does the answer contain the gold string" checks.

    Case, accents, whitespace and punctuation are ignored; ``1,200`` / ``1 200`` become
    ``1200``, ``€`` and ``euros`` become ``eur``, ``09:30`` matches ``9:30``, ``2.4kg``
    matches ``2.4 kg`` and number words up to twenty become digits.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    if not text.isascii():  # the accent strip is most of the cost; ASCII has none to strip
        text = "".join(
            c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c)
        )
    text = text.replace("€", " eur ").replace("’", "'")
    text = re.sub(r"(?<=\d)[,\u202f\u00a0 ](?=\d{3}(?!\d))", "", text)  # thousands separators
    text = re.sub(r"(?<=\d)\.(?=\d)", "<dot>", text)  # keep decimal points
    text = re.sub(r"[^\w<>]+|_", " ", text).replace("<dot>", ".")
    text = re.sub(r"(?<=\d)(?=[a-z])|(?<=[a-z])(?=\d)", " ", text)
    words = [NUMBER_WORDS.get(w, w) for w in text.split()]
    words = ["eur" if w in ("euro", "euros") else w for w in words]
    words = [w.lstrip("0") or "0" if w.isdigit() else w for w in words]
    return " ".join(words)


def contains(haystack: str, needle: str) -> bool:
    """Whole-word containment of normalised text: "40 nm" is not found in "140 nm"."""
    gold = normalise(needle)
    return bool(gold) and f" {gold} " in f" {normalise(haystack)} "


REFUSAL = re.compile(
    r"\b(documents?|passages?|context) (do|does)(n'?t| not) (say|mention|cover|contain|answer)"
    r"|\bi (do not|don'?t) know\b|\bi'?m not sure\b"
    r"|\b(can|could)(n'?t|not| not) (find|answer|tell|determine)"
    r"|\bno (information|mention|answer|details?) (about|on|of|regarding|for|in)\b"
    r"|\bnot (mentioned|covered|stated|specified|found) in the (documents?|passages?)"
    r"|\b(unable|not able) to (find|answer)",
    re.IGNORECASE,
)
CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def says_refusal(text: str) -> bool:
    """The text declines to answer ("The documents don't say.", "I don't know", …)."""
    return bool(REFUSAL.search(unicodedata.normalize("NFKC", text).replace("’", "'")))


def citations(text: str) -> list[int]:
    """Every [n] number in an answer, valid or not ("[1][2]" and "[1, 2]" both count)."""
    return [int(n) for group in CITATION.findall(text) for n in group.split(",")]
