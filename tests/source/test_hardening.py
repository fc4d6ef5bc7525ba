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


# --------------------------------------------------------------------------------------------
# Round 2: links in diffs, a tree named through a link, a planted journal


def _link_patch(fx, tmp_path) -> str:
    """A real `git diff` that creates a symlink 'src/ln' and then a file under it."""
    work = tmp_path / "linkwork"
    git(tmp_path, "clone", "-q", str(fx.upstream), str(work))
    git(work, "checkout", "-q", fx.sha)
    os.symlink("/tmp", work / "src" / "ln")
    git(work, "add", "-A")
    diff = git(work, "diff", "--cached")
    assert "new file mode 120000" in diff
    return header(fx.sha, "a link") + diff


def test_a_patch_that_creates_a_symlink_is_refused_at_load(fx, cli, tmp_path):
    write_set(fx.patches, "evil", 1, fx.sha, [("0001-link.patch", _link_patch(fx, tmp_path))])
    r = apply_cli(fx, cli, "evil")
    assert r.code == EXIT_FAILURE and "Traceback" not in r.err
    assert "0001-link.patch" in r.err and "a symlink (mode 120000) is not something a patch set may create" in r.err
    r = apply_cli(fx, cli, "demo")  # the tree (made by the refused apply, or not) is usable
    assert r.code == EXIT_OK, r.err
    assert not (fx.dest / "src" / "ln").exists() and not (fx.dest / ".mfnpatch" / "journal").exists()


def test_a_tree_named_through_a_symlink_takes_the_same_lock(fx, cli, tmp_path):
    from mfnpatch.source.tree import tree_lock

    assert apply_cli(fx, cli, "demo").code == EXIT_OK
    link = tmp_path / "link"
    link.symlink_to(fx.dest)
    with tree_lock(fx.dest):  # held here, as another apply through the real path would hold it
        p = subprocess.run(
            [sys.executable, "-m", "mfnpatch", "status", "--dest", str(link)], capture_output=True, text=True,
            env={**os.environ, "MFNPATCH_LOCK_TIMEOUT": "1"}, timeout=120,
        )  # fmt: skip
    assert p.returncode == EXIT_FAILURE and str(fx.dest.resolve()) in p.stderr, p.stderr


def _plant_journal(fx, tmp_path, files: dict, backup: bytes | None = None, link: bool = False) -> Path:
    state = fx.dest / ".mfnpatch"
    jd = (tmp_path / "elsewhere") if link else state / "journal"
    jd.mkdir(parents=True)
    if backup is not None:
        (jd / "0000").write_bytes(backup)
    (jd / "journal.json").write_text(json.dumps({
        "schema": 1, "txid": "0" * 16, "started": "2026-01-01T00:00:00Z", "pid": 1, "files": files, "dirs": [],
        "state": None,
    }))  # fmt: skip
    if link:
        (state / "journal").symlink_to(jd)
    return jd


@pytest.mark.parametrize("how", ["a journal linked from elsewhere", "an entry naming a directory", "a linked backup"])
def test_a_planted_journal_is_never_followed_and_never_wedges_the_tree(fx, cli, tmp_path, how):
    assert apply_cli(fx, cli, "demo").code == EXIT_OK
    before = (fx.dest / "src" / "train_softmax.py").read_bytes()
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's private file\n")
    if how == "a journal linked from elsewhere":
        jd = _plant_journal(fx, tmp_path, {"src/train_softmax.py": "0000"}, secret.read_bytes(), link=True)
    elif how == "an entry naming a directory":
        jd = _plant_journal(fx, tmp_path, {"src": None})
    else:
        jd = _plant_journal(fx, tmp_path, {"src/train_softmax.py": "0000"})
        (jd / "0000").symlink_to(secret)
    for _ in range(2):  # said once, then gone: the next command is not stopped by it
        r = cli("status", "--dest", fx.dest)
        assert "Traceback" not in r.err and "internal error" not in r.err
        assert r.code in (EXIT_OK, EXIT_FAILURE)
    assert (fx.dest / "src" / "train_softmax.py").read_bytes() == before  # nothing copied over a pinned file
    assert (fx.dest / "src").is_dir() and secret.read_text() == "the user's private file\n"
    assert not (fx.dest / ".mfnpatch" / "journal").exists()
    assert list((fx.dest / ".mfnpatch").glob("journal.refused-*"))
    assert cli("status", "--dest", fx.dest).code == EXIT_OK
    assert cli("unapply", "--dest", fx.dest).code == EXIT_OK


def test_a_huge_hunk_that_does_not_match_fails_at_once_with_a_short_excerpt():
    """40,000 lines and a 20,000-line hunk that matches nowhere: the search is linear, the excerpt bounded."""
    import time as clock

    from mfnpatch.source.diff import ApplyFailure, parse_patch
    from mfnpatch.source.hunks import apply_patch

    big = "".join(f"line {i}\n" for i in range(40_000)).encode()
    hunk = "".join(f"-other {i}\n" for i in range(20_000)) + "+new\n"
    text = "Description: d\nOrigin: o\nApplies-To: x\nLast-Update: 2026-01-01\n---\n--- a/f.py\n+++ b/f.py\n"
    text += f"@@ -1,20000 +1,1 @@\n{hunk}"
    patch = parse_patch(text, "0001.patch", "s@1/0001.patch")
    t0 = clock.monotonic()
    with pytest.raises(ApplyFailure) as e:
        apply_patch(patch, {"f.py": big})
    took = clock.monotonic() - t0
    shown = [e.value.message, *e.value.details]
    assert "the lines it changes are not in the file" in e.value.message
    assert len(shown) < 100 and any("… and 19960 more lines of the hunk" in d for d in shown)
    assert took < 60  # it took 160 s of CPU before the search was linear; a few seconds now (not a timing test)


def test_check_refuses_what_apply_refuses_a_file_under_a_file(fx, cli):
    diff = "--- /dev/null\n+++ b/src/train_softmax.py/evil.py\n@@ -0,0 +1 @@\n+x = 1\n"
    write_set(fx.patches, "under", 1, fx.sha, [("0001-under.patch", header(fx.sha, "under a file") + diff)])
    words = "src/train_softmax.py/evil.py cannot be written: src/train_softmax.py is a file, not a directory"
    r = apply_cli(fx, cli, "under", "--check")  # no tree yet: checked in memory against the pin
    assert r.code == EXIT_FAILURE and words in r.err and not fx.dest.exists()
    assert apply_cli(fx, cli, "demo").code == EXIT_OK
    for extra in (["--check"], []):  # a tree: --check and the real apply say the same
        r = apply_cli(fx, cli, "under", *extra)
        assert r.code == EXIT_FAILURE and words in r.err and "Traceback" not in r.err
    assert (fx.dest / "src" / "train_softmax.py").is_file() and cli("status", "--dest", fx.dest).code == EXIT_OK


@pytest.mark.parametrize(
    "extra, words",
    [
        ("evil: &a [x, x]\nmore: [*a, *a]\n", "YAML anchors and aliases are not read here"),
        ("? [a, b]\n: 1\n", "a mapping key must be a plain value"),
        ("deep: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested more than 64 levels deep"),
        ("big: " + "7" * 5000 + "\n", "a number of 5000 characters"),
    ],
)
def test_a_hostile_set_yaml_is_a_located_error_and_the_other_sets_still_list(fx, cli, extra, words):
    d = fx.patches / "demo" / "1"
    (d / "set.yaml").write_text((d / "set.yaml").read_text() + extra)
    r = cli("patches", "show", "demo", "--json")
    assert r.code == EXIT_FAILURE and words in r.err and "set.yaml:" in r.err and "internal error" not in r.err
    r = cli("patches", "list")
    assert r.code == EXIT_OK and "extra@1" in r.out and "demo@1" in r.out and words in r.out


def test_pin_values_with_a_newline_are_refused_and_manifests_are_serialised(fx, cli, tmp_path):
    out = tmp_path / "pin.yaml"
    for opt in ("--name", "--upstream"):
        r = cli("pin", "record", "--source", fx.upstream, "--commit", fx.sha, "-o", out, opt, "x\ncommit: 0000")
        assert r.code == EXIT_FAILURE and "holds a control character" in r.err and not out.exists()
    r = cli("pin", "record", "--source", fx.upstream, "--commit", fx.sha, "-o", out, "--name", "it's: # a name")
    assert r.code == EXIT_OK, r.err
    from mfnpatch.schema import load_model
    from mfnpatch.source.pin import PinManifest

    m = load_model(out, PinManifest)
    assert m.name == "it's: # a name" and m.commit == fx.sha and len(m.files) > 3


def test_a_source_value_is_printed_as_written(fx, cli, tmp_path):
    r = cli("apply", "-c", fx.short, "--source", str(tmp_path / "no:x:such"), "--dest", fx.dest)
    assert r.code == EXIT_FAILURE and ":x:" in r.err and "❌" not in r.err


def test_output_to_a_closed_pipe_ends_quietly_with_exit_0(fx):
    for args in (["patches", "list"], ["recipe", "plan", "may16"], ["env", "list"], ["--help"]):
        p = subprocess.Popen([sys.executable, "-m", "mfnpatch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.close()  # the reader is gone before the command writes
        err = p.stderr.read()
        assert p.wait(120) == EXIT_OK and err == b"", (args, err)


def test_dest_a_symlink_to_an_empty_or_dangling_directory_makes_the_tree_where_it_points(fx, cli, tmp_path):
    """A symlink names the tree it points to (as `cd` would): the tree is made there, said with its real path, and
    every later command through the link or the real path sees the same tree."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for link, target in ((tmp_path / "to-empty", empty), (tmp_path / "dangling", tmp_path / "not-yet")):
        link.symlink_to(target)
        r = apply_cli(fx, cli, dest=link)
        assert r.code == EXIT_OK, r.err
        assert f"created {target} at {fx.short}" in r.out and "Not a directory" not in r.out + r.err
        assert (target / "src" / "train_softmax.py").is_file() and link.is_symlink()
        for path in (link, target):
            s = cli("status", "--dest", path)
            assert s.code == EXIT_OK and f"tree     {target}" in s.out and "demo@1" in s.out


# --------------------------------------------------------------------------------------------
# Values written into git's sparse-checkout file: one path, one pattern


@pytest.mark.parametrize("bad", ["src\n/*", "src\r\n!/*", "src/*\n/models", "s?c", "[sd]rc", "!src", "#src", "sr c\t",
                                 "src\\"])  # fmt: skip
def test_a_path_that_would_add_a_sparse_pattern_is_refused_and_the_tree_still_works(fx, cli, bad):
    assert apply_cli(fx, cli).code == EXIT_OK
    before = (fx.dest / ".git" / "info" / "sparse-checkout").read_text()
    r = apply_cli(fx, cli, "demo", "--paths", bad)
    assert r.code == 64 and "--paths: path" in r.err and "internal error" not in r.err, r.err
    assert (fx.dest / ".git" / "info" / "sparse-checkout").read_text() == before
    assert cli("status", "--dest", fx.dest).code == EXIT_OK  # not wedged


def test_a_sparse_checkout_file_edited_by_hand_is_one_clear_error(fx, cli):
    assert apply_cli(fx, cli).code == EXIT_OK
    sc = fx.dest / ".git" / "info" / "sparse-checkout"
    sc.write_text(sc.read_text() + "/src/[ab]*\n")
    r = cli("status", "--dest", fx.dest)
    assert r.code == 64 and "sparse-checkout file holds a pattern mfnpatch does not write" in r.err, r.err
    assert f"git -C {fx.dest} sparse-checkout disable" in r.err
