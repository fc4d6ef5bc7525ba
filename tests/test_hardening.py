"""Hostile values, interrupted and concurrent work, paths that escape, ordinary failures: each class of
attack or accident, made for real (real git, real signals, two real processes)."""

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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runner import run as run_fake

from mfnpatch.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from mfnpatch.fsutil import UnsafePath, atomic_write, confined
from mfnpatch.logs.parser import summarize_text
from mfnpatch.recipes.expand import expand
from mfnpatch.recipes.recipe import RecipeError, load_recipe


def apply_cli(fx, cli, series="demo", *extra, dest=None):
    return cli("apply", "-c", fx.short, "--series", series, "--source", fx.upstream, "--dest", dest or fx.dest, *extra)


def strays(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*mfnpatch-new*"))


# --------------------------------------------------------------------------------------------
# 1. Option injection into git


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


# --------------------------------------------------------------------------------------------
# 2. Patch sets that write into the repository's metadata or mfnpatch's state

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


# --------------------------------------------------------------------------------------------
# 3. Planted symlinks and predictable temporary names


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


# --------------------------------------------------------------------------------------------
# 4. Recipes confine what they name


def _recipe_with(tmp_path: Path, old: str, new: str) -> Path:
    text = load_recipe("may16").path.read_text()
    assert old in text, old
    p = tmp_path / "r.yaml"
    p.write_text(text.replace(old, new, 1))
    return p


SOFTMAX_SEED = (
    "    seed_command: >-\n      CUDA_VISIBLE_DEVICES='0' python -u train_softmax.py --network y1 --ckpt 2 "
    "--loss-type 0"
)
SLIM_SEED = "    seed_command: python models_slim"


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("  softmax:\n    title: softmax", "  ../../x:\n    title: softmax",
         "stage name '../../x' is not a plain name"),
        (f"    cwd: src\n{SOFTMAX_SEED}", f"    cwd: ../../outside\n{SOFTMAX_SEED}", "cwd '../../outside' has a '..'"),
        (f"    cwd: deploy\n{SLIM_SEED}", f"    cwd: /etc\n{SLIM_SEED}", "cwd '/etc' is absolute"),
        (f"    cwd: deploy\n{SLIM_SEED}", f"    cwd: .git/hooks\n{SLIM_SEED}", "names .git/"),
        ('env: {CUDA_VISIBLE_DEVICES: "${gpus}", OMP_NUM_THREADS', 'env: {"A;touch /tmp/x": "1", OMP_NUM_THREADS',
         "env key 'A;touch /tmp/x' is not a variable name"),
        ('resources: {gpus_per_node: "${slurm_gpus}", time: "${slurm_time}"}',
         'resources: {gpus_per_node: "${slurm_gpus}", time: "1\\n#SBATCH --wrap=id"}', "is not a Slurm value"),
    ],
)  # fmt: skip
def test_a_recipe_that_names_outside_is_refused_at_load(tmp_path, cli, old, new, message):
    p = _recipe_with(tmp_path, old, new)
    r = cli("recipe", "plan", p)
    assert r.code == EXIT_FAILURE and message in r.err, r.err
    assert str(p) in r.err and ":" in r.err.split(str(p))[1][:6]  # file:line:col


def test_a_resource_value_set_on_the_command_line_cannot_add_a_script_line(tmp_path):
    with pytest.raises(RecipeError, match="is not a Slurm value"):
        expand(load_recipe("may16"), None, {"slurm_time": "1\n#SBATCH --wrap=id"})
    from mfnpatch.cluster.slurm import SlurmError, SlurmOptions, script_text

    with pytest.raises(RecipeError, match="--partition: 'gpu\\\\nid' is not a Slurm value"):
        script_text(tmp_path, "r", "softmax", {}, SlurmOptions(partition="gpu\nid"))
    with pytest.raises(SlurmError, match="one sbatch option on one line"):
        script_text(tmp_path, "r", "softmax", {}, SlurmOptions(sbatch_args=["--qos=x\nid"]))


def test_printed_shell_lines_quote_what_they_print():
    plan = expand(load_recipe("may16"), "smoke", {"gpus": "0; touch /tmp/pwned", "data_dir": "a b/$(id)"})
    ps = plan.stage("softmax")
    line = ps.shell()
    assert "CUDA_VISIBLE_DEVICES='0; touch /tmp/pwned'" in line and "'a b/$(id)'" in line


NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=24)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, cwd=NAMES, key=NAMES, path=NAMES)
def test_random_names_cwds_env_keys_and_set_paths_never_escape(tmp_path, name, cwd, key, path):
    """Whatever a recipe or a patch set says, what is accepted stays inside its root."""
    from mfnpatch.recipes.recipe import ENV_KEY, STAGE_NAME

    root = tmp_path / "root"
    if STAGE_NAME.match(name):
        log = (root / "stages" / f"{name}.log").resolve()
        assert root.resolve() / "stages" in log.parents
    for rel in (cwd, path):
        try:
            ok = confined(rel, "x")
        except UnsafePath:
            continue
        resolved = (root / ok).resolve()
        assert resolved == root.resolve() or root.resolve() in resolved.parents
        assert ".git" not in [p.casefold() for p in Path(ok).parts] and ".mfnpatch" not in Path(ok).parts
    if ENV_KEY.match(key):
        assert key.isascii() and not any(c in key for c in " ;$`\n'\"=")


# --------------------------------------------------------------------------------------------
# 5. Crash recovery: a real kill -9, SIGTERM and SIGINT in the middle of the write phase

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


# --------------------------------------------------------------------------------------------
# 6. Concurrency: two real processes

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


# --------------------------------------------------------------------------------------------
# 7. A refused --resume changes nothing


@pytest.mark.slow
def test_a_refused_resume_writes_nothing(cli, runfx, tmp_path):
    assert run_fake(cli, runfx).code == 0
    rd = runfx.run_dir()
    before = {p: p.read_bytes() for p in rd.rglob("*") if p.is_file()}
    r = cli(
        "recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, "--resume", rd, "--set", "verbose=30"
    )
    assert r.code == EXIT_FAILURE and "with a different provenance" in r.err and "nothing changed" in r.err
    other = tmp_path / "other.yaml"
    other.write_text(runfx.recipe.read_text().replace("name: fake", "name: other"))
    r = cli("recipe", "run", other, "--no-env-check", "--tree", runfx.tree, "--resume", rd)
    assert r.code == EXIT_FAILURE and "is a run of recipe fake, not other" in r.err
    assert {p: p.read_bytes() for p in rd.rglob("*") if p.is_file()} == before
    r = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--resume", rd, "--run-dir", tmp_path / "x")
    assert r.code == EXIT_USAGE and "--resume continues a run in its own directory" in r.err


@pytest.mark.slow
def test_a_second_runner_on_a_running_run_is_refused_and_writes_nothing(cli, runfx):
    """Two real processes: while one runner runs a run, `--resume` of it (or the same --run-dir) is refused at
    once, naming the runner's pid, and the running run's files are left to it."""
    rd = runfx.run_dir()
    argv = [sys.executable, "-m", "mfnpatch", "recipe", "run", str(runfx.recipe), "--no-env-check", "--tree",
            str(runfx.tree), "--set", "verbose=20", "--run-dir", str(rd)]  # fmt: skip
    first = subprocess.Popen(argv, env={**os.environ, "FAKE_DELAY": "0.05"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        log = rd / "stages/softmax.log"
        deadline = time.time() + 60
        while time.time() < deadline and not (log.is_file() and "Saved checkpoint" in log.read_text()):
            time.sleep(0.02)
        assert first.poll() is None, "the first runner ended before the test could race it"
        for extra in (("--resume", rd), ("--run-dir", rd)):
            r = cli("recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, *extra)
            assert r.code == EXIT_FAILURE, r.err
            assert f"is being run by pid {first.pid} on this machine; nothing changed" in r.err, r.err
            assert "recipe status" in r.err and "internal error" not in r.err
        assert first.poll() is None  # the refusals did not disturb the running run
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == EXIT_INTERRUPTED
    r = cli("recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, "--set", "verbose=20",
            "--resume", rd)  # fmt: skip
    assert r.code == EXIT_OK, r.err  # the lock went with the first runner


# --------------------------------------------------------------------------------------------
# 8. Ordinary failures are error lines, not internal errors


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


def test_a_self_referencing_parameter_is_an_error_line(cli):
    r = cli("recipe", "plan", "may16", "--set", "models_dir=${models_dir}/x")
    assert r.code == EXIT_FAILURE and "parameter models_dir refers to itself: models_dir -> models_dir" in r.err
    r = cli("recipe", "plan", "may16", "--set", "models_dir=${ncnn_dir}")
    assert r.code == EXIT_FAILURE and "models_dir -> ncnn_dir -> models_dir" in r.err


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1"])
def test_tolerance_must_be_finite_and_not_negative(cli, tmp_path, value):
    log = tmp_path / "l.log"
    log.write_text("[lfw][2000]Accuracy-Flip: 0.99+-0.01\n")
    r = cli("verify", "--log", log, "--reference", "seed-2018-05-09-arcface-test2", "--tolerance", value)
    assert r.code == EXIT_USAGE and "must be a finite number >= 0" in r.err


def test_apply_check_writes_nothing_even_without_a_tree(fx, cli):
    r = apply_cli(fx, cli, "demo", "--check")
    assert r.code == EXIT_OK, r.err
    assert "would change" in r.out and "was not created" in r.out
    assert not fx.dest.exists()
    assert not list(fx.dest.parent.glob(f".{fx.dest.name}*"))


# --------------------------------------------------------------------------------------------
# 9. A very long line is parsed (and counted) like any other


def test_a_long_line_does_not_hide_the_lines_around_it():
    long = "x" * 250_000 + " something UserWarning: " + "1" * 1000
    text = f"[lfw][2000]Accuracy-Flip: 0.99+-0.01\n{long}\n[lfw][4000]Accuracy-Flip: 0.995+-0.01\n"
    s = summarize_text(text + "[lfw][6000]Accuracy-Flip: " + "9" * 250_000 + "\n")
    assert sorted(s.verifications["lfw"]) == [2000, 4000, 6000] and s.warnings == 1


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
