"""What the model reads: the retrieved passages cut down to the sentences that matter.

Why: on a CPU the wait before the first token is the time the model takes to read its
prompt. The bundled Qwen2.5 0.5B reads about 54 tokens/s on 2 cores, so four whole
passages of ~1,000 characters (~1,000 tokens with the rules) cost ~18 s before it writes
a word. Most of a passage does not bear on the question: keeping the units (sentences,
lines, table rows) that ``rag.answer.extractive`` scores best against the question, within a
character budget, cuts that wait to a few seconds and leaves a small model less to be
distracted by. Every passage keeps its best unit, so the numbering [1]…[k] the user sees
in the sources still matches what the model cites.
"""

from __future__ import annotations

from collections.abc import Sequence

from rag.answer.extractive import candidates


def trim(question: str, passages: Sequence[str], budget: int) -> list[str]:
    """``passages`` reduced to at most about ``budget`` characters in all, best units first.

    ``budget <= 0``, or passages already within it, leave them whole. Within a passage the
    kept units are joined in score order (the model needs the facts, not the layout).
    """
    if budget <= 0 or sum(len(p) for p in passages) <= budget:
        return list(passages)
    ranked = candidates(question, passages)
    kept: list[list[str]] = [[] for _ in passages]
    used = 0
    for candidate in ranked:  # each passage's best unit first, whatever the budget
        slot = kept[candidate.passage - 1]
        if not slot:
            slot.append(candidate.text)
            used += len(candidate.text) + 1
    for candidate in ranked:
        slot = kept[candidate.passage - 1]
        if candidate.text in slot or used + len(candidate.text) + 1 > budget:
            continue
        slot.append(candidate.text)
        used += len(candidate.text) + 1
    return [
        "\n".join(units) if units else passage[: max(1, budget // len(passages))]
        for units, passage in zip(kept, passages, strict=True)
    ]
