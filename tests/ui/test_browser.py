"""The Chainlit chat in a real headless browser: Debian's Chromium driven by Playwright.

The app is set up as in ``tests/ui/test_chat_ui.py``: ``rag ingest`` builds a Milvus Lite
database from a few tiny documents (embeddings from the loopback fake OpenAI server, which
runs in this process so its traffic can be inspected), then ``rag ui`` serves it in a
subprocess. Each test opens a fresh browser context, i.e. a new chat session, and drives the
page as a user would: typing in ``#chat-input``, clicking links, choosing files, changing the
chat settings.

Three UIs are started, each once per module: the main one (fake chat model), one with users
configured (the login form), and one without ``RAG_LLM_BASE_URL``, which starts the bundled
SmolLM2 model through llama-cpp-python (skipped when that is not installed).

Playwright cannot download its own browsers here, so the system ``chromium`` is launched; the
module is skipped when it is not installed. The sync Playwright API is used in plain tests,
which keeps it clear of pytest-asyncio's event loops.

Screenshots: on a failure every test saves a screenshot, the page's HTML and the UI's log in
its ``tmp_path``, or under ``$RAG_TEST_ARTIFACTS/<test name>/`` when that is set (CI uploads
it). A few tests also save a screenshot of what they show; these go to ``docs/screenshots/``
(for the README) only with ``RAG_UPDATE_SCREENSHOTS=1``, so ordinary runs never touch the repo.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.local.models import DEFAULT_MODEL, is_installed
from rag.ui.welcome import SAMPLES_COLLECTION, load_starters
from tests.conftest import write_files
from tests.support.docs import DOCS, FALCON_Q, TALLINN_Q
from tests.support.fake_openai import FakeOpenAI, FakeOpenAIConfig, default_reply, serve
from tests.ui.test_chat_ui import ChatUI, _env, ingested_ui

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
    )

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# The sample corpus's collection name: prompts/starters.md holds its starters (another
# collection gets its own file or questions about its documents, rag.ui.welcome.starters_for),
# so the start page shows what a fresh install shows.
COLLECTION = SAMPLES_COLLECTION
TOKEN_DELAY = 0.05  # seconds between streamed words: a 25-word answer streams for over a second
PADDING = (
    " The passage quoted above is the only one in the collection that mentions this, "
    "and nothing else in the documents contradicts it."
)
ANSWER = '[data-step-type="assistant_message"]'
RETRIEVAL = '[data-step-type="retrieval"]'
TIMEOUT_MS = 30_000
USERS = {"alice": "s3cret", "bob": "hunter2"}
# For the bundled model: the document answering the starter below, worded like the question
# so that the fake embeddings score it above the relevance floor and the model is asked.
EXPENSE_STARTER = "Expense approval"
EXPENSE_DOC = (
    "Who needs to approve an expense claim? An expense claim of up to €500 is approved by "
    "your team lead. An expense claim of €1,200 needs approval from the department head. "
    "A claim above €5,000 also needs the finance director.\n"
)
LLM_MISSING = [m for m in ("llama_cpp",) if importlib.util.find_spec(m) is None] + (
    [] if is_installed(DEFAULT_MODEL) else [f"the bundled {DEFAULT_MODEL} (make install-llm)"]
)


def _reply(messages: list[dict[str, Any]]) -> str:
    """The fake's default reply, with answers (not condensed questions) padded to 25+ words."""
    reply = default_reply(messages)
    return reply + PADDING if reply.startswith("According to the documents") else reply


@contextlib.contextmanager
def running_app(
    root: Path,
    docs: dict[str, str],
    extra_env: dict[str, str] | None = None,
    *,
    fake_llm: bool = True,
    start_timeout: float = 30,
) -> Iterator[ChatUI]:
    """Write ``docs``, ingest them and serve them with `rag ui` until the block exits.

    ``fake_llm=False`` leaves RAG_LLM_BASE_URL unset, so `rag ui` starts the bundled model;
    the fake server still provides the embeddings, which keeps the ingest quick.
    """
    folder, cwd = write_files(root / "docs", docs), root / "cwd"
    cwd.mkdir()
    fake = FakeOpenAI(FakeOpenAIConfig(chat_token_delay=TOKEN_DELAY, chat_reply=_reply))
    with serve(fake) as server:
        env = _env(root, server.base_url) | {"RAG_COLLECTION": COLLECTION} | (extra_env or {})
        if not fake_llm:  # the bundled model, answering as a fresh install does
            del env["RAG_LLM_BASE_URL"]
        with ingested_ui(folder, cwd, root, env, start_timeout=start_timeout) as (url, log):
            fake.reset()  # forget the ingestion traffic
            yield ChatUI(url, fake, root, log)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatUI]:
    with running_app(tmp_path_factory.mktemp("browser_ui"), DOCS) as started:
        yield started


@pytest.fixture(scope="module")
def login_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatUI]:
    """A UI that requires a login (its own process: auth is fixed when Chainlit starts)."""
    users = {
        "RAG_UI_USERS": ",".join(f"{user}:{password}" for user, password in USERS.items()),
        "CHAINLIT_AUTH_SECRET": "browser-test-" + "x" * 40,
    }
    root = tmp_path_factory.mktemp("browser_login")
    with running_app(root, {"falcon.txt": DOCS["falcon.txt"]}, users) as started:
        yield started


@pytest.fixture(scope="module")
def local_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatUI]:
    """A UI answering with the default bundled model, started by `rag ui` itself."""
    if LLM_MISSING:
        pytest.skip(f"bundled local LLM not installed (missing {', '.join(LLM_MISSING)})")
    root = tmp_path_factory.mktemp("browser_local")
    # A short answer cap: a CPU model on two shared cores writes some 20 tokens/s.
    extra = {"RAG_LLM_MAX_TOKENS": "64", "RAG_LLM_LOCAL_PORT": "0"}
    with running_app(
        root, {"expenses.txt": EXPENSE_DOC}, extra, fake_llm=False, start_timeout=120
    ) as started:
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # expect() waits 5 s by default: too short for a shared 2-core machine
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def artifacts_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where a failing test leaves its evidence: $RAG_TEST_ARTIFACTS/<test>, else tmp_path."""
    base = os.environ.get("RAG_TEST_ARTIFACTS")
    if not base:
        return tmp_path
    folder = Path(base) / re.sub(r"[^\w.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def chat_session(
    app: ChatUI, browser: Browser, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Page]:
    """A new browser context (a new chat session); on failure its screenshot, HTML and log.

    Failure is read from the session's failure count at teardown, which covers the test body
    and the waits in the fixtures that use this.
    """
    app.fake.reset()
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    failed_before = request.session.testsfailed
    try:
        yield page
    finally:
        if request.session.testsfailed > failed_before:
            folder = artifacts_dir(request, tmp_path)
            with contextlib.suppress(Exception):  # evidence must not hide the real error
                page.screenshot(path=str(folder / "failure.png"), full_page=True)
                (folder / "failure.html").write_text(page.content(), encoding="utf-8")
            (folder / "ui.log").write_text(app.log_tail(200), encoding="utf-8")
            print(f"failure screenshot, page and UI log saved in {folder}")
        context.close()


def wait_for_chat(page: Page) -> None:
    """The settings button appears once on_chat_start has sent the chat settings, i.e. the
    socket is connected and a question typed now is not dropped."""
    page.locator("#chat-settings-open-modal").wait_for()


@pytest.fixture
def page(
    app: ChatUI, browser: Browser, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Page]:
    """A new chat session on the start page of the main UI."""
    with chat_session(app, browser, request, tmp_path) as page:
        page.goto(app.url)
        wait_for_chat(page)
        yield page


@pytest.fixture
def login_page(
    login_app: ChatUI, browser: Browser, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Page]:
    """A new session on the login UI, not signed in and not yet navigated."""
    with chat_session(login_app, browser, request, tmp_path) as page:
        yield page


@pytest.fixture
def local_page(
    local_app: ChatUI, browser: Browser, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Page]:
    with chat_session(local_app, browser, request, tmp_path) as page:
        page.goto(local_app.url)
        wait_for_chat(page)
        yield page


def screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    """Save a picture of what the test shows: into docs/screenshots/ only when asked to.

    With RAG_UPDATE_SCREENSHOTS=1 the README's pictures are refreshed; otherwise the file goes
    to tmp_path, so the step is still exercised but the repository is left alone.
    """
    folder = SCREENSHOTS if os.environ.get("RAG_UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.wait_for_timeout(300)  # let transitions (the side panel, dialogs) finish drawing
    page.screenshot(path=str(path), animations="disabled", caret="hide")
    print(f"screenshot: {path}")
    return path


def ask(page: Page, question: str) -> None:
    """Type ``question`` and press Enter; returns once it is shown as the user's message."""
    sent = page.locator('[data-step-type="user_message"]')
    before = sent.count()
    page.locator("#chat-input").click()
    page.keyboard.type(question)
    expect(page.locator("#chat-submit")).to_be_enabled()  # connected, uploads finished
    page.keyboard.press("Enter")
    expect(sent).to_have_count(before + 1)
    expect(sent.last).to_contain_text(question)


def answer_with(page: Page, text: str, *, count: int = 1, timeout: float = 30) -> Locator:
    """The assistant message whose rendered text contains ``text`` (waits for it)."""
    deadline = time.monotonic() + timeout
    messages = page.locator(ANSWER)
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = [m.inner_text() for m in messages.all()]
        hits = [n for n, t in enumerate(seen) if text in t]
        if len(hits) >= count:
            return messages.nth(hits[count - 1])
        page.wait_for_timeout(100)
    raise AssertionError(f"no assistant message with {text!r} after {timeout}s: {seen}")


def source_links(message: Locator, *, settle: float = 5) -> list[str]:
    """The names of the source links under an answer ("[1] falcon.txt", ...), in order.

    Read from the DOM text: the links are styled in capitals, their text is the name. The
    answer's text can render a moment before its side elements do (seen on a loaded
    machine), so wait up to ``settle`` seconds for a first link; an answer without any
    gives an empty list.
    """
    with contextlib.suppress(PlaywrightTimeout):
        message.get_by_role("link").first.wait_for(timeout=settle * 1000)
    return [str(link.text_content()).strip() for link in message.get_by_role("link").all()]


def retrieved(page: Page, number: int) -> list[str]:
    """Open the ``number``-th (1-based) Retrieval step and return its passages' sources.

    The step lists every passage the search returned (``n. source — score s``), also those
    below the relevance floor that the answer leaves out, so it shows top-k exactly.
    """
    step = page.locator(RETRIEVAL).nth(number - 1)
    expect(step).to_be_visible()
    step.get_by_role("button", name="Retrieval").click()
    body = step.get_by_role("region")
    expect(body).to_contain_text("score")
    rows = [line for line in body.inner_text().splitlines() if " — score " in line]
    return [re.sub(r"^\d+\.\s*", "", row.split(" — score ")[0]).strip() for row in rows]


def open_settings(page: Page) -> Locator:
    """Click the gear in the composer; returns the settings dialog."""
    page.locator("#chat-settings-open-modal").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Settings panel")).to_be_visible()
    return dialog


def set_top_k(page: Page, dialog: Locator, k: int) -> None:
    """Move the top-k slider with the keyboard, one step per arrow key, as a user can."""
    slider = dialog.get_by_role("slider")
    current = int(str(slider.get_attribute("aria-valuenow")))
    slider.focus()
    for _ in range(abs(current - k)):
        page.keyboard.press("ArrowLeft" if k < current else "ArrowRight")
    expect(slider).to_have_attribute("aria-valuenow", str(k))


def choose_source(page: Page, dialog: Locator, name: str, shot: Path | None = None) -> None:
    """Pick ``name`` in the "Only this document" drop-down (``shot``: picture it open)."""
    dialog.locator("#source").click()
    option = page.get_by_role("option", name=name, exact=True)
    if shot is not None:
        expect(option).to_be_visible()
        screenshot(page, shot.name, shot.parent)
    option.click()
    expect(dialog.locator("#source")).to_have_text(name)


def confirm_settings(dialog: Locator) -> None:
    dialog.locator("#confirm").click()
    expect(dialog).to_be_hidden()


# --------------------------------------------------------------------------------------------


def test_start_page_shows_starters_and_readme(app: ChatUI, page: Page, tmp_path: Path) -> None:
    labels = [label for label, _ in load_starters()]
    assert labels, "prompts/starters.md has no starters"
    starters = page.locator("#starters button")
    starters.first.wait_for()
    assert [t.strip() for t in starters.all_inner_texts()] == labels
    screenshot(page, "welcome.png", tmp_path)

    page.locator("#readme-button").click()
    readme = page.get_by_role("dialog")
    readme.get_by_role("heading", name="In this collection").wait_for()
    text = readme.inner_text()
    assert "Ask your documents" in text, text
    listed = text.split("In this collection", 1)[1]
    assert COLLECTION in listed and "falcon.txt" in listed and "tallinn.txt" in listed, listed


def test_answer_streams_then_cites_a_source_shown_in_the_side_panel(
    app: ChatUI, page: Page, tmp_path: Path
) -> None:
    ask(page, FALCON_Q)
    answer = page.locator(ANSWER).last
    answer.get_by_text("According to").wait_for()
    lengths = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = answer.inner_text()
        lengths.append(len(text))
        if "Sources" in text:
            break
        page.wait_for_timeout(150)
    growth = [b for a, b in itertools.pairwise(lengths) if b > a]
    assert len(growth) >= 3, f"the answer did not grow while streaming: {lengths}"

    final = answer_with(page, "Sources")
    text = final.inner_text()
    assert "ZX-4471" in text and "[1]" in text, text
    # the source link is styled in capitals: its DOM text is the element's name
    link = final.get_by_role("link", name="[1] falcon.txt", exact=True)
    assert link.text_content() == "[1] falcon.txt"
    assert re.search(r"\[1\] falcon\.txt \(score \d\.\d\d\)", text, re.IGNORECASE), text

    # Chainlit may open the first side element by itself; close it so the click is what opens it
    side = page.locator("#side-view-content")
    if side.is_visible():
        page.locator("#side-view-title button").click()
        side.wait_for(state="hidden")
    link.click()
    side.wait_for()
    assert "[1] falcon.txt" in page.locator("#side-view-title").inner_text()
    assert "The launch code for Project Falcon is ZX-4471." in side.inner_text()
    # the Retrieval step, once opened, lists the scored passages the answer was given
    assert retrieved(page, 1)[0] == "falcon.txt"


def test_follow_up_question_is_condensed_with_the_earlier_turn(app: ChatUI, page: Page) -> None:
    ask(page, FALCON_Q)
    answer_with(page, "Sources")
    app.fake.reset()
    ask(page, "And the wifi password of the Tallinn office?")
    text = answer_with(page, "Sources", count=2).inner_text()
    assert "kelp-harbor-93" in text and "[1] tallinn.txt" in text.lower(), text
    prompts = app.chat_prompts()
    assert len(prompts) == 2, prompts
    condense = prompts[0]
    assert "Stand-alone question" in condense, condense
    assert FALCON_Q in condense and "ZX-4471" in condense, condense


def test_top_k_setting_limits_the_retrieved_passages(app: ChatUI, page: Page) -> None:
    ask(page, FALCON_Q)
    first = answer_with(page, "Sources")
    before = retrieved(page, 1)
    # the default top-k (4) over three or more documents: more than the 2 chosen below
    assert len(before) >= 3 and before[0] == "falcon.txt", before
    assert source_links(first)[0] == "[1] falcon.txt"

    dialog = open_settings(page)
    set_top_k(page, dialog, 2)
    confirm_settings(dialog)
    ask(page, FALCON_Q)
    second = answer_with(page, "Sources", count=2)
    after = retrieved(page, 2)
    assert len(after) == 2 and after[0] == "falcon.txt", after
    links = source_links(second)
    assert 1 <= len(links) <= 2 and links[0] == "[1] falcon.txt", links
    assert "ZX-4471" in second.inner_text()


def test_document_filter_setting_decides_which_file_is_cited(
    app: ChatUI, page: Page, tmp_path: Path
) -> None:
    dialog = open_settings(page)
    # the drop-down lists every document in the collection
    choose_source(page, dialog, "tallinn.txt", shot=tmp_path / "settings.png")
    confirm_settings(dialog)

    # a question about another document: only the chosen file is searched, nothing relevant
    # is found there, so its closest passage is shown and the model is not asked
    ask(page, FALCON_Q)
    closest = answer_with(page, "Closest passages")
    assert retrieved(page, 1) == ["tallinn.txt"]
    assert source_links(closest) == ["[1] tallinn.txt"]
    assert "ZX-4471" not in closest.inner_text(), closest.inner_text()
    assert app.fake.chat_requests() == []

    ask(page, TALLINN_Q)
    answered = answer_with(page, "Sources")
    assert retrieved(page, 2) == ["tallinn.txt"]
    assert source_links(answered) == ["[1] tallinn.txt"]
    assert "kelp-harbor-93" in answered.inner_text()

    # back to all documents: the same first question now finds its own file
    dialog = open_settings(page)
    choose_source(page, dialog, "All documents")
    confirm_settings(dialog)
    ask(page, FALCON_Q)
    again = answer_with(page, "Sources", count=2)
    assert source_links(again)[0] == "[1] falcon.txt", source_links(again)
    assert len(set(retrieved(page, 3))) >= 2
    assert "ZX-4471" in again.inner_text()


def test_uploaded_file_is_ingested_then_cited(app: ChatUI, page: Page, tmp_path: Path) -> None:
    upload = app.root / "heron.txt"
    upload.write_text(
        "The Heron QX-9 drone flies 42 kilometres on one charge. Its battery takes an hour.\n",
        encoding="utf-8",
    )
    # The chat box's drop zone input (its id really starts with "#"). The attach button opens
    # no Playwright file chooser here and setting files on its own input attaches nothing.
    page.locator('[id="#upload-drop-input"]').set_input_files(upload)
    page.locator("#message-composer").get_by_text("heron.txt").wait_for()
    ask(page, "How far does the Heron QX-9 drone fly?")
    text = answer_with(page, "Sources", timeout=60).inner_text()
    # shown by its own name; stored as this chat's own: in its owner's folder, named after
    # its content
    assert "42 kilometres" in text and "[1] heron.txt (uploaded)" in text.lower(), text
    (stored,) = (app.root / "uploads").glob("*/*-heron.txt")
    assert re.fullmatch(
        r"[0-9a-f]{16}/[0-9a-f]{12}-heron\.txt", f"{stored.parent.name}/{stored.name}"
    )
    report = answer_with(page, "✅ heron.txt").inner_text()
    assert re.search(r"✅ heron\.txt: [1-9]\d* passages? added", report), report
    screenshot(page, "upload.png", tmp_path)


def test_llm_failure_shows_a_warning(app: ChatUI, page: Page) -> None:
    app.fake.fail_next("chat", 500, count=3)  # the first call and both retries
    ask(page, FALCON_Q)
    text = answer_with(page, "⚠️", timeout=60).inner_text()
    assert "500" in text and "Sources" not in text, text
    statuses = [r.status for r in app.fake.requests if r.kind == "chat"]
    assert statuses == [500, 500, 500], statuses


# --- login ----------------------------------------------------------------------------------


def sign_in(page: Page, user: str, password: str) -> None:
    page.locator("#email").fill(user)
    page.locator("#password").fill(password)
    page.get_by_role("button", name="Sign In").click()


def test_chat_is_unreachable_until_signed_in(
    login_app: ChatUI, login_page: Page, tmp_path: Path
) -> None:
    page = login_page
    page.goto(login_app.url)
    expect(page.get_by_role("heading", name="Login to access the app")).to_be_visible()
    assert page.url.rstrip("/").endswith("/login"), page.url
    expect(page.locator("#chat-input")).to_have_count(0)
    screenshot(page, "login.png", tmp_path)

    sign_in(page, "alice", "wrong-password")
    expect(page.get_by_role("alert")).to_contain_text("Unable to sign in")
    expect(page.locator("#chat-input")).to_have_count(0)
    # a known password of another user does not open alice's account either
    sign_in(page, "alice", USERS["bob"])
    expect(page.get_by_role("alert")).to_contain_text("Unable to sign in")
    # nor does going to the chat's address directly
    page.goto(login_app.url)
    expect(page.locator("#password")).to_be_visible()
    expect(page.locator("#chat-input")).to_have_count(0)
    assert login_app.fake.chat_requests() == [] and login_app.fake.embedding_requests() == []


def test_signing_in_opens_a_working_chat(login_app: ChatUI, login_page: Page) -> None:
    page = login_page
    page.goto(login_app.url)
    sign_in(page, "alice", USERS["alice"])
    wait_for_chat(page)
    expect(page.locator("#password")).to_have_count(0)
    ask(page, FALCON_Q)
    text = answer_with(page, "Sources").inner_text()
    assert "ZX-4471" in text and "[1] falcon.txt" in text.lower(), text
    assert len(login_app.fake.chat_requests()) == 1


# --- the bundled local model ----------------------------------------------------------------


def test_starter_is_answered_by_the_bundled_local_model(
    local_app: ChatUI, local_page: Page, tmp_path: Path
) -> None:
    """The default bundled model with the default grounding check, as a fresh install
    answers: the fact, cited to the passage, which the screenshot for the README shows."""
    page = local_page
    starter = page.locator("#starters button", has_text=EXPENSE_STARTER)
    expect(starter).to_have_count(1)
    starter.click()
    question = dict(load_starters())[EXPENSE_STARTER]
    expect(page.locator('[data-step-type="user_message"]')).to_contain_text(question)

    # sample the answer while the model writes it: text must show before the sources do
    answer = page.locator(ANSWER).last
    samples: list[str] = []
    deadline = time.monotonic() + 180  # a CPU model on two shared cores
    while time.monotonic() < deadline:
        text = answer.inner_text() if page.locator(ANSWER).count() else ""
        if not samples or text != samples[-1]:
            samples.append(text)
        if "Sources" in text or "⚠️" in text or "Closest passages" in text:
            break
        page.wait_for_timeout(50)
    final = samples[-1]
    assert "Sources" in final, f"no answer with sources: {samples[-3:]}\n{local_app.log_tail()}"
    body = final.split("Sources", 1)[0].strip()
    assert body, f"the local model produced no text: {final!r}"
    assert "department head" in body.lower(), final  # the fact, checked against [1]
    assert source_links(page.locator(ANSWER).last) == ["[1] expenses.txt"]
    link = page.locator(ANSWER).last.get_by_role("link", name="[1] expenses.txt", exact=True)
    side = page.locator("#side-view-content")
    if not side.is_visible():
        link.click()
        side.wait_for()
    screenshot(page, "answer-with-sources.png", tmp_path)
    assert retrieved(page, 1) == ["expenses.txt"]
    # the bundled model answered, not the fake endpoint (which only served the embeddings)
    assert local_app.fake.chat_requests() == []
    assert "starting the bundled chat model" in local_app.log.read_text(encoding="utf-8")
