"""The one atomic-write helper (fedcredit/atomic_write.py): content, modes, and nothing half-written."""

from __future__ import annotations

import json
import os
import stat

import pytest

from fedcredit.atomic_write import atomic_directory, atomic_path, write_atomic, write_json_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_atomic_replaces_content_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    write_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    write_atomic(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_explicit_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        public = write_atomic(tmp_path / "a.pub", "x", mode=0o644)
        private = write_atomic(tmp_path / "a.key", "x", mode=0o600)
        plain = write_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert _mode(public) == 0o644
    assert _mode(private) == 0o600
    assert _mode(plain) == 0o600  # default: what open() gives under this umask (0o666 & ~0o077)


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_atomic_path_gives_the_mode_even_when_the_writer_recreates_the_file(tmp_path):
    target = tmp_path / "w.bin"
    with atomic_path(target, mode=0o644) as tmp:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors' save_file does
        os.write(fd, b"abc")
        os.close(fd)
    assert target.read_bytes() == b"abc" and _mode(target) == 0o644


def test_write_json_atomic(tmp_path):
    p = write_json_atomic(tmp_path / "x.json", {"b": 1, "a": [1.5]}, sort_keys=True)
    assert json.loads(p.read_text()) == {"a": [1.5], "b": 1}
    assert p.read_text().endswith("\n") and p.read_text().index('"a"') < p.read_text().index('"b"')
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "y.json", {"x": float("nan")}, allow_nan=False)
    assert not (tmp_path / "y.json").exists()


def test_atomic_directory_replaces_the_whole_directory_or_nothing(tmp_path):
    final = tmp_path / "round-0001"
    with atomic_directory(final) as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as d:
            (d / "a").write_text("2")
            raise RuntimeError("crash")
    assert (final / "a").read_text() == "1"
    with atomic_directory(final) as d:
        (d / "b").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-0001"]
