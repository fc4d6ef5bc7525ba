"""The command line as users call it: exit codes, --json, --help, --debug, and the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mfnpatch.errors import EXIT_FAILURE, EXIT_NOTHING_TO_DO, EXIT_OK, EXIT_USAGE


def _apply(fx, cli, *extra):
    return cli("apply", "-c", fx.short, "--series", "demo", "--source", fx.upstream, "--dest", fx.dest, *extra)


def test_exit_codes_apply_twice_unapply_twice(fx, cli):
    assert _apply(fx, cli).code == EXIT_OK
    r = _apply(fx, cli)
    assert r.code == EXIT_NOTHING_TO_DO and "(nothing to do)" in r.out
    assert cli("unapply", "--dest", fx.dest).code == EXIT_OK
    r = cli("unapply", "--dest", fx.dest)
    assert r.code == EXIT_NOTHING_TO_DO and "no patches applied" in r.out


def test_json_outputs(fx, cli):
    r = _apply(fx, cli, "--json")
    assert r.code == 0
    d = r.json()
    assert d["action"] == "applied" and d["created"] and d["sets"] == ["demo@1"]
    assert d["pin"]["commit"] == fx.sha and d["fetch"]["from_cache"] is False
    assert d["exit_code"] == 0
    d = _apply(fx, cli, "--json").json()
    assert d["action"] == "nothing" and d["exit_code"] == EXIT_NOTHING_TO_DO
    s = cli("status", "--dest", fx.dest, "--json").json()
    assert s["sets"] == ["demo@1"] and s["clean"] and {f["state"] for f in s["files"]} == {"patched"}
    # errors are JSON too, on stdout, with the same text as stderr
    r = cli("apply", "-c", "deadbee", "--dest", fx.dest, "--json")
    assert r.code == EXIT_FAILURE
    e = r.json()
    assert e["error"] == "commit deadbee is not pinned" and e["kind"] == "PinError" and "pinned commits" in e["hint"]
    u = cli("unapply", "--dest", fx.dest, "--json").json()
    assert u["action"] == "unapplied" and u["removed"] == ["demo@1"]


def test_status_exit_code_reflects_drift(fx, cli):
    _apply(fx, cli)
    assert cli("status", "--dest", fx.dest).code == EXIT_OK
    (fx.dest / "src/image_iter.py").write_text("changed\n")
    r = cli("status", "--dest", fx.dest)
    assert r.code == 1 and "drifted" in r.out and "src/image_iter.py changed outside mfnpatch" in r.err
    r = _apply(fx, cli)
    assert r.code == EXIT_FAILURE and "refusing to overwrite" in r.err and "--force" in r.err
    r = _apply(fx, cli, "--force")
    assert r.code == EXIT_OK and "saved" in r.out


def test_diff_and_check(fx, cli):
    fx.prepare()
    r = cli("diff", "--dest", fx.dest)
    assert r.code == EXIT_NOTHING_TO_DO and "no patches applied" in r.err
    r = _apply(fx, cli, "--check")
    assert r.code == EXIT_OK and "would change" in r.out
    assert not (fx.dest / ".mfnpatch").exists()
    _apply(fx, cli)
    r = cli("diff", "--dest", fx.dest)
    assert r.code == EXIT_OK and "+    #_bias = mx.symbol.Variable('fc7_bias'" in r.out


def test_usage_errors_exit_64(cli):
    r = cli("apply")
    assert r.code == EXIT_USAGE and "--commit" in r.err and "mfnpatch apply --help" in r.err
    assert cli("apply", "-c", "4bc8132", "--fuzz", "9").code == EXIT_USAGE
    assert cli("no-such-command").code == EXIT_USAGE
    assert cli().code == EXIT_USAGE


def test_missing_tree(cli, tmp_path):
    r = cli("status", "--dest", tmp_path / "nope")
    assert r.code == EXIT_FAILURE
    assert "no such tree" in r.err and "mfnpatch apply --commit 4bc8132 --dest" in r.err


@pytest.mark.parametrize(
    "args",
    [[], ["apply"], ["unapply"], ["status"], ["diff"], ["patches"], ["patches", "list"], ["pin", "record"]],
)
def test_help_teaches(cli, args):
    r = cli(*args, "--help")
    assert r.code == EXIT_OK
    assert "Usage: mfnpatch" in r.out


def test_apply_help_names_the_essentials(cli):
    text = cli("apply", "--help").out
    for word in ("--commit", "--series", "--source", "MFNPATCH_UPSTREAM", "--dest", "--fuzz", "--force", "--check"):
        assert word in text


def test_debug_shows_traceback(fx, cli):
    r = cli("--debug", "apply", "-c", "deadbee", "--dest", fx.dest)
    assert r.code == EXIT_FAILURE and "Traceback" in r.err
    r = cli("apply", "-c", "deadbee", "--dest", fx.dest)
    assert "Traceback" not in r.err


def test_bundled_patches_list_and_show(cli):
    rows = cli("patches", "list", "--json").json()
    assert [r["set"] for r in rows] == ["mbf@1", "mfn@1", "py3@1", "torch-cpu@1"]
    mbf, mfn, py3, tcpu = rows
    assert tcpu["opt_in"] and tcpu["after"] == ["mbf"] and not mbf["opt_in"] and len(mbf["patches"]) == 5
    assert [p["name"] for p in mfn["patches"]] == [
        "0001-fc7-no-bias.patch",
        "0002-y1-uniform-init.patch",
        "0003-fc7-wd-mult-default-10.patch",
    ]
    assert {p["files"][0] for p in mfn["patches"]} == {"src/train_softmax.py"}
    assert py3["opt_in"] and py3["after"] == ["mfn"] and len(py3["patches"]) == 6
    r = cli("patches", "show", "mfn@1")
    assert r.code == 0 and "Origin: vendor, seed step 2" in r.out and "Applies-To: 4bc8132" in r.out
    show = cli("patches", "show", "py3", "--json").json()
    assert all(set(p["header"]) >= {"Description", "Origin", "Applies-To", "Last-Update"} for p in show["patches"])
    pins = {p["commit"][:7]: p for p in cli("pin", "list", "--json").json()}
    assert set(pins) == {"4bc8132", "0159b24"} and pins["4bc8132"]["files"] == 95 and pins["0159b24"]["files"] == 1351


def test_patches_lock_writes_sums(fx, cli):
    d = fx.patches / "demo" / "1"
    (d / "SHA256SUMS").unlink()
    r = cli("apply", "-c", fx.short, "--series", "demo", "--source", fx.upstream, "--dest", fx.dest)
    assert r.code == EXIT_FAILURE and "no SHA256SUMS" in r.err and "mfnpatch patches lock" in r.err
    assert cli("patches", "lock", d).code == EXIT_OK
    assert (d / "SHA256SUMS").read_text().count("\n") == 3


def test_console_script_runs(fx, tmp_path):
    """The installed entry point, from another directory, as a user runs it."""
    env = {**os.environ, "MFNPATCH_PINS": str(fx.pins), "MFNPATCH_PATCHES": str(fx.patches)}
    exe = [sys.executable, "-m", "mfnpatch"]
    r = subprocess.run(
        [*exe, "apply", "-c", fx.short, "--series", "demo", "--source", str(fx.upstream), "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tree"] == str(tmp_path / "insightface")
    r = subprocess.run([*exe, "status", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["sets"] == ["demo@1"]


def test_default_series_keeps_what_the_tree_has(fx, cli):
    assert cli("apply", "-c", fx.short, "--series", "demo,extra", "--source", fx.upstream, "--dest", fx.dest).code == 0
    r = cli("apply", "-c", fx.short, "--dest", fx.dest)
    assert r.code == EXIT_NOTHING_TO_DO and "demo@1, extra@1" in r.out
    (fx.dest / "src/image_iter.py").write_text("drift\n")
    r = cli("apply", "-c", fx.short, "--dest", fx.dest, "--force", "--json")
    assert r.code == EXIT_OK and r.json()["sets"] == ["demo@1", "extra@1"]


def test_long_work_prints_progress_lines_with_an_eta_where_no_terminal_is_attached(monkeypatch, capsys):
    """Outside a terminal (a log file, a CI job) a task says when it starts, how far it is every
    MFNPATCH_PROGRESS_EVERY seconds with an ETA, and when it ends."""
    import sys
    import time

    from mfnpatch.cli.app import progress_bar

    app = sys.modules["mfnpatch.cli.app"]
    monkeypatch.setattr(app, "PROGRESS_EVERY", 0.05)
    with progress_bar(True, lines=True) as progress:
        progress("lfw · mxnet", 0, 100)
        time.sleep(0.06)
        progress("lfw · mxnet", 40, 100)
        progress("lfw · mxnet", 100, 100)
    err = capsys.readouterr().err
    assert "lfw · mxnet: 0/100 …" in err and "lfw · mxnet: 40/100 in" in err and "s to go" in err
    assert "lfw · mxnet: 100 in" in err
