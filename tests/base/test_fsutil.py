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


def test_read_bounded_refuses_fifos_devices_and_huge_files_without_reading(tmp_path):
    import os
    import threading

    from mfnpatch.errors import MfnError
    from mfnpatch.fsutil import TooLarge, read_bounded, regular_file

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out: list = []

    def call():
        try:
            read_bounded(fifo, "test file", 1 << 20)
        except MfnError as e:
            out.append(e.message)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(30)
    assert out and "is a FIFO" in out[0]  # refused at once: a FIFO never blocks the open
    with pytest.raises(MfnError, match="/dev/zero is a device"):
        read_bounded("/dev/zero", "test file", 1 << 20)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(100 << 30)
    with pytest.raises(TooLarge, match="100.0 GiB, over the 1.0 MiB"):
        read_bounded(sparse, "test file", 1 << 20)
    with pytest.raises(MfnError, match="is a directory"):
        regular_file(tmp_path, "test file", 1)
    ok = tmp_path / "ok"
    ok.write_bytes(b"x" * 10)
    assert read_bounded(ok, "test file", 10) == b"x" * 10 and regular_file(ok, "f", 10) == 10


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "a\x1eb", "a\u2028b", "a\x85b"])
def test_one_line_refuses_whatever_ends_a_line_for_anyone(value):
    from mfnpatch.fsutil import one_line

    with pytest.raises(UnsafePath, match="holds a newline, tab or other control character"):
        one_line(value, "value", file="a file", hint="h")
    with pytest.raises(UnsafePath, match="holds whitespace"):
        one_line("a b", "value", file="a file", hint="h", no_space=True)
    assert one_line("a b", "value", file="a file", hint="h") == "a b"


def test_json_files_we_write_are_strict(tmp_path):
    import json

    from mfnpatch.fsutil import atomic_write_json

    atomic_write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf")]})
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "a": None,
        "b": [None],
    }
