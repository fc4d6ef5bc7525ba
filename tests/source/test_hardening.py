"""Hostile values, interrupted and concurrent work, paths that escape, ordinary failures of the source tree: each class
of attack or accident, made for real (real git, real signals, two real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import git, header, write_set

from mfnpatch.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK


def apply_cli(fx, cli, series="demo", *extra, dest=None):
    return cli("apply", "-c", fx.short, "--series", series, "--source", fx.upstream, "--dest", dest or fx.dest, *extra)


def strays(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*mfnpatch-new*"))


@pytest.mark.parametrize("how", ["--source", "MFNPATCH_UPSTREAM", "manifest"])
def test_a_source_that_looks_like_an_option_never_reaches_git(fx, cli, tmp_path, monkeypatch, how):
    pwned = tmp_path / "PWNED"
    evil = f"--upload-pack=touch {pwned};://x"
    if how == "--source":
        r = cli("apply", "-c", fx.short, "--source", evil, "--dest", fx.dest)
    elif how == "MFNPATCH_UPSTREAM":
        monkeypatch.setenv("MFNPATCH_UPSTREAM", evil)
        r = cli("apply", "-c", fx.short, "--dest", fx.dest)
    else:
        pin = next(fx.pins.glob("*.yaml"))
        pin.write_text(
            pin.read_text().replace("upstream: https://example.invalid/insightface.git", f"upstream: '{evil}'")
        )
        assert evil in pin.read_text()
        r = cli("apply", "-c", fx.short, "--dest", fx.dest)
    assert r.code == EXIT_FAILURE
    assert "starts with '-': refused (another program would read it as an option)" in r.err
    assert not pwned.exists() and not fx.dest.exists()
    # pin record takes the same road
    r = cli("pin", "record", "--source", evil, "--commit", fx.sha, "-o", tmp_path / "p.yaml")
    assert r.code == EXIT_FAILURE and "refused" in r.err and not pwned.exists()


def test_a_path_that_starts_with_a_dash_is_fetched_as_a_path(fx, cli, tmp_path, monkeypatch):
    """`./-name` (a real directory whose name starts with '-') works: git gets a file:// URL after '--'."""
    dashed = tmp_path / "-upstream"
    git(tmp_path, "clone", "-q", "--bare", str(fx.upstream), str(dashed))
    monkeypatch.chdir(tmp_path)
    r = cli("apply", "-c", fx.short, "--series", "demo", "--source", "./-upstream", "--dest", fx.dest)
    assert r.code == EXIT_OK, r.err


FSMONITOR = "[core]\n\tfsmonitor = touch {marker}\n"


@pytest.mark.parametrize(
    "path", [".git/config", ".git/info/attributes", ".mfnpatch/state.json", "src/.git/hooks/post-checkout", ".GIT/x"]
)
@pytest.mark.parametrize("force", [False, True])
def test_a_patch_set_never_writes_git_metadata_or_state(fx, cli, tmp_path, path, force):
    marker = tmp_path / "fsmonitor-ran"
    body = FSMONITOR.format(marker=marker).splitlines()
    diff = f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(body)} @@\n" + "".join(f"+{ln}\n" for ln in body)
    write_set(fx.patches, "case", 1, fx.sha, [("0001-evil.patch", header(fx.sha) + diff)])
    fx.prepare()
    before = (fx.dest / ".git/config").read_bytes()
    r = apply_cli(fx, cli, "case", *(["--force"] if force else []))
    assert r.code == EXIT_FAILURE
    assert f"path '{path}'" in r.err and "refused" in r.err
    assert (fx.dest / ".git/config").read_bytes() == before
    assert not (fx.dest / path).exists() or path == ".git/config"
    git(fx.dest, "status")  # git runs no command planted by a patch
    assert not marker.exists()


def test_a_hand_edited_state_cannot_make_unapply_delete_outside(fx, cli, tmp_path):
    fx.apply("demo")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    state_path = fx.dest / ".mfnpatch/state.json"
    for bad in ("../victim.txt", str(victim), ".git/config"):
        state = json.loads(state_path.read_text())
        first = next(iter(state["files"]))
        state["files"] = {bad: state["files"][first]}
        state_path.write_text(json.dumps(state))
        r = cli("unapply", "--dest", fx.dest, "--force")
        assert r.code == EXIT_FAILURE, r.out
        assert "state.json" in r.err and "refused" in r.err
        assert victim.read_text() == "keep me"
    assert (fx.dest / ".git/config").is_file()


def test_a_symlink_planted_at_the_old_temporary_name_is_not_followed(fx, cli, tmp_path):
    fx.prepare()
    outside = tmp_path / "outside.py"
    outside.write_text("outside")
    for rel in ("src/train_softmax.py", "src/image_iter.py", "deploy/model_slim.py"):
        target = fx.dest / rel
        (target.parent / f".{target.name}.mfnpatch-new").symlink_to(outside)
    r = apply_cli(fx, cli, "demo")
    assert r.code == EXIT_OK, r.err
    assert outside.read_text() == "outside"
    for rel in ("src/train_softmax.py", "src/image_iter.py", "deploy/model_slim.py"):
        assert not (fx.dest / rel).is_symlink()
    assert cli("status", "--dest", fx.dest).code == EXIT_OK


def test_a_symlinked_state_folder_is_refused(fx, cli, tmp_path):
    fx.prepare()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (fx.dest / ".mfnpatch").symlink_to(elsewhere)
    r = apply_cli(fx, cli, "demo")
    assert r.code == EXIT_FAILURE and ".mfnpatch is a symlink" in r.err
    assert list(elsewhere.iterdir()) == []
    assert git(fx.dest, "status", "--porcelain", "--untracked-files=no") == ""


def test_a_symlink_planted_at_the_new_trees_temporary_name_is_not_followed(fx, cli, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for pid in range(os.getpid() - 5, os.getpid() + 5):  # the old, predictable name
        (fx.dest.parent / f".{fx.dest.name}.mfnpatch-tmp-{pid}").symlink_to(elsewhere)
    assert apply_cli(fx, cli, "demo").code == EXIT_OK
    assert list(elsewhere.iterdir()) == []


KILL_AFTER_FIRST_TREE_WRITE = """
import os, signal, sys
real = os.replace
sent = []
def replace(src, dst, *a, **k):
    r = real(src, dst, *a, **k)
    if not sent and "{tree}" in str(dst) and "/.mfnpatch/" not in str(dst) and str(dst).endswith(".py"):
        sent.append(1)  # one signal, right after the first patched file is in place
        os.kill(os.getpid(), signal.{sig})
        signal.pause() if signal.{sig} == signal.SIGKILL else None
    return r
os.replace = replace
from mfnpatch.cli import main
main(sys.argv[1:])
"""


def _apply_killed(fx, sig: str, series: str = "demo") -> subprocess.CompletedProcess:
    code = KILL_AFTER_FIRST_TREE_WRITE.replace("{tree}", str(fx.dest)).replace("{sig}", sig)
    return subprocess.run(
        [sys.executable, "-c", code, "apply", "-c", fx.short, "--series", series, "--source", str(fx.upstream),
         "--dest", str(fx.dest)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _pinned(fx) -> bool:
    return git(fx.dest, "status", "--porcelain", "--untracked-files=no") == ""


def test_kill_9_in_the_write_phase_is_rolled_back_by_the_next_command(fx, cli):
    fx.prepare()
    r = _apply_killed(fx, "SIGKILL")
    assert r.returncode == -signal.SIGKILL
    assert not _pinned(fx)  # one file was patched when it died
    assert (fx.dest / ".mfnpatch/journal/journal.json").is_file()
    st = cli("status", "--dest", fx.dest)
    assert st.code == EXIT_OK, st.err
    assert "rolled back a write phase interrupted at" in st.err and "file(s) put back as they were" in st.err
    assert _pinned(fx) and strays(fx.dest) == [] and not (fx.dest / ".mfnpatch/journal").exists()
    assert "pinned tree" in st.out or "no patch" in st.out or "nothing applied" in st.out.lower() or st.out
    assert apply_cli(fx, cli, "demo").code == EXIT_OK


def test_kill_9_while_switching_sets_restores_the_previous_sets(fx, cli):
    fx.apply("demo")
    before = {p: (fx.dest / p).read_bytes() for p in ("src/train_softmax.py", ".mfnpatch/state.json")}
    r = _apply_killed(fx, "SIGKILL", "demo,extra")
    assert r.returncode == -signal.SIGKILL
    r = apply_cli(fx, cli, "demo")  # the next apply first rolls back, then has nothing to do
    assert "rolled back a write phase" in r.err and r.code == 2, r.err
    assert {p: (fx.dest / p).read_bytes() for p in before} == before and strays(fx.dest) == []


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_roll_back_at_once_and_leave_no_stray_file(fx, sig):
    fx.prepare()
    r = _apply_killed(fx, sig)
    assert r.returncode == EXIT_INTERRUPTED, r.stderr
    assert "interrupted" in r.stderr
    assert _pinned(fx) and strays(fx.dest) == [] and not (fx.dest / ".mfnpatch/journal").exists()
    assert not (fx.dest / ".mfnpatch/state.json").exists()


SLOW_APPLY = """
import os, sys, time
real = os.replace
def replace(src, dst, *a, **k):
    if "{tree}" in str(dst) and str(dst).endswith(".py"):
        time.sleep(1.5)
    return real(src, dst, *a, **k)
os.replace = replace
from mfnpatch.cli import main
main(sys.argv[1:])
"""


def _spawn_apply(fx, series: str, dest: Path, slow: bool) -> subprocess.Popen:
    args = ["apply", "-c", fx.short, "--series", series, "--source", str(fx.upstream), "--dest", str(dest)]
    cmd = [sys.executable, "-c", SLOW_APPLY.replace("{tree}", str(dest))] if slow else [sys.executable, "-m",
                                                                                          "mfnpatch"]  # fmt: skip
    return subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_applies_on_one_tree_take_turns(fx, cli):
    fx.prepare()
    a = _spawn_apply(fx, "demo", fx.dest, slow=True)
    lock = fx.dest.parent / f".{fx.dest.name}.mfnpatch-lock"
    deadline = time.time() + 30
    while time.time() < deadline and not (fx.dest / ".mfnpatch/journal/journal.json").exists():
        time.sleep(0.05)
    assert lock.read_text().strip() == str(a.pid)
    b = _spawn_apply(fx, "demo,extra", fx.dest, slow=False)
    ob, eb = b.communicate(timeout=120)
    oa, ea = a.communicate(timeout=120)
    assert a.returncode == EXIT_OK, ea
    assert b.returncode == EXIT_OK, eb
    assert f"waiting for pid {a.pid} to finish with the tree {fx.dest}" in eb
    state = json.loads((fx.dest / ".mfnpatch/state.json").read_text())
    assert [s["name"] for s in state["sets"]] == ["demo", "extra"]
    assert cli("status", "--dest", fx.dest).code == EXIT_OK  # the files are what the state says


def test_two_applies_creating_one_new_tree_on_a_cold_cache(fx, tmp_path):
    procs = [_spawn_apply(fx, "demo", fx.dest, slow=False) for _ in range(2)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [EXIT_OK, 2], results  # one applied, the other found it applied
    others = [_spawn_apply(fx, "demo", tmp_path / f"t{i}", slow=False) for i in range(2)]  # one cache, two trees
    assert [p.wait(timeout=120) for p in others] == [EXIT_OK, EXIT_OK]


def test_a_read_only_destination_is_an_error_line(fx, cli):
    if not Path("/proc/sys").is_dir():
        pytest.skip("no read-only /proc/sys here")
    r = apply_cli(fx, cli, "demo", dest=Path("/proc/sys/mfnpatch-tree"))
    assert r.code == EXIT_FAILURE and "internal error" not in r.err
    assert r.err.startswith("error: ") and "hint: " in r.err


def test_an_immutable_file_is_an_error_line(fx, cli):
    fx.prepare()
    target = fx.dest / "src/train_softmax.py"
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here (file system or privileges)")
    try:
        r = apply_cli(fx, cli, "demo")
        assert r.code == EXIT_FAILURE and "internal error" not in r.err and "Operation not permitted" in r.err
        assert "lsattr" in r.err and strays(fx.dest) == []
    finally:
        subprocess.run(["chattr", "-i", str(target)])
    assert _pinned(fx)


@pytest.mark.parametrize("damage", ["truncated objects", "missing HEAD", "tampered objects"])
def test_a_corrupt_cache_is_fetched_again(fx, cli, tmp_path, damage):
    assert apply_cli(fx, cli, "demo").code == EXIT_OK
    cache = Path(os.environ["MFNPATCH_CACHE"]) / "git"
    # a small fetch is kept as loose objects, a large one as a pack: damage whichever holds the commit
    objects = [p for p in (cache / "objects").rglob("*") if p.is_file() and p.parent.name not in ("info",)
               and not p.name.endswith(".idx")]  # fmt: skip
    assert objects
    if damage == "missing HEAD":
        (cache / "HEAD").unlink()
    for obj in objects if damage != "missing HEAD" else []:
        obj.chmod(0o644)
        data = bytearray(obj.read_bytes())
        if damage == "truncated objects":
            data = data[: len(data) // 2]
        else:
            for i in range(2, len(data), 7):
                data[i] ^= 0xFF
        obj.write_bytes(bytes(data))
    r = apply_cli(fx, cli, "demo", dest=tmp_path / "second")
    assert r.code == EXIT_OK, r.err
    assert "the cache was corrupt" in r.err and "fetched again" in r.err
    assert list(cache.parent.glob("git.corrupt-*"))


def test_non_utf8_series_and_sums_are_error_lines(fx, cli):
    for name in ("series", "SHA256SUMS"):
        d = write_set(fx.patches, "case", 1, fx.sha, [("0001-x.patch", header(fx.sha) + "--- a/x\n+++ b/x\n")])
        (d / name).write_bytes((d / name).read_bytes() + b"\xff\xfe oops\n")
        r = apply_cli(fx, cli, "case")
        assert r.code == EXIT_FAILURE and "internal error" not in r.err
        assert f"case@1/{name}:" in r.err and "not UTF-8 text" in r.err


def test_apply_check_writes_nothing_even_without_a_tree(fx, cli):
    r = apply_cli(fx, cli, "demo", "--check")
    assert r.code == EXIT_OK, r.err
    assert "would change" in r.out and "was not created" in r.out
    assert not fx.dest.exists()
    assert not list(fx.dest.parent.glob(f".{fx.dest.name}*"))
