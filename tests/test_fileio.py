"""ovmap.fileio: atomic writes (umask, temp files on failure, stale temp files of killed runs) and load_npz."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ovmap import fileio
from ovmap.fileio import atomic_write, atomic_write_bytes, clean_stale_temps, is_stale_temp, load_npz


@pytest.fixture(autouse=True)
def _fresh_clean_cache(monkeypatch):
    # every test sees folders as not yet cleaned in this process
    monkeypatch.setattr(fileio, "_cleaned_dirs", set())


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ------------------------------------------------------------------------------------------------------ umask
@pytest.mark.parametrize("umask,expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o000, 0o666)])
def test_atomic_write_honours_umask_like_open(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        with open(tmp_path / "b.bin", "wb") as f:  # the reference: a plain open()
            f.write(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.bin") == expected == _mode(tmp_path / "b.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"x"


def test_current_umask_reads_the_process_umask():
    old = os.umask(0o027)
    try:
        assert fileio.current_umask() == 0o027
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------- failure handling
def test_failed_write_leaves_no_temp_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "map.npz"
    target.write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.npz"]
    assert target.read_bytes() == b"old"


def test_keyboard_interrupt_during_write_removes_temp(tmp_path):
    def interrupted(f):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.txt", interrupted)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- stale temp files
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _temp_name(target: str, pid: int, host: str | None = None) -> str:
    return f".{target}{fileio.TMP_MARK}{host or fileio._host_tag()}-{pid}-abc123.tmp"


def test_stale_temps_of_killed_runs_are_cleaned_by_the_next_write(tmp_path):
    dead = tmp_path / _temp_name("map.npz", _dead_pid())  # killed run on this host: pid gone
    old = tmp_path / _temp_name("metrics.json", os.getppid(), host="0badf00d")  # another host, 1 h old
    old.write_bytes(b"x")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    dead.write_bytes(b"x")
    live = tmp_path / _temp_name("other.npz", os.getppid())  # a running writer (our parent is alive)
    live.write_bytes(b"x")
    recent_foreign = tmp_path / _temp_name("b.npz", 1, host="0badf00d")  # fresh, other host: cannot tell
    recent_foreign.write_bytes(b"x")
    user_file = tmp_path / ".hidden.tmp"  # not our pattern
    user_file.write_bytes(b"x")

    atomic_write_bytes(tmp_path / "result.txt", b"ok")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([live.name, recent_foreign.name, user_file.name, "result.txt"])


def test_is_stale_temp_rules(tmp_path):
    assert not is_stale_temp(tmp_path / "plain.txt")
    p = tmp_path / _temp_name("a", os.getpid())
    p.write_bytes(b"")
    assert not is_stale_temp(p)  # our own, fresh
    assert is_stale_temp(p, now=time.time() + fileio.STALE_TMP_AGE_S + 1)  # older than the limit
    q = tmp_path / _temp_name("a", _dead_pid())
    q.write_bytes(b"")
    assert is_stale_temp(q)
    assert clean_stale_temps(tmp_path) == [q]


def test_temp_files_use_the_recognisable_pattern(tmp_path):
    seen = []

    def spy(f):
        seen.extend(p.name for p in tmp_path.iterdir())
        f.write(b"1")

    atomic_write(tmp_path / "x.ply", spy)
    assert len(seen) == 1 and fileio._TMP_RE.match(seen[0]) and seen[0].startswith(".x.ply.ovtmp-")
    assert f"-{os.getpid()}-" in seen[0]


# ---------------------------------------------------------------------------------------------------- load_npz
def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _one_line_value_error(path: Path, **kw) -> str:
    with pytest.raises(ValueError) as e:
        load_npz(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_load_npz_reads_all_arrays(tmp_path):
    p = tmp_path / "a.npz"
    p.write_bytes(_npz_bytes(xyz=np.arange(6.0).reshape(2, 3), label=np.array([3, 4])))
    out = load_npz(p, what="GT points", required=("xyz", "label"))
    np.testing.assert_array_equal(out["xyz"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(out["label"], [3, 4])


def test_load_npz_corrupt_files(tmp_path):
    good = _npz_bytes(xyz=np.arange(3000.0), label=np.arange(3000))
    p = tmp_path / "gt_points.npz"

    p.write_bytes(b"")
    assert "is empty (0 bytes)" in _one_line_value_error(p, what="GT points")

    p.write_bytes(good[: len(good) // 2])
    assert "corrupt or truncated" in _one_line_value_error(p)

    flipped = bytearray(good)
    # flip one bit inside the first member's data (after its 30-byte local header and name)
    start = good.index(b"xyz.npy") + len("xyz.npy") + 200
    flipped[start] ^= 0x10
    p.write_bytes(bytes(flipped))
    assert "corrupt or truncated" in _one_line_value_error(p)
    assert "CRC" in _one_line_value_error(p)

    p.write_text("this is a text file\n")
    msg = _one_line_value_error(p)
    assert "not an .npz archive" in msg and "allow_pickle" not in msg


def test_load_npz_refuses_pickles_and_checks_required(tmp_path):
    p = tmp_path / "obj.npz"
    p.write_bytes(_npz_bytes(a=np.array([{"x": 1}], dtype=object)))
    assert "refused: ovmap never loads pickles" in _one_line_value_error(p)
    q = tmp_path / "q.npz"
    q.write_bytes(_npz_bytes(xyz=np.zeros((1, 3))))
    msg = _one_line_value_error(q, what="GT points file", required=("xyz", "label"))
    assert msg == f"GT points file {q} lacks array(s) label (found: xyz)"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_npz(tmp_path / "nope.npz")


def test_load_npz_bad_member_header(tmp_path):
    p = tmp_path / "m.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("a.npy", b"\x93NUMPY garbage")
    assert "corrupt or truncated" in _one_line_value_error(p)
