"""What the chat shows before the first question: starters and the welcome page.

Chainlit reads ``chainlit.md`` from its app root on every page load, so the UI
runs from a runtime folder (``data/ui``) where the committed ``chainlit.md`` is
rendered with what is actually in the collection and which models answer: a
presenter can tell local and hosted modes apart, and a visitor sees what to ask.

The template and the Chainlit config ship inside ``rag.ui`` (symlinks onto ``chainlit.md``
and ``.chainlit/config.toml`` at the top of the repository, plain files in a wheel) and are
read with ``importlib.resources``, so an installed wheel needs no source tree. The copy in
the runtime folder gets this deployment's values: the upload limit (one number for the
browser, Chainlit's upload route and `ingest.uploads`) and the origins a browser may load
the chat from (the UI's own address; Chainlit's own default is any site at all).

Starters belong to a collection (`starters_for`): ``prompts/starters/<collection>.md`` when
it exists, the sample corpus's ``prompts/starters.md`` for the samples' own collection
(``documents``), and otherwise questions about the collection's own first documents, so a
team's collection never offers questions about the fictional drone maker.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from rag.choices import SEARCH_WORDS
from rag.config import get_settings
from rag.prompts import PROMPTS_DIR

TEMPLATE: Traversable = files("rag.ui") / "chainlit.md"
CHAINLIT_CONFIG: Traversable = files("rag.ui") / "chainlit_config.toml"
MAX_LISTED = 40
# Where `rag ui` listens unless told otherwise (its --host/--port defaults); `chainlit run`
# puts its own --host/--port in these variables (chainlit/cli/__init__.py).
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
HOST_VARIABLE, PORT_VARIABLE = "CHAINLIT_HOST", "CHAINLIT_PORT"
# More origins a browser may load the chat from (a proxy's public address), comma-separated.
ORIGINS_VARIABLE = "RAG_UI_ORIGINS"
LOOPBACK = ("127.0.0.1", "localhost")
ANY_INTERFACE = ("0.0.0.0", "::", "")


# The collection `make demo` ingests the sample corpus into (RAG_COLLECTION's default): the
# one whose starters are prompts/starters.md.
SAMPLES_COLLECTION = "documents"
STARTERS_DIR: Traversable = PROMPTS_DIR / "starters"
MAX_STARTERS = 4
# Milvus names a collection with letters, digits and underscores; anything else is not
# looked up as a file (no name reaches a path it could leave STARTERS_DIR by).
_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def load_starters(path: Traversable = PROMPTS_DIR / "starters.md") -> list[tuple[str, str]]:
    """(label, question) pairs from ``- Label: question`` lines; comments are skipped."""
    if not path.is_file():
        return []
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*-\s*([^:]+):\s*(.+?)\s*$", line)
        if match:
            pairs.append((match.group(1).strip(), match.group(2)))
    return pairs


def document_title(source: str) -> str:
    """A short label for a stored source: its file name without folder or suffix, words
    spaced (``handbook/travel_policy-2025.pdf`` → ``travel policy 2025``)."""
    stem = source.rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem.strip(".") else stem
    words = re.sub(r"[_\-]+", " ", stem).strip() or source
    return words if len(words) <= 40 else words[:39].rstrip() + "…"


def document_starters(sources: Sequence[str], limit: int = MAX_STARTERS) -> list[tuple[str, str]]:
    """(label, question) pairs about the first ``limit`` documents: what a visitor can ask
    of a collection nobody wrote starters for."""
    return [(document_title(s), f"What is {s} about?") for s in list(sources)[:limit]]


def starters_for(
    collection: str, sources: Sequence[str], folder: Traversable = STARTERS_DIR
) -> list[tuple[str, str]]:
    """The starters of ``collection``: its own file in ``folder``, the samples' for the
    samples' collection, else questions about its documents (``sources``, shared ones)."""
    if _COLLECTION_NAME.match(collection):
        own = folder / f"{collection}.md"
        if own.is_file():
            return load_starters(own)
    if collection == SAMPLES_COLLECTION:
        return load_starters()
    return document_starters(sources)


def _origin(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ui_origins(
    host: str | None = None, port: int | None = None, extra: str | None = None
) -> list[str]:
    """The origins a browser may load the chat from: the UI's own address, plus ``extra``.

    Host and port default to the environment `chainlit run` is given (else `rag ui`'s own
    defaults), ``extra`` to RAG_UI_ORIGINS. A loopback address is reachable by both its
    names; one listening on every interface cannot know the names it is reached by, so
    only loopback is allowed until RAG_UI_ORIGINS lists the others.
    """
    host = host if host is not None else os.environ.get(HOST_VARIABLE, DEFAULT_HOST)
    port = port if port is not None else int(os.environ.get(PORT_VARIABLE) or DEFAULT_PORT)
    extra = extra if extra is not None else os.environ.get(ORIGINS_VARIABLE, "")
    hosts = list(LOOPBACK) if host in LOOPBACK or host in ANY_INTERFACE else [host]
    listed = [item.strip().rstrip("/") for item in extra.split(",") if item.strip()]
    return list(dict.fromkeys([_origin(name, port) for name in hosts] + listed))


def _set_key(text: str, key: str, value: str) -> str:
    """``text`` with the one line assigning ``key`` set to ``value`` (comments kept)."""
    pattern = re.compile(rf"^(\s*){re.escape(key)}\s*=.*$", re.M)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"the Chainlit config template must set {key} exactly once")
    return pattern.sub(lambda match: f"{match.group(1)}{key} = {value}", text)


def chainlit_config(template: str, *, origins: Sequence[str], max_size_mb: int) -> str:
    """The template with this deployment's origins and upload limit.

    The keys are Chainlit 2.12's (config.py): ``[project] allow_origins``, which its CORS
    middleware receives, and ``[features.spontaneous_file_upload] max_size_mb``, an int
    that both its drop zone and its upload route (server.validate_file_size) apply. The
    template's comments are kept, so only the two lines change; the result is parsed back
    to be sure each landed in its table.
    """
    # JSON strings are valid TOML basic strings (the same escapes, \uXXXX included).
    text = _set_key(template, "allow_origins", json.dumps(list(origins)))
    text = _set_key(text, "max_size_mb", str(int(max_size_mb)))
    parsed = tomllib.loads(text)
    upload = parsed.get("features", {}).get("spontaneous_file_upload", {})
    if parsed.get("project", {}).get("allow_origins") != list(origins) or (
        upload.get("max_size_mb") != max_size_mb
    ):
        raise ValueError("the Chainlit config template has moved allow_origins or max_size_mb")
    return text


def chainlit_upload_mb(upload_max_mb: float) -> int:
    """Chainlit's ``max_size_mb`` (a whole number) for RAG_UPLOAD_MAX_MB: rounded up, so the
    browser never refuses a file the server takes; `ingest.uploads` checks the exact one."""
    return max(1, math.ceil(upload_max_mb))


def prepare_app_root(
    ui_dir: Path,
    *,
    upload_max_mb: float | None = None,
    origins: Sequence[str] | None = None,
) -> Path:
    """Blocking: make the runtime Chainlit folder with our config and the welcome template.

    ``upload_max_mb`` defaults to RAG_UPLOAD_MAX_MB, ``origins`` to `ui_origins()`. Chainlit
    takes whole megabytes: a fractional limit is rounded up for it, and `ingest.uploads`
    applies the exact one.
    """
    if upload_max_mb is None:
        upload_max_mb = get_settings().upload_max_mb
    ui_dir = ui_dir.resolve()
    (ui_dir / ".chainlit").mkdir(parents=True, exist_ok=True)
    # Read before writing: in a source checkout run with the repository as the app root
    # the target is the template itself (through its symlink), and copyfile would refuse.
    config = chainlit_config(
        CHAINLIT_CONFIG.read_text(encoding="utf-8"),
        origins=ui_origins() if origins is None else origins,
        max_size_mb=chainlit_upload_mb(upload_max_mb),
    )
    template = TEMPLATE.read_bytes()
    target = ui_dir / ".chainlit" / "config.toml"
    if not (isinstance(CHAINLIT_CONFIG, Path) and target.resolve() == CHAINLIT_CONFIG.resolve()):
        target.write_text(config, encoding="utf-8")
    (ui_dir / "chainlit.md").write_bytes(template)
    return ui_dir


def describe_search(mode: str, bm25_unavailable: str | None) -> str:
    """One sentence on how passages are found, including why BM25 is off if it is."""
    if mode != "dense" and bm25_unavailable:
        return (
            f"Passages are found {SEARCH_WORDS['dense']}: {mode} search is unavailable "
            f"({bm25_unavailable})."
        )
    text = f"Passages are found {SEARCH_WORDS.get(mode, mode)}"
    if bm25_unavailable:
        return text + "; keyword search is unavailable here."
    return text + "; change it under ⚙️ settings."


def render_welcome(
    collection: str,
    models: str,
    sources: list[str],
    search: str | None = None,
    others: Sequence[tuple[str, int]] = (),
) -> str:
    """The committed welcome text plus what is in the collection right now.

    ``others`` are the other collections one can choose in the settings, with their shared
    document counts: Chainlit serves one page to every visitor, whatever they chose.
    """
    lines = [TEMPLATE.read_text(encoding="utf-8").rstrip(), "", "## In this collection", ""]
    if sources:
        lines.append(f"Collection **{collection}** holds **{len(sources)} documents**:")
        lines.append("")
        lines += [f"- {s}" for s in sources[:MAX_LISTED]]
        if len(sources) > MAX_LISTED:
            lines.append(f"- … and {len(sources) - MAX_LISTED} more")
    else:
        lines.append(
            f"Collection **{collection}** is empty: run `rag ingest FOLDER` or drop a file here."
        )
    lines += ["", f"Answers come from {models}."]
    if search:
        lines += ["", search]
    if others:
        lines += ["", "## Other collections", ""]
        lines.append("Choose one under ⚙️ settings (*Collection*); the chat then answers from it:")
        lines.append("")
        lines += [f"- **{name}**: {count_documents(count)}" for name, count in others]
    return "\n".join(lines) + "\n"


def count_documents(count: int) -> str:
    return f"{count} document" if count == 1 else f"{count} documents"


def _is_template(path: Path) -> bool:
    """Whether ``path`` is the packaged template, under any name (the symlink or its target)."""
    return isinstance(TEMPLATE, Path) and path.resolve() == TEMPLATE.resolve()


def write_welcome(app_root: Path, text: str) -> None:
    """Blocking: write the rendered page, but never over the committed template."""
    target = app_root.resolve() / "chainlit.md"
    if not _is_template(target):
        target.write_text(text, encoding="utf-8")
