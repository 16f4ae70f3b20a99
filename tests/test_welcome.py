"""The start screen: starters from prompts/, and a welcome page that says what is inside."""

from __future__ import annotations

from pathlib import Path

from rag.welcome import TEMPLATE, load_starters, prepare_app_root, render_welcome, write_welcome


def test_bundled_starters_load() -> None:
    starters = load_starters()
    assert len(starters) >= 3
    assert all(label and question.endswith("?") for label, question in starters)


def test_starters_file_format(tmp_path: Path) -> None:
    path = tmp_path / "starters.md"
    path.write_text("# comment: ignored\n- Refunds: How long is the refund window?\nnoise\n")
    assert load_starters(path) == [("Refunds", "How long is the refund window?")]
    assert load_starters(tmp_path / "missing.md") == []


def test_welcome_lists_the_collection_and_models() -> None:
    text = render_welcome("handbook", "gpt-x at http://llm", ["a.pdf", "b.md"])
    assert text.startswith(TEMPLATE.read_text(encoding="utf-8").rstrip())
    assert "**handbook** holds **2 documents**" in text
    assert "- a.pdf" in text and "gpt-x at http://llm" in text


def test_welcome_for_an_empty_collection_says_how_to_fill_it() -> None:
    assert "rag ingest" in render_welcome("empty", "m", [])


def test_welcome_caps_long_listings() -> None:
    text = render_welcome("big", "m", [f"f{i}.txt" for i in range(100)])
    assert "… and 60 more" in text


def test_runtime_root_gets_config_and_page_but_template_is_never_overwritten(
    tmp_path: Path,
) -> None:
    root = prepare_app_root(tmp_path / "ui")
    assert (root / ".chainlit" / "config.toml").is_file()
    assert (root / "chainlit.md").read_text() == TEMPLATE.read_text()
    write_welcome(root, "rendered")
    assert (root / "chainlit.md").read_text() == "rendered"
    before = TEMPLATE.read_text()
    write_welcome(TEMPLATE.parent, "must not land")
    assert TEMPLATE.read_text() == before
