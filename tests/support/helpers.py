"""Builders for test fixtures: real git upstreams, real `git diff` patches, pin manifests, patch sets."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

from mfnpatch.fsutil import atomic_write
from mfnpatch.source.patchset import sums_text
from mfnpatch.source.pin import manifest_yaml, record_manifest

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent  # the repository
GOLDEN = TESTS / "golden"
DATA = TESTS / "data"
REFERENCE = ROOT.parent / "shared" / "reference"  # the seed's complete logs, beside the project (may be absent)

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fixture",
    "GIT_AUTHOR_EMAIL": "fixture@example.invalid",
    "GIT_COMMITTER_NAME": "Fixture",
    "GIT_COMMITTER_EMAIL": "fixture@example.invalid",
    "GIT_AUTHOR_DATE": "2018-04-27T15:35:20+08:00",
    "GIT_COMMITTER_DATE": "2018-04-27T15:35:20+08:00",
}


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed in {cwd}:\n{r.stderr}")
    return r.stdout


# A file shaped like src/train_softmax.py at the pin: same idioms on the lines the recipe edits.
TRAIN = """\
from __future__ import print_function
import os
import sys
import argparse
import mxnet as mx

def parse_args():
  parser = argparse.ArgumentParser(description='Train face network')
  parser.add_argument('--wd', type=float, default=0.0005, help='weight decay')
  parser.add_argument('--fc7-wd-mult', type=float, default=1.0, help='weight decay mult for fc7')
  parser.add_argument('--bn-mom', type=float, default=0.9, help='bn mom')
  args = parser.parse_args()
  return args

def get_symbol(args, arg_params, aux_params):
  embedding = None
  _weight = mx.symbol.Variable("fc7_weight", shape=(args.num_classes, args.emb_size), lr_mult=1.0)
  if args.loss_type==0: #softmax
    _bias = mx.symbol.Variable('fc7_bias', lr_mult=2.0, wd_mult=0.0)
    fc7 = mx.sym.FullyConnected(data=embedding, weight = _weight, bias = _bias, num_hidden=10, name='fc7')
  elif args.loss_type==1: #sphere
    fc7 = None
  return fc7

def train_net(args):
    ctx = []
    cvd = os.environ['CUDA_VISIBLE_DEVICES'].strip()
    if len(cvd)>0:
      for i in xrange(len(cvd.split(','))):
        ctx.append(mx.gpu(i))
    if args.network[0]=='r' or args.network[0]=='y':
      initializer = mx.init.Xavier(rnd_type='gaussian', factor_type="out", magnitude=2) #resnet style
    else:
      initializer = mx.init.Xavier(rnd_type='uniform', factor_type="in", magnitude=2)
    return initializer

def main():
    args = parse_args()
    train_net(args)

if __name__ == '__main__':
    main()
"""

ITER = """\
import random
from mxnet import recordio

class FaceImageIter(object):
    def __init__(self, header):
        self.imgidx = range(1, int(header.label[0]))
        self.seq = self.imgidx

    def reset(self):
        random.shuffle(self.seq)

    def mirror_aug(self, img):
        for c in xrange(img.shape[2]):
            img[:, :, c] = img[:, :, c][:, ::-1]
        return img
"""

SLIM = """\
import mxnet as mx
sym, arg_params, aux_params = mx.model.load_checkpoint('model', 0)
dellist = []
for k,v in arg_params.iteritems():
  if k.startswith('fc7'):
    dellist.append(k)
for d in dellist:
  del arg_params[d]
"""

TRAIN_SH = '#!/bin/sh\nexec python -u train_softmax.py "$@"\n'


def make_upstream(root: Path, history: int = 2, extra_files: dict[str, bytes] | None = None) -> tuple[Path, str]:
    """A real git repo shaped like InsightFace; returns (path, sha of the commit to pin)."""
    root = Path(root)
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "master")
    git(root, "config", "uploadpack.allowFilter", "true")  # as GitHub: partial fetches (tests turn it off)
    for i in range(history):
        atomic_write(root / "README.md", f"# insightface (fixture)\nrevision {i}\n")
        atomic_write(root / "src" / "noise.bin", random.Random(i).randbytes(2048))
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", f"history {i}")
    files = {
        "src/train_softmax.py": TRAIN.encode(),
        "src/image_iter.py": ITER.encode(),
        "deploy/model_slim.py": SLIM.encode(),
        "src/train.sh": TRAIN_SH.encode(),
        "models/det1-0001.params": bytes(range(256)) * 8,
        **(extra_files or {}),
    }
    for rel, data in files.items():
        atomic_write(root / rel, data)
    os.chmod(root / "src" / "train.sh", 0o755)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tiny")
    sha = git(root, "rev-parse", "HEAD").strip()
    # Upstream moves on after the pin, like the real one did.
    atomic_write(root / "README.md", "# insightface (fixture)\nafter the pin\n")
    git(root, "commit", "-q", "-am", "after the pin")
    return root, sha


def write_pin(pins_dir: Path, upstream: Path, sha: str, name: str | None = None) -> Path:
    import git as gitpython

    pins_dir.mkdir(parents=True, exist_ok=True)
    m = record_manifest(gitpython.Repo(upstream), sha, "insightface", "https://example.invalid/insightface.git")
    path = pins_dir / f"{name or sha[:7]}.yaml"
    atomic_write(path, manifest_yaml(m))
    return path


def header(sha: str, description: str = "fixture change", origin: str = "vendor, test fixture") -> str:
    return (
        f"Description: {description}\n"
        f"Origin: {origin}\n"
        f"Applies-To: {sha}\n"
        "Forwarded: not-needed\n"
        "Last-Update: 2026-11-28\n\n"
    )


class PatchMaker:
    """Makes patches with real git diff, each on top of the previous (like a quilt series)."""

    def __init__(self, upstream: Path, sha: str, work: Path):
        self.sha = sha
        self.work = Path(work)
        git(Path(upstream).parent, "clone", "-q", str(upstream), str(self.work))
        git(self.work, "checkout", "-q", "--detach", sha)

    def reset(self) -> None:
        git(self.work, "checkout", "-q", "--detach", self.sha)

    def edit(self, rel: str, old: str, new: str) -> None:
        p = self.work / rel
        text = p.read_text()
        assert text.count(old) == 1, f"{old!r} not unique in {rel}"
        p.write_text(text.replace(old, new))

    def write(self, rel: str, data: str | None) -> None:
        p = self.work / rel
        if data is None:
            p.unlink()
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(data)

    def diff(self, description: str = "fixture change") -> str:
        git(self.work, "add", "-A")
        text = git(self.work, "diff", "--cached", "--no-color", "--src-prefix=a/", "--dst-prefix=b/")
        git(self.work, "commit", "-q", "-m", description)
        return header(self.sha, description) + text


def write_set(
    patches_dir: Path,
    name: str,
    version: int,
    applies_to: str,
    patches: list[tuple[str, str]],
    *,
    after: list[str] | None = None,
    opt_in: bool = False,
    lock: bool = True,
) -> Path:
    d = Path(patches_dir) / name / str(version)
    d.mkdir(parents=True, exist_ok=True)
    lines = [
        "schema: 1",
        f"name: {name}",
        f"version: {version}",
        f"applies_to: '{applies_to}'",
        f"description: fixture set {name}",
    ]
    if after:
        lines.append(f"after: [{', '.join(after)}]")
    if opt_in:
        lines.append("opt_in: true")
    (d / "set.yaml").write_text("\n".join(lines) + "\n")
    (d / "series").write_text("".join(f"{fn}\n" for fn, _ in patches))
    for fn, text in patches:
        (d / fn).write_bytes(text.encode("utf-8"))
    if lock:
        (d / "SHA256SUMS").write_text(sums_text(d, [fn for fn, _ in patches]))
    return d


def relock(d: Path) -> None:
    names = [ln.split()[0] for ln in (d / "series").read_text().splitlines() if ln.strip()]
    (d / "SHA256SUMS").write_text(sums_text(d, names))


def snapshot(root: Path) -> dict[str, tuple[bytes | str, int]]:
    """Every file under root (outside .git) with its bytes and mode; symlinks by target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for fn in filenames:
            p = Path(dirpath) / fn
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = (os.readlink(p), 0)
            else:
                out[rel] = (p.read_bytes(), os.stat(p).st_mode)
        for d in dirnames:
            p = Path(dirpath) / d
            out[str(p.relative_to(root)) + "/"] = (b"", os.stat(p).st_mode)
    return out


# --------------------------------------------------------------------------------------------
# Datasets in the format the pinned code reads, built here with corruptions on request


def face_jpeg(seed: int, size: int = 112, extra: bytes = b"") -> bytes:
    """A small real JPEG (a coloured square with noise); ``extra`` goes into a comment segment after SOI."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), rng.integers(0, 255, 3), np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    data = buf.tobytes()
    if extra:
        seg = b"\xff\xfe" + (len(extra) + 2).to_bytes(2, "big") + extra
        data = data[:2] + seg + data[2:]
    return data


def write_dataset(
    d: Path, ids: int = 3, per_id: int = 3, pairs: int = 20, labels: dict[int, float] | None = None,
    property_text: str | None = None, image: dict[int, bytes] | None = None, header: bool = True,
    targets: tuple[str, ...] = ("lfw", "cfp_fp", "agedb_30"), size: int = 112,
) -> Path:  # fmt: skip
    """A dataset as face2rec2.py lays it out (images 1..N, then the header record 0, then the identity records);
    ``labels`` and ``image`` replace the label or the image bytes of record keys, ``header=False`` leaves the
    header out (images from key 0)."""
    from mfnpatch.datasets.bins import dumps_py2
    from mfnpatch.datasets.recordio import indexed_writer, pack

    d.mkdir(parents=True, exist_ok=True)
    n = ids * per_id
    labels, image = labels or {}, image or {}
    with indexed_writer(d / "train.rec", d / "train.idx") as w:
        first = 1 if header else 0
        for k in range(first, first + n):
            cls = (k - first) // per_id
            w.write(k, pack([labels.get(k, cls), 1], k, data=image.get(k, face_jpeg(k, size))))
        if header:
            w.write(0, pack([n + 1, n + 1 + ids], 0))
            for i in range(ids):
                w.write(n + 1 + i, pack([1 + i * per_id, 1 + (i + 1) * per_id], n + 1 + i))
    (d / "property").write_text(property_text if property_text is not None else f"{ids},{size},{size}\n")
    for t in targets:
        bins = [face_jpeg(1000 + i, size) for i in range(2 * pairs)]
        (d / f"{t}.bin").write_bytes(dumps_py2(bins, [i % 2 == 0 for i in range(pairs)]))
    return d


def idx_offsets(d: Path) -> dict[int, int]:
    return {int(k): int(o) for k, o in (ln.split("\t") for ln in (d / "train.idx").read_text().splitlines())}


def run_fake(cli, rf, *extra, name="run"):
    """``recipe run`` of the fake recipe (tests/conftest.py ``runfx``) into its run directory ``name``, as JSON."""
    return cli(
        "recipe", "run", rf.recipe, "--tree", rf.tree, "--run-dir", rf.run_dir(name), "--json", "--no-env-check", *extra
    )
