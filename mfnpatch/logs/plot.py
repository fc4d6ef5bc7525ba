"""Training curves as a picture: verification accuracy per target against step (a reference overlaid),
training accuracy and the learning rate below (PNG, written whole or not at all)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import check_replaceable, replacing
from mfnpatch.logs.events import Summary


def lr_schedule(s: Summary) -> list[tuple[int, float]]:
    """Learning rate against step: the configured lr, then each change at its --lr-steps entry."""
    pts: list[tuple[int, float]] = []
    lr0 = (s.config or {}).get("lr")
    if isinstance(lr0, int | float):
        pts.append((0, float(lr0)))
    pts += list(s.lr_changes.items()) + list(s.lr_points.items())
    pts.sort()
    return pts


def plot_curves(s: Summary, out: Path, reference: Summary | None = None, title: str | None = None) -> Path:
    """Accuracy per target against step (reference overlaid); training accuracy and lr below."""
    os.environ.setdefault("MPLCONFIGDIR", tempfile.gettempdir())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MfnError(
            "plotting needs matplotlib", hint="pip install matplotlib (it is in the cpu environment)"
        ) from None
    check_replaceable(Path(out))  # before the work, not after
    if not s.verifications and not s.train_curve and not s.loss_curve:
        raise MfnError(f"{s.path}: nothing to plot (no verification or Speedometer lines)")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    targets = list(dict.fromkeys([*s.verifications, *(reference.verifications if reference else {})]))
    for i, t in enumerate(targets):
        c = colors[i % len(colors)]
        pts = sorted((s.verifications.get(t) or {}).items())
        if pts:
            ax1.plot([p for p, _ in pts], [v[0] for _, v in pts], "-o", ms=3, color=c, label=t)
        if reference is not None and t in reference.verifications:
            rp = sorted(reference.verifications[t].items())
            ax1.errorbar(
                [p for p, _ in rp], [v[0] for _, v in rp], yerr=[v[1] for _, v in rp], fmt="s", ms=6,
                mfc="none", color=c, capsize=3, linestyle="--" if len(rp) > 1 else "none",
                label=f"{t} (reference)",
            )  # fmt: skip
    ax1.set_ylabel("verification accuracy")
    ax1.grid(alpha=0.3)
    if targets:
        ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title(title or Path(s.path).name)
    curve = [(st, a) for st, a in s.train_curve if st is not None]
    what = "training accuracy"
    if not curve and s.loss_curve:  # arcface_torch logs its loss, not an accuracy
        curve, what = [(st, a) for st, a in s.loss_curve if st is not None], "training loss"
    if curve:
        ax2.plot([p for p, _ in curve], [a for _, a in curve], ".", ms=2, color="tab:gray", label=what)
    ax2.set_ylabel(what)
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    sched = lr_schedule(s)
    if sched:
        last = max([sched[-1][0]] + [p for p, _ in curve] + [s.last_step or 0])
        xs = [p for p, _ in sched] + [last]
        ys = [v for _, v in sched] + [sched[-1][1]]
        ax3 = ax2.twinx()
        ax3.step(xs, ys, where="post", color="tab:red", label="learning rate")
        if all(v > 0 for v in ys) and max(ys) / min(ys) > 5:
            ax3.set_yscale("log")
        ax3.set_ylabel("learning rate", color="tab:red")
    fig.tight_layout()
    return save_png(fig, out, dpi=110)


def save_png(fig, out: Path, dpi: int) -> Path:
    """Write a matplotlib figure as a PNG, whole or not at all, and release it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    try:
        with replacing(out, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return out
