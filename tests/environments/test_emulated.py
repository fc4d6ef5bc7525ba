"""The emulated ARM environment as an environment: its locks (Debian packages by version and sha256, the aarch64
wheels by hash, ncnn the release this machine runs), creation refusing what does not match its lock, and the
doctor on a created one (MFNPATCH_ARM_ENV; skipped with the reason where absent)."""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

import pytest

from mfnpatch.emulator import MARKER
from mfnpatch.environments.emulated import read_debs
from mfnpatch.environments.spec import load_env, parse_lock

ARM_ENV = os.environ.get("MFNPATCH_ARM_ENV", "")


def test_the_lock_pins_debs_by_version_and_sha256_and_the_same_ncnn():
    env = load_env("arm64-qemu")
    debs = read_debs(env)
    names = {f"{p['name']}:{p['arch']}" for p in debs}
    assert {"qemu-user-static:amd64", "python3.11-minimal:arm64", "libc6:arm64", "libgomp1:arm64"} <= names
    assert all(len(p["sha256"]) == 64 and p["version"] and p["url"].startswith("http://deb.debian.org/") for p in debs)
    wheels = parse_lock(env.dir / "requirements.lock")
    assert set(wheels) == {"ncnn", "numpy"} and all(w["hashes"] for w in wheels.values())
    cpu = parse_lock(load_env("cpu").dir / "requirements.lock")
    assert wheels["ncnn"]["version"] == cpu["ncnn"]["version"]  # the ARM rows measure the x86 engine's release
    assert env.spec.emulated.same_version_as_host == ["ncnn"]


def test_the_cpu_classes_it_emulates_are_deploys_targets():
    from mfnpatch.deploy.registry import ARM_TARGETS, TARGETS

    em = load_env("arm64-qemu").spec.emulated
    assert tuple(em.cpus) == ARM_TARGETS
    for cpu, feats in em.cpus.items():
        assert tuple(feats) == TARGETS[cpu].features  # what the doctor checks is what deploy relies on


def test_a_deb_that_is_not_its_lock_is_refused_and_nothing_is_left(tmp_path, monkeypatch, cli):
    """A --find-links directory (and the cache) holding a file of the right name but other bytes: offline, the
    creation fails naming the package, and the prefix is not left behind."""
    env = load_env("arm64-qemu")
    first = read_debs(env)[1]
    links = tmp_path / "links"
    links.mkdir()
    (links / Path(first["url"]).name).write_bytes(b"not the package")
    monkeypatch.setenv("MFNPATCH_CACHE", str(tmp_path / "cache"))
    r = cli("env", "create", "arm64-qemu", "--prefix", tmp_path / "env", "--find-links", links, "--offline")
    assert r.code == 1 and "is not in --find-links" in r.err, r.err
    assert not (tmp_path / "env").exists()


def test_without_an_environment_the_arm_engines_say_how_to_make_one(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("MFNPATCH_ARM_ENV", str(tmp_path / "none"))
    r = cli("env", "check", "arm64-qemu", "--prefix", tmp_path / "none")
    assert r.code == 1 and "no emulated ARM environment" in r.out + r.err
    assert "mfnpatch env create arm64-qemu --prefix" in r.out + r.err


@pytest.mark.skipif(not (ARM_ENV and (Path(ARM_ENV) / MARKER).is_file()),
                    reason="needs the emulated ARM environment: MFNPATCH_ARM_ENV=DIR (mfnpatch env create "
                    "arm64-qemu --prefix DIR; .ci/run makes it)")  # fmt: skip
def test_the_doctor_probes_each_cpu_class(cli):
    r = cli("env", "check", "arm64-qemu", "--prefix", ARM_ENV, "--json")
    assert r.code == 0, r.out + r.err
    doc = r.json()
    facts = doc["facts"]
    assert set(facts) >= {"cortex-a53", "cortex-a76", "max"}
    for cpu in ("cortex-a53", "cortex-a76", "max"):
        assert facts[cpu]["machine"] == "aarch64" and facts[cpu]["ncnn"] == version("ncnn")
    assert not facts["cortex-a53"]["features"]["asimdhp"] and not facts["cortex-a53"]["ncnn_cpu"]["asimdhp"]
    assert facts["cortex-a76"]["features"]["asimdhp"] and facts["cortex-a76"]["ncnn_cpu"]["asimdhp"]
    assert facts["max"]["features"]["bf16"] and facts["max"]["features"]["i8mm"]
    marker = json.loads((Path(ARM_ENV) / MARKER).read_text())
    assert marker["lock_sha256"] == load_env("arm64-qemu").lock_sha256()
