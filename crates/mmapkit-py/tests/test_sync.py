"""Robust locks, condition variables, semaphores and events between real processes."""

from __future__ import annotations

import os
import signal
import struct
import threading
import time

import pytest

import mmapkit

MUTEX = 0
CONDVAR = 64
SEMAPHORE = 128
EVENT = 192
DATA = 256


@pytest.fixture
def segment():
    with mmapkit.create_memfd(4096) as segment:
        yield segment


def forked(body) -> int:
    """Runs `body()` in a forked child that exits right after it; returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
        except BaseException:  # noqa: BLE001 - the child reports by its exit status
            code = 1
        os._exit(code)
    return pid


def exit_status(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_holder_killed_mid_update_is_recovered_by_the_next_locker_100_times(segment):
    mutex = mmapkit.Mutex.init(segment, MUTEX)
    ready = mmapkit.Event.init(segment, EVENT, auto_reset=True)
    segment.write_at(DATA, struct.pack("<QQ", 0, 0))
    for round_ in range(100):

        def hold_and_hang() -> None:
            guard = mutex.lock()
            # Half of an update: the first word moves, the second not yet.
            segment.write_at(DATA, struct.pack("<Q", round_ + 1))
            ready.set()
            time.sleep(60)
            guard.release()

        pid = forked(hold_and_hang)
        assert ready.wait(timeout=10)
        assert mutex.locked()
        os.kill(pid, signal.SIGKILL)
        assert exit_status(pid) == -signal.SIGKILL
        with pytest.raises(mmapkit.OwnerDiedError) as died:
            mutex.lock(timeout=10)
        guard = died.value.guard
        assert isinstance(guard, mmapkit.MutexGuard) and guard.held
        assert not guard.consistent
        first, second = struct.unpack("<QQ", segment.read_at(DATA, 16))
        assert (first, second) == (round_ + 1, round_)
        segment.write_at(DATA + 8, struct.pack("<Q", first))  # the repair
        guard.mark_consistent()
        guard.release()
        with mutex as again:
            assert again.consistent
    assert struct.unpack("<QQ", segment.read_at(DATA, 16)) == (100, 100)


def test_the_lock_excludes_other_processes_and_times_out(segment):
    mutex = mmapkit.Mutex.init(segment, MUTEX)
    ready = mmapkit.Event.init(segment, EVENT)
    go = mmapkit.Semaphore.init(segment, SEMAPHORE, 0)

    def hold_until_told() -> None:
        with mutex:
            ready.set()
            assert go.acquire(timeout=20)

    pid = forked(hold_until_told)
    assert ready.wait(timeout=10)
    with pytest.raises(mmapkit.WouldBlockError):
        mutex.try_lock()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        mutex.lock(timeout=0.2)
    assert time.monotonic() - started >= 0.2
    go.release()
    assert exit_status(pid) == 0
    with mutex.lock(timeout=10) as guard:
        assert guard.held and guard.consistent and mutex.held()
    assert not guard.held and not mutex.locked()


def test_counting_under_the_lock_from_two_processes_loses_nothing(segment):
    mutex = mmapkit.Mutex.init(segment, MUTEX)
    segment.write_at(DATA, struct.pack("<Q", 0))

    def count() -> None:
        for _ in range(2000):
            with mutex:
                (value,) = struct.unpack("<Q", segment.read_at(DATA, 8))
                segment.write_at(DATA, struct.pack("<Q", value + 1))

    pids = [forked(count) for _ in range(2)]
    count()
    assert [exit_status(pid) for pid in pids] == [0, 0]
    assert struct.unpack("<Q", segment.read_at(DATA, 8)) == (6000,)


def test_misuse_is_an_error_not_a_deadlock(segment):
    mutex = mmapkit.Mutex.init(segment, MUTEX)
    guard = mutex.lock()
    with pytest.raises(mmapkit.WouldBlockError):
        mutex.lock()
    failures = []

    def release_elsewhere() -> None:
        try:
            guard.release()
        except mmapkit.Error as error:
            failures.append(error)

    thread = threading.Thread(target=release_elsewhere)
    thread.start()
    thread.join()
    assert len(failures) == 1 and isinstance(failures[0], mmapkit.InvalidInputError)
    assert guard.held
    guard.release()
    with pytest.raises(RuntimeError):
        guard.release()
    stale = guard
    fresh = mutex.lock()
    with pytest.raises(RuntimeError):
        stale.mark_consistent()
    assert fresh.held
    condvar = mmapkit.Condvar.init(segment, CONDVAR)
    waits = []

    def wait_elsewhere() -> None:
        try:
            condvar.wait(fresh, timeout=0.01)
        except mmapkit.Error as error:
            waits.append(error)

    thread = threading.Thread(target=wait_elsewhere)
    thread.start()
    thread.join()
    assert len(waits) == 1 and isinstance(waits[0], mmapkit.InvalidInputError)
    assert fresh.held and mutex.held()
    fresh.release()
    with pytest.raises(RuntimeError):
        condvar.wait(fresh, timeout=0.01)
    with mutex.lock(timeout=1e300):  # a timeout too long to represent waits as None does
        pass
    # Like threading.Lock.acquire(), lock() holds the lock whether or not the guard is kept.
    mutex.lock()
    assert mutex.held() and mutex.locked()
    mutex.unlock()
    assert not mutex.locked()
    with pytest.raises(RuntimeError):
        mutex.unlock()
    with mutex:
        with pytest.raises(RuntimeError):
            mmapkit.Mutex.open(segment, MUTEX).unlock()
    assert not mutex.locked()
    with pytest.raises(mmapkit.CorruptError):
        mmapkit.Mutex.open(segment, SEMAPHORE)
    with pytest.raises(mmapkit.OutOfBoundsError):
        mmapkit.Mutex.open(segment, -8)
    with pytest.raises(mmapkit.InvalidInputError):
        mmapkit.Mutex.init(segment, 4)
    with pytest.raises(ValueError):
        mutex.lock(timeout=-1)


def test_a_condition_variable_wakes_a_waiter_in_another_process(segment):
    mutex = mmapkit.Mutex.init(segment, MUTEX)
    condvar = mmapkit.Condvar.init(segment, CONDVAR)
    segment.write_at(DATA, b"\0")

    def wait_for_flag() -> None:
        with mutex as guard:
            while segment.read_at(DATA, 1) != b"\1":
                condvar.wait(guard, timeout=20)
            segment.write_at(DATA + 1, b"\2")

    pid = forked(wait_for_flag)
    time.sleep(0.2)
    with mutex:
        segment.write_at(DATA, b"\1")
        condvar.notify_all()
    assert exit_status(pid) == 0
    assert segment.read_at(DATA + 1, 1) == b"\2"
    with mutex as guard:
        started = time.monotonic()
        assert condvar.wait(guard, timeout=0.1) is False
        assert time.monotonic() - started >= 0.1
        assert guard.held and mutex.held()


def test_semaphores_and_events_between_processes(segment):
    semaphore = mmapkit.Semaphore.init(segment, SEMAPHORE, 2)
    event = mmapkit.Event.init(segment, EVENT)
    assert semaphore.acquire() and semaphore.acquire()
    assert semaphore.value == 0
    assert semaphore.acquire(blocking=False) is False
    assert semaphore.acquire(timeout=0.05) is False
    assert event.wait(timeout=0.05) is False and not event.is_set()

    def post_then_set() -> None:
        time.sleep(0.1)
        mmapkit.Semaphore.open(segment, SEMAPHORE).release(3)
        mmapkit.Event.open(segment, EVENT).set()

    pid = forked(post_then_set)
    assert semaphore.acquire(timeout=10)
    assert event.wait(timeout=10) and event.is_set()
    assert exit_status(pid) == 0
    assert semaphore.value == 2
    event.clear()
    assert not event.is_set() and not event.auto_reset
    with pytest.raises(mmapkit.CorruptError):
        mmapkit.Event.open(segment, SEMAPHORE)
    assert "value=2" in repr(semaphore) and "clear" in repr(event)


def test_a_condvar_waiter_keeps_its_guard_when_another_thread_uses_the_same_mutex(segment):
    mutex = mmapkit.Mutex.init(segment, MUTEX)
    condvar = mmapkit.Condvar.init(segment, CONDVAR)
    ready, seen = [], {}

    def waiter() -> None:
        guard = mutex.lock()
        while not ready:
            condvar.wait(guard, timeout=5)
        seen["held"] = guard.held
        guard.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    with mutex:  # the notifier, through the same Mutex object
        ready.append(True)
        condvar.notify_all()
    thread.join(timeout=10)
    assert seen == {"held": True}
    mutex.lock(timeout=1).release()  # released by the waiter: no OwnerDiedError, no wait


def test_a_release_of_many_units_is_all_or_nothing(segment):
    semaphore = mmapkit.Semaphore.init(segment, SEMAPHORE, 2**32 - 3)
    with pytest.raises(mmapkit.InvalidInputError, match="would exceed"):
        semaphore.release(10)
    assert semaphore.value == 2**32 - 3
    semaphore.release(2)
    assert semaphore.value == 2**32 - 1
