"""A second evaluation corpus from docs every install has: `python -m bench.pkgdocs OUTDIR`.

Why: the default model and answer settings must be chosen on numbers that are not fitted
to the bundled sample corpus. The long descriptions in installed packages' metadata (the
README a wheel ships in its METADATA file) are real documentation that nobody here wrote
or tunes on, need no download, and are identical on every machine that ran ``make install``
because constraints.txt pins the versions. The gold questions over them are in
tests/data/pkgdocs_questions.jsonl; the file names written here are the ``source`` values
those questions use.

Each description is written unchanged as ``<package>.md``. A few are reStructuredText; the
loader reads them as plain text with Markdown headings, which is what a user who drops
such a README into a folder gets too.

The questions were written against the versions in PACKAGES. A different installed
version may have moved or dropped an answer, so it is reported as a warning (the corpus is
still built) rather than silently scored.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# Package -> the version the questions were written against (pinned in constraints.txt).
# Chosen for substantial prose in the description; some of the project's dependencies
# ship little (tenacity 214 bytes, click 2 KB, onnxruntime only a list of release links).
PACKAGES: dict[str, str] = {
    "aiosqlite": "0.22.1",
    "chainlit": "2.12.0",
    "httpx": "0.28.1",
    "milvus-lite": "3.2.2",
    "orjson": "3.13.0",
    "pymilvus": "3.0.2",
    "pytest-timeout": "2.4.0",
    "python-dotenv": "1.2.4",
    "rich": "15.0.0",
    "sqlalchemy": "2.1.9",
    "tokenizers": "0.23.3",
    "typer": "0.29.2",
    "watchfiles": "1.3.0",
}


@dataclass(frozen=True)
class Built:
    """What ``build`` did: the files written and what differs from the pinned corpus."""

    written: list[Path]
    warnings: list[str]


def file_name(package: str) -> str:
    """The corpus file (and the gold questions' ``source``) for a package."""
    return f"{package}.md"


def long_description(package: str) -> str:
    """The installed distribution's long description (METADATA body or Description field).

    Raises ``importlib.metadata.PackageNotFoundError`` when the package is not installed.
    """
    # .json folds the METADATA body into "description", and dedents the older
    # Description-header form.
    text = metadata.metadata(package).json.get("description") or ""
    text = text if isinstance(text, str) else "\n".join(text)
    return text.replace("\r\n", "\n").rstrip() + "\n"


def build(outdir: Path, packages: dict[str, str] = PACKAGES) -> Built:
    """Write one file per installed package; a missing package or another version warns."""
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    warnings: list[str] = []
    for package, pinned in packages.items():
        try:
            installed = metadata.version(package)
            text = long_description(package)
        except metadata.PackageNotFoundError:
            warnings.append(f"{package} is not installed: {file_name(package)} not written")
            continue
        if installed != pinned:
            warnings.append(
                f"{package} {installed} is installed, the questions were written against "
                f"{pinned}: its answers may have moved (run `make install` for the pinned set)"
            )
        path = outdir / file_name(package)
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return Built(written, warnings)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m bench.pkgdocs OUTDIR", file=sys.stderr)
        return 2
    built = build(Path(argv[0]))
    for warning in built.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    size = sum(path.stat().st_size for path in built.written)
    print(f"wrote {len(built.written)} files ({size / 1024:.0f} KB) to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
