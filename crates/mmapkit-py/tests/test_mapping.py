"""mmapkit.Mapping against what another process, the file and the kernel see."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import mmapkit

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * (16 * PAGE // 256))
    return path


def test_reads_and_file_like_methods_match_the_file(data_file):
    content = data_file.read_bytes()
    with mmapkit.map_file(data_file) as mapping:
        assert len(mapping) == len(content)
        assert mapping.read_at(1000, 300) == content[1000:1300]
        assert mapping.read(10) == content[:10]
        assert mapping.tell() == 10
        assert mapping.seek(-5, 2) == len(content) - 5
        assert mapping.read() == content[-5:]
        assert mapping.read() == b""
        assert mapping.find(b"\x10\x11\x12", 100) == content.find(b"\x10\x11\x12", 100)
        assert mapping.rfind(b"\x00\x01") == content.rfind(b"\x00\x01")
        assert mapping.find(b"absent") == -1
        buffer = bytearray(PAGE + 7)
        assert mapping.read_into(buffer, len(content) - PAGE) == PAGE
        assert buffer[:PAGE] == content[-PAGE:]
        assert buffer[PAGE:] == bytes(7)
    assert mapping.closed
    with pytest.raises(ValueError):
        mapping.read_at(0, 1)


def test_writes_reach_the_file_after_flush(data_file):
    with mmapkit.map_file(data_file, write=True) as mapping:
        assert mapping.write_at(PAGE + 3, b"written") == 7
        mapping.seek(5 * PAGE)
        mapping.write(memoryview(b"via write"))
        mapping.flush()
        with open(data_file, "rb") as file:
            file.seek(PAGE + 3)
            assert file.read(7) == b"written"
            file.seek(5 * PAGE)
            assert file.read(9) == b"via write"
        with pytest.raises(mmapkit.OutOfBoundsError):
            mapping.write_at(len(mapping) - 2, b"too long")
        assert mapping.read_at(len(mapping) - 2, 2) == data_file.read_bytes()[-2:]


def test_a_private_mapping_keeps_its_writes_from_the_file(data_file):
    before = data_file.read_bytes()
    with mmapkit.map_file(data_file, write=True, private=True) as mapping:
        mapping.write_at(0, b"private")
        assert mapping.read_at(0, 7) == b"private"
    assert data_file.read_bytes() == before


TRUNCATOR = textwrap.dedent(
    """
    import os, sys, time
    path, size = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + 30
    open(path + ".started", "w").close()
    while time.monotonic() < deadline and not os.path.exists(path + ".stop"):
        os.truncate(path, 0)
        os.truncate(path, size)
    """
)


def test_a_truncation_storm_from_another_process_raises_and_never_kills(data_file):
    content = data_file.read_bytes()
    size = len(content)
    storm = subprocess.Popen([sys.executable, "-c", TRUNCATOR, str(data_file), str(size)])
    started = data_file.parent / (data_file.name + ".started")
    truncated = whole = 0
    try:
        with mmapkit.map_file(data_file) as mapping:
            while not started.exists():
                assert storm.poll() is None, "the truncating process died"
            for round_ in range(5000):
                offset = (round_ * 7919) % (size - 64)
                try:
                    bytes_read = mapping.read_at(offset, 64)
                except mmapkit.TruncatedError as error:
                    assert error.errno is None and error.kind == "Truncated"
                    assert error.offset is not None
                    truncated += 1
                else:
                    # A re-extended file reads as zeros: each byte is the file's or zero.
                    expected = content[offset : offset + 64]
                    assert all(b in (e, 0) for b, e in zip(bytes_read, expected, strict=True))
                    whole += 1
    finally:
        (data_file.parent / (data_file.name + ".stop")).touch()
        storm.wait(timeout=60)
    assert truncated + whole == 5000
    assert truncated > 0, "the storm never hit a read"


def test_buffers_are_lent_only_for_exclusive_memory(data_file):
    with mmapkit.map_file(data_file) as shared_file:
        assert not shared_file.exclusive
        with pytest.raises(BufferError):
            memoryview(shared_file)
    with mmapkit.map_file(data_file, private=True) as private_file:
        # A private file mapping still shows others' writes to pages it has not copied.
        with pytest.raises(BufferError):
            memoryview(private_file)
    with mmapkit.map_anonymous(PAGE, shared=True) as shared_anonymous:
        with pytest.raises(BufferError):
            memoryview(shared_anonymous)
    with mmapkit.map_anonymous(2 * PAGE) as exclusive:
        assert exclusive.exclusive
        view = memoryview(exclusive)
        view[10:15] = b"hello"
        assert exclusive.read_at(10, 5) == b"hello"
        with pytest.raises(BufferError):
            exclusive.close()
        with pytest.raises(BufferError):
            exclusive.protect("r")
        # A copy between a view of the mapping and the mapping itself.
        assert exclusive.read_into(view[PAGE:], 0) == PAGE
        assert bytes(view[PAGE + 10 : PAGE + 15]) == b"hello"
        exclusive.write_at(100, view[PAGE + 10 : PAGE + 15])
        assert exclusive.read_at(100, 5) == b"hello"
        view.release()
        exclusive.protect("r")
        with pytest.raises(mmapkit.PermissionDeniedError):
            exclusive.write_at(0, b"x")
        read_only = memoryview(exclusive)
        assert read_only.readonly
        read_only.release()
        exclusive.close()
        exclusive.close()


def test_shared_anonymous_memory_is_shared_with_a_forked_child():
    mapping = mmapkit.map_anonymous(PAGE, shared=True)
    child = os.fork()
    if child == 0:
        mapping.write_at(0, b"from the child")
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert mapping.read_at(0, 14) == b"from the child"


def test_errors_are_os_errors_with_context(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        mmapkit.map_file(tmp_path / "absent")
    assert isinstance(missing.value, mmapkit.NotFoundError)
    assert missing.value.errno == 2
    assert missing.value.filename == str(tmp_path / "absent")
    with mmapkit.map_anonymous(PAGE) as mapping:
        with pytest.raises(IndexError) as negative:
            mapping.read_at(-1, 1)
        assert isinstance(negative.value, mmapkit.Error)
        assert "negative" in str(negative.value)
        with pytest.raises(mmapkit.OutOfBoundsError):
            mapping.read_at(PAGE - 1, 2)
        with pytest.raises(mmapkit.OutOfBoundsError):
            mapping.seek(PAGE + 1)
        with pytest.raises(mmapkit.InvalidInputError):
            mapping.advise("dontneed")
        with pytest.raises(ValueError):
            mapping.protect("rwx")
    with pytest.raises(mmapkit.InvalidInputError):
        mmapkit.map_anonymous(0)


def test_residency_lock_and_advice_agree_with_the_kernel(data_file):
    with mmapkit.map_anonymous(8 * PAGE) as mapping:
        assert mapping.residency().resident_pages == 0
        mapping.write_at(3 * PAGE, b"x")
        residency = mapping.residency()
        assert residency.to_list() == [i == 3 for i in range(8)]
        assert residency.is_resident(3) and not residency.is_resident(4)
        mapping.lock(0, 2 * PAGE)
        assert mapping.residency(0, 2 * PAGE).resident_pages == 2
        mapping.unlock()
        mapping.advise(mmapkit.Advice.POPULATE_WRITE)
        assert mapping.residency().resident_pages == 8
    with mmapkit.map_file(data_file) as mapping:
        mapping.advise("willneed")
        assert len(mapping.residency(PAGE, 3 * PAGE)) == 2


def test_close_from_another_thread_waits_for_a_copy_in_progress(tmp_path):
    path = tmp_path / "big"
    with open(path, "wb") as file:
        file.truncate(64 << 20)
    mapping = mmapkit.map_file(path)
    outcome = {}

    def read_again_and_again():
        try:
            for _ in range(50):
                assert len(mapping.read_at(0, 64 << 20)) == 64 << 20
            outcome["reader"] = "finished"
        except ValueError as error:
            outcome["reader"] = str(error)

    reader = threading.Thread(target=read_again_and_again)
    reader.start()
    time.sleep(0.1)
    mapping.close()
    assert mapping.closed and repr(mapping).endswith("closed>")
    reader.join(timeout=60)
    assert outcome["reader"] in ("finished", "the mapping is closed")
    with pytest.raises(ValueError, match="closed"):
        with mapping:
            pass
