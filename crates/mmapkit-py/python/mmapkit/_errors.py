"""mmapkit's exceptions: one per kind of the Rust library's error, all rooted at `Error`.

`Error` is an `OSError`, so `errno`, `strerror` and `filename` are set as for any OS error
(where the OS gave no errno, `errno`, `strerror` and `filename` are None and `str()` is
the message alone, which names the path). The library's context rides along: `kind` (the
Rust `ErrorKind`'s name), `operation`, `offset`, `length` and `hint`. Where a builtin means
the same thing the class derives from it too, so `except FileNotFoundError` or
`except TimeoutError` catch mmapkit's as well.
"""

from __future__ import annotations

from typing import Any


class Error(OSError):
    """Any error of mmapkit."""

    kind: str = "Io"
    operation: str | None = None
    offset: int | None = None
    length: int | None = None
    hint: str | None = None


class NotFoundError(Error, FileNotFoundError):
    """The file, device or segment does not exist."""

    kind = "NotFound"


class PermissionDeniedError(Error, PermissionError):
    """The OS refused: file modes, read-only descriptors, sealed mappings, limits."""

    kind = "PermissionDenied"


class InvalidInputError(Error, ValueError):
    """An argument is wrong in itself."""

    kind = "InvalidInput"


class OutOfBoundsError(Error, IndexError):
    """An offset or range lies outside the mapping or the file."""

    kind = "OutOfBounds"


class NotExclusiveError(Error):
    """The memory can be changed by someone else, so it cannot be lent out as a buffer."""

    kind = "NotExclusive"


class TruncatedError(Error):
    """The file behind a mapping no longer covers the bytes read: it was truncated.

    Where CPython's mmap dies of SIGBUS, mmapkit raises this. `offset` says where the copy
    stopped.

    Two limits, both from how SIGBUS works: a thread that blocks SIGBUS
    (`signal.pthread_sigmask`) and works in place on a named segment or channel (locks,
    events, channel calls) is still killed if a peer truncates it — copies (`read_at`,
    `read_into`) are safe whatever the mask; and a SIGBUS handler installed after mmapkit's
    first guarded access (`faulthandler.enable()`, `signal.signal(SIGBUS, ...)`) replaces
    mmapkit's, so enable faulthandler before using mmapkit.
    """

    kind = "Truncated"


class AlreadyExistsError(Error, FileExistsError):
    """Something already occupies the requested name or address."""

    kind = "AlreadyExists"


class OutOfMemoryError(Error, MemoryError):
    """The kernel is out of memory, address space, huge pages or lockable memory."""

    kind = "OutOfMemory"


class NoSpaceError(Error):
    """The file system (for segments: the tmpfs behind /dev/shm) is full."""

    kind = "NoSpace"


class CorruptError(Error):
    """Bytes from outside (shared memory, a file, /proc) failed validation."""

    kind = "Corrupt"


class IncompatibleError(Error):
    """A valid object of another layout version, type or size than the one asked for."""

    kind = "Incompatible"


class TimeoutError(Error, TimeoutError):  # noqa: A001 - deliberately catches as the builtin
    """A wait ran out of time."""

    kind = "Timeout"


class OwnerDiedError(Error):
    """The owner of a lock died holding it; the data it protects may be inconsistent.

    Raised by `Mutex.lock()` (and `with mutex:`) with the lock *held*: `guard` is its
    `MutexGuard`. Repair the data, call `guard.mark_consistent()`, then `guard.release()`
    (or use `with error.guard:`). Until someone marks it consistent, every locker is told.
    """

    kind = "OwnerDied"
    guard: Any = None


class DisconnectedError(Error, ConnectionError):
    """The other end of a channel is gone."""

    kind = "Disconnected"


class WouldBlockError(Error, BlockingIOError):
    """The operation would have to wait."""

    kind = "WouldBlock"


class UnsupportedError(Error):
    """The kernel, file system or architecture does not offer the operation."""

    kind = "Unsupported"


class StoreError(Error):
    """A pager's store failed to read or write a page."""

    kind = "Store"


class IoError(Error):
    """Any other I/O error."""

    kind = "Io"


BY_KIND: dict[str, type[Error]] = {
    cls.kind: cls
    for cls in (
        NotFoundError,
        PermissionDeniedError,
        InvalidInputError,
        OutOfBoundsError,
        NotExclusiveError,
        TruncatedError,
        AlreadyExistsError,
        OutOfMemoryError,
        NoSpaceError,
        CorruptError,
        IncompatibleError,
        TimeoutError,
        OwnerDiedError,
        DisconnectedError,
        WouldBlockError,
        UnsupportedError,
        StoreError,
        IoError,
    )
}


def _raise(
    kind: str,
    message: str,
    errno: int | None,
    path: str | None,
    operation: str,
    offset: int | None,
    length: int | None,
    hint: str | None,
) -> Error:
    """Builds the exception for an error of the Rust library (called from the extension)."""
    cls = BY_KIND.get(kind, Error)
    if errno is None:
        # OSError's str() shows errno, strerror and filename once filename is set: without an
        # errno that is "[Errno None] None: ...", so the path stays in the message alone.
        error = cls(message)
    else:
        error = cls(errno, message) if path is None else cls(errno, message, path)
    error.kind = kind
    error.operation = operation
    error.offset = offset
    error.length = length
    error.hint = hint
    return error
