"""The start screen: starters from prompts/, and a welcome page that says what is inside."""

from __future__ import annotations

from pathlib import Path

from rag.prompts import PROMPTS_DIR
from rag.ui.welcome import (
    CHAINLIT_CONFIG,
    TEMPLATE,
    describe_search,
    load_starters,
    prepare_app_root,
    render_welcome,
    write_welcome,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_packaged_files_are_the_committed_ones() -> None:
    """The package reads prompts/, chainlit.md and .chainlit/config.toml, not copies of them."""
    assert TEMPLATE.read_bytes() == (REPO_ROOT / "chainlit.md").read_bytes()
    assert CHAINLIT_CONFIG.read_bytes() == (REPO_ROOT / ".chainlit" / "config.toml").read_bytes()
    committed = sorted(p.name for p in (REPO_ROOT / "prompts").iterdir())
    assert sorted(p.name for p in PROMPTS_DIR.iterdir()) == committed
    for name in committed:
        assert (PROMPTS_DIR / name).read_bytes() == (REPO_ROOT / "prompts" / name).read_bytes()


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
    assert isinstance(TEMPLATE, Path), "a package on disk: importlib.resources gives a path"
    write_welcome(TEMPLATE.parent, "must not land")
    assert TEMPLATE.read_text() == before
    write_welcome(REPO_ROOT, "must not land either")  # where the template's one copy lives
    assert (REPO_ROOT / "chainlit.md").read_text() == before


def test_welcome_says_how_passages_are_found_and_why_keywords_are_off() -> None:
    hybrid = describe_search("hybrid", None)
    assert "hybrid" in hybrid and "settings" in hybrid
    assert "hybrid" in render_welcome("c", "m", ["a.md"], hybrid)
    old_server = "Milvus v2.3.5 has no BM25 full-text functions"
    fallback = describe_search("hybrid", old_server)
    assert "dense" in fallback and "unavailable" in fallback and old_server in fallback
    assert "unavailable" in describe_search("dense", old_server)
    assert "unavailable" not in describe_search("dense", None)


def test_chat_settings_offer_search_modes_only_where_bm25_exists() -> None:
    from rag.retrieval import SearchOptions
    from rag.ui.chat import MODE_OF_LABEL, options_from, settings_widgets

    options = SearchOptions(mode="hybrid")
    (search,) = [w for w in settings_widgets(options, ["a.md"]) if w.id == "search"]
    assert [MODE_OF_LABEL[v] for v in search.values] == ["dense", "bm25", "hybrid"]
    assert MODE_OF_LABEL[search.initial_value] == "hybrid"
    (dense_only,) = [
        w for w in settings_widgets(options, ["a.md"], lexical=False) if w.id == "search"
    ]
    assert [MODE_OF_LABEL[v] for v in dense_only.values] == ["dense"]

    label = next(k for k, v in MODE_OF_LABEL.items() if v == "bm25")
    assert options_from({"search": label}, SearchOptions()).mode == "bm25"
    assert options_from({}, options).mode == "hybrid", "a missing key keeps the mode"
