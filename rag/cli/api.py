"""`rag serve` (the OpenAI-compatible HTTP API, `rag.api`) and `rag api-key` (a key for it)."""

from __future__ import annotations

from types import FrameType
from typing import Annotated, Any

import typer

from rag.cli.app import CollectionOption, app, console, errors, fail, run_async, settings_or_exit
from rag.errors import ConfigError

NO_KEYS = (
    "RAG_API_KEYS is not set: mint a key with `rag api-key OWNER` and add the entry it "
    "prints, or start with --no-auth to let anyone ask about the shared documents"
)
BOTH = "--no-auth would ignore RAG_API_KEYS: unset it, or drop --no-auth"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _server(config: Any) -> Any:
    """A uvicorn server that stops on SIGTERM/SIGINT and then returns.

    uvicorn raises the signal it caught again once it has shut down (``capture_signals``,
    uvicorn/server.py 0.54), which kills the process inside `open_assistant`'s block: the
    bundled model and the Milvus clients would never be closed. Forgetting the signal
    after asking the server to stop lets the block close everything, and `rag serve`
    exits 0 (a second Ctrl-C still forces the exit, by uvicorn's own rule).
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server(config)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the API.")] = 8001,
    collection: CollectionOption = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="No API keys: anyone may ask and search the shared documents; nobody "
            "may upload or delete.",
        ),
    ] = False,
) -> None:
    """Serve the OpenAI-compatible API (chat completions with sources, search, uploads)."""
    import uvicorn

    from rag.api.app import create_app
    from rag.app import open_assistant

    settings = settings_or_exit(collection=collection)
    if settings.api_keys is None and not no_auth:
        raise fail(ConfigError(NO_KEYS))
    if settings.api_keys is not None and no_auth:
        raise fail(ConfigError(BOTH))
    if no_auth and host not in LOOPBACK:
        errors.print(f"[yellow]note[/]: no API keys, and listening on {host}: anyone who can "
                     "reach it may ask about the shared documents", highlight=False)  # fmt: skip

    async def go() -> None:
        # Opened here, in the loop uvicorn will serve from (the store's async client is
        # bound to it), so a Milvus or model that is down stops the start in one line.
        async with open_assistant(settings) as assistant:
            api = create_app(settings, anonymous=no_auth, assistant=assistant)
            config = uvicorn.Config(
                api, host=host, port=port, log_level="info", access_log=False,
                timeout_graceful_shutdown=5,
            )  # fmt: skip
            console.print(
                f"[bold green]API:[/] http://{host}:{port}/v1 (answers by {assistant.llm_label})",
                highlight=False,
            )
            await _server(config).serve()

    run_async(go)


@app.command("api-key")
def api_key(
    owner: Annotated[str, typer.Argument(help="Whose key: their uploads are kept apart.")],
) -> None:
    """Mint an API key for `rag serve`: prints the key, then its RAG_API_KEYS entry."""
    from rag.auth import mint_api_key

    try:
        key, entry = mint_api_key(owner)
    except ValueError as error:
        errors.print(f"[bold red]error[/]: {error}", highlight=False)
        raise typer.Exit(2) from None
    console.print(key, highlight=False, markup=False, soft_wrap=True)
    console.print(entry, highlight=False, markup=False, soft_wrap=True)
    errors.print(
        "the first line is the key (give it to its owner; it is not stored anywhere); add "
        f"the second to RAG_API_KEYS in .env, in single quotes: RAG_API_KEYS='{owner}:…' "
        "(entries separated by commas)",
        highlight=False,
    )
