"""The loader step of a pip-only CUDA environment, installed by `mfnpatch env create` into the environment's
site-packages as ``_mfnpatch_cuda_libs.py`` with a ``.pth`` line that imports it at interpreter start-up.

NVIDIA's runtime wheels put their libraries in ``site-packages/nvidia/*/lib``, where the dynamic loader does
not look for ``libmxnet.so``'s DT_NEEDED entries. Just before ``mxnet`` is imported (and only then: a
process that never imports MXNet loads nothing), this hook loads those libraries by path, in the order
``env create`` computed from the link closure (each after the libraries it needs), so that when
``libmxnet.so`` is loaded the loader finds every soname already in the process. No ``LD_LIBRARY_PATH``
to set: it works for the recipe's stages, a Slurm job, and a user's own ``python`` alike.

It reads ``_mfnpatch_cuda_libs.json`` beside it (paths relative to site-packages). A library that cannot be
loaded is left for ``import mxnet`` to report (with its own error); ``MFNPATCH_CUDA_LIBS=off`` disables the
hook. Standalone on purpose: the environment does not have mfnpatch installed.
"""

import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_done: list[list[str]] = []


def preload():
    """Load the environment's CUDA libraries (once); returns the paths that could not be loaded."""
    if _done:
        return _done[0]
    import ctypes

    failed = []
    try:
        with open(os.path.join(_HERE, "_mfnpatch_cuda_libs.json")) as f:
            order = json.load(f)["load_order"]
    except (OSError, ValueError, KeyError):
        order = []
    for rel in order:
        path = os.path.join(_HERE, rel)
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            failed.append(f"{rel}: {e}")
    _done.append(failed)
    return failed


class _BeforeMXNet:
    """A meta-path finder that preloads the libraries the first time ``mxnet`` is looked for."""

    def find_spec(self, name, path=None, target=None):
        if name == "mxnet":
            sys.meta_path.remove(self)
            preload()
        return None


MODULE = "_mfnpatch_cuda_libs"  # its name in the environment; as mfnpatch.environments.loader_hook it is inert

if __name__ == MODULE and os.environ.get("MFNPATCH_CUDA_LIBS", "").lower() not in ("off", "0", "no"):
    if "mxnet" in sys.modules:
        preload()
    else:
        sys.meta_path.insert(0, _BeforeMXNet())
