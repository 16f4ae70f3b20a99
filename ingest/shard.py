"""Which files of a folder one of N ingest workers takes: a stable hash partition.

A worker owns a source when the sha256 of its stored name (the relative POSIX path), read
as a number, is its index modulo N. Not Python's ``hash()``: that is salted per process
(PYTHONHASHSEED), so two workers would disagree about who owns what. The partition
depends on the name alone, never on what else the folder holds, so a file keeps its worker
while others come and go, and a file gone from the folder still belongs to the worker its
name hashes to: that worker, and only that one, removes its rows.

The shard is given as ``K/N`` (1-based, as people count: ``--shard 1/3`` .. ``3/3``) or, in
a Kubernetes Indexed Job, as the 0-based ``JOB_COMPLETION_INDEX`` the Job sets for each pod
plus the count from ``--shard-count`` / ``RAG_INGEST_SHARD_COUNT``. Every malformed value
stops the start with one line naming where it came from.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from rag.errors import ConfigError

JOB_INDEX_VARIABLE = "JOB_COMPLETION_INDEX"  # set by Kubernetes for each pod of an Indexed Job
SHARD_OPTION = "--shard"
SHARD_VARIABLE = "RAG_INGEST_SHARD"
COUNT_OPTION = "--shard-count"
COUNT_VARIABLE = "RAG_INGEST_SHARD_COUNT"
_SHARD_FORMAT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def shard_of(source: str, count: int) -> int:
    """The 0-based shard ``source`` belongs to among ``count``, the same in every process."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    """One worker's part of the folder: ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} is not in 0..{self.count - 1}")

    def owns(self, source: str) -> bool:
        return shard_of(source, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index + 1}/{self.count}"


def parse_shard(text: str, name: str = SHARD_OPTION) -> Shard:
    """``K/N`` (1 <= K <= N) as a Shard; ConfigError naming ``name`` otherwise."""
    found = _SHARD_FORMAT.fullmatch(text)
    if found is None:
        raise ConfigError(f"{name}: expected K/N such as 1/3, got {text!r}")
    number, count = int(found[1]), int(found[2])
    if count < 1 or not 1 <= number <= count:
        raise ConfigError(
            f"{name}: K/N needs 1 <= K <= N (K counts from 1: 1/3, 2/3, 3/3), got {text!r}"
        )
    return Shard(number - 1, count)


def resolve_shard(
    option: str | None,
    count_option: int | None,
    variable: str | None,
    count_variable: int | None,
    environ: Mapping[str, str],
) -> Shard | None:
    """The shard a run was given, or None for a whole-folder run.

    First ``--shard``, then ``RAG_INGEST_SHARD``, then ``JOB_COMPLETION_INDEX`` with the
    count from ``--shard-count`` or ``RAG_INGEST_SHARD_COUNT``. A count that contradicts
    the shard, or one with no index to go with it, is an error too: a worker that silently
    took the whole folder would do N times the work and race the others on every file.
    """
    count, count_name = count_option, COUNT_OPTION
    if count is None:
        count, count_name = count_variable, COUNT_VARIABLE
    if count is not None and count < 1:
        raise ConfigError(f"{count_name}: the number of shards must be 1 or more, got {count}")
    for text, name in ((option, SHARD_OPTION), (variable, SHARD_VARIABLE)):
        if text is not None and text.strip():
            shard = parse_shard(text, name)
            if count is not None and count != shard.count:
                raise ConfigError(
                    f"{count_name}: {count} contradicts {name} {text.strip()} "
                    f"({shard.count} shards)"
                )
            return shard
    index_text = environ.get(JOB_INDEX_VARIABLE, "").strip()
    if not index_text:
        if count is not None:
            raise ConfigError(
                f"{count_name} is set but {JOB_INDEX_VARIABLE} is not (it comes from a "
                f"Kubernetes Indexed Job); elsewhere use {SHARD_OPTION} K/N"
            )
        return None
    if not index_text.isdigit():
        raise ConfigError(f"{JOB_INDEX_VARIABLE}: expected a number from 0, got {index_text!r}")
    if count is None:
        raise ConfigError(
            f"{JOB_INDEX_VARIABLE} is set ({index_text}) but the number of shards is not: "
            f"pass {COUNT_OPTION} N or set {COUNT_VARIABLE}"
        )
    index = int(index_text)
    if index >= count:
        raise ConfigError(
            f"{JOB_INDEX_VARIABLE}: {index} is not below the number of shards ({count}, "
            f"from {count_name}); the Job's completions and the count must agree"
        )
    return Shard(index, count)
