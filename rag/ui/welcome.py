"""What the chat shows before the first question: starters and the welcome page.

Chainlit reads ``chainlit.md`` from its app root on every page load, so the UI
runs from a runtime folder (``data/ui``) where the committed ``chainlit.md`` is
rendered with what is actually in the collection and which models answer: a
presenter can tell local and hosted modes apart, and a visitor sees what to ask.

The template and the Chainlit config ship inside ``rag.ui`` (symlinks onto ``chainlit.md``
and ``.chainlit/config.toml`` at the top of the repository, plain files in a wheel) and are
read with ``importlib.resources``, so an installed wheel needs no source tree.
"""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from rag.choices import SEARCH_WORDS
from rag.prompts import PROMPTS_DIR

TEMPLATE: Traversable = files("rag.ui") / "chainlit.md"
CHAINLIT_CONFIG: Traversable = files("rag.ui") / "chainlit_config.toml"
MAX_LISTED = 40


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


def prepare_app_root(ui_dir: Path) -> Path:
    """Blocking: make the runtime Chainlit folder with our config and the welcome template."""
    ui_dir = ui_dir.resolve()
    (ui_dir / ".chainlit").mkdir(parents=True, exist_ok=True)
    # Read before writing: in a source checkout run with the repository as the app root
    # the target is the template itself (through its symlink), and copyfile would refuse.
    config, template = CHAINLIT_CONFIG.read_bytes(), TEMPLATE.read_bytes()
    (ui_dir / ".chainlit" / "config.toml").write_bytes(config)
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
    collection: str, models: str, sources: list[str], search: str | None = None
) -> str:
    """The committed welcome text plus what is in the collection right now."""
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
    return "\n".join(lines) + "\n"


def _is_template(path: Path) -> bool:
    """Whether ``path`` is the packaged template, under any name (the symlink or its target)."""
    return isinstance(TEMPLATE, Path) and path.resolve() == TEMPLATE.resolve()


def write_welcome(app_root: Path, text: str) -> None:
    """Blocking: write the rendered page, but never over the committed template."""
    target = app_root.resolve() / "chainlit.md"
    if not _is_template(target):
        target.write_text(text, encoding="utf-8")
