"""`rag.errors.explain`: real exceptions of each library become one masked, actionable line.

Every error here is the libraries' own class, built the way the library builds it (openai's
from an httpx response, pymilvus' MilvusException, grpc's AioRpcError, SQLAlchemy's wrapper
of a driver error), so a check on a class name or a module name would not pass them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
import grpc.aio
import httpx
import httpx2
import openai
import pymilvus
import pytest
import sqlalchemy.exc

from rag.errors import (
    MASK,
    ConfigError,
    HistoryUnavailable,
    ModelUnavailable,
    RagError,
    Service,
    StoreUnavailable,
    explain,
    first_line,
    is_timeout,
    mask,
    mask_url_password,
    url_password,
)
from rag.local.server import free_port

KEY = "sk-test-k3y-NEVER-SHOWN"
CHAT = Service("chat", "the chat model at http://127.0.0.1:9/v1", "RAG_LLM_API_KEY", (KEY,))
EMBEDDINGS = Service("embeddings", "embedding endpoint http://e:8/v1", "RAG_EMBEDDING_API_KEY")
MILVUS = Service("milvus", "Milvus at http://root:pa55word@m:19530", None, ("tok-en-secret",))
HISTORY = Service("history", "the chat history database at postgresql://u:pw-db@db/chat")
REQUEST = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")


def status_error(kind: type[openai.APIStatusError], status: int, text: str) -> BaseException:
    """An openai status error as the SDK raises it: from the server's response."""
    response = httpx.Response(status, request=REQUEST, json={"error": {"message": text}})
    return kind(f"Error code: {status} - {text}", response=response, body=None)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details, debug_error_string="x"
    )


@pytest.mark.parametrize(
    ("error", "service", "raised", "line"),
    [
        (
            status_error(openai.AuthenticationError, 401, "invalid key"),
            CHAT,
            ModelUnavailable,
            "the chat model at http://127.0.0.1:9/v1 rejected the API key (401); "
            "check RAG_LLM_API_KEY",
        ),
        (
            status_error(openai.PermissionDeniedError, 403, "not for you"),
            EMBEDDINGS,
            ModelUnavailable,
            "embedding endpoint http://e:8/v1 rejected the API key (403); "
            "check RAG_EMBEDDING_API_KEY",
        ),
        (
            status_error(openai.RateLimitError, 429, "slow down"),
            CHAT,
            ModelUnavailable,
            "the chat model at http://127.0.0.1:9/v1 is rate-limited (429); "
            "wait a moment and try again",
        ),
        (
            openai.APITimeoutError(request=REQUEST),
            CHAT,
            ModelUnavailable,
            "the chat model at http://127.0.0.1:9/v1 did not answer in time",
        ),
        (
            openai.APIConnectionError(request=REQUEST),
            CHAT,
            ModelUnavailable,
            "the chat model at http://127.0.0.1:9/v1 is not reachable; is it running?",
        ),
        (
            status_error(openai.InternalServerError, 500, "boom"),
            CHAT,
            ModelUnavailable,
            "the chat model at http://127.0.0.1:9/v1 failed: Error code: 500 - boom",
        ),
        (
            httpx.ConnectError("All connection attempts failed", request=REQUEST),
            EMBEDDINGS,
            ModelUnavailable,
            "embedding endpoint http://e:8/v1 is not reachable; is it running?",
        ),
        (  # a stream already under way times out: openai 3 lets httpx2's error through
            httpx2.ReadTimeout("timed out"),
            CHAT,
            ModelUnavailable,
            "the chat model at http://127.0.0.1:9/v1 did not answer in time",
        ),
        (
            pymilvus.MilvusException(code=2, message="Fail connecting to server\nsecond line"),
            MILVUS,
            StoreUnavailable,
            f"cannot use Milvus at http://root:{MASK}@m:19530: Fail connecting to server",
        ),
        (
            rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"),
            MILVUS,
            StoreUnavailable,
            f"cannot use Milvus at http://root:{MASK}@m:19530: "
            "UNAVAILABLE: failed to connect to all addresses",
        ),
        (
            rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
            MILVUS,
            StoreUnavailable,
            f"cannot use Milvus at http://root:{MASK}@m:19530: did not answer in time",
        ),
        (
            ConnectionRefusedError(111, "Connection refused"),
            MILVUS,
            StoreUnavailable,
            f"cannot use Milvus at http://root:{MASK}@m:19530: [Errno 111] Connection refused",
        ),
        (
            sqlalchemy.exc.OperationalError("SELECT 1", {}, OSError("could not connect")),
            HISTORY,
            HistoryUnavailable,
            f"cannot use the chat history database at postgresql://u:{MASK}@db/chat: "
            "could not connect",
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_each_library_error_becomes_its_rag_error_and_line(
    error: BaseException, service: Service, raised: type[RagError], line: str
) -> None:
    explained = explain(error, service)
    assert type(explained) is raised
    assert str(explained) == line


def test_a_timeout_says_how_long_it_waited() -> None:
    error = openai.APITimeoutError(request=REQUEST)
    explained = explain(error, EMBEDDINGS, timeout="within 60 s (5 tries)")
    assert str(explained) == "embedding endpoint http://e:8/v1 did not answer within 60 s (5 tries)"


def test_a_key_echoed_by_the_server_is_masked() -> None:
    """Some proxies repeat the key they were sent in their error text."""
    error = status_error(openai.BadRequestError, 400, f"bad key {KEY} for this model")
    line = str(explain(error, CHAT))
    assert KEY not in line
    where = "the chat model at http://127.0.0.1:9/v1"
    assert line == f"{where} failed: Error code: 400 - bad key {MASK} for this model"


def test_the_milvus_token_and_the_url_password_are_masked_even_bare() -> None:
    error = pymilvus.MilvusException(
        code=1800, message="auth failed for token tok-en-secret (password pa55word)"
    )
    line = str(explain(error, MILVUS))
    assert "tok-en-secret" not in line and "pa55word" not in line
    assert line.endswith(f"auth failed for token {MASK} (password {MASK})")


def test_a_url_password_in_the_error_text_is_masked() -> None:
    error = sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, OSError("no route to postgresql://admin:hunter22@other/db")
    )
    line = str(explain(error, HISTORY))
    assert "hunter22" not in line and "pw-db" not in line
    assert f"postgresql://admin:{MASK}@other/db" in line


def test_an_explained_error_passes_through_unchanged() -> None:
    already = ConfigError("RAG_MILVUS_URI is empty")
    assert explain(already, MILVUS) is already


def test_mask_hides_secrets_and_url_passwords_but_not_ports() -> None:
    assert mask("key sk-abcdef and sk-abcdef", ["sk-abcdef"]) == f"key {MASK} and {MASK}"
    # a key containing another is masked whole, not half
    assert mask("sk-abcdef-long", ["sk-abcdef", "sk-abcdef-long"]) == MASK
    # a placeholder key ("x") would mangle every word: it is not a secret worth hiding
    assert (
        mask("the chat model at http://example.com", ["x"])
        == "the chat model at http://example.com"
    )
    text = "http://localhost:8080/a@b answered"  # a port and a path, no password
    assert mask(text) == text
    assert mask_url_password("http://u:p%40ss@h:1/x") == f"http://u:{MASK}@h:1/x"
    assert url_password("postgresql+asyncpg://u:s3cret@h/db") == "s3cret"
    assert url_password("http://localhost:8080/a@b") == ""


def test_first_line_and_is_timeout_read_the_library_types() -> None:
    assert first_line(rpc_error(grpc.StatusCode.UNAVAILABLE, "down")) == "UNAVAILABLE: down"
    assert first_line(ValueError()) == "ValueError"
    assert is_timeout(httpx.ReadTimeout("slow")) and is_timeout(TimeoutError())
    assert is_timeout(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "late"))
    assert not is_timeout(rpc_error(grpc.StatusCode.UNAVAILABLE, "down"))
    assert not is_timeout(openai.APIConnectionError(request=REQUEST))


# --- the SDK over aiohttp (rag.llm and rag.embeddings' async clients) -------------------------


async def _sdk_error(base_url: str, wait: float = 5.0) -> BaseException:
    """What a chat request through openai's aiohttp client raises, as the SDK raises it."""
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=KEY, max_retries=0, timeout=wait,
        http_client=openai.DefaultAioHttpClient(),
    )  # fmt: skip
    try:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    except Exception as error:
        return error
    finally:
        await client.close()
    raise AssertionError("the request succeeded")


@asynccontextmanager
async def _server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]):
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


async def test_over_aiohttp_a_refused_connection_is_not_reachable_not_a_timeout() -> None:
    # The SDK's aiohttp adapter raises a refused connection as httpx2's ConnectTimeout.
    error = await _sdk_error(f"http://127.0.0.1:{free_port()}/v1")
    assert isinstance(error, openai.APITimeoutError)  # what the SDK says; not what happened
    assert not is_timeout(error)
    explained = explain(error, CHAT)
    assert str(explained) == f"{CHAT.label} is not reachable; is it running?"


async def test_over_aiohttp_a_server_hanging_up_is_said_as_such() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async with _server(hang_up) as url:
        error = await _sdk_error(url)
    assert not is_timeout(error)
    assert first_line(error) == "Server disconnected"
    assert str(explain(error, CHAT)) == f"{CHAT.label} failed: Server disconnected"


async def test_over_aiohttp_a_silent_server_is_a_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    async with _server(silent) as url:
        error = await _sdk_error(url, wait=0.3)
    assert is_timeout(error)
    assert str(explain(error, CHAT)) == f"{CHAT.label} did not answer in time"


def test_an_error_raised_from_itself_is_explained() -> None:
    # pymilvus' decorators re-raise with `raise e from e`: the cause chain is a loop.
    error = pymilvus.MilvusException(code=2, message="Fail connecting to server")
    error.__cause__ = error
    assert not is_timeout(error)
    assert str(explain(error, MILVUS)).endswith("Fail connecting to server")
