"""Byte and record channels between real processes: spawn, kill -9, asyncio, selectors."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import selectors
import signal
import struct
import threading
import time
import uuid

import pytest

import mmapkit

SPAWN = multiprocessing.get_context("spawn")
COUNT = 100_000


def send_numbered(channel: mmapkit.ByteChannel, count: int) -> None:
    with channel.sender() as sender:
        batch = []
        for number in range(count):
            # Lengths vary, so that records wrap around the ring at every offset.
            batch.append(struct.pack("<Q", number) + b"x" * (number % 61))
            if len(batch) == 100:
                sender.send_many(batch)
                batch.clear()
        sender.send_many(batch)


def send_forever(channel: mmapkit.ByteChannel) -> None:
    sender = channel.sender()
    number = 0
    while True:
        sender.send(struct.pack("<Q", number))
        number += 1


def test_a_spawned_child_sends_100000_messages_received_once_in_order():
    channel = mmapkit.ByteChannel.create(capacity=64 << 10)
    receiver = channel.receiver()
    child = SPAWN.Process(target=send_numbered, args=(channel, COUNT))
    child.start()
    expected = 0
    while expected < COUNT:
        for message in receiver.recv_many(512, timeout=60):
            (number,) = struct.unpack_from("<Q", message)
            assert number == expected
            assert message[8:] == b"x" * (number % 61)
            expected += 1
    child.join(timeout=60)
    assert child.exitcode == 0
    with pytest.raises(mmapkit.DisconnectedError):
        receiver.recv(timeout=10)
    with pytest.raises(mmapkit.DisconnectedError, match="try_recv"):
        receiver.try_recv()


def test_a_sender_killed_mid_stream_is_disconnected_after_its_messages():
    channel = mmapkit.ByteChannel.create(capacity=4096)
    receiver = channel.receiver()
    child = SPAWN.Process(target=send_forever, args=(channel,))
    child.start()
    for expected in range(1000):
        assert struct.unpack("<Q", receiver.recv(timeout=60)) == (expected,)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    after = 1000
    started = time.monotonic()
    with pytest.raises(mmapkit.DisconnectedError) as gone:
        while True:
            assert struct.unpack("<Q", receiver.recv()) == (after,)
            after += 1
    assert isinstance(gone.value, ConnectionError)
    assert time.monotonic() - started < 10
    assert after > 1000


def test_a_receiver_killed_leaves_the_sender_disconnected_not_hanging():
    name = f"pytest-{uuid.uuid4().hex[:12]}"
    channel = mmapkit.ByteChannel.create(name, capacity=4096)
    try:
        sender = channel.sender()
        child = os.fork()
        if child == 0:
            receiver = mmapkit.ByteChannel.open(name).receiver()
            receiver.recv(timeout=30)
            time.sleep(60)
            os._exit(0)
        sender.send(b"first", timeout=30)
        time.sleep(0.2)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        with pytest.raises(mmapkit.DisconnectedError):
            for _ in range(10_000):
                sender.send(b"y" * 1000)
    finally:
        mmapkit.unlink_segment(name)


def test_non_blocking_timeouts_and_a_peer_that_never_comes():
    channel = mmapkit.ByteChannel.create(capacity=1024)
    receiver = channel.receiver()
    assert receiver.try_recv() is None
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        receiver.recv(timeout=0.2)
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    with pytest.raises(mmapkit.DisconnectedError, match="no peer attached"):
        receiver.recv()
    assert mmapkit.PEER_GRACE <= time.monotonic() - started < mmapkit.PEER_GRACE + 5
    sender = channel.sender()
    with pytest.raises(mmapkit.AlreadyExistsError):
        channel.sender()
    sent = 0
    while sender.try_send(b"z" * 100):
        sent += 1
    assert 0 < sent < 10
    with pytest.raises(TimeoutError):
        sender.send(b"z" * 100, timeout=0.1)
    with pytest.raises(mmapkit.InvalidInputError):
        sender.send(b"too long" * 1000)
    assert [receiver.recv() for _ in range(sent)] == [b"z" * 100] * sent
    sender.send(bytearray(b"a bytearray"))
    sender.send(memoryview(b"a memoryview"))
    assert receiver.recv_many() == [b"a bytearray", b"a memoryview"]
    sender.close()
    assert sender.closed
    with pytest.raises(ValueError):
        sender.send(b"closed")
    with pytest.raises(mmapkit.DisconnectedError):
        receiver.recv(timeout=5)
    assert list(receiver) == []


def test_recv_into_fills_a_buffer_and_keeps_a_message_too_long_for_it():
    numpy = pytest.importorskip("numpy")
    channel = mmapkit.ByteChannel.create(capacity=4096)
    receiver = channel.receiver()
    sender = channel.sender()
    sender.send(b"0123456789")
    sender.send(b"abc")
    buffer = bytearray(4)
    with pytest.raises(ValueError, match="10 bytes"):
        receiver.recv_into(buffer)
    array = numpy.zeros(16, dtype=numpy.uint8)
    assert receiver.recv_into(array) == 10
    assert array[:10].tobytes() == b"0123456789"
    assert receiver.recv_into(buffer, timeout=1) == 3
    assert bytes(buffer[:3]) == b"abc"
    with pytest.raises(BufferError):
        receiver.recv_into(b"read-only bytes")
    with pytest.raises(TimeoutError):
        receiver.recv_into(buffer, timeout=0.05)
    # A message that arrives while recv_into waits (the GIL released) is copied in place.
    later = threading.Timer(0.1, lambda: sender.send(b"late"))
    later.start()
    assert receiver.recv_into(buffer, timeout=5) == 4
    assert bytes(buffer) == b"late"
    later.join()
    sender.close()
    with pytest.raises(mmapkit.DisconnectedError):
        receiver.recv_into(buffer, timeout=1)


def test_send_many_says_how_many_went_when_it_stops():
    channel = mmapkit.ByteChannel.create(capacity=1024)
    receiver = channel.receiver()
    sender = channel.sender()
    with pytest.raises(TimeoutError) as stopped:
        sender.send_many([b"x" * 100] * 50, timeout=0.05)
    went = stopped.value.messages_sent
    assert 0 < went < 50
    assert len(receiver.recv_many()) == went
    with pytest.raises(TypeError) as stopped:
        sender.send_many([b"a", b"b", 3])
    assert stopped.value.messages_sent == 2


def test_calls_that_may_not_wait_do_not_wait_for_another_threads_recv():
    channel = mmapkit.ByteChannel.create(capacity=4096)
    receiver = channel.receiver()
    sender = channel.sender()
    blocked = threading.Thread(target=lambda: receiver.recv(timeout=2))
    blocked.start()
    time.sleep(0.1)
    # Waiting for the other thread's wait slices (100 ms each) would take about a second.
    started = time.monotonic()
    for _ in range(10):
        assert receiver.try_recv() is None
        with pytest.raises(TimeoutError):
            receiver.recv(timeout=0)
    assert time.monotonic() - started < 0.5
    sender.send(b"for the waiting thread")
    blocked.join(timeout=10)
    assert not blocked.is_alive()


def test_a_closed_channel_handle_leaves_its_endpoints_working():
    with mmapkit.ByteChannel.create(capacity=4096) as channel:
        sender, receiver = channel.sender(), channel.receiver()
    assert channel.closed and repr(channel) == "<mmapkit.ByteChannel closed>"
    with pytest.raises(ValueError, match="closed"):
        channel.receiver()
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(channel)
    sender.send(b"after close")
    assert receiver.recv(timeout=5) == b"after close"
    channel.close()


def send_slowly(channel: mmapkit.ByteChannel) -> None:
    sender = channel.sender()
    for number in range(5):
        time.sleep(0.05)
        sender.send(str(number).encode())


def test_a_pollable_channel_wakes_selectors_and_asyncio():
    channel = mmapkit.ByteChannel.create(capacity=4096, pollable=True)
    assert channel.pollable
    receiver = channel.receiver()
    child = SPAWN.Process(target=send_slowly, args=(channel,))
    child.start()
    with selectors.DefaultSelector() as selector:
        selector.register(receiver.fileno(), selectors.EVENT_READ)
        if not receiver.arm():
            assert selector.select(timeout=30)
        assert receiver.recv(timeout=30) == b"0"

    async def both() -> tuple[list[bytes], int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        received = [await receiver.recv_async() for _ in range(4)]
        ticker.cancel()
        return received, ticks

    received, ticks = asyncio.run(both())
    assert received == [b"1", b"2", b"3", b"4"]
    assert ticks >= 10, "recv_async blocked the event loop"
    child.join(timeout=60)
    assert child.exitcode == 0

    async def after_the_sender() -> bytes:
        return await receiver.recv_async()

    with pytest.raises(mmapkit.DisconnectedError):
        asyncio.run(after_the_sender())
    with pytest.raises(mmapkit.UnsupportedError):
        mmapkit.ByteChannel.create(capacity=4096).receiver().fileno()


def send_records(channel: mmapkit.RecordChannel, count: int) -> None:
    import numpy

    records = numpy.zeros(count, dtype=channel.dtype)
    records["id"] = numpy.arange(count)
    records["value"] = numpy.arange(count) * 0.5
    with channel.sender() as sender:
        assert sender.send(records) == count


def test_records_of_a_numpy_dtype_cross_processes_as_arrays():
    numpy = pytest.importorskip("numpy")
    dtype = numpy.dtype([("id", "<u4"), ("value", "<f8"), ("tag", "S4")])
    channel = mmapkit.RecordChannel.create(dtype, capacity=64 << 10)
    receiver = channel.receiver()
    child = SPAWN.Process(target=send_records, args=(channel, 10_000))
    child.start()
    received = []
    total = 0
    while total < 10_000:
        records = receiver.recv(timeout=60)
        assert records.dtype == dtype
        received.append(records)
        total += len(records)
    child.join(timeout=60)
    assert child.exitcode == 0
    records = numpy.concatenate(received)
    assert (records["id"] == numpy.arange(10_000)).all()
    assert (records["value"] == numpy.arange(10_000) * 0.5).all()
    with pytest.raises(mmapkit.InvalidInputError):
        mmapkit.RecordChannel.create(dtype, capacity=64).sender().send(b"\0" * 7)
    # Whatever numpy takes for a dtype; a bool is no record size.
    for spelling in ("f8", numpy.float64, [("x", "<i4"), ("y", "<i4")]):
        assert mmapkit.RecordChannel.create(spelling, capacity=4096).dtype == numpy.dtype(spelling)
    for wrong in (True, "not a dtype", 0):
        with pytest.raises(mmapkit.InvalidInputError):
            mmapkit.RecordChannel.create(wrong, capacity=4096)


def test_a_named_channel_pickles_as_its_name():
    name = f"pytest-{uuid.uuid4().hex[:12]}"
    channel = mmapkit.ByteChannel.create(name, capacity=4096)
    try:
        again = pickle.loads(pickle.dumps(channel))
        assert again.name == name and again.max_message == channel.max_message
        sender = again.sender()
        receiver = channel.receiver()
        sender.send(b"by name")
        assert receiver.recv(timeout=5) == b"by name"
        assert repr(channel).startswith("<mmapkit.ByteChannel ")
    finally:
        channel.unlink()


def send_one_through_the_doorbell_channel(channel: mmapkit.ByteChannel) -> None:
    assert channel.name is not None and channel.pollable
    channel.sender().send(channel.name.encode(), timeout=30)


def test_a_pickled_pollable_named_channel_keeps_its_doorbell_in_a_spawned_child():
    name = f"pytest-{uuid.uuid4().hex[:12]}"
    channel = mmapkit.ByteChannel.create(name, capacity=4096, pollable=True)
    try:
        receiver = channel.receiver()
        child = SPAWN.Process(target=send_one_through_the_doorbell_channel, args=(channel,))
        child.start()
        with selectors.DefaultSelector() as selector:
            selector.register(receiver.fileno(), selectors.EVENT_READ)
            if not receiver.arm():
                assert selector.select(timeout=30), "the child's send never rang the doorbell"
        assert receiver.recv(timeout=30) == name.encode()  # the child's copy kept the name
        child.join(timeout=30)
        assert child.exitcode == 0
    finally:
        channel.unlink()


def send_through_whatever_channel(channel: mmapkit.ByteChannel) -> None:
    channel.sender().send(repr(channel.name).encode(), timeout=30)


def test_a_pollable_named_channel_unlinked_still_reaches_a_spawned_child():
    name = f"pytest-{uuid.uuid4().hex[:12]}"
    channel = mmapkit.ByteChannel.create(name, capacity=4096, pollable=True)
    receiver = channel.receiver()
    channel.unlink()  # its users keep it: the child gets it by descriptor
    child = SPAWN.Process(target=send_through_whatever_channel, args=(channel,))
    child.start()
    assert receiver.recv(timeout=30) == b"None"
    child.join(timeout=30)
    assert child.exitcode == 0


def test_close_from_another_thread_stops_a_blocked_recv_and_a_blocked_send():
    channel = mmapkit.ByteChannel.create(capacity=4096)
    sender, receiver = channel.sender(), channel.receiver()
    outcome: dict[str, BaseException | bytes | None] = {}

    def wait_in(name, call):
        try:
            outcome[name] = call()
        except BaseException as error:  # noqa: BLE001 - the outcome is the point
            outcome[name] = error

    reader = threading.Thread(target=wait_in, args=("recv", lambda: receiver.recv(timeout=60)))
    reader.start()
    time.sleep(0.3)
    receiver.close()
    reader.join(timeout=30)
    assert not reader.is_alive(), "close() left recv() blocked"
    assert isinstance(outcome["recv"], ValueError) and "closed" in str(outcome["recv"])
    assert receiver.closed and repr(receiver) == "<mmapkit.ByteReceiver closed>"

    _still_attached = channel.receiver()
    while sender.try_send(b"x" * 1000):
        pass
    writer = threading.Thread(
        target=wait_in, args=("send", lambda: sender.send(b"y" * 1000, timeout=60))
    )
    writer.start()
    time.sleep(0.3)
    sender.close()
    writer.join(timeout=30)
    assert not writer.is_alive(), "close() left send() blocked"
    assert isinstance(outcome["send"], ValueError) and "closed" in str(outcome["send"])


def test_an_endpoint_inherited_across_fork_refuses_to_work_in_the_child():
    channel = mmapkit.ByteChannel.create(capacity=4096)
    sender, receiver = channel.sender(), channel.receiver()
    sender.send(b"before")
    pid = os.fork()
    if pid == 0:
        refused = 0
        for call in (receiver.try_recv, lambda: sender.send(b"from the child")):
            try:
                call()
            except mmapkit.InvalidInputError as error:
                refused += "fork" in str(error)
            except BaseException:  # noqa: BLE001 - anything else is a failure
                pass
        os._exit(0 if refused == 2 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child used the parent's endpoints"
    assert receiver.try_recv() == b"before"
    assert receiver.try_recv() is None, "the child sent through the parent's sender"
