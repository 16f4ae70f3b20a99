"""Prompts live as files in ``prompts/`` so they can be read and edited without code.

They are loaded once and their variables checked at start-up: a prompt missing
``{context}`` would otherwise fail on the first question, in front of a user.

The files ship inside the package as ``rag/prompts_data`` (a symlink onto ``prompts/`` in the
repository, copied as plain files into a wheel), and are found with ``importlib.resources``:
an installed wheel has no source tree to look in.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from importlib.resources.abc import Traversable

from langchain_core.prompts import ChatPromptTemplate

from rag.errors import ConfigError

# Asked of ``rag`` rather than of the ``rag.prompts_data`` namespace package (no __init__.py:
# the folder is prompts/ itself): for a package on disk, a wheel or an editable install,
# importlib.resources answers ``rag`` with a pathlib.Path (readers.FileReader) but a namespace
# package with a MultiplexedPath, which shutil and friends cannot take as a folder.
PROMPTS_DIR: Traversable = files("rag") / "prompts_data"

REQUIRED = {
    "answer_system.md": set(),
    "answer_human.md": {"context", "question"},
    "condense.md": {"chat_history", "question"},
}


@dataclass(frozen=True)
class Prompts:
    answer: ChatPromptTemplate
    condense: ChatPromptTemplate


def _read(folder: Traversable, name: str) -> str:
    path = folder / name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"prompt file {path} cannot be read: {error.strerror}") from None
    found = {field for _, field, _, _ in string.Formatter().parse(text) if field}
    if found != REQUIRED[name]:
        raise ConfigError(
            f"prompt file {path} must use exactly the variables "
            f"{sorted(REQUIRED[name]) or 'none'}, found {sorted(found) or 'none'}"
        )
    return text


@lru_cache(maxsize=4)
def load_prompts(folder: Traversable = PROMPTS_DIR) -> Prompts:
    """Load and check every prompt file (cached: prompts are read once per process)."""
    system = _read(folder, "answer_system.md")
    human = _read(folder, "answer_human.md")
    condense = _read(folder, "condense.md")
    return Prompts(
        answer=ChatPromptTemplate.from_messages([("system", system), ("human", human)]),
        condense=ChatPromptTemplate.from_messages([("human", condense)]),
    )
