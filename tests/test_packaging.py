"""The wheel carries patches/, insightface_pin/, recipes/ and envs/, and the installed tool finds them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mfnpatch.resources import data_dir
from mfnpatch.source.patchset import Catalog
from mfnpatch.source.pin import load_pins

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_sets_are_valid_and_made_for_the_pin():
    pins = {p.commit for p in load_pins()}
    cat = Catalog.scan(data_dir("patches"))
    assert set(cat.versions) == {"mfn", "py3", "mbf", "torch-cpu"}  # two lineages, two pins
    for name, versions in cat.versions.items():
        for v in versions:
            s = cat.load(name, v)  # checks SHA256SUMS, DEP-3 headers, Applies-To
            assert s.manifest.applies_to in pins
            for p in s.patches:
                assert p.header.fields["Origin"].startswith("vendor")
                assert p.header.fields["Forwarded"] == "not-needed"


def test_mfn_touches_only_train_softmax():
    s = Catalog.scan(data_dir("patches")).load("mfn")
    assert s.paths == ["src/train_softmax.py"]
    assert [len(p.files[0].hunks) for p in s.patches] == [1, 1, 1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("mfnpatch-*.whl")
    return whl


def test_wheel_contains_the_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in (
        "mfnpatch/_data/patches/mfn/1/series",
        "mfnpatch/_data/patches/mfn/1/SHA256SUMS",
        "mfnpatch/_data/patches/py3/1/0004-load-bin-py2-pickles.patch",
        "mfnpatch/_data/insightface_pin/4bc8132.yaml",
        "mfnpatch/cli/__init__.py",
        "mfnpatch/runs/seedhook/sitecustomize.py",  # the run seed's start-up hook ships with the package
    ):
        assert rel in names, rel
    assert not any(n.startswith("tests/") for n in names)


def test_installed_tool_finds_its_data_from_any_directory(wheel, tmp_path):
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFNPATCH_")}
    env["PYTHONPATH"] = str(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import mfnpatch.resources as r; print(r.data_dir('patches')); print(r.__file__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    found, module = r.stdout.split()
    assert Path(found) == site / "mfnpatch" / "_data" / "patches" and module.startswith(str(site))
    r = subprocess.run(
        [sys.executable, "-m", "mfnpatch", "patches", "list", "--json"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert [s["set"] for s in json.loads(r.stdout)] == ["mbf@1", "mfn@1", "py3@1", "torch-cpu@1"]
