"""`rag ui` (the chat, with the bundled model when no endpoint is set) and `rag bench`."""

from __future__ import annotations

import sys
from importlib.resources import as_file, files
from pathlib import Path
from typing import Annotated

import typer
from dotenv import dotenv_values

from rag.auth import (
    AUTH_SECRET_VARIABLE,
    OAUTH_ALLOW_MISSING,
    auth_secret_problem,
    oauth_configured,
)
from rag.cli.app import CollectionOption, app, console, errors, fail, settings_or_exit
from rag.config import SQLITE_PREFIX
from rag.errors import ConfigError, RagError

# Where the package sits: the repository in a source checkout (an editable install), the
# site-packages folder in an installed wheel, which has no bench/.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the chat UI.")] = 8000,
    collection: CollectionOption = None,
) -> None:
    """Start the chat UI (and the bundled local model when no LLM endpoint is configured)."""
    import os
    import subprocess

    from rag.local.server import LocalLLMServer
    from rag.ui.welcome import HOST_VARIABLE, PORT_VARIABLE, prepare_app_root, ui_origins

    settings = settings_or_exit(collection=collection)
    env = dict(os.environ) | settings.to_env()
    if oauth_configured(env) and not settings.ui_oauth_allow.strip():
        raise fail(ConfigError(OAUTH_ALLOW_MISSING))
    if settings.login_enabled(env):
        # Chainlit reads its secret from the environment of the app root, not from this
        # folder's .env: take it from either, and refuse a login that could not sign in.
        secret = env.get(AUTH_SECRET_VARIABLE) or dotenv_values(".env").get(AUTH_SECRET_VARIABLE)
        if problem := auth_secret_problem(secret):
            raise fail(ConfigError(problem))
        env[AUTH_SECRET_VARIABLE] = str(secret)
    # Chainlit runs from the app root (where chainlit.md is): pin relative paths first.
    if settings.milvus_is_local:
        env["RAG_MILVUS_URI"] = str(settings.milvus_path.resolve())
    if (db_path := settings.database_path) is not None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        env["RAG_DATABASE_URL"] = f"{SQLITE_PREFIX}{db_path.resolve()}"
    env["RAG_UPLOAD_DIR"] = str(Path(settings.upload_dir).resolve())
    # Chainlit's own config gets the one upload limit and the origins of this address.
    env[HOST_VARIABLE], env[PORT_VARIABLE] = host, str(port)
    app_root = prepare_app_root(
        Path(settings.ui_dir),
        upload_max_mb=settings.upload_max_mb,
        origins=ui_origins(host, port, settings.ui_origins),
    )
    env["CHAINLIT_APP_ROOT"] = str(app_root)
    server: LocalLLMServer | None = None
    try:
        if not settings.llm_base_url:
            server = LocalLLMServer(settings.local_llm, port=settings.llm_local_port)
            console.print(f"starting the bundled chat model {server.model.title}…")
            try:
                env["RAG_LLM_BASE_URL"] = server.start()
            except RagError as error:
                raise fail(error) from None
            env["RAG_LLM_MODEL"] = server.name
        console.print(f"[bold green]chat UI:[/] http://{host}:{port}", highlight=False)
        # `chainlit run` takes a file name; as_file gives the packaged module's own path
        # for a package on disk (and a temporary copy only for a zipped one).
        with as_file(files("rag.ui") / "chat.py") as target:
            command = [sys.executable, "-m", "chainlit", "run", str(target),
                       "--headless", "--host", host, "--port", str(port)]  # fmt: skip
            raise typer.Exit(subprocess.call(command, env=env, cwd=env["CHAINLIT_APP_ROOT"]))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    finally:
        if server is not None:
            server.stop()


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="Small sizes: a few minutes on 2 cores.")] = False,
) -> None:
    """Run the benchmarks in bench/ side by side and write bench/results/."""
    import subprocess

    if not (SOURCE_ROOT / "bench" / "__main__.py").is_file():
        errors.print("[bold red]error[/]: bench/ is only in a source checkout of the project")
        raise typer.Exit(2)
    command = [sys.executable, "-m", "bench", *(["--quick"] if quick else [])]
    raise typer.Exit(subprocess.call(command, cwd=SOURCE_ROOT))
