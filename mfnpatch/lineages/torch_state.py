"""What an arcface_torch ``checkpoint_gpu_N.pt`` says of itself (its ``epoch`` and ``global_step``), read without
PyTorch and without running anything it holds.

``torch.save`` writes a zip: ``<name>/data.pkl`` is a pickle of the checkpoint's dict, the tensors in entries of
their own. The pickle is read by an unpickler that builds no object of a class it names: PyTorch's rebuild
functions and storage types become inert placeholders, ``collections.OrderedDict`` is itself, and any other
global refuses the file. Its size is bounded before it is read (a zip entry's size is not trusted).
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mfnpatch.lineages.base import ResumeError

MAX_PICKLE = 16 << 20  # the dict's structure: the tensors' bytes are elsewhere in the zip


class _Inert:
    """A tensor, storage or parameter of the checkpoint, not built."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass

    def __call__(self, *args, **kwargs) -> _Inert:
        return _Inert()


class _Reader(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" or module.startswith("torch."):
            return _Inert
        raise pickle.UnpicklingError(f"it names {module}.{name}, which no PyTorch checkpoint holds")

    def persistent_load(self, pid):
        return _Inert()


@dataclass(frozen=True)
class SavedState:
    path: Path
    epoch: int  # epochs done (train_v2.py saves epoch + 1 at an epoch's end)
    global_step: int


def read_state(path: Path) -> SavedState:
    """The epoch and global step a checkpoint_gpu_N.pt was saved at; a ResumeError says what is wrong with it."""

    def bad(why: str) -> ResumeError:
        return ResumeError(f"{path}: {why}", hint="it cannot be resumed from; rerun the stage from its start "
                           "(--force), or restore the file")  # fmt: skip

    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1:
                raise bad("not a PyTorch checkpoint (no data.pkl in it)")
            with z.open(names[0]) as f:
                raw = f.read(MAX_PICKLE + 1)
    except (zipfile.BadZipFile, EOFError) as e:
        raise bad(f"not a complete PyTorch checkpoint ({e}); was its save interrupted?") from None
    except OSError as e:
        raise bad(f"cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_PICKLE:
        raise bad(f"its data.pkl is over {MAX_PICKLE:,} bytes, more than a checkpoint's structure holds")
    try:
        d = _Reader(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise bad(f"its data.pkl cannot be read safely ({e})") from None
    if not isinstance(d, dict):
        raise bad("it holds no dict: not arcface_torch's checkpoint_gpu_N.pt")
    epoch, step = d.get("epoch"), d.get("global_step")
    if not (type(epoch) is int and type(step) is int and epoch >= 0 and step >= 0):
        raise bad(f"its epoch ({epoch!r}) and global_step ({step!r}) are not counts: not train_v2.py's save_all_states")
    return SavedState(path, epoch, step)
