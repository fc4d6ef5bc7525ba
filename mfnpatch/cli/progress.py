"""Live progress of a recipe run in the terminal (rich): a bar per training stage."""

from __future__ import annotations

from rich.markup import escape

from mfnpatch.cli.app import (
    err,
)
from mfnpatch.runs.execute import Observer


class RichObserver(Observer):
    """Live progress for recipe runs: a bar per training stage with step, lr, accuracy, samples/s, ETA."""

    def __init__(self):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        # Live bars on a terminal; elsewhere (CI logs, pipes) one plain line per verification round.
        self.live = err.is_terminal
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.fields[stage]}"), BarColumn(),
            TextColumn("{task.fields[steps]}"), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=err, transient=False,
        )  # fmt: skip
        self.task = None

    def run_started(self, run_dir, plan):
        err.print(
            f"run {escape(str(run_dir))}: {plan.recipe.name}" + (f" profile {plan.profile}" if plan.profile else "")
        )
        if self.live:
            self.progress.start()

    def stage_started(self, ps, total):
        if not self.live:
            err.print(f"start {ps.name}: {escape(ps.title)}" + (f" ({total} steps)" if total else ""))
            return
        self.task = self.progress.add_task("", total=total, stage=ps.name, steps="", info=escape(ps.title))

    def stage_event(self, ps, ev, live):
        from mfnpatch.logs.events import Highest

        if not self.live:
            if isinstance(ev, Highest):  # the pinned code prints it once per verification round, after all targets
                accs = " ".join(f"{k} {v:.4f}" for k, v in live.accuracy.items())
                tot = f"/{live.total}" if live.total else ""
                err.print(
                    f"  {ps.name} step {live.step}{tot}: {accs}" + (f", lr {live.lr:g}" if live.lr is not None else "")
                )
            return
        if self.task is None:
            return
        info = []
        if live.lr is not None:
            info.append(f"lr {live.lr:g}")
        if live.accuracy:
            info.append(" ".join(f"{k} {v:.4f}" for k, v in live.accuracy.items()))
        if live.samples_per_sec:
            info.append(f"{live.samples_per_sec:g} samples/s")
        steps = f"{live.step or 0}/{live.total}" if live.total else f"{live.step or 0}"
        self.progress.update(self.task, completed=live.step or 0, steps=steps, info=escape("  ".join(info)))

    def stage_output(self, ps, text):
        last = [ln for ln in text.splitlines() if ln.strip()]
        if self.task is not None and last:
            self.progress.update(self.task, info=escape(last[-1][-80:]))

    def stage_finished(self, ps, rec):
        if self.task is not None:
            self.progress.update(self.task, visible=True)
            self.progress.stop_task(self.task)
            self.task = None
        color = {"done": "green" if rec.passed is not False else "red", "skipped": "dim"}.get(rec.status, "red")
        what = rec.ended or rec.skipped or ""
        verdict = "" if rec.passed is None else (" — checks pass" if rec.passed else " — [red]checks FAIL[/]")
        self.progress.console.print(f"[{color}]{rec.status}[/] {ps.name}: {escape(what)}{verdict}")
        for c in rec.checks:
            if c.required and c.verdict != "pass":
                self.progress.console.print(f"    {c.verdict}: {escape(c.message)}")
        if rec.sentinel is not None:
            self.progress.console.print(f"    [yellow]likeliest causes[/]: {escape(rec.sentinel.hint)}")

    def stage_reused(self, ps, rec):
        self.progress.console.print(f"[dim]reused[/] {ps.name}: completed earlier with the same provenance")

    def note(self, text):
        err.print(f"[dim]{escape(text)}[/]")

    def close(self):
        if self.live:
            self.progress.stop()
