"""Segments between unrelated interpreters, across spawn, and their cleanup."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import uuid

import pytest

import mmapkit


@pytest.fixture
def name():
    name = f"pytest-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        mmapkit.unlink_segment(name)
    except FileNotFoundError:
        pass


def python(code: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], **popen)


def test_a_segment_outlives_its_creator_and_is_cleaned_only_when_unused(name):
    creator = python(
        """
        import sys, mmapkit
        segment = mmapkit.create_segment(sys.argv[1], 4096)
        segment.write_at(0, b"made by the creator")
        """,
        name,
    )
    assert creator.wait(timeout=60) == 0
    user = python(
        """
        import sys, time, mmapkit
        segment = mmapkit.open_segment(sys.argv[1])
        assert segment.read_at(0, 19) == b"made by the creator"
        segment.write_at(100, b"the user was here")
        print("attached", flush=True)
        sys.stdin.read()
        """,
        name,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert user.stdout.readline() == b"attached\n"
        listed = {info.name: info for info in mmapkit.shm.list()}[name]
        assert listed.creator_pid == creator.pid and listed.creator_alive is False
        assert listed.users == (user.pid,) and not listed.stale
        assert name not in mmapkit.shm.cleanup().removed
        with mmapkit.open_segment(name) as segment:
            assert segment.read_at(100, 17) == b"the user was here"
    finally:
        user.stdin.close()
        assert user.wait(timeout=60) == 0
    listed = {info.name: info for info in mmapkit.shm.list()}[name]
    assert listed.stale
    assert name in mmapkit.shm.cleanup().removed
    assert name not in {info.name for info in mmapkit.shm.list()}
    with pytest.raises(FileNotFoundError) as missing:
        mmapkit.open_segment(name, wait=0)
    assert isinstance(missing.value, mmapkit.NotFoundError)


def write_through_pickled(segment: mmapkit.Segment) -> None:
    segment.write_at(0, f"child {os.getpid()}".encode())


def test_a_pickled_segment_is_the_same_segment_in_a_spawned_child(name):
    segment = mmapkit.create_segment(name, 4096)
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=write_through_pickled, args=(segment,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert segment.read_at(0, 6 + len(str(child.pid))) == f"child {child.pid}".encode()
    again = pickle.loads(pickle.dumps(segment))
    assert again.name == name and len(again) == len(segment)
    read_only = mmapkit.open_segment(name, read_only=True)
    assert not pickle.loads(pickle.dumps(read_only)).writable
    with pytest.raises(mmapkit.PermissionDeniedError):
        read_only.write_at(0, b"x")


def test_memfd_segments_are_shared_across_fork_and_pickle_by_descriptor_to_spawn_children():
    segment = mmapkit.create_memfd(4096)
    assert segment.name is None
    child = os.fork()
    if child == 0:
        segment.write_at(0, b"forked")
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert segment.read_at(0, 6) == b"forked"
    context = multiprocessing.get_context("spawn")
    spawned = context.Process(target=write_through_pickled, args=(segment,))
    spawned.start()
    spawned.join(timeout=60)
    assert spawned.exitcode == 0
    assert segment.read_at(0, 6 + len(str(spawned.pid))) == f"child {spawned.pid}".encode()
    descriptors = len(os.listdir("/proc/self/fd"))
    adopted = mmapkit.segment_from_fd(segment.fileno())
    assert adopted.read_at(0, 5) == b"child" and len(adopted) == len(segment)
    adopted.close()
    assert len(os.listdir("/proc/self/fd")) == descriptors
    with pytest.raises(OSError):
        mmapkit.segment_from_fd(987654)
    buffer = bytearray(6)
    assert segment.read_into(buffer, 0) == 6 and buffer == b"child "
    # Shared memory is never lent out as a buffer: segments do not offer the protocol.
    with pytest.raises(TypeError):
        memoryview(segment)


def test_names_sizes_and_types_are_checked(name):
    with mmapkit.create_segment(name, 4096, type_tag="pytest/a") as segment:
        with pytest.raises(FileExistsError):
            mmapkit.create_segment(name, 4096)
        with pytest.raises(mmapkit.IncompatibleError):
            mmapkit.open_segment(name, type_tag="pytest/b")
        with pytest.raises(mmapkit.OutOfBoundsError):
            segment.write_at(len(segment) - 1, b"xy")
        with pytest.raises(mmapkit.InvalidInputError):
            mmapkit.create_segment("a/b", 4096)
    with pytest.raises(ValueError):
        segment.read_at(0, 1)


def test_hostile_offsets_and_lengths_are_out_of_bounds_not_out_of_memory():
    segment = mmapkit.create_memfd(4096)
    mapping = mmapkit.map_anonymous(4096)
    for target in (segment, mapping):
        with pytest.raises(mmapkit.OutOfBoundsError):
            target.read_at(0, 2**62)
        with pytest.raises(IndexError):
            target.read_at(-1, 1)
        with pytest.raises(IndexError):
            target.write_at(-5, b"x")
        with pytest.raises(mmapkit.OutOfBoundsError):
            target.read_into(bytearray(1), len(target) + 1)
        big = bytearray(len(target) + 100)
        assert target.read_into(big, 10) == len(target) - 10
