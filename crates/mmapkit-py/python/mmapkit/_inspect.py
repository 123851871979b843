"""Page-cache residency of files, touch and evict, and the mappings of a process.

What vmtouch, fincore and pmap tell, as dataclasses: `residency(path)` (cachestat(2) where
the kernel has it, which also counts dirty, writeback and evicted pages; mincore(2)
otherwise), `touch(path)` and `evict(path)`, and `maps(pid)` from /proc/PID/maps.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from . import _mmapkit

StrPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]


@dataclass(frozen=True)
class FileResidency:
    """The page-cache state of (a range of) a file; counts are in pages of `page_size`."""

    path: str
    size: int
    start: int
    end: int
    page_size: int
    pages: int
    cached: int
    #: The four below only where cachestat(2) answered; None with mincore(2).
    dirty: int | None
    writeback: int | None
    evicted: int | None
    recently_evicted: int | None
    method: str

    @property
    def cached_bytes(self) -> int:
        """Bytes of page cache the range holds, as fincore and vmtouch count them."""
        return self.cached * self.page_size


@dataclass(frozen=True)
class MapEntry:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    permissions: str
    offset: int
    device: str
    inode: int
    #: The mapped file, or None for anonymous and kernel-named areas.
    path: str | None
    #: What pmap prints in its last column: a file's base name, "[ anon ]", "[ stack ]"…
    label: str

    @property
    def size(self) -> int:
        return max(self.end - self.start, 0)


def residency(
    paths: StrPath | Iterable[StrPath], start: int = 0, end: int | None = None
) -> FileResidency | list[FileResidency]:
    """The page-cache state of a file (one path) or of each file (an iterable of paths)."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        return _measured(_mmapkit.residency_of(paths, start, end))
    return [_measured(_mmapkit.residency_of(path, start, end)) for path in paths]


def _measured(values: tuple) -> FileResidency:
    path, *rest = values
    return FileResidency(os.fspath(path), *rest)


def touch(path: StrPath, start: int = 0, end: int | None = None) -> int:
    """Reads (a range of) a file into the page cache; returns the bytes read."""
    return _mmapkit.touch(path, start, end)


def evict(path: StrPath, start: int = 0, end: int | None = None) -> None:
    """Asks the kernel to drop (a range of) a file from the page cache (dirty pages and
    pages some process maps may stay)."""
    _mmapkit.evict(path, start, end)


def maps(pid: int | None = None) -> list[MapEntry]:
    """The mappings of process `pid` (this one by default)."""
    return [
        MapEntry(start, end, perms, offset, device, inode, None if path is None else os.fspath(path), label)
        for (start, end, perms, offset, device, inode, path, label) in _mmapkit.maps(pid)
    ]
