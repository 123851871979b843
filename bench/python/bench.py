"""Benchmarks of the Python package against what Python programs use instead.

    python bench/python/bench.py [throughput|latency|scan|all] [--messages N] [--scan-mib N]

* throughput: one producer process and one consumer process, messages of 64 B and 4 KiB:
  mmapkit's ByteChannel (one call per message, received as bytes or with recv_into a
  reused bytearray, and batched with send_many/recv_many) vs
  multiprocessing.Queue, multiprocessing.Pipe and faster-fifo (one call per message, and
  its put_many/get_many batches).
* latency: a 64-byte ping-pong between two processes, round trips per second and the
  median round trip.
* scan: sum a cached file of --scan-mib MiB as uint64 words in chunks of 1 MiB and of
  256 KiB: mmapkit's Mapping.read_into a reused numpy buffer (a copy, which is what lets a
  truncation be an exception) vs numpy.memmap slices vs mmap.mmap through numpy.frombuffer
  (both read the page cache in place).

Every contender runs in the same run, on the same machine, with the same message sizes;
ratios are ours over theirs (higher is better for rates, lower for times). Needs numpy;
faster-fifo is used when installed (pip install faster-fifo).
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy

import mmapkit

try:
    import faster_fifo
except ImportError:  # pragma: no cover - optional contender
    faster_fifo = None

FORK = multiprocessing.get_context("fork")
BATCH = 256
CAPACITY = 4 << 20


# --- throughput -------------------------------------------------------------------------


def _produce(kind: str, endpoint: Any, count: int, size: int, ready: Any) -> None:
    message = b"m" * size
    ready.wait()
    if kind in ("mmapkit", "mmapkit-into"):
        for _ in range(count):
            endpoint.send(message)
    elif kind == "mmapkit-batch":
        batch = [message] * BATCH
        for start in range(0, count, BATCH):
            endpoint.send_many(batch[: min(BATCH, count - start)])
    elif kind == "pipe":
        for _ in range(count):
            endpoint.send_bytes(message)
    elif kind == "faster-fifo-batch":
        batch = [message] * BATCH
        for start in range(0, count, BATCH):
            endpoint.put_many(batch[: min(BATCH, count - start)], timeout=60)
    elif kind == "faster-fifo":
        for _ in range(count):
            endpoint.put(message, timeout=60)
    else:
        for _ in range(count):
            endpoint.put(message)


def _consume(kind: str, endpoint: Any, count: int, size: int) -> None:
    received = 0
    if kind == "mmapkit":
        for _ in range(count):
            endpoint.recv()
    elif kind == "mmapkit-into":
        buffer = bytearray(size)
        for _ in range(count):
            endpoint.recv_into(buffer)
    elif kind == "mmapkit-batch":
        while received < count:
            received += len(endpoint.recv_many(BATCH))
    elif kind == "pipe":
        for _ in range(count):
            endpoint.recv_bytes()
    elif kind == "faster-fifo-batch":
        while received < count:
            received += len(endpoint.get_many(max_messages_to_get=BATCH, timeout=60))
    elif kind == "faster-fifo":
        for _ in range(count):
            endpoint.get(timeout=60)
    else:
        for _ in range(count):
            endpoint.get()


def _endpoints(kind: str) -> tuple[Any, Any, Callable[[], None]]:
    """(producer's endpoint, consumer's endpoint, cleanup) for one contender."""
    if kind.startswith("mmapkit"):
        channel = mmapkit.ByteChannel.create(capacity=CAPACITY)
        receiver = channel.receiver()
        return channel, receiver, receiver.close
    if kind == "pipe":
        consumer, producer = FORK.Pipe(duplex=False)
        return producer, consumer, consumer.close
    if kind.startswith("faster-fifo"):
        queue = faster_fifo.Queue(max_size_bytes=CAPACITY)
        return queue, queue, lambda: None
    queue = FORK.Queue()
    return queue, queue, lambda: None


def _producer_main(kind: str, endpoint: Any, count: int, size: int, ready: Any) -> None:
    if kind.startswith("mmapkit"):
        with endpoint.sender() as sender:
            _produce(kind, sender, count, size, ready)
    else:
        _produce(kind, endpoint, count, size, ready)


def throughput(kind: str, count: int, size: int) -> float:
    """Messages per second from one producer process to this one."""
    producer_side, consumer_side, cleanup = _endpoints(kind)
    ready = FORK.Event()
    producer = FORK.Process(target=_producer_main, args=(kind, producer_side, count, size, ready))
    producer.start()
    if kind.startswith("mmapkit"):
        consumer_side.wait_for_peer(30)
    started = time.perf_counter()
    ready.set()
    _consume(kind, consumer_side, count, size)
    elapsed = time.perf_counter() - started
    producer.join()
    cleanup()
    return count / elapsed


def run_throughput(count: int, repeat: int) -> None:
    kinds = ["mmapkit", "mmapkit-into", "mmapkit-batch", "queue", "pipe"]
    if faster_fifo is not None:
        kinds += ["faster-fifo", "faster-fifo-batch"]
    for size in (64, 4096):
        runs: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(repeat):
            for kind in kinds:
                runs[kind].append(throughput(kind, count, size))
        rates = {kind: statistics.median(rates) for kind, rates in runs.items()}
        print(
            f"\nthroughput, {count} messages of {size} B (messages/s, one producer process, "
            f"median of {repeat})"
        )
        print(f"  {'contender':<20}{'msg/s':>14}")
        for kind, rate in rates.items():
            print(f"  {kind:<20}{rate:>14,.0f}")
        ours, into, batched = rates["mmapkit"], rates["mmapkit-into"], rates["mmapkit-batch"]
        for anchor in ("queue", "pipe", "faster-fifo", "faster-fifo-batch"):
            if anchor in rates:
                print(
                    f"  mmapkit / {anchor:<18} {ours / rates[anchor]:7.1f}x"
                    f"   recv_into: {into / rates[anchor]:7.1f}x"
                    f"   batched: {batched / rates[anchor]:7.1f}x"
                )


# --- latency ----------------------------------------------------------------------------


def _echo(kind: str, there: Any, back: Any, rounds: int) -> None:
    if kind == "mmapkit":
        with there.receiver() as inbox, back.sender() as outbox:
            for _ in range(rounds):
                outbox.send(inbox.recv())
    elif kind == "pipe":
        for _ in range(rounds):
            back.send_bytes(there.recv_bytes())
    elif kind == "faster-fifo":
        for _ in range(rounds):
            back.put(there.get(timeout=60), timeout=60)
    else:
        for _ in range(rounds):
            back.put(there.get())


def latency(kind: str, rounds: int) -> tuple[float, float]:
    """(round trips per second, median round trip in microseconds) of 64-byte messages."""
    message = b"p" * 64
    if kind == "mmapkit":
        there = mmapkit.ByteChannel.create(capacity=1 << 16)
        back = mmapkit.ByteChannel.create(capacity=1 << 16)
        child = FORK.Process(target=_echo, args=(kind, there, back, rounds))
        child.start()
        outbox, inbox = there.sender(), back.receiver()
        outbox.wait_for_peer(30)
        inbox.wait_for_peer(30)
        send, recv = outbox.send, inbox.recv
    elif kind == "pipe":
        there_recv, there_send = FORK.Pipe(duplex=False)
        back_recv, back_send = FORK.Pipe(duplex=False)
        child = FORK.Process(target=_echo, args=(kind, there_recv, back_send, rounds))
        child.start()
        send, recv = there_send.send_bytes, back_recv.recv_bytes
    elif kind == "faster-fifo":
        there, back = faster_fifo.Queue(), faster_fifo.Queue()
        child = FORK.Process(target=_echo, args=(kind, there, back, rounds))
        child.start()
        send, recv = there.put, lambda: back.get(timeout=60)
    else:
        there, back = FORK.Queue(), FORK.Queue()
        child = FORK.Process(target=_echo, args=(kind, there, back, rounds))
        child.start()
        send, recv = there.put, back.get
    times = []
    started = time.perf_counter()
    for _ in range(rounds):
        before = time.perf_counter_ns()
        send(message)
        recv()
        times.append(time.perf_counter_ns() - before)
    elapsed = time.perf_counter() - started
    child.join()
    return rounds / elapsed, statistics.median(times) / 1000


def run_latency(rounds: int) -> None:
    kinds = ["mmapkit", "pipe", "queue"] + (["faster-fifo"] if faster_fifo else [])
    results = {kind: latency(kind, rounds) for kind in kinds}
    print(f"\nping-pong of 64 B, {rounds} round trips between two processes")
    print(f"  {'contender':<14}{'round trips/s':>16}{'median µs':>12}")
    for kind, (rate, median) in results.items():
        print(f"  {kind:<14}{rate:>16,.0f}{median:>12.2f}")
    ours = results["mmapkit"][1]
    for anchor in kinds[1:]:
        print(f"  mmapkit / {anchor:<12} median round trip {ours / results[anchor][1]:.3f}x")


# --- scan -------------------------------------------------------------------------------


CHUNK = 1 << 20
CHUNKS = (1 << 20, 256 << 10)


def scan_mmapkit(path: str, size: int) -> int:
    mapping = mmapkit.map_file(path)
    buffer = numpy.empty(CHUNK, dtype=numpy.uint8)
    words = buffer.view(numpy.uint64)
    total = 0
    for offset in range(0, size, CHUNK):
        copied = mapping.read_into(buffer, offset)
        total += int(words[: copied // 8].sum())
    mapping.close()
    return total


def scan_memmap(path: str, size: int) -> int:
    words = numpy.memmap(path, dtype=numpy.uint64, mode="r")
    step = CHUNK // 8
    total = 0
    for start in range(0, size // 8, step):
        total += int(words[start : start + step].sum())
    del words
    return total


def scan_mmap(path: str, size: int) -> int:
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        total = 0
        for offset in range(0, size, CHUNK):
            count = min(CHUNK, size - offset) // 8
            total += int(numpy.frombuffer(mapped, numpy.uint64, count, offset).sum())
        return total


def run_scan(mib: int, rounds: int = 5) -> None:
    global CHUNK
    size = mib << 20
    contenders = {
        "mmapkit read_into": scan_mmapkit,
        "numpy.memmap": scan_memmap,
        "mmap.mmap": scan_mmap,
    }
    with tempfile.NamedTemporaryFile(dir="/var/tmp", prefix="mmapkit-scan-") as file:
        block = numpy.arange((1 << 20) // 8, dtype=numpy.uint64).tobytes()
        for _ in range(size >> 20):
            file.write(block)
        file.flush()
        mmapkit.touch(file.name)
        print(f"\nscan of a cached {mib} MiB file into a numpy uint64 sum (GB/s, best of {rounds})")
        print(f"  {'chunk':<10}" + "".join(f"{name:>20}" for name in contenders))
        best: dict[tuple[int, str], float] = {}
        for CHUNK in CHUNKS:
            sums = set()
            for _ in range(rounds):
                for name, scan in contenders.items():
                    started = time.perf_counter()
                    sums.add(scan(file.name, size))
                    elapsed = time.perf_counter() - started
                    key = (CHUNK, name)
                    best[key] = min(best.get(key, elapsed), elapsed)
            assert len(sums) == 1, sums
            rates = [size / best[(CHUNK, name)] / 1e9 for name in contenders]
            print(f"  {CHUNK >> 10:>6} KiB" + "".join(f"{rate:>20.2f}" for rate in rates))
    fastest = {name: min(best[(chunk, name)] for chunk in CHUNKS) for name in contenders}
    ours = fastest["mmapkit read_into"]
    for anchor in ("numpy.memmap", "mmap.mmap"):
        print(f"  mmapkit / {anchor:<14} {fastest[anchor] / ours:.2f}x (each at its best chunk)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["throughput", "latency", "scan", "all"])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--scan-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    print(f"mmapkit {mmapkit.__name__}, numpy {numpy.__version__}, "
          f"faster-fifo {'yes' if faster_fifo else 'not installed'}, {os.cpu_count()} CPUs")
    if arguments.what in ("throughput", "all"):
        run_throughput(arguments.messages, arguments.repeat)
    if arguments.what in ("latency", "all"):
        run_latency(arguments.rounds)
    if arguments.what in ("scan", "all"):
        run_scan(arguments.scan_mib)


if __name__ == "__main__":
    main()
