"""Outputs and options under misuse: special files are never replaced, tolerances are finite."""

from __future__ import annotations

import os

import pytest

from mfnpatch.errors import EXIT_FAILURE, EXIT_USAGE


@pytest.mark.parametrize("kind", ["directory", "symlink", "device"])
def test_outputs_never_replace_a_directory_a_device_or_a_links_target(cli, tmp_path, kind):
    log = tmp_path / "run.log"
    log.write_text("[lfw][2000]Accuracy-Flip: 0.99+-0.01\n[lfw][4000]Accuracy-Flip: 0.995+-0.01\n")
    target = tmp_path / "target.txt"
    target.write_text("precious")
    # a FIFO stands for every special file (never /dev/null: a tool that replaced it would break the machine)
    out = {"directory": tmp_path / "adir", "symlink": tmp_path / "link.md", "device": tmp_path / "fifo"}[kind]
    if kind == "directory":
        out.mkdir()
    elif kind == "symlink":
        out.symlink_to(target)
    else:
        os.mkfifo(out)
    for args in (["log", "plot", log, "-o", out], ["verify", "--log", log, "--stage", "softmax", "--markdown", out]):
        r = cli(*args)
        assert r.code == EXIT_FAILURE, (args, r.out)
        assert f"{out} is a" in r.err and "refused" in r.err
    assert target.read_text() == "precious"
    assert out.is_dir() if kind == "directory" else out.is_symlink() if kind == "symlink" else out.is_fifo()


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1"])
def test_tolerance_must_be_finite_and_not_negative(cli, tmp_path, value):
    log = tmp_path / "l.log"
    log.write_text("[lfw][2000]Accuracy-Flip: 0.99+-0.01\n")
    r = cli("verify", "--log", log, "--reference", "seed-2018-05-09-arcface-test2", "--tolerance", value)
    assert r.code == EXIT_USAGE and "must be a finite number >= 0" in r.err
