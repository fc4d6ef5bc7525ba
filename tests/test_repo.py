"""The repository keeps its promises: README's commands are what CI and the quickstart run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"\n\n((?:    .+\n)+)", text).group(1)
    return [ln.strip().split("  #")[0].strip() for ln in block.splitlines()]


def test_readme_opens_with_the_two_commands():
    setup, tests = readme_commands()[:2]
    assert setup == "./quickstart.sh"
    assert tests == ".venv/bin/python -m pytest -q"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    _, tests = readme_commands()[:2]
    assert tests in ci.splitlines()
    assert "-eq 5" in ci  # pytest's "no tests collected" is a failure


def test_scripts_are_executable():
    for p in (ROOT / ".ci" / "run", ROOT / "quickstart.sh"):
        assert p.stat().st_mode & 0o111, p


def test_ci_and_quickstart_install_the_cpu_lock():
    for script in (ROOT / ".ci" / "run", ROOT / "quickstart.sh"):
        text = script.read_text()
        assert "--require-hashes -r envs/cpu/requirements.lock" in text, script
        assert "--require-hashes --no-deps -r envs/cpu/nodeps.lock" in text, script


def test_quickstart_runs_the_smoke_recipe_and_checks_its_arguments():
    import subprocess

    text = (ROOT / "quickstart.sh").read_text()
    assert "recipe run may16 --profile smoke" in text and "apply --commit 4bc8132" in text
    bad = subprocess.run([str(ROOT / "quickstart.sh"), "--sorce", "x"], capture_output=True, text=True)
    assert bad.returncode == 64 and "unknown argument --sorce" in bad.stderr
    ok = subprocess.run([str(ROOT / "quickstart.sh"), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--source" in ok.stdout
