"""The start screen: starters from prompts/, and a welcome page that says what is inside."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from rag.prompts import PROMPTS_DIR
from rag.ui.welcome import (
    CHAINLIT_CONFIG,
    TEMPLATE,
    chainlit_config,
    describe_search,
    load_starters,
    prepare_app_root,
    render_welcome,
    ui_origins,
    write_welcome,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_packaged_files_are_the_committed_ones() -> None:
    """The package reads prompts/, chainlit.md and .chainlit/config.toml, not copies of them."""
    assert TEMPLATE.read_bytes() == (REPO_ROOT / "chainlit.md").read_bytes()
    assert CHAINLIT_CONFIG.read_bytes() == (REPO_ROOT / ".chainlit" / "config.toml").read_bytes()
    # files only: a folder (prompts/starters/ with per-collection starters) is compared by
    # the files in it
    committed = sorted(p.name for p in (REPO_ROOT / "prompts").iterdir())
    assert sorted(p.name for p in PROMPTS_DIR.iterdir()) == committed
    for path in sorted((REPO_ROOT / "prompts").rglob("*")):
        if path.is_file():
            relative = path.relative_to(REPO_ROOT / "prompts").as_posix()
            assert PROMPTS_DIR.joinpath(*relative.split("/")).read_bytes() == path.read_bytes()


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


def test_options_from_never_takes_the_viewer_from_the_client() -> None:
    from rag.retrieval import SearchOptions
    from rag.ui.chat import options_from

    sent = {"viewer": "bob", "k": 3, "source": "All documents"}
    options = options_from(sent, SearchOptions(viewer="alice"))
    assert options.viewer == "alice" and options.k == 3


# --- the runtime Chainlit config: one upload limit, the UI's own origins ---------------------


def _runtime_config(root: Path) -> dict[str, object]:
    return tomllib.loads((root / ".chainlit" / "config.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("limit", "chainlit_mb"), [(7, 7), (20.0, 20), (0.05, 1), (2.5, 3)])
def test_runtime_config_holds_the_upload_limit_chainlit_applies(
    tmp_path: Path, limit: float, chainlit_mb: int
) -> None:
    """Chainlit's drop zone and upload route read this int (rounded up, never below the
    setting); ingest.uploads applies the exact setting."""
    from chainlit.config import SpontaneousFileUploadFeature

    root = prepare_app_root(tmp_path / "ui", upload_max_mb=limit, origins=["http://a:1"])
    feature = _runtime_config(root)["features"]["spontaneous_file_upload"]  # type: ignore[index]
    assert SpontaneousFileUploadFeature(**feature).max_size_mb == chainlit_mb
    assert feature["enabled"] is True and feature["max_files"] == 5
    # only the two lines change: the template's comments and other keys are all kept
    ours = (root / ".chainlit" / "config.toml").read_text().splitlines()
    template = CHAINLIT_CONFIG.read_text().splitlines()
    assert len(ours) == len(template)
    changed = [a for a, b in zip(ours, template, strict=True) if a != b]
    assert all(line.strip().startswith(("max_size_mb", "allow_origins")) for line in changed)


def test_runtime_config_allows_only_the_uis_own_origins(tmp_path: Path) -> None:
    from chainlit.config import ProjectSettings

    origins = ui_origins("127.0.0.1", 8123, "https://chat.example.org/")
    root = prepare_app_root(tmp_path / "ui", upload_max_mb=20, origins=origins)
    project = ProjectSettings(**_runtime_config(root)["project"])  # type: ignore[arg-type]
    assert project.allow_origins == [
        "http://127.0.0.1:8123",
        "http://localhost:8123",
        "https://chat.example.org",
    ]
    # the committed template itself no longer allows every site
    template = tomllib.loads(CHAINLIT_CONFIG.read_text(encoding="utf-8"))
    assert "*" not in template["project"]["allow_origins"]


def test_ui_origins_come_from_the_address_the_ui_listens_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CHAINLIT_HOST", "CHAINLIT_PORT", "RAG_UI_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    assert ui_origins() == ["http://127.0.0.1:8000", "http://localhost:8000"]
    monkeypatch.setenv("CHAINLIT_HOST", "0.0.0.0")
    monkeypatch.setenv("CHAINLIT_PORT", "9001")
    monkeypatch.setenv("RAG_UI_ORIGINS", "http://10.0.0.5:9001, https://chat.example.org")
    assert ui_origins() == [
        "http://127.0.0.1:9001",
        "http://localhost:9001",
        "http://10.0.0.5:9001",
        "https://chat.example.org",
    ]
    assert ui_origins("chat.internal", 80, "") == ["http://chat.internal:80"]
    assert ui_origins("::1", 8000, "") == ["http://[::1]:8000"]


def test_a_template_without_the_keys_is_refused() -> None:
    template = CHAINLIT_CONFIG.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="max_size_mb"):
        chainlit_config(template.replace("max_size_mb", "# max_size"), origins=[], max_size_mb=1)
    with pytest.raises(ValueError, match="allow_origins"):
        chainlit_config(
            template.replace("allow_origins =", "# allow_origins:"), origins=[], max_size_mb=1
        )


# --- starters and the Readme per collection -------------------------------------------------


def test_starters_come_from_a_collections_own_file(tmp_path: Path) -> None:
    from rag.ui.welcome import starters_for

    (tmp_path / "handbook.md").write_text("- Leave: How many days of leave do I get?\n")
    assert starters_for("handbook", ["a.pdf"], tmp_path) == [
        ("Leave", "How many days of leave do I get?")
    ]
    # a name that is not a collection name is never looked up as a file
    (tmp_path / "x.md").write_text("- Escape: Which file is this?\n")
    assert starters_for("../x", ["a.pdf"], tmp_path / "sub") == [("a", "What is a.pdf about?")]


def test_the_samples_starters_are_the_samples_collections_only(tmp_path: Path) -> None:
    from rag.ui.welcome import SAMPLES_COLLECTION, starters_for

    samples = load_starters()
    assert SAMPLES_COLLECTION == "documents"
    assert starters_for("documents", ["employee_handbook_2025.pdf"], tmp_path) == samples
    other = starters_for("team_docs", ["handbook/travel_policy-2025.pdf", "faq.md"], tmp_path)
    assert other == [
        ("travel policy 2025", "What is handbook/travel_policy-2025.pdf about?"),
        ("faq", "What is faq.md about?"),
    ]
    assert not set(other) & set(samples)
    assert starters_for("empty", [], tmp_path) == []
    many = starters_for("big", [f"doc{i}.txt" for i in range(10)], tmp_path)
    assert [label for label, _ in many] == ["doc0", "doc1", "doc2", "doc3"]


def test_document_titles_are_short_labels() -> None:
    from rag.ui.welcome import document_title

    assert document_title("kitchen/olga.md") == "olga"
    assert document_title(".env") == ".env"
    assert document_title("notes") == "notes"
    long = document_title("a_" * 40 + ".txt")
    assert len(long) == 40 and long.endswith("…")


def test_welcome_names_the_other_collections() -> None:
    text = render_welcome("handbook", "m", ["a.md"], None, [("bravo", 2), ("gamma", 1)])
    mine, others = text.split("## Other collections", 1)
    assert "**handbook** holds" in mine and "- a.md" in mine and "bravo" not in mine
    assert "- **bravo**: 2 documents" in others and "- **gamma**: 1 document\n" in others
    assert "settings" in others
    assert "Other collections" not in render_welcome("handbook", "m", ["a.md"])


def test_the_collection_select_shows_only_with_a_choice() -> None:
    from rag.retrieval import SearchOptions
    from rag.ui.chat import CollectionChoice, settings_widgets

    options = SearchOptions()
    one = [CollectionChoice("atlas", 3)]
    assert [w.id for w in settings_widgets(options, [], collections=one)] == [
        "k",
        "mmr",
        "search",
        "source",
    ]
    two = [CollectionChoice("atlas", 3), CollectionChoice("bravo", 1)]
    widgets = settings_widgets(options, [], collections=two, collection="bravo")
    choice = widgets[0].to_dict()
    assert choice["id"] == "collection" and choice["initial"] == "bravo"
    assert choice["items"] == [
        {"label": "atlas (3 documents)", "value": "atlas"},
        {"label": "bravo (1 document)", "value": "bravo"},
    ]
    gone = settings_widgets(options, [], collections=two, collection="dropped")[0].to_dict()
    assert gone["initial"] == "atlas"


def test_a_resumed_thread_names_the_collection_of_its_last_answer() -> None:
    import json

    from rag.ui.chat import answered_from

    def answer(collection: str | None) -> dict[str, object]:
        record = {"answer": "…"} if collection is None else {"collection": collection}
        return {"type": "assistant_message", "metadata": json.dumps({"rag": record})}

    thread = {"steps": [answer("bravo"), {"type": "user_message"}, answer("gamma")]}
    assert answered_from(thread) == "gamma"  # type: ignore[arg-type]
    assert answered_from({"steps": [answer(None)]}) is None  # type: ignore[arg-type]
    assert answered_from({"steps": []}) is None  # type: ignore[arg-type]
