"""One typed settings object decides which store, embeddings and LLM are built.

Everything is read from ``RAG_*`` environment variables and an optional ``.env``
file, validated once at start-up, so a typo fails in one line instead of deep
inside a Milvus or OpenAI call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.auth import (
    oauth_configured,
    parse_allow,
    parse_api_keys,
    parse_users,
    valid_header_name,
)
from rag.choices import (
    BUNDLED_CONTEXT_CHARS,
    DEFAULT_MIN_QUOTE_SCORE,
    DEFAULT_MIN_SUPPORT,
    AnswerMode,
    CheckMode,
    Ranker,
    SearchMode,
)
from rag.errors import ConfigError, mask_url_password
from rag.local.models import DEFAULT_MODEL, MODELS

ENV_PREFIX = "RAG_"
SQLITE_PREFIX = "sqlite+aiosqlite:///"


class Settings(BaseSettings):
    """The application's configuration (see `.env.example` for each variable)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # --- vector store -----------------------------------------------------
    milvus_uri: str = Field(
        "./data/milvus.db",
        description="A local file path (Milvus Lite) or http(s)://host:19530 for a server.",
    )
    milvus_token: SecretStr | None = Field(None, description="user:password or an API key.")
    milvus_db: str | None = Field(None, description="Database name on a Milvus server.")
    milvus_timeout: float = Field(10.0, gt=0, description="Seconds per Milvus call.")
    collection: str = Field("documents", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")

    # --- embeddings -------------------------------------------------------
    embedding_provider: Literal["local", "openai"] = "local"
    embedding_model: str | None = Field(
        None, description="Model name for provider openai (default text-embedding-3-small)."
    )
    embedding_base_url: str | None = None
    embedding_api_key: SecretStr | None = None
    embedding_dimensions: int | None = Field(None, gt=0, le=32768)
    embedding_batch_size: int = Field(32, gt=0, le=2048)
    embedding_threads: int = Field(0, ge=0, description="ONNX threads; 0 = one per core.")

    # --- ingestion --------------------------------------------------------
    # 800: with contextual headers it beat 1000, 1200 and 1500 on the gold set (recall@1
    # 0.81, recall@5 0.96), and stays within the 256 word pieces MiniLM reads.
    chunk_size: int = Field(800, ge=100, le=8000, description="Characters per chunk.")
    chunk_overlap: int = Field(120, ge=0)
    batch_size: int = Field(64, gt=0, le=4096, description="Chunks per request/insert.")
    concurrency: int = Field(4, gt=0, le=64, description="Embedding requests in flight.")
    max_file_mb: float = Field(200.0, gt=0, description="Larger files are refused.")
    # Parsed by `rag ingest` (ingest/shard.py), which names this variable in its errors.
    ingest_shard: str | None = Field(
        None,
        description="K/N: this worker ingests the K-th of N hash partitions of the folder "
        "(1-based; the N workers share one Milvus server).",
    )
    ingest_shard_count: int | None = Field(
        None, ge=1, description="N for a Kubernetes Indexed Job (its JOB_COMPLETION_INDEX is K-1)."
    )

    # --- retrieval --------------------------------------------------------
    top_k: int = Field(4, gt=0, le=50, description="Passages given to the LLM.")
    mmr: bool = Field(False, description="Diversify passages with max marginal relevance.")
    fetch_k: int = Field(20, gt=0, le=200, description="Candidates considered by MMR.")
    relevance_floor: float = Field(
        0.3, ge=-1, le=1, description="Cosine score below which a passage is not relevant."
    )
    # Hybrid by default: on the sample gold set (bench/results/quality.md) it beats dense
    # on recall@5 (0.900 vs 0.875) and on exact identifiers (0.909 vs 0.818); RRF needs no
    # weight tuning and tied the weighted ranker overall.
    search_mode: SearchMode = Field(
        "hybrid", description="Vector search, BM25 full-text search, or both fused."
    )
    hybrid_ranker: Ranker = Field(
        "rrf", description="How hybrid search fuses the dense and BM25 result lists."
    )
    hybrid_dense_weight: float = Field(
        0.6, ge=0, le=1, description="Dense share for the weighted ranker (BM25 gets the rest)."
    )
    # Small on purpose (see RRF_K in rag/retrieval.py): 3 beat the paper's 60 on the gold set.
    hybrid_rrf_k: int = Field(
        3, ge=1, le=1000, description="RRF constant k: lower trusts each side's top hits more."
    )

    # --- chat model -------------------------------------------------------
    llm_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_api_key: SecretStr | None = None
    llm_temperature: float = Field(0.1, ge=0, le=2)
    llm_max_tokens: int = Field(512, gt=0)
    llm_timeout: float = Field(60.0, gt=0)
    llm_local_port: int = Field(0, ge=0, le=65535, description="Port of the bundled LLM; 0 = any.")
    # --- answers (chosen with `rag eval --answers`; see the README's Quality section) ---
    # "auto" (the defaults) check and trim for the bundled models only: they run on a CPU and
    # invent; an endpoint's model gets whole passages and its answer is shown as written.
    answer_mode: AnswerMode = Field(
        "generate-or-extract",
        description="generate (the chat model), extract (quote the passages, no model) or "
        "generate-or-extract (the quote when the check leaves nothing of the model's answer).",
    )
    answer_check: CheckMode | Literal["auto"] = Field(
        "auto",
        description="Sentences the passages do not back: mark (left out, with a note), "
        "refuse (the whole answer becomes a refusal), off, or auto (mark for the bundled "
        "models, off for an endpoint).",
    )
    answer_min_support: float = Field(
        DEFAULT_MIN_SUPPORT,
        ge=0,
        le=1,
        description="Share of a sentence's words its passages must hold.",
    )
    answer_min_quote_score: float = Field(
        DEFAULT_MIN_QUOTE_SCORE,
        ge=0,
        description="Extractive answers: the best sentence's score floor.",
    )
    context_chars: int | None = Field(
        None,
        ge=0,
        description="Characters of passages the model reads (0 = whole passages; unset = "
        f"{BUNDLED_CONTEXT_CHARS} for the bundled models, whole passages for an endpoint).",
    )
    local_llm: str = Field(
        DEFAULT_MODEL,
        description="Bundled chat model used when RAG_LLM_BASE_URL is not set "
        f"({', '.join(MODELS)}).",
    )

    # --- chat UI ------------------------------------------------------------
    ui_users: SecretStr | None = Field(
        None,
        description="user:password pairs separated by commas (a password may be an argon2 "
        "hash from `rag passwd`); enables login.",
    )
    ui_trusted_header: str | None = Field(
        None,
        description="Header an authenticating proxy sets to the signed-in user's name "
        "(e.g. X-Forwarded-User); only safe when the UI is reachable through that proxy alone.",
    )
    ui_oauth_allow: str = Field(
        "",
        description="Who may sign in with an OAuth provider (OAUTH_* variables): email "
        "addresses or @domains, comma-separated; required when a provider is configured.",
    )
    ui_origins: str = Field(
        "",
        description="More origins the chat may be loaded from (a proxy's public address), "
        "comma-separated; the UI's own address is always allowed.",
    )
    upload_dir: str = Field("./data/uploads", description="Where chat uploads are kept.")
    ui_dir: str = Field("./data/ui", description="Runtime folder of the chat UI.")
    upload_max_mb: float = Field(20.0, gt=0, description="Largest file accepted in the chat.")
    database_url: str | None = Field(
        "sqlite+aiosqlite:///./data/chat.db",
        description="Chat history and feedback (SQLAlchemy async URL); empty turns it off.",
    )

    # --- HTTP API (`rag serve`) ----------------------------------------------
    api_keys: SecretStr | None = Field(
        None,
        description="owner:HASH entries separated by commas, one per API key (`rag api-key "
        "OWNER` mints a key and prints its entry); `rag serve` needs at least one.",
    )

    @field_validator("milvus_uri")
    @classmethod
    def _valid_uri(cls, value: str) -> str:
        """A Milvus Lite file (``*.db``) or a server URL, caught here rather than at connect."""
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        if "://" in value:
            scheme = value.split("://", 1)[0].lower()
            if scheme not in ("http", "https", "tcp", "unix"):
                raise ValueError(
                    f"unknown scheme {scheme}://; use http(s)://host:19530 or a path ending in .db"
                )
        elif re.fullmatch(r"[\w.-]+:\d+", value):
            raise ValueError(f"looks like host:port; write http://{value}")
        elif not value.endswith(".db"):
            raise ValueError("a Milvus Lite path must end in .db (for example ./data/milvus.db)")
        return value

    @field_validator("database_url")
    @classmethod
    def _async_database(cls, value: str | None) -> str | None:
        """Chainlit's data layer is async, so the URL must name an async driver."""
        if value is None or not value.strip():
            return None
        value = value.strip()
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme in ("sqlite", "postgresql", "postgres"):
            driver = "aiosqlite" if scheme == "sqlite" else "asyncpg"
            value = (
                f"{'postgresql' if driver == 'asyncpg' else 'sqlite'}+{driver}://"
                + value.split("://", 1)[1]
            )
        elif scheme not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise ValueError(
                "use sqlite:///path/to/chat.db or postgresql://user:password@host:5432/db"
            )
        return value

    @field_validator("ui_users")
    @classmethod
    def _valid_users(cls, value: SecretStr | None) -> SecretStr | None:
        """Fail closed: a list that parsed into no users would start the chat with no login."""
        if value is None or not value.get_secret_value().strip():
            return None
        parse_users(value.get_secret_value())
        return value

    @field_validator("ui_trusted_header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not valid_header_name(value.strip()):
            raise ValueError("a header name is letters, digits and '-' (e.g. X-Forwarded-User)")
        return value.strip()

    @field_validator("ui_oauth_allow")
    @classmethod
    def _oauth_allow(cls, value: str) -> str:
        parse_allow(value)
        return value

    @field_validator("ui_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        """Each an origin (scheme://host[:port]), so a typo never allows nothing or everything."""
        for origin in (item.strip() for item in value.split(",") if item.strip()):
            if origin == "*" or not re.fullmatch(r"https?://[^/\s]+", origin.rstrip("/")):
                raise ValueError(
                    f"{origin!r} is not an origin; write scheme://host[:port], e.g. "
                    "https://chat.example.org"
                )
        return value

    @field_validator("local_llm")
    @classmethod
    def _known_local_model(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in MODELS:
            raise ValueError(f"unknown bundled model {value!r}; choose one of {', '.join(MODELS)}")
        return value

    @field_validator("embedding_base_url", "llm_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _valid_api_keys(self) -> Settings:
        """Fail closed, like RAG_UI_USERS. A model validator, not a field one: its error
        carries no input, so `_describe` cannot echo the hashes into a log."""
        if self.api_keys is not None and not self.api_keys.get_secret_value().strip():
            self.api_keys = None
        if self.api_keys is not None:
            try:
                parse_api_keys(self.api_keys.get_secret_value())
            except ValueError as error:
                raise ValueError(f"RAG_API_KEYS: {error}") from None
        return self

    @property
    def api_key_hashes(self) -> dict[str, tuple[str, ...]]:
        """Owner → the argon2 hashes of its API keys; empty when RAG_API_KEYS is not set."""
        return parse_api_keys(self.api_keys.get_secret_value()) if self.api_keys else {}

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"RAG_CHUNK_OVERLAP ({self.chunk_overlap}) must be smaller than "
                f"RAG_CHUNK_SIZE ({self.chunk_size})"
            )
        return self

    @property
    def login_users(self) -> dict[str, str]:
        """Who may sign in to the chat (user → password or argon2 hash); empty: no login."""
        return parse_users(self.ui_users.get_secret_value()) if self.ui_users else {}

    def login_enabled(self, environ: Mapping[str, str]) -> bool:
        """Does the chat ask who you are (password list, trusted proxy header or OAuth)?"""
        return bool(self.login_users or self.ui_trusted_header or oauth_configured(environ))

    @property
    def milvus_is_local(self) -> bool:
        """Milvus Lite runs in-process on a file; anything with a scheme is a server."""
        return "://" not in self.milvus_uri

    @property
    def milvus_path(self) -> Path:
        return Path(self.milvus_uri).expanduser()

    @property
    def database_path(self) -> Path | None:
        """The chat-history file when the database is SQLite, else None."""
        if self.database_url and self.database_url.startswith(SQLITE_PREFIX):
            return Path(self.database_url.removeprefix(SQLITE_PREFIX))
        return None

    def to_env(self) -> dict[str, str]:
        """The effective settings as RAG_* variables, so a child process (the chat UI,
        started from another folder) sees exactly what this process loaded, .env included."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env

    def public_view(self) -> dict[str, object]:
        """The effective configuration with every secret masked, for `rag doctor` and logs."""
        view: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                view[name] = "********" if value.get_secret_value() else ""
            elif name in ("database_url", "milvus_uri") and value:
                view[name] = mask_url_password(value)
            else:
                view[name] = value
        return view


def _describe(error: ValidationError) -> str:
    """Turn pydantic's multi-line report into one line that names the variable."""
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"])
        name = f"{ENV_PREFIX}{field}".upper() if field else "configuration"
        value = item.get("input")
        shown = (
            ""
            if field.endswith(("token", "key", "users"))
            or field == "database_url"
            or isinstance(value, dict)
            else f" (got {value!r})"
        )
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{name}: {message}{shown}" if field else message)
    return "invalid configuration: " + "; ".join(parts)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into a ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated once."""
    return load_settings()
