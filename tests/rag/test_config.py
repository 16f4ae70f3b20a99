"""Settings: defaults, RAG_* overrides, one-line errors naming the variable, masked secrets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from pydantic import SecretStr

from rag.auth import mint_api_key
from rag.config import Settings, load_settings
from rag.errors import ConfigError
from tests.conftest import run_rag
from tests.support.cli_inprocess import invoke_rag

pytestmark = pytest.mark.usefixtures("clean_env")


def test_defaults_run_offline_on_milvus_lite() -> None:
    settings = load_settings()
    assert settings.milvus_uri == "./data/milvus.db"
    assert settings.milvus_is_local
    assert settings.milvus_path == Path("data/milvus.db")
    assert settings.collection == "documents"
    assert settings.embedding_provider == "local"
    assert (settings.chunk_size, settings.chunk_overlap) == (800, 120)
    assert (settings.batch_size, settings.concurrency) == (64, 4)
    assert settings.max_file_mb == 200
    assert settings.milvus_token is None
    assert settings.embedding_base_url is None


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("RAG_CHUNK_SIZE", "500", "chunk_size", 500),
        ("RAG_CHUNK_OVERLAP", "0", "chunk_overlap", 0),
        ("RAG_BATCH_SIZE", "8", "batch_size", 8),
        ("RAG_CONCURRENCY", "2", "concurrency", 2),
        ("RAG_MAX_FILE_MB", "0.5", "max_file_mb", 0.5),
        ("RAG_COLLECTION", "handbook_2025", "collection", "handbook_2025"),
        ("RAG_EMBEDDING_PROVIDER", "openai", "embedding_provider", "openai"),
        ("RAG_EMBEDDING_DIMENSIONS", "256", "embedding_dimensions", 256),
        # trailing slash dropped so "<base>/embeddings" never becomes "<base>//embeddings"
        (
            "RAG_EMBEDDING_BASE_URL",
            "http://host:8000/v1/",
            "embedding_base_url",
            "http://host:8000/v1",
        ),
        ("RAG_MILVUS_URI", "  /srv/rag/milvus.db ", "milvus_uri", "/srv/rag/milvus.db"),
    ],
)
def test_environment_variable_overrides_default(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, attribute: str, expected: object
) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(load_settings(), attribute) == expected


def test_server_uri_is_not_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_MILVUS_URI", "http://milvus.internal:19530")
    settings = load_settings()
    assert not settings.milvus_is_local


def test_explicit_override_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_CHUNK_SIZE", "500")
    assert load_settings(chunk_size=700).chunk_size == 700


def test_dotenv_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    (clean_env / ".env").write_text("RAG_CHUNK_SIZE=600\nRAG_COLLECTION=from_dotenv\n")
    settings = load_settings()
    assert (settings.chunk_size, settings.collection) == (600, "from_dotenv")
    monkeypatch.setenv("RAG_CHUNK_SIZE", "800")
    assert load_settings().chunk_size == 800


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"RAG_CHUNK_SIZE": "abc"}, "RAG_CHUNK_SIZE"),
        ({"RAG_CHUNK_SIZE": "50"}, "RAG_CHUNK_SIZE"),
        ({"RAG_CHUNK_SIZE": "100000"}, "RAG_CHUNK_SIZE"),
        ({"RAG_CHUNK_OVERLAP": "-1"}, "RAG_CHUNK_OVERLAP"),
        ({"RAG_CHUNK_SIZE": "400", "RAG_CHUNK_OVERLAP": "400"}, "RAG_CHUNK_OVERLAP"),
        ({"RAG_CHUNK_OVERLAP": "1500"}, "RAG_CHUNK_OVERLAP"),
        ({"RAG_BATCH_SIZE": "0"}, "RAG_BATCH_SIZE"),
        ({"RAG_CONCURRENCY": "many"}, "RAG_CONCURRENCY"),
        ({"RAG_MAX_FILE_MB": "0"}, "RAG_MAX_FILE_MB"),
        ({"RAG_COLLECTION": "my-docs"}, "RAG_COLLECTION"),
        ({"RAG_COLLECTION": "1docs"}, "RAG_COLLECTION"),
        ({"RAG_COLLECTION": "docs; drop"}, "RAG_COLLECTION"),
        ({"RAG_EMBEDDING_PROVIDER": "huggingface"}, "RAG_EMBEDDING_PROVIDER"),
        ({"RAG_EMBEDDING_BASE_URL": "localhost:11434/v1"}, "RAG_EMBEDDING_BASE_URL"),
        ({"RAG_LLM_BASE_URL": "ftp://models.internal"}, "RAG_LLM_BASE_URL"),
        ({"RAG_MILVUS_URI": "   "}, "RAG_MILVUS_URI"),
        ({"RAG_MILVUS_TIMEOUT": "0"}, "RAG_MILVUS_TIMEOUT"),
        ({"RAG_EMBEDDING_DIMENSIONS": "-3"}, "RAG_EMBEDDING_DIMENSIONS"),
    ],
)
def test_invalid_value_is_one_line_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], named: str
) -> None:
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert named in message
    assert message.startswith("invalid configuration")
    assert caught.value.exit_code == 2


def test_overlap_error_names_both_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_CHUNK_SIZE", "400")
    monkeypatch.setenv("RAG_CHUNK_OVERLAP", "450")
    with pytest.raises(ConfigError, match=r"RAG_CHUNK_OVERLAP \(450\).*RAG_CHUNK_SIZE \(400\)"):
        load_settings()


def test_several_invalid_values_are_reported_together_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAG_CHUNK_SIZE", "abc")
    monkeypatch.setenv("RAG_COLLECTION", "bad name")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert "RAG_CHUNK_SIZE" in message and "RAG_COLLECTION" in message
    assert "'abc'" in message  # the offending value is shown for non-secret settings


def _secret_fields() -> list[str]:
    return [
        name for name, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation)
    ]


def test_every_secret_is_masked_in_public_view(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = _secret_fields()
    assert {"milvus_token", "embedding_api_key", "llm_api_key"} <= set(secrets)
    # RAG_API_KEYS takes argon2 entries only (a plain key stops the start): a real one.
    api_entry = mint_api_key("alice")[1]
    for number, name in enumerate(secrets):
        # RAG_UI_USERS must be a valid user list (a malformed one stops the start).
        user = "alice:" if name == "ui_users" else ""
        value = api_entry if name == "api_keys" else f"{user}s3cr3t-value-{number}"
        monkeypatch.setenv(f"RAG_{name.upper()}", value)
    settings = load_settings()
    view = settings.public_view()
    assert "s3cr3t-value" not in repr(view) and api_entry.split(":", 1)[1] not in repr(view)
    for name in secrets:
        assert view[name] == "********"
        value = getattr(settings, name)
        expected = api_entry if name == "api_keys" else "s3cr3t"
        assert isinstance(value, SecretStr) and expected in value.get_secret_value()
    # public_view keeps everything else readable
    assert view["chunk_size"] == 800
    assert view["milvus_uri"] == "./data/milvus.db"


def test_unset_and_empty_secrets_are_not_shown_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_MILVUS_TOKEN", "")
    view = load_settings().public_view()
    assert view["milvus_token"] in ("", None)
    assert view["llm_api_key"] is None


# The first runs as the console script, the second only varies the value and runs
# in-process (``invoke_rag``: the same command and output without a process start).
@pytest.mark.parametrize(
    ("variable", "value", "run"),
    [("RAG_CHUNK_SIZE", "abc", run_rag), ("RAG_EMBEDDING_BASE_URL", "localhost:11434", invoke_rag)],
)
def test_cli_ingest_with_bad_variable_exits_with_one_line(
    tmp_path: Path, variable: str, value: str, run: Callable[..., CompletedProcess[str]]
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nSome text.")
    result = run(
        "ingest",
        str(folder),
        cwd=tmp_path,
        RAG_MILVUS_URI=str(tmp_path / "m.db"),
        **{variable: value},
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert lines[0].startswith("error: invalid configuration")
    assert "Traceback" not in result.stderr + result.stdout
    # nothing was opened or created: the error comes before Milvus is touched
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("uri", ["htp://localhost:19530", "localhost:19530", "./data/milvus"])
def test_malformed_milvus_uri_is_a_config_error(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    monkeypatch.setenv("RAG_MILVUS_URI", uri)
    with pytest.raises(ConfigError, match="RAG_MILVUS_URI"):
        load_settings()
