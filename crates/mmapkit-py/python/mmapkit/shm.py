"""The objects in /dev/shm: `list()` them, and `cleanup()` the stale mmapkit segments.

A segment is stale when it has a valid mmapkit header, its creator has died, and no process
maps it or holds it open. Nothing else is ever removed, so a segment outlives its creator
for as long as anyone uses it, and no resource tracker unlinks it behind their backs.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass

from ._mmapkit import cleanup_segments, list_segments


@dataclass(frozen=True)
class SegmentInfo:
    """One object of /dev/shm."""

    name: str
    size: int
    uid: int
    mode: int
    #: What an mmapkit segment holds; None for objects without an mmapkit header.
    type_tag: str | None
    creator_pid: int | None
    #: Whether the creator still runs (mmapkit segments only).
    creator_alive: bool | None
    #: Processes that map the object or hold it open.
    users: tuple[int, ...]
    stale: bool


@dataclass(frozen=True)
class Cleanup:
    """What `cleanup()` did."""

    removed: builtins.list[str]
    #: Stale segments that could not be removed, with the reason.
    failed: builtins.list[tuple[str, str]]


def list() -> builtins.list[SegmentInfo]:  # noqa: A001 - the module's verb, as `mmapkit shm ls`
    """Every regular file in /dev/shm, with what can be learned about it."""
    return [
        SegmentInfo(name, size, uid, mode, tag, pid, alive, tuple(users), stale)
        for (name, size, uid, mode, tag, pid, alive, users, stale) in list_segments()
    ]


def cleanup() -> Cleanup:
    """Unlinks the stale segments; one that cannot be removed does not stop the others."""
    removed, failed = cleanup_segments()
    return Cleanup(removed, failed)
