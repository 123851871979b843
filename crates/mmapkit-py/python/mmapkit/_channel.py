"""The parts of channels that belong to Python: waiting on asyncio's loop, and records.

`recv_async` waits for a pollable channel's doorbell with the running event loop's
`add_reader`, re-checking every `POLL_SLICE` seconds so that a sender that died is noticed
as `recv()` would notice it. `RecordChannel` carries fixed-size records (a numpy structured
dtype, or a plain record size) over a `ByteChannel`: each message holds whole records, so an
array that fits in one message comes out as one array (a larger one, in several).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ._errors import CorruptError, Error, InvalidInputError
from ._mmapkit import ByteChannel, ByteReceiver, ByteSender

if TYPE_CHECKING:
    from collections.abc import Buffer

POLL_SLICE = 0.01


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def recv_async(receiver: ByteReceiver) -> bytes:
    """`await receiver.recv_async()`: see `ByteReceiver.recv_async`."""
    loop = asyncio.get_running_loop()
    doorbell = receiver.fileno()
    started = time.monotonic()
    while True:
        message = receiver.try_recv()
        if message is not None:
            return message
        receiver._may_wait(time.monotonic() - started)
        if receiver.arm():
            continue
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(doorbell, _wake, ready)
        try:
            await asyncio.wait({ready}, timeout=POLL_SLICE)
        finally:
            loop.remove_reader(doorbell)


def _record_type(dtype: Any) -> Any:
    """A record size (an int, not a bool) as it is; anything numpy takes for a dtype ("f8",
    numpy.float64, a list of fields) as that dtype."""
    if isinstance(dtype, bool):
        raise InvalidInputError(f"a record needs a positive size or a numpy dtype, not {dtype!r}")
    if isinstance(dtype, int):
        return dtype
    try:
        import numpy
    except ImportError:  # pragma: no cover - records of a dtype need numpy anyway
        return dtype
    try:
        return numpy.dtype(dtype)
    except TypeError as error:
        raise InvalidInputError(f"a record needs a positive size or a numpy dtype, not {dtype!r}") from error


def _record_size(dtype: Any) -> int:
    if getattr(dtype, "hasobject", False):
        # Object fields hold this process's pointers: meaningless, and unsafe, elsewhere.
        raise InvalidInputError(f"records cannot hold Python objects ({dtype!r})")
    size = dtype if isinstance(dtype, int) else getattr(dtype, "itemsize", None)
    if not isinstance(size, int) or size <= 0:
        raise InvalidInputError(f"a record needs a positive size or a numpy dtype, not {dtype!r}")
    return size


class RecordChannel:
    """A `ByteChannel` of fixed-size records: `dtype` is a numpy dtype (structured or not)
    or a record size in bytes. Both sides must use the same one; a message that is not a
    whole number of records is a `CorruptError`.
    """

    def __init__(self, channel: ByteChannel, dtype: Any) -> None:
        self.channel = channel
        self.dtype = _record_type(dtype)
        self.record_size = _record_size(self.dtype)
        if channel.max_message < self.record_size:
            raise InvalidInputError(
                f"a record of {self.record_size} bytes does not fit in a message of at most "
                f"{channel.max_message}"
            )

    @classmethod
    def create(
        cls,
        dtype: Any,
        name: str | None = None,
        *,
        capacity: int = 1 << 20,
        pollable: bool = False,
        mode: int = 0o600,
    ) -> RecordChannel:
        """A new channel of records (see `ByteChannel.create`)."""
        channel = ByteChannel.create(name, capacity=capacity, pollable=pollable, mode=mode)
        return cls(channel, dtype)

    @classmethod
    def open(cls, name: str, dtype: Any) -> RecordChannel:
        """The named channel of records another process created."""
        return cls(ByteChannel.open(name), dtype)

    def sender(self) -> RecordSender:
        return RecordSender(self.channel.sender(), self)

    def receiver(self) -> RecordReceiver:
        return RecordReceiver(self.channel.receiver(), self)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (RecordChannel, (self.channel, self.dtype))

    def __repr__(self) -> str:
        return f"<mmapkit.RecordChannel of {self.dtype!r} over {self.channel!r}>"


class RecordSender:
    """Sends records: any bytes-like object (a numpy array) holding whole records."""

    def __init__(self, sender: ByteSender, channel: RecordChannel) -> None:
        self.sender = sender
        self.record_size = channel.record_size
        per_message = channel.channel.max_message // self.record_size
        self.chunk = per_message * self.record_size

    def send(self, records: Buffer, timeout: float | None = None) -> int:
        """Sends the records, as few messages as fit; returns how many records were sent.

        An array larger than one message goes in several. If a wait fails part-way (a
        timeout, a receiver gone), the exception's `records_sent` says how many records
        went before it, so that a retry can resume instead of sending them twice.
        """
        view = memoryview(records).cast("B")
        if len(view) % self.record_size:
            raise InvalidInputError(
                f"{len(view)} bytes are not whole records of {self.record_size} bytes"
            )
        for start in range(0, len(view), self.chunk):
            try:
                self.sender.send(view[start : start + self.chunk], timeout)
            except Error as error:
                error.records_sent = start // self.record_size  # type: ignore[attr-defined]
                raise
        return len(view) // self.record_size

    def close(self) -> None:
        self.sender.close()

    def __enter__(self) -> RecordSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordReceiver:
    """Receives records: as a numpy array of the channel's dtype, or as bytes when the
    channel was given a record size."""

    def __init__(self, receiver: ByteReceiver, channel: RecordChannel) -> None:
        self.receiver = receiver
        self.dtype = channel.dtype
        self.record_size = channel.record_size

    def _records(self, message: bytes) -> Any:
        if len(message) % self.record_size:
            raise CorruptError(
                f"a message of {len(message)} bytes is not whole records of "
                f"{self.record_size} bytes: the sender uses another record type"
            )
        if isinstance(self.dtype, int):
            return message
        import numpy

        return numpy.frombuffer(message, dtype=self.dtype)

    def recv(self, timeout: float | None = None) -> Any:
        """The records of the next message, waiting as `ByteReceiver.recv` does."""
        return self._records(self.receiver.recv(timeout))

    def try_recv(self) -> Any:
        """The records of the next message if one is there, else None."""
        message = self.receiver.try_recv()
        return None if message is None else self._records(message)

    async def recv_async(self) -> Any:
        """The records of the next message, on asyncio's loop (a pollable channel)."""
        return self._records(await self.receiver.recv_async())

    def close(self) -> None:
        self.receiver.close()

    def __enter__(self) -> RecordReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
