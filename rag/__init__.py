"""Ask questions about your own documents: Milvus for retrieval, any OpenAI-compatible LLM.

The Python API the CLI, the chat UI and other programs build on::

    import asyncio

    import rag

    async def main() -> None:
        settings = rag.load_settings()
        async with rag.open_assistant(settings) as assistant:
            async for event in assistant.chain.astream("Who approves a purchase order?"):
                if isinstance(event, rag.Token):
                    print(event.text, end="")
                elif isinstance(event, rag.Answer):
                    print("\\n", [hit.source for hit in event.hits])

    asyncio.run(main())

Each name is imported on first use (PEP 562), so ``import rag.errors`` loads neither
LangChain nor Milvus, and no module below the app has to import the app to be imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Where each name lives; ``__all__`` spells them out for linters and type checkers.
_HOMES = {
    "rag.app": ("Assistant", "open_assistant"),
    "rag.chain": ("Answer", "AnswerInterrupted", "Condensed", "RagChain", "Retrieved", "Token"),
    "rag.config": ("Settings", "load_settings"),
    "rag.errors": ("RagError",),
    "rag.retrieval": ("Hit", "PassageRetriever", "SearchOptions", "retrieve"),
    "rag.services": ("Services", "open_services"),
}
_EXPORTS = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [  # noqa: RUF022 - grouped as in _HOMES
    "__version__",
    "Assistant",
    "open_assistant",
    "Answer",
    "AnswerInterrupted",
    "Condensed",
    "RagChain",
    "Retrieved",
    "Token",
    "Settings",
    "load_settings",
    "RagError",
    "Hit",
    "PassageRetriever",
    "SearchOptions",
    "retrieve",
    "Services",
    "open_services",
]

if TYPE_CHECKING:
    from rag.app import Assistant, open_assistant
    from rag.chain import Answer, AnswerInterrupted, Condensed, RagChain, Retrieved, Token
    from rag.config import Settings, load_settings
    from rag.errors import RagError
    from rag.retrieval import Hit, PassageRetriever, SearchOptions, retrieve
    from rag.services import Services, open_services


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rag' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
