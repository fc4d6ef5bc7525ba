"""Where bundled data lives: patches/, insightface_pin/, recipes/, envs/.

An installed wheel carries them under ``mfnpatch/_data/``; a source checkout (or an editable
install) has them at the top of the repository. Environment variables override each one, which
is how tests point the tool at fixture pins and patch sets.
"""

from __future__ import annotations

import os
from pathlib import Path

from mfnpatch.errors import MfnError

_PKG = Path(__file__).resolve().parent

# name -> environment variable that overrides it
OVERRIDES = {
    "patches": "MFNPATCH_PATCHES",
    "insightface_pin": "MFNPATCH_PINS",
    "recipes": "MFNPATCH_RECIPES",
    "envs": "MFNPATCH_ENVS",
}


def data_dir(name: str, bundled: bool = False) -> Path:
    """The directory holding bundled data ``name`` (one of OVERRIDES); bundled: the shipped one, whatever
    the environment variable says (what mfnpatch itself knows, e.g. the builds the doctor suggests)."""
    env = OVERRIDES.get(name)
    if env and os.environ.get(env) and not bundled:
        p = Path(os.environ[env]).expanduser()
        if not p.is_dir():
            raise MfnError(f"{env}={p} is not a directory", hint=f"unset {env} to use the bundled {name}/")
        return p
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise MfnError(
        f"bundled data directory {name}/ is missing from this installation",
        hint="reinstall mfnpatch (pip install --force-reinstall mfnpatch)",
    )


def cache_dir() -> Path:
    """Where fetched commits are kept (MFNPATCH_CACHE, else $XDG_CACHE_HOME/mfnpatch)."""
    if os.environ.get("MFNPATCH_CACHE"):
        return Path(os.environ["MFNPATCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mfnpatch"
