"""The shared base under misuse: an atomic write never replaces what is not a regular file."""

from __future__ import annotations

import pytest

from mfnpatch.fsutil import UnsafePath, atomic_write


def test_atomic_write_refuses_what_is_not_a_regular_file(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(UnsafePath, match="is a directory"):
        atomic_write(d, "x")
    link = tmp_path / "l"
    link.symlink_to(tmp_path / "t")
    with pytest.raises(UnsafePath, match="is a symlink"):
        atomic_write(link, "x")
    assert not (tmp_path / "t").exists()
