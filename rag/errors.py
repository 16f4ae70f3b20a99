"""Errors a user can cause, each with a message that says what to do.

The CLI prints them as one line and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class RagError(Exception):
    """Base class for failures the user can act on."""

    exit_code = 1


class ConfigError(RagError):
    """A setting is missing or invalid."""

    exit_code = 2


class StoreUnavailable(RagError):
    """Milvus cannot be reached or refused the request."""

    exit_code = 3


class EmbeddingMismatch(RagError):
    """The collection was built by another embedding model or dimension."""

    exit_code = 4


class ModelUnavailable(RagError):
    """An embedding or chat model cannot be loaded or reached."""

    exit_code = 5


class IngestFailed(RagError):
    """Ingestion stopped before every file was written."""

    exit_code = 6


class SourceNotFound(RagError):
    """The folder or file to ingest does not exist."""

    exit_code = 2


class CollectionNotFound(RagError):
    """A command names a collection that does not exist."""

    exit_code = 2


class HistoryUnavailable(RagError):
    """The chat history database cannot be reached, or holds no history yet."""

    exit_code = 7
