"""Residency, touch, evict and maps against fincore and /proc."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

import mmapkit

PAGE = os.sysconf("SC_PAGE_SIZE")


def fincore_pages(path) -> int:
    output = subprocess.run(
        ["fincore", "--noheadings", "--output", "PAGES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(output.strip())


def test_touch_and_evict_move_a_file_in_and_out_of_the_cache_as_fincore_sees(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(64 * PAGE))
    os.sync()
    mmapkit.evict(path)
    before = mmapkit.residency(path)
    assert before.cached == fincore_pages(path) == 0
    assert before.pages == 64 and before.size == 64 * PAGE
    assert mmapkit.touch(path, 0, 16 * PAGE) == 16 * PAGE
    partly = mmapkit.residency(path)
    assert partly.cached == fincore_pages(path)
    assert 16 <= partly.cached <= 64
    assert mmapkit.residency(path, 0, 16 * PAGE).cached == 16
    assert mmapkit.touch(path) == 64 * PAGE
    both = mmapkit.residency([path, path])
    assert [r.cached for r in both] == [64, 64] == [fincore_pages(path)] * 2
    assert both[0].cached_bytes == 64 * PAGE
    if both[0].method == "cachestat":
        assert both[0].dirty == 0


def test_inspection_errors_are_values(tmp_path):
    with pytest.raises(FileNotFoundError):
        mmapkit.residency(tmp_path / "absent")
    with pytest.raises(mmapkit.InvalidInputError):
        mmapkit.touch(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(mmapkit.InvalidInputError):
        mmapkit.evict(fifo)  # refused at once, never waiting for a writer
    with pytest.raises(IndexError):
        mmapkit.touch(tmp_path / "absent", -1)
    # Paths as bytes, as os functions take them.
    data = tmp_path / "data"
    data.write_bytes(b"x" * 8192)
    raw = os.fsencode(data)
    assert mmapkit.touch(raw) == 8192
    assert mmapkit.residency(raw).path == str(data)
    assert [r.path for r in mmapkit.residency([raw])] == [str(data)]
    mmapkit.evict(raw)
    with mmapkit.map_file(raw) as mapping:
        assert mapping.read_at(0, 1) == b"x"


def test_maps_lists_what_proc_lists_and_finds_our_mapping(tmp_path):
    path = tmp_path / "mapped.bin"
    path.write_bytes(b"x" * 3 * PAGE)
    with mmapkit.map_file(path) as mapping:
        entries = mmapkit.maps()
        ours = [entry for entry in entries if entry.path == str(path)]
        assert len(ours) == 1 and ours[0].size == len(mapping)
        assert ours[0].permissions == "r--s" and ours[0].label == "mapped.bin"
        assert ours[0].inode == path.stat().st_ino
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        # Once the process has finished starting, two reads of its maps agree.
        def proc_starts():
            with open(f"/proc/{sleeper.pid}/maps") as proc:
                return [int(line.split("-")[0], 16) for line in proc]

        starts = None
        while starts != (starts := proc_starts()):
            time.sleep(0.05)
        assert [entry.start for entry in mmapkit.maps(sleeper.pid)] == starts
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(mmapkit.NotFoundError):
        mmapkit.maps(2**22 + 12345)
