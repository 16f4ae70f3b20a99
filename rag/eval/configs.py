"""The search configurations an evaluation compares, named the way reports and the CLI do.

Why a subclass of ``SearchOptions``: a configuration *is* a search (mode, ranker, k, MMR,
fusion weights), plus the label of its row in a report. Deriving keeps the search
vocabulary in one place, ``rag.retrieval``: a new search knob is scored without touching
this module.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from rag.choices import EVAL_MODES, RANKERS, SEARCH_MODES, Ranker, SearchMode
from rag.retrieval import SearchOptions

if TYPE_CHECKING:
    from rag.config import Settings


def mode_name(mode: SearchMode, ranker: Ranker) -> str:
    """A mode as ``rag eval --mode`` and the reports name it: hybrid search names its ranker."""
    return f"hybrid-{ranker}" if mode == "hybrid" else mode


# Every `rag eval --mode` name and the search it stands for; None: the configured ranker.
_BY_NAME: dict[str, tuple[SearchMode, Ranker | None]] = {
    **{mode: (mode, None) for mode in SEARCH_MODES},
    **{mode_name("hybrid", ranker): ("hybrid", ranker) for ranker in RANKERS},
}


def parse_mode(name: str) -> tuple[SearchMode, Ranker | None]:
    """The search mode and ranker of a ``rag eval --mode`` name (rag.choices.EVAL_MODES);
    the ranker is None when the name leaves it to the settings (plain ``hybrid``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r} (known: {', '.join(EVAL_MODES)})") from None


@dataclass(frozen=True)
class EvalConfig(SearchOptions):
    """One search configuration to score; ``k`` is what the model would be given."""

    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return f"{mode_name(self.mode, self.ranker)} k={self.k}" + (" mmr" if self.mmr else "")

    def options(self, k: int) -> SearchOptions:
        """The search itself, ``k`` deep: the ranking metrics look further than the model's
        k, and MMR picks from at least as many candidates as it returns."""
        search = {field.name: getattr(self, field.name) for field in fields(SearchOptions)}
        return SearchOptions(**{**search, "k": k, "fetch_k": max(self.fetch_k, k)})


def config_from_mode(mode: str, k: int, mmr: bool, settings: Settings) -> EvalConfig:
    """A config from a CLI mode name (rag.choices.EVAL_MODES): dense, bm25, hybrid (the
    configured ranker), hybrid-rrf, hybrid-weighted; the other knobs from the settings."""
    search_mode, ranker = parse_mode(mode)
    return EvalConfig(
        mode=search_mode,
        k=k,
        mmr=mmr,
        ranker=ranker or settings.hybrid_ranker,
        dense_weight=settings.hybrid_dense_weight,
        fetch_k=settings.fetch_k,
        rrf_k=settings.hybrid_rrf_k,
    )
