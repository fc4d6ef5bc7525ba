"""Seed every generator the pinned InsightFace code uses, from ``MFNPATCH_SEED``, without changing its command.

The recipe runner puts this directory first on ``PYTHONPATH`` of a stage and sets ``MFNPATCH_SEED``; Python
imports ``sitecustomize`` at start-up, before the stage's script runs. It seeds Python's ``random`` (the
shuffle, mirror and colour augmentation of ``image_iter.py``) and NumPy's global generator, and seeds
MXNet (``mx.random.seed``: the initializers, dropout) the moment ``mxnet`` is imported, through an import
hook, so a stage that never imports MXNet does not pay for it. ``PYTHONHASHSEED`` is set by the runner.

Any ``sitecustomize`` this one shadows (the interpreter's own, a distribution's) is run afterwards, as if
this file were not there. Python 2.7 and 3 alike: the faithful 2018 stack is Python 2.
"""

import os
import sys


def _chain():
    """Run the sitecustomize this one shadows, found further along sys.path."""
    here = os.path.dirname(os.path.abspath(__file__))
    for d in sys.path:
        if not d or os.path.abspath(d) == here:
            continue
        cand = os.path.join(d, "sitecustomize.py")
        if os.path.isfile(cand):
            g = {"__name__": "sitecustomize", "__file__": cand}
            with open(cand) as f:
                code = compile(f.read(), cand, "exec")
            exec(code, g)
            return


def _seed_mxnet(mx, seed):
    try:
        mx.random.seed(seed)
    except Exception as e:  # a seed that cannot be set is said, never fatal
        sys.stderr.write("mfnpatch seed: mx.random.seed failed: %s\n" % e)


class _AfterImport(object):
    """A meta-path finder that lets ``mxnet`` import normally, then seeds it."""

    def __init__(self, seed):
        self.seed = seed
        self.busy = False

    # Python 3.4+
    def find_spec(self, name, path=None, target=None):
        if name != "mxnet" or self.busy:
            return None
        import importlib.util

        self.busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        if spec is None or spec.loader is None:
            return spec
        loader, seed = spec.loader, self.seed

        class _Loader(object):
            def create_module(self, s):
                return loader.create_module(s) if hasattr(loader, "create_module") else None

            def exec_module(self, module):
                loader.exec_module(module)
                _seed_mxnet(module, seed)

        spec.loader = _Loader()
        return spec

    # Python 2
    def find_module(self, name, path=None):
        if name != "mxnet" or self.busy or sys.version_info[0] >= 3:
            return None
        return self

    def load_module(self, name):
        self.busy = True
        try:
            __import__(name)
        finally:
            self.busy = False
        module = sys.modules[name]
        _seed_mxnet(module, self.seed)
        return module


def _install():
    raw = os.environ.get("MFNPATCH_SEED", "").strip()
    if not raw:
        return
    try:
        seed = int(raw)
    except ValueError:
        sys.stderr.write("mfnpatch seed: MFNPATCH_SEED=%r is not an integer; nothing seeded\n" % raw)
        return
    import random

    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % (2**32))
    except ImportError:
        pass
    if "mxnet" in sys.modules:
        _seed_mxnet(sys.modules["mxnet"], seed)
    else:
        sys.meta_path.insert(0, _AfterImport(seed))


try:
    _install()
finally:
    _chain()
