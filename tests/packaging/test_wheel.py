"""The package installs whole: a wheel, in a fresh virtual environment, answers questions.

An editable install reads everything from the checkout, so it cannot show that a wheel lacks
a prompt file or the welcome page. Here the project is built into a wheel, installed with
``--no-deps`` into a new virtual environment without system site-packages, and run from a
folder outside the checkout. The dependencies are borrowed from the environment running the
tests through a ``.pth`` line added after the install: reinstalling them would take minutes
and a registry, and pip, asked with the line already there, would find this project installed
(editable) and skip the wheel. Only ``rag`` itself comes from the wheel, which each test that
imports it checks.

The chat model is the loopback fake OpenAI server of ``tests/support/fake_openai.py``; the
embeddings are the bundled local model, as a user who just installed the wheel has them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import write_files
from tests.support.chainlit_client import ChainlitClient
from tests.support.docs import FALCON, FALCON_Q, TALLINN
from tests.support.fake_openai import FakeOpenAI, FakeOpenAIConfig, serve
from tests.support.ui_process import running_ui

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180  # seconds for one command: a build, an install, an ingest, an answer
DOCS = {"falcon.txt": FALCON, "tallinn.txt": TALLINN}
QUESTION = FALCON_Q
REPLY = "The launch code for Project Falcon is ZX-4471, rotated every quarter [1]."
# What the wheel must carry besides modules, as (path in the wheel, file in the checkout).
PACKAGE_DATA = [
    *((f"rag/prompts_data/{p.name}", p) for p in sorted((REPO_ROOT / "prompts").glob("*.md"))),
    ("rag/ui/chainlit.md", REPO_ROOT / "chainlit.md"),
    ("rag/ui/chainlit_config.toml", REPO_ROOT / ".chainlit" / "config.toml"),
    ("rag/ui/chat.py", REPO_ROOT / "rag" / "ui" / "chat.py"),
]


@dataclass(frozen=True)
class Venv:
    """A virtual environment holding the wheel, and a working folder outside the checkout."""

    root: Path
    cwd: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def rag(self) -> Path:
        return self.root / "bin" / "rag"

    def env(self, **variables: str) -> dict[str, str]:
        """Nothing that leads Python back to the checkout: no PYTHONPATH, no RAG_* settings."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAG_", "CHAINLIT_", "PYTHON", "VIRTUAL_ENV"))
        }
        env.update(
            {
                "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
                "NO_COLOR": "1",
                "COLUMNS": "200",
                "TERM": "dumb",
            }
        )
        env.update(variables)
        return env

    def run(self, *command: str | Path, **variables: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(part) for part in command],
            cwd=self.cwd,
            env=self.env(**variables),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def python_json(self, code: str) -> dict[str, object]:
        """Run ``code`` in the venv's interpreter; it prints one JSON object."""
        done = self.run(self.python, "-c", code)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def _check(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"{done.args}\n{done.stdout}\n{done.stderr}"


def copy_checkout(target: Path) -> Path:
    """The files a fresh clone plus uncommitted work would have, symlinks kept as symlinks.

    Building in place would leave build/ and egg-info in the checkout, shared by whoever runs
    the tests next; ``git ls-files`` names exactly the project's files (no .venv, no data/).
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    for name in filter(None, listed.split(b"\0")):
        source, copy = REPO_ROOT / os.fsdecode(name), target / os.fsdecode(name)
        if not (source.is_symlink() or source.is_file()):
            continue  # deleted in the work tree, not yet committed
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            copy.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, copy)
    return target


def build_backend_installed(pyproject: Path) -> bool:
    """Whether this interpreter has what ``[build-system] requires``, so the build can reuse it.

    Otherwise pip builds in an isolated environment it fills from the package index, as
    ``pip install -e .`` (``make install``) does: an older setuptools here would misread the
    project table.
    """
    requires = tomllib.loads(pyproject.read_text(encoding="utf-8"))["build-system"]["requires"]
    for line in requires:
        requirement = Requirement(line)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            return False
        if not requirement.specifier.contains(installed, prereleases=True):
            return False
    return True


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = copy_checkout(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    if build_backend_installed(source / "pyproject.toml"):
        command += ["--no-build-isolation", "--no-index"]
    built = subprocess.run(
        [*command, str(source)], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    _check(built)
    (path,) = out.glob("rag_milvus_chat-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("installed")
    installed = Venv(root / "venv", root / "cwd")
    installed.cwd.mkdir()
    # No pip inside: this interpreter's pip installs into it (pip's --python option).
    _check(installed.run(sys.executable, "-m", "venv", "--without-pip", installed.root))
    pip = [sys.executable, "-m", "pip", "--python", str(installed.python)]
    _check(installed.run(*pip, "install", "--quiet", "--no-deps", "--no-index", wheel))
    site = installed.python_json(
        "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"
    )["purelib"]
    borrowed = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (Path(str(site)) / "borrowed_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    return installed


@dataclass(frozen=True)
class Corpus:
    db: Path
    fake: FakeOpenAI
    base_url: str


@pytest.fixture(scope="module")
def corpus(venv: Venv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    """`rag ingest` of a small folder by the installed wheel; the fake chat model beside it."""
    root = tmp_path_factory.mktemp("corpus")
    docs, db = write_files(root / "docs", DOCS), root / "milvus.db"
    _check(venv.run(venv.rag, "ingest", docs, RAG_MILVUS_URI=str(db)))
    with serve(FakeOpenAI(FakeOpenAIConfig(chat_reply=REPLY, chat_token_delay=0.1))) as server:
        yield Corpus(db, server.fake, server.base_url)


# --------------------------------------------------------------------------------------------


def test_the_wheel_carries_prompts_welcome_page_and_chainlit_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for inside, source in PACKAGE_DATA:
            assert inside in names, f"{inside} is missing from {wheel.name}"
            assert archive.read(inside) == source.read_bytes(), f"{inside} differs from {source}"
    assert len(PACKAGE_DATA) >= 7, "prompts/ holds the four prompt files"
    assert not any(name.startswith(("prompts/", "tests/", "bench/")) for name in names), names


def test_the_installed_project_is_the_wheel_and_its_cli_runs(venv: Venv) -> None:
    found = venv.python_json("import json, rag; print(json.dumps({'file': rag.__file__}))")
    assert Path(str(found["file"])).is_relative_to(venv.root), found
    assert not Path(str(found["file"])).is_relative_to(REPO_ROOT)

    done = venv.run(venv.rag, "--help")
    _check(done)
    for command in ("ingest", "ask", "ui"):
        assert command in done.stdout, done.stdout
    # The benchmarks are not packaged: one clear line instead of a traceback.
    bench = venv.run(venv.rag, "bench", "--quick")
    assert bench.returncode == 2, bench.stdout + bench.stderr
    assert "only in a source checkout" in bench.stderr and "Traceback" not in bench.stderr


def test_prompts_starters_and_welcome_page_load_from_the_package(venv: Venv) -> None:
    loaded = venv.python_json(
        "import json\n"
        "from rag.prompts import PROMPTS_DIR, load_prompts\n"
        "from rag.ui.welcome import TEMPLATE, load_starters\n"
        "prompts = load_prompts()\n"
        "print(json.dumps({'dir': str(PROMPTS_DIR), 'starters': load_starters(),\n"
        "    'system': prompts.answer.messages[0].prompt.template,\n"
        "    'welcome': TEMPLATE.read_text(encoding='utf-8')}))"
    )
    assert Path(str(loaded["dir"])).is_relative_to(venv.root), loaded["dir"]
    source = REPO_ROOT / "prompts"
    assert loaded["system"] == (source / "answer_system.md").read_text(encoding="utf-8")
    assert loaded["welcome"] == (REPO_ROOT / "chainlit.md").read_text(encoding="utf-8")
    starters = loaded["starters"]
    assert isinstance(starters, list) and len(starters) >= 3, starters


def test_ask_streams_an_answer_that_cites_its_source(venv: Venv, corpus: Corpus) -> None:
    corpus.fake.reset()
    process = subprocess.Popen(
        [str(venv.rag), "ask", QUESTION],
        cwd=venv.cwd,
        env=venv.env(
            RAG_MILVUS_URI=str(corpus.db), RAG_LLM_BASE_URL=corpus.base_url, RAG_LLM_MODEL="fake"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    started, seen, arrivals = time.monotonic(), "", []
    try:
        while block := os.read(process.stdout.fileno(), 65536):
            seen += block.decode(errors="replace")
            arrivals.append((time.monotonic() - started, seen))
            assert time.monotonic() - started < TIMEOUT, seen
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, seen + stderr.decode(errors="replace")
    assert REPLY in seen, seen
    rows = [line.replace("│", " ").split() for line in seen.splitlines() if "falcon.txt" in line]
    assert rows and rows[0][0] == "[1]" and rows[0][-1] == "yes", seen  # cited: yes

    def arrival(text: str) -> float:
        return next(moment for moment, so_far in arrivals if text in " ".join(so_far.split()))

    assert arrival("every quarter [1].") - arrival("The launch code") >= 0.5, "not streamed"
    (request,) = corpus.fake.chat_requests()
    system = request["messages"][0]["content"]
    assert system == (REPO_ROOT / "prompts" / "answer_system.md").read_text(encoding="utf-8")


@dataclass(frozen=True)
class ChatUI:
    url: str
    app_root: Path


@pytest.fixture
def chat_ui(venv: Venv, corpus: Corpus) -> Iterator[ChatUI]:
    """`rag ui` of the installed wheel on a free port, until the test ends."""
    app_root, log = venv.cwd / "ui", venv.cwd / "ui.log"
    env = venv.env(
        RAG_MILVUS_URI=str(corpus.db),
        RAG_LLM_BASE_URL=corpus.base_url,
        RAG_LLM_MODEL="fake",
        RAG_UI_DIR=str(app_root),
    )
    with running_ui(cwd=venv.cwd, env=env, log=log, rag=venv.rag, timeout=TIMEOUT) as url:
        yield ChatUI(url, app_root)


async def test_ui_serves_the_packaged_chat_and_answers(chat_ui: ChatUI, corpus: Corpus) -> None:
    corpus.fake.reset()
    client = ChainlitClient(chat_ui.url)
    await client.connect()
    try:
        await client.wait_for("chat_settings", limit=60)
        turn = await client.ask(QUESTION, limit=90)
    finally:
        await client.close()

    assert REPLY in str(turn.answer["output"]), turn.summary()
    assert len(turn.tokens()) > 3, "the answer streams"
    # The app root was made from the packaged template and Chainlit config, set for the
    # address this UI serves (its origins) and the upload limit.
    template_config = tomllib.loads((REPO_ROOT / ".chainlit" / "config.toml").read_text())
    written = tomllib.loads((chat_ui.app_root / ".chainlit" / "config.toml").read_text())
    assert chat_ui.url in written["project"].pop("allow_origins")
    template_config["project"].pop("allow_origins")
    assert written["project"] == template_config["project"]
    assert written["UI"] == template_config["UI"]
    template = (REPO_ROOT / "chainlit.md").read_text(encoding="utf-8").rstrip()
    welcome = (chat_ui.app_root / "chainlit.md").read_text(encoding="utf-8")
    assert welcome.startswith(template) and "falcon.txt" in welcome, welcome
