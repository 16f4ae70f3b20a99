"""`rag doctor`'s checks, in process: each service reported in one line, failures named."""

from __future__ import annotations

from pathlib import Path

from rag.cli.doctor import run_checks
from rag.config import load_settings
from rag.local.server import free_port


async def test_a_fresh_install_is_ok_and_an_unreachable_chat_model_fails_in_one_line(
    tmp_path: Path,
) -> None:
    closed = free_port()
    settings = load_settings(
        milvus_uri=str(tmp_path / "m.db"),
        database_url=f"sqlite:///{tmp_path / 'chat.db'}",
        llm_base_url=f"http://127.0.0.1:{closed}/v1",
        llm_api_key="sk-doctor-secret-1234",
    )
    checks = {name: (ok, detail) for name, ok, detail in await run_checks(settings)}
    assert set(checks) == {"milvus", "embeddings", "chat model", "chat history"}, checks
    assert checks["milvus"][0] and "not yet created" in checks["milvus"][1]
    assert checks["embeddings"][0]
    assert checks["chat history"] == (
        True,
        f"{settings.database_url} (created at the first `rag ui`)",
    )
    ok, detail = checks["chat model"]
    assert not ok and f"127.0.0.1:{closed}" in detail and "\n" not in detail
    assert "sk-doctor-secret-1234" not in repr(checks)


async def test_history_off_is_reported_as_off(tmp_path: Path) -> None:
    settings = load_settings(milvus_uri=str(tmp_path / "m.db"), database_url="")
    checks = {name: (ok, detail) for name, ok, detail in await run_checks(settings)}
    assert checks["chat history"] == (True, "off (RAG_DATABASE_URL is empty)")
