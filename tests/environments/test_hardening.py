"""Environments under misuse: --force on a directory mfnpatch did not make, a replaced environment that comes back
when its successor fails, a login node without GPUs, an nvidia-smi that prints garbage, a marker that lies."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import pytest
from envkit import fake_smi, local_env

from mfnpatch.environments import doctor
from mfnpatch.environments.create import create_env
from mfnpatch.environments.gpu import query_gpus
from mfnpatch.environments.spec import EnvError

needs_mxnet = pytest.mark.skipif(importlib.util.find_spec("mxnet") is None, reason="MXNet is not installed here")


def test_force_refuses_a_directory_mfnpatch_did_not_make_and_deletes_nothing(tmp_path, monkeypatch, cli):
    name, wheels = local_env(tmp_path, monkeypatch)
    project = tmp_path / "my-project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "work.py").write_text("precious\n")
    for force in ([], ["--force"]):
        r = cli("env", "create", name, "--prefix", project, "--find-links", wheels, "--offline", *force)
        assert r.code == 1 and "is not an environment mfnpatch made" in r.err and "nothing deleted" in r.err
        assert (project / "src" / "work.py").read_text() == "precious\n"
        assert sorted(p.name for p in tmp_path.iterdir() if "mfnpatch-old" in p.name) == []
    link = tmp_path / "link"
    link.symlink_to(project)
    with pytest.raises(EnvError, match="is a symlink: refused"):
        create_env(name, link, find_links=wheels, offline=True, force=True)
    assert (project / "src" / "work.py").exists()


@pytest.mark.slow  # real pip installs into new venvs
def test_force_replaces_an_environment_only_once_the_new_one_is_built(tmp_path, monkeypatch):
    name, wheels = local_env(tmp_path, monkeypatch)
    prefix = tmp_path / "env"
    create_env(name, prefix, find_links=wheels, offline=True)
    (prefix / "kept-by-the-old-one").write_text("old\n")
    marker = (prefix / "mfnpatch-env.json").read_bytes()
    # the new build fails (its lock's hash no longer matches the wheel): the old environment is back, whole
    lock = tmp_path / "envs" / name / "pip.lock"
    good = lock.read_text()
    lock.write_text(good.split("--hash=sha256:")[0] + "--hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(EnvError, match="failed"):
        create_env(name, prefix, find_links=wheels, offline=True, force=True)
    assert (prefix / "kept-by-the-old-one").read_text() == "old\n" and (
        prefix / "mfnpatch-env.json"
    ).read_bytes() == marker
    assert os.access(prefix / "bin" / "python", os.X_OK)
    assert [p.name for p in tmp_path.iterdir() if "mfnpatch-old" in p.name] == []
    # and with a good lock it is replaced
    lock.write_text(good)
    create_env(name, prefix, find_links=wheels, offline=True, force=True)
    assert not (prefix / "kept-by-the-old-one").exists() and (prefix / "mfnpatch-env.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if "mfnpatch-old" in p.name] == []


@needs_mxnet
def test_env_create_on_a_machine_without_gpus_succeeds_with_a_warning(tmp_path, gpu_envs, monkeypatch, cli):
    """Building a GPU environment on a login node is the normal way: exit 0 with the doctor's findings for this
    machine as a warning; `env check` keeps the strict verdict. The environment checked is this interpreter's (a
    real one whose packages satisfy the test lock), so only the build step is stood in for."""
    import sys
    from pathlib import Path

    import mfnpatch.environments.create as creating

    spec = gpu_envs / "gpu101" / "env.yaml"
    spec.write_text(spec.read_text().replace('"mxnet-cu101"', '"mxnet"'))  # the build installed here
    monkeypatch.setenv("MFNPATCH_NVIDIA_SMI", str(tmp_path / "absent" / "nvidia-smi"))
    monkeypatch.setattr(creating, "create_env", lambda *a, **k: Path(sys.prefix))
    r = cli("env", "create", "gpu101", "--prefix", tmp_path / "ignored")
    assert r.code == 0, r.err
    assert "warning: the environment is complete, but this machine cannot run it: CANNOT RUN: nvidia-smi" in r.err
    assert "check it where it will run: mfnpatch env check gpu101" in r.err
    assert cli("env", "check", "gpu101", "--prefix", sys.prefix).code == 1
    # anything wrong with the environment itself still fails the create
    lock = gpu_envs / "gpu101" / "pip.lock"
    lock.write_text(lock.read_text() + f"nosuchpackage==1.0 \\\n    --hash=sha256:{'1' * 64}\n")
    r = cli("env", "create", "gpu101", "--prefix", tmp_path / "ignored")
    assert r.code == 1 and "warning" not in r.err and "nosuchpackage" in r.out


@pytest.mark.parametrize(
    "output",
    [
        b"\xff\xfe\x00garbage\x80\x81\n",
        b"index, name, compute_cap, driver_version\n0, , x.y, \n",
        b"\n\n\n",
        b"a," * 5000,
    ],
)
def test_nvidia_smi_printing_garbage_is_a_finding_not_a_crash(tmp_path, gpu_envs, cli, output):
    raw = tmp_path / "out.bin"
    raw.write_bytes(output)
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat '{raw}'\n")
    smi.chmod(0o755)
    rep = query_gpus(str(smi))
    assert not rep.found and rep.problem and "nvidia-smi" in rep.problem
    r = cli("env", "check", "gpu101", "--nvidia-smi", smi)
    assert r.code == 1 and "CANNOT RUN" in r.out and "Traceback" not in r.err


def test_a_marker_from_another_lock_or_truncated_is_named(tmp_path, gpu_envs):
    """The packages installed are checked against the lock; the marker says which lock made the environment, and
    a marker that is unreadable or from another lock is a finding, never 'ok, locked' on its word."""
    prefix = tmp_path / "env"
    prefix.mkdir()
    (prefix / doctor.MARKER).write_text('{"name": "gpu101", "lock_sha')  # truncated
    assert doctor.read_marker(prefix) == "unreadable"
    (prefix / doctor.MARKER).write_text(json.dumps([1, 2]))
    assert doctor.read_marker(prefix) == "unreadable"
    (prefix / doctor.MARKER).write_text(json.dumps({"name": "gpu101", "lock_sha256": "ab" * 32}))
    assert doctor.read_marker(prefix) == {"name": "gpu101", "lock_sha256": "ab" * 32}

    smi = fake_smi(tmp_path, "index, name, compute_cap, driver_version\n0, Tesla V100, 7.0, 470.57.02")
    env, facts = doctor.gather("gpu101", None, smi)
    for marker, ok, said in (
        ("unreadable", False, "unreadable or incomplete"),
        ({"name": "gpu101", "lock_sha256": "ab" * 32}, False, f"the gpu101 lock is now {facts.lock_sha256[:12]}"),
        ({"name": "cpu", "lock_sha256": facts.lock_sha256}, False, "from the cpu lock"),
        ({"name": "gpu101", "lock_sha256": facts.lock_sha256}, True, "made by env create from the gpu101 lock"),
    ):
        doc = doctor.diagnose(env, dataclasses.replace(facts, marker=marker))
        found = next(f for f in doc.findings if f.what == "marker")
        assert found.ok is ok and said in found.detail, found.detail
        if not ok:
            assert not doc.can_run and found.fix and "env create" in found.fix
    doc = doctor.diagnose(env, dataclasses.replace(facts, marker=None))  # not made by env create: nothing to say
    assert not any(f.what == "marker" for f in doc.findings)
