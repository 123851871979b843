"""mmapkit: memory-mapped I/O and shared memory for Python, over the Rust library of that name.

What it fixes in `mmap`: a file truncated under a mapping raises `TruncatedError` instead of
killing the interpreter with SIGBUS (see `TruncatedError` for the two limits: threads that
block SIGBUS, and SIGBUS handlers such as faulthandler's installed later); buffer views are lent only for memory nobody else can
change (`memoryview(m)` of a shared file mapping raises `BufferError`; copy with `read_at` or
`read_into`); `lock`, `residency` (mincore), `protect` and `advise` on any mapping.

Segments (`create_segment`, `open_segment`, `create_memfd`) are shared memory with a header
that names their type and creator; they live until `unlink()`, whoever created them, and a
named one pickles as its name. `mmapkit.shm.list()` and `cleanup()` find and remove the
stale ones.

`Mutex` (robust: a holder's death is `OwnerDiedError`, with the lock), `Condvar`,
`Semaphore` and `Event` live at offsets of a segment and work between any processes.

`ByteChannel` (and `RecordChannel`, for numpy records) carries messages from one process to
another; a dead peer is `DisconnectedError`, and a pollable one works with asyncio.

`residency`, `touch`, `evict` and `maps` inspect the page cache and processes' mappings.
"""

from __future__ import annotations

import enum
import os
from typing import Any

from ._errors import (
    AlreadyExistsError,
    CorruptError,
    DisconnectedError,
    Error,
    IncompatibleError,
    InvalidInputError,
    IoError,
    NoSpaceError,
    NotExclusiveError,
    NotFoundError,
    OutOfBoundsError,
    OutOfMemoryError,
    OwnerDiedError,
    PermissionDeniedError,
    StoreError,
    TimeoutError,
    TruncatedError,
    UnsupportedError,
    WouldBlockError,
)
from . import shm
from ._inspect import FileResidency, MapEntry, evict, maps, residency, touch
from ._channel import RecordChannel, RecordReceiver, RecordSender
from ._mmapkit import (
    PEER_GRACE,
    ByteChannel,
    ByteReceiver,
    ByteSender,
    Condvar,
    Event,
    Mapping,
    Mutex,
    MutexGuard,
    Residency,
    Segment,
    Semaphore,
    channel_from_fds,
    create_memfd,
    create_segment,
    map_anonymous,
    map_file,
    open_segment,
    segment_from_fd,
    unlink_segment,
)


def _open_channel(name: str) -> ByteChannel:
    """How a pickled named channel comes back: opened again by name."""
    return ByteChannel.open(name)


def _adopt_channel(segment: Any, doorbell: Any, type_tag: str, name: str | None = None) -> ByteChannel:
    """How a pickled memfd or pollable channel comes back: from the descriptors multiprocessing
    passed (a named one's segment by its name)."""
    segment_fd = segment.detach() if segment is not None else None
    doorbell_fd = doorbell.detach() if doorbell is not None else None
    try:
        return channel_from_fds(segment_fd, doorbell_fd, type_tag, name)
    finally:
        for fd in (segment_fd, doorbell_fd):
            if fd is not None:
                os.close(fd)


def _reopen_segment(name: str, size: int, type_tag: str, read_only: bool) -> Segment:
    """How a pickled named segment comes back: opened again by name."""
    return open_segment(name, size=size, type_tag=type_tag, read_only=read_only)


def _adopt_segment(passed: Any, type_tag: str) -> Segment:
    """How a pickled memfd segment comes back: from the descriptor multiprocessing passed."""
    fd = passed.detach()
    try:
        return segment_from_fd(fd, type_tag=type_tag)
    finally:
        os.close(fd)


class Advice(str, enum.Enum):
    """Advice for `Mapping.advise`; each member equals its name as a string."""

    NORMAL = "normal"
    SEQUENTIAL = "sequential"
    RANDOM = "random"
    WILLNEED = "willneed"
    HUGEPAGE = "hugepage"
    NOHUGEPAGE = "nohugepage"
    POPULATE_READ = "populate_read"
    POPULATE_WRITE = "populate_write"
    COLD = "cold"
    PAGEOUT = "pageout"
    DONTDUMP = "dontdump"
    DODUMP = "dodump"
    MERGEABLE = "mergeable"
    UNMERGEABLE = "unmergeable"


__all__ = [
    "PEER_GRACE",
    "Advice",
    "AlreadyExistsError",
    "ByteChannel",
    "ByteReceiver",
    "ByteSender",
    "Condvar",
    "CorruptError",
    "DisconnectedError",
    "Error",
    "Event",
    "FileResidency",
    "IncompatibleError",
    "InvalidInputError",
    "IoError",
    "MapEntry",
    "Mapping",
    "Mutex",
    "MutexGuard",
    "NoSpaceError",
    "NotExclusiveError",
    "NotFoundError",
    "OutOfBoundsError",
    "OutOfMemoryError",
    "OwnerDiedError",
    "PermissionDeniedError",
    "RecordChannel",
    "RecordReceiver",
    "RecordSender",
    "Residency",
    "Segment",
    "Semaphore",
    "StoreError",
    "TimeoutError",
    "TruncatedError",
    "UnsupportedError",
    "WouldBlockError",
    "channel_from_fds",
    "create_memfd",
    "create_segment",
    "evict",
    "map_anonymous",
    "map_file",
    "maps",
    "open_segment",
    "residency",
    "segment_from_fd",
    "shm",
    "touch",
    "unlink_segment",
]
