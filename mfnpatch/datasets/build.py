"""`mfnpatch data build IMAGES -o DIR`: one's own aligned faces as a dataset the pinned code reads.

IMAGES holds one folder per identity of aligned face images (JPEG or PNG, 112x112 by default). The build
writes, in exactly the layout InsightFace's ``src/data/face2rec2.py`` gives:

    DIR/property                  num_classes,height,width
    DIR/train.rec, DIR/train.idx  record 0 the header, label [N+1, N+1+ids]; records 1..N the images, label
                                  [class, 1] (aligned), the image bytes as they are (or re-encoded when resized);
                                  records N+1..N+ids one per identity, label [first, last+1)
    DIR/train.lst                 the list face2rec2.py reads: aligned<TAB>path<TAB>label, one line per image
    DIR/<target>.bin              (bins, issame_list) pickled as the published sets are (Python 2 str items)

Verification pairs come from an LFW-style pairs file (``--pairs [TARGET=]FILE``: ``name n1 n2`` for a
matching pair, ``name1 n1 name2 n2`` for a non-matching one, ``n`` the image's number in its folder, LFW's
``name_0001.jpg`` or the n-th file by name), or are drawn (``--pairs-per-set N``, half matching, seeded).
An image in a verification pair is never a training image: drawn pairs leave every identity at least one
training image; an identity whose every image is in a pairs file is a verification-only identity.

All or nothing: the dataset is written in a hidden directory beside DIR and renamed into place at the end,
so an interrupted build never leaves a directory that looks like a dataset (a leftover of a killed build is
removed by the next build into the same DIR).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mfnpatch.datasets import images as img
from mfnpatch.datasets.bins import FOLDS, dumps_py2, fold_problem
from mfnpatch.datasets.recordio import indexed_writer, pack
from mfnpatch.errors import MfnError
from mfnpatch.fsutil import UnsafePath, atomic_write, one_line, read_bounded

MARKER = ".mfnpatch-build.json"
SUFFIXES = (".jpg", ".jpeg", ".png")
TARGETS = ("lfw", "cfp_fp", "agedb_30")
Progress = Callable[[str, int, int], None]


class BuildError(MfnError):
    pass


@dataclass
class Face:
    identity: str
    path: Path
    number: int  # 1-based, in name order within its folder


@dataclass
class BuildResult:
    dir: str
    identities: int
    images: int
    resized: int
    targets: dict[str, int] = field(default_factory=dict)  # target -> pairs
    held_out: int = 0
    verification_only: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def scan_images(root: Path) -> dict[str, list[Face]]:
    """identity -> its faces, by name; anything else in the tree is a clear error."""
    root = Path(root)
    if not root.is_dir():
        raise BuildError(
            f"{root}: {'no such directory' if not root.exists() else 'not a directory'}",
            hint="give a folder with one sub-folder of aligned face images per identity",
        )
    people: dict[str, list[Face]] = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or entry.is_symlink():
            raise BuildError(
                f"{entry}: not an identity folder (IMAGES holds one folder per identity)",
                hint="move loose files into a folder named after the person",
            )
        _list_field(entry.name, "identity folder name", "rename the folder")
        files = []
        for f in sorted(entry.iterdir(), key=lambda p: p.name):
            if f.name.startswith("."):
                continue
            _list_field(f"{entry.name}/{f.name}", "image file name", "rename the file")
            if not f.is_file() or f.suffix.lower() not in SUFFIXES:
                raise BuildError(
                    f"{f}: not a .jpg, .jpeg or .png file", hint="an identity folder holds face images only"
                )
            files.append(f)
        if not files:
            raise BuildError(f"{entry}: no images (.jpg, .jpeg, .png)", hint="remove the empty folder or add its faces")
        people[entry.name] = [Face(entry.name, f, i + 1) for i, f in enumerate(files)]
    if len(people) < 2:
        raise BuildError(
            f"{root}: {len(people)} identity folder(s); a face dataset needs at least 2",
            hint="one sub-folder of aligned faces per person",
        )
    return people


def _list_field(name: str, what: str, fix: str) -> str:
    """A name that becomes a field of a ``train.lst`` line (face2rec2 splits lines on tabs): no tab, newline or
    other control character, checked before anything is written."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise BuildError(f"{what} {name!r} is not UTF-8: refused (it is written into train.lst)", hint=fix) from None
    try:
        return one_line(name, what, file="train.lst (aligned<TAB>path<TAB>label per line)", hint=fix)
    except UnsafePath as e:
        raise BuildError(e.message, hint=e.hint) from None


MAX_PAIRS_BYTES = 16 << 20
# image numbers of at most 9 digits: int() of a longer one is slow or refused (Python's 4,300-digit limit)
PAIR_LINE = re.compile(r"^\s*(\S+)\s+(\d{1,9})\s+(?:(\d{1,9})|(\S+)\s+(\d{1,9}))\s*$")


def read_pairs(path: Path, people: dict[str, list[Face]]) -> list[tuple[Face, Face, bool]]:
    """An LFW-style pairs file: an optional header line of numbers, then one pair per line."""
    try:
        lines = (
            read_bounded(
                Path(path), "pairs file", MAX_PAIRS_BYTES, hint="give an LFW-style pairs.txt (LFW's is 100 KB)"
            )
            .decode("utf-8")
            .splitlines()
        )
    except MfnError as e:
        raise BuildError(e.message, hint=e.hint) from None
    except UnicodeDecodeError as e:
        raise BuildError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})",
                         hint="give an LFW-style pairs.txt") from None  # fmt: skip
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or (n == 1 and all(t.isdigit() for t in line.split())):
            continue
        m = PAIR_LINE.match(line)
        if not m:
            raise BuildError(f"{path}:{n}: {line.strip()[:80]!r} is not 'NAME N1 N2' or 'NAME1 N1 NAME2 N2'")
        if m.group(3) is not None:
            a, b, same = (m.group(1), int(m.group(2))), (m.group(1), int(m.group(3))), True
        else:
            a, b, same = (m.group(1), int(m.group(2))), (m.group(4), int(m.group(5))), False
        out.append((_face(path, n, people, *a), _face(path, n, people, *b), same))
    why = fold_problem([same for _, _, same in out])
    if why:
        raise BuildError(f"{path}: {why}", hint="order the pairs so that every tenth holds both kinds, as LFW's does")
    return out


def _face(path: Path, line: int, people: dict[str, list[Face]], name: str, number: int) -> Face:
    faces = people.get(name)
    if faces is None:
        raise BuildError(f"{path}:{line}: no identity folder {name!r} in IMAGES")
    for f in faces:  # LFW names its files NAME_0001.jpg
        if f.path.stem == f"{name}_{number:04d}":
            return f
    if not 1 <= number <= len(faces):
        raise BuildError(f"{path}:{line}: {name} has {len(faces)} images, no image {number}")
    return faces[number - 1]


def draw_pairs(people: dict[str, list[Face]], targets: list[str], n: int, seed: int):
    """``n`` pairs per target from images held out of training: half matching, interleaved, seeded; every
    identity keeps at least one training image; no image is used twice."""
    rng = random.Random(seed)
    pool = {name: rng.sample(faces, len(faces)) for name, faces in people.items()}
    sets: dict[str, list[tuple[Face, Face, bool]]] = {}

    def take(name: str) -> Face:
        return pool[name].pop()

    for t in targets:
        pairs: list[tuple[Face, Face, bool]] = []
        for p in range(n):
            same = p % 2 == 0
            if same:
                ok = [k for k, v in pool.items() if len(v) >= 3]
                if not ok:
                    break
                name = rng.choice(ok)
                pairs.append((take(name), take(name), True))
            else:
                ok = [k for k, v in pool.items() if len(v) >= 2]
                if len(ok) < 2:
                    break
                a, b = rng.sample(ok, 2)
                pairs.append((take(a), take(b), False))
        if len(pairs) < n:
            raise BuildError(
                f"not enough images for {n} pairs per set ({t}: {len(pairs)} drawn): matching pairs need identities "
                "with 3 or more images (each keeps one for training), and no image is used twice",
                hint="lower --pairs-per-set, or give pairs with --pairs FILE",
            )
        sets[t] = pairs
    return sets


def _leftovers(out: Path) -> None:
    """A killed build's hidden directory beside ``out`` (its pid no longer running) is removed."""
    for p in out.parent.glob(f".{out.name}.mfnpatch-build-*"):
        m = re.search(r"-(\d+)-[^-]*$", p.name)
        pid = int(m.group(1)) if m else None
        if pid and pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # still building
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _payload(face: Face, size: tuple[int, int], resize: bool) -> tuple[bytes, bool]:
    try:
        data = read_bounded(face.path, "image", img.MAX_IMAGE_BYTES, hint="an aligned face is a JPEG or PNG file")
    except MfnError as e:
        raise BuildError(e.message, hint=e.hint) from None
    h, w = size
    why = img.problem(data, None, None)
    if why:
        raise BuildError(f"{face.path}: {why}", hint="every image must be a readable JPEG or PNG")
    rgb = img.decode_rgb(data)
    if rgb.shape[:2] == (h, w):
        return data, False
    if not resize:
        raise BuildError(
            f"{face.path}: {rgb.shape[0]}x{rgb.shape[1]}, not {h}x{w} (the aligned size the recipe trains on)",
            hint="align and crop the faces to 112x112 (mfnpatch deploy align), or pass --resize to scale them",
        )
    import cv2

    small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    return img.encode_jpeg(small), True


def build(
    images: Path,
    out: Path,
    pairs: dict[str, Path] | None = None,
    pairs_per_set: int | None = None,
    targets: list[str] | None = None,
    resize: bool = False,
    size: tuple[int, int] = (112, 112),
    seed: int = 0,
    progress: Progress | None = None,
) -> BuildResult:
    out = Path(out)
    if out.is_symlink():
        raise BuildError(f"-o {out} is a symlink{' (dangling)' if not out.exists() else ''}; nothing written",
                         hint="give a new directory for -o (data build never writes through a link)")  # fmt: skip
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BuildError(
            f"{out} exists and is not an empty directory; nothing written",
            hint="give a new directory for -o (data build never writes into an existing dataset)",
        )
    if pairs and pairs_per_set:
        raise BuildError(
            "--pairs and --pairs-per-set both given", hint="give pairs files or a number to draw, not both"
        )
    people = scan_images(images)
    if pairs:
        sets = {t: read_pairs(p, people) for t, p in pairs.items()}
    elif pairs_per_set:
        if pairs_per_set < 2 * FOLDS:
            raise BuildError(f"--pairs-per-set {pairs_per_set}: the pinned {FOLDS}-fold verification needs at least "
                             f"{2 * FOLDS} (a matching and a non-matching pair in every fold)")  # fmt: skip
        sets = draw_pairs(people, list(targets or TARGETS), pairs_per_set, seed)
    else:
        sets = {}
    held = {f.path for pl in sets.values() for a, b, _ in pl for f in (a, b)}
    train = {name: [f for f in faces if f.path not in held] for name, faces in people.items()}
    only_verification = [name for name, faces in train.items() if not faces]
    train = {name: faces for name, faces in train.items() if faces}
    if len(train) < 2:
        raise BuildError(
            "fewer than 2 identities keep training images once the verification pairs are held out",
            hint="give pairs that leave training images, or more identities",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    _leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.mfnpatch-build-{os.getpid()}-", dir=out.parent))
    try:
        result = _write(tmp, images, train, sets, resize, size, progress)
        atomic_write(
            tmp / MARKER,
            json.dumps(
                {
                    "format": 1,
                    "images_dir": str(Path(images).absolute()),
                    "identities": result.identities,
                    "images": result.images,
                    "targets": result.targets,
                    "resized": result.resized,
                    "seed": seed,
                    "size": list(size),
                    "verification_only": only_verification,
                },
                indent=1,
            )
            + "\n",
        )
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.dir = str(out)
    result.held_out = len(held)
    result.verification_only = only_verification
    return result


def _write(tmp: Path, images: Path, train: dict[str, list[Face]], sets, resize, size, progress) -> BuildResult:
    n = sum(len(v) for v in train.values())
    ids = len(train)
    total = n + sum(2 * len(v) for v in sets.values())
    done = resized = 0
    lst = []
    with indexed_writer(tmp / "train.rec", tmp / "train.idx") as w:
        k = 1
        ranges = []
        for label, faces in enumerate(train.values()):
            first = k
            for f in faces:
                data, was = _payload(f, size, resize)
                resized += was
                w.write(k, pack([label, 1], k, data=data))
                rel = f.path.relative_to(images) if f.path.is_relative_to(images) else f.path
                lst.append(f"1\t{_list_field(str(rel), 'image path', 'rename the file')}\t{label}\n")
                k += 1
                done += 1
                if progress:
                    progress("images", done, total)
            ranges.append((first, k))
        w.write(0, pack([n + 1, n + 1 + ids], 0))
        for i, (a, b) in enumerate(ranges):
            w.write(n + 1 + i, pack([a, b], n + 1 + i))
    atomic_write(tmp / "train.lst", "".join(lst))
    result = BuildResult("", ids, n, resized)
    for t, pl in sets.items():
        bins: list[bytes] = []
        for a, b, _ in pl:
            for f in (a, b):
                data, was = _payload(f, size, resize)
                resized += was
                bins.append(data)
                done += 1
        atomic_write(tmp / f"{t}.bin", dumps_py2(bins, [s for _, _, s in pl]))
        result.targets[t] = len(pl)
        if progress:
            progress("images", done, total)
    result.resized = resized
    atomic_write(tmp / "property", f"{ids},{size[0]},{size[1]}\n")  # last: a dataset is complete once it has one
    if progress:
        progress("images", total, total)
    return result
