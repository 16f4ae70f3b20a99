"""The Chainlit chat in a real headless browser: Debian's Chromium driven by Playwright.

The app is set up as in ``tests/test_chat_ui.py``: ``rag ingest`` builds a Milvus Lite
database from a few tiny documents (embeddings from the loopback fake OpenAI server, which
runs in this process so its traffic can be inspected), then ``rag ui`` serves it in a
subprocess. Each test opens a fresh browser context, i.e. a new chat session, and drives the
page as a user would: typing in ``#chat-input``, clicking links, choosing files.

Playwright cannot download its own browsers here, so the system ``chromium`` is launched; the
module is skipped when it is not installed. The sync Playwright API is used in plain tests,
which keeps it clear of pytest-asyncio's event loops. On a failure a screenshot and the
page's HTML are saved in the test's ``tmp_path``.
"""

from __future__ import annotations

import itertools
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rag.welcome import load_starters
from tests.fake_openai import FakeOpenAI, FakeOpenAIConfig, default_reply, serve
from tests.test_chat_ui import _env, ingested_ui

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
    )

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright  # noqa: E402

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
COLLECTION = "browser_ui"
TOKEN_DELAY = 0.05  # seconds between streamed words: a 25-word answer streams for over a second
PADDING = (
    " The passage quoted above is the only one in the collection that mentions this, "
    "and nothing else in the documents contradicts it."
)
DOCS = {
    "falcon.txt": (
        "The launch code for Project Falcon is ZX-4471. "
        "The security office rotates it at the start of every quarter.\n"
    ),
    "tallinn.txt": (
        "The wifi password of the Tallinn office is kelp-harbor-93. "
        "Guests get a separate network at the front desk.\n"
    ),
}
FALCON_Q = "What is the launch code for Project Falcon?"
ANSWER = '[data-step-type="assistant_message"]'
TIMEOUT_MS = 30_000


def _reply(messages: list[dict[str, Any]]) -> str:
    """The fake's default reply, with answers (not condensed questions) padded to 25+ words."""
    reply = default_reply(messages)
    return reply + PADDING if reply.startswith("According to the documents") else reply


@dataclass(frozen=True)
class App:
    url: str
    fake: FakeOpenAI
    root: Path
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def chat_prompts(self) -> list[str]:
        return [
            "\n".join(f"{m.get('role')}: {m.get('content')}" for m in body.get("messages", []))
            for body in self.fake.chat_requests()
        ]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    root = tmp_path_factory.mktemp("browser_ui")
    docs, cwd = root / "docs", root / "cwd"
    cwd.mkdir()
    for relative, text in DOCS.items():
        (docs / relative).parent.mkdir(parents=True, exist_ok=True)
        (docs / relative).write_text(text, encoding="utf-8")
    fake = FakeOpenAI(FakeOpenAIConfig(chat_token_delay=TOKEN_DELAY, chat_reply=_reply))
    with serve(fake) as server:
        env = _env(root, server.base_url) | {"RAG_COLLECTION": COLLECTION}
        with ingested_ui(docs, cwd, root, env) as (url, log):
            fake.reset()  # forget the ingestion traffic
            yield App(url, fake, root, log)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(
    app: App, browser: Browser, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Page]:
    """A new chat session on the start page; on failure, leaves a screenshot in tmp_path."""
    app.fake.reset()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    failed_before = request.session.testsfailed
    try:
        page.goto(app.url)
        # the settings button appears once on_chat_start has sent the chat settings, i.e. the
        # socket is connected and a question typed now is not dropped
        page.locator("#chat-settings-open-modal").wait_for()
        yield page
    finally:
        if request.session.testsfailed > failed_before:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            (tmp_path / "failure.html").write_text(page.content(), encoding="utf-8")
            (tmp_path / "ui.log").write_text(app.log_tail(200), encoding="utf-8")
            print(f"screenshot and page saved in {tmp_path}")
        context.close()


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


# --------------------------------------------------------------------------------------------


def test_start_page_shows_starters_and_readme(app: App, page: Page) -> None:
    labels = [label for label, _ in load_starters()]
    assert labels, "prompts/starters.md has no starters"
    starters = page.locator("#starters button")
    starters.first.wait_for()
    assert [t.strip() for t in starters.all_inner_texts()] == labels

    page.locator("#readme-button").click()
    readme = page.get_by_role("dialog")
    readme.get_by_role("heading", name="In this collection").wait_for()
    text = readme.inner_text()
    assert "Ask your documents" in text, text
    listed = text.split("In this collection", 1)[1]
    assert COLLECTION in listed and "falcon.txt" in listed and "tallinn.txt" in listed, listed


def test_answer_streams_then_cites_a_source_shown_in_the_side_panel(app: App, page: Page) -> None:
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


def test_follow_up_question_is_condensed_with_the_earlier_turn(app: App, page: Page) -> None:
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


def test_uploaded_file_is_ingested_then_cited(app: App, page: Page) -> None:
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
    assert "42 kilometres" in text and "[1] uploads/heron.txt" in text.lower(), text
    report = answer_with(page, "✅ heron.txt").inner_text()
    assert re.search(r"✅ heron\.txt: [1-9]\d* passages? added", report), report
    assert (app.root / "uploads" / "heron.txt").is_file()


def test_llm_failure_shows_a_warning(app: App, page: Page) -> None:
    app.fake.fail_next("chat", 500, count=3)  # the first call and both retries
    ask(page, FALCON_Q)
    text = answer_with(page, "⚠️", timeout=60).inner_text()
    assert "500" in text and "Sources" not in text, text
    statuses = [r.status for r in app.fake.requests if r.kind == "chat"]
    assert statuses == [500, 500, 500], statuses
