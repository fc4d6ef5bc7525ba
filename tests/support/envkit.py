"""Environments for tests: a fake nvidia-smi that prints what it is given, and a tiny locked environment whose one
wheel is built here (so `env create` runs offline, for real)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path


def fake_smi(tmp_path: Path, query: str | None = None, *, rc: int = 0, old_driver: bool = False,
             version: str | None = None) -> str:  # fmt: skip
    """An nvidia-smi that prints ``query`` for --query-gpu and ``version`` (nvidia-smi --version's text, e.g.
    the H200's recorded one) for --version."""
    exe = tmp_path / "nvidia-smi"
    script = "#!/bin/sh\n"
    if version is not None:
        script += f"if [ \"$1\" = --version ]; then cat <<'EOF'\n{version}\nEOF\nexit 0; fi\n"
    if rc:
        script += (
            "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            'Make sure that the latest NVIDIA driver is installed and running."\n'
            f"exit {rc}\n"
        )
    elif old_driver:
        script += (
            'case "$*" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; exit 2;; '
            "esac\n"
            f"cat <<'EOF'\n{query}\nEOF\n"
        )
    else:
        script += f"cat <<'EOF'\n{query}\nEOF\n"
    exe.write_text(script)
    exe.chmod(0o755)
    return str(exe)


def _wheel(tmp_path: Path, name: str = "mfnfixture", version: str = "1.0") -> Path:
    src = tmp_path / f"src-{name}"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text("VALUE = 1\n")
    (src / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n'
    )
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        check=True,
    )
    return next(out.glob(f"{name}-{version}-*.whl"))


def local_env(tmp_path: Path, monkeypatch, digest: str | None = None) -> tuple[str, Path]:
    whl = _wheel(tmp_path)
    root = tmp_path / "envs"
    d = root / "local"
    d.mkdir(parents=True)
    h = digest or hashlib.sha256(whl.read_bytes()).hexdigest()
    (d / "pip.in").write_text("mfnfixture==1.0\n")
    (d / "pip.lock").write_text(f"mfnfixture==1.0 \\\n    --hash=sha256:{h}\n")
    (d / "env.yaml").write_text(json.dumps({
        "schema": 1, "name": "local", "kind": "pip", "description": "a tiny local environment", "why": "tests",
        "python": f"{sys.version_info.major}.{sys.version_info.minor}", "platform": "x86_64-manylinux_2_28",
        "pip": {"requirements": "pip.in", "lock": "pip.lock"}, "mxnet": {"package": "mxnet", "version": "1.9.1"},
        "patches": "mfn",
    }))  # fmt: skip
    monkeypatch.setenv("MFNPATCH_ENVS", str(root))
    return "local", whl.parent
