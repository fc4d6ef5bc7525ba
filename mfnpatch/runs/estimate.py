"""`mfnpatch recipe estimate`: what a plan costs on this machine, before its first step.

Each training stage's command runs for ``probe_steps`` steps in a throwaway directory (its own prefix, no
``--pretrained``: a step costs the same from any weights; ``--verbose`` at half the probe, so that one
verification round is measured), with the run's environment and seed. From the events, as they arrive:

- throughput: the Speedometer's samples/s, the median of its lines whose window holds no verification round
  (the first line, which holds the start, neither); a probe too short for one falls back to the wall clock;
- a verification round: from the event before it to its last target's accuracy line, less the training steps
  in between;
- the start: from the process's start to its first step.

An estimate costs a small, stated part of what it estimates: a probe runs at most its stage's planned steps (and
``probe_steps``) and at most ``budget`` seconds (what it measured by then is used), the
warm probe is left out for a stage shorter than four probes, and the result says when running the plan would
have cost less than estimating it.

With ``warm`` the same probe runs again: the run is seeded, so it reads the same records, now from the page
cache — the difference between the two is what reading the data costs (``data_loading``). A stage's time is
start + its planned steps x total batch / samples per second + its verification rounds x a round's time.
The seed's own speed on its P40 (recipes/expected.yaml ``throughput``) is the reference row.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mfnpatch.checkpoint import StopPoint
from mfnpatch.errors import MfnError
from mfnpatch.fsutil import atomic_write_json
from mfnpatch.lineages import facts_of, of_argv
from mfnpatch.logs.events import Config, Event, Speed, Verification
from mfnpatch.recipes.expand import PlannedStage
from mfnpatch.runs.eta import estimates_dir, plan_key
from mfnpatch.runs.handover import total_steps, verbose_of
from mfnpatch.runs.process import run_process
from mfnpatch.runs.runner import Runner


@dataclass
class Probe:
    """What one probe measured (all times in seconds)."""

    steps: int
    total_batch: int | None
    samples_per_sec: float | None
    how: str  # "Speedometer (n lines)" or "wall clock"
    verification_seconds: float | None
    startup_seconds: float | None
    wall_seconds: float
    ended: str


@dataclass
class StageEstimate:
    stage: str
    steps: int | None  # planned
    rounds: int  # planned verification rounds
    total_batch: int | None
    cold: Probe | None
    warm: Probe | None
    data_loading: float | None  # share of a step spent reading data (1 - cold / warm samples/s), when warm ran
    seconds: float | None
    seed_seconds: float | None  # the same steps at the seed's P40 speed
    note: str = ""


@dataclass
class EstimateResult:
    recipe: str
    profile: str | None
    probe_steps: int
    gpus: int
    stages: list[StageEstimate] = field(default_factory=list)
    seconds: float = 0.0
    seed_seconds: float | None = None
    price_per_gpu_hour: float | None = None
    cost: float | None = None
    seed_reference: dict = field(default_factory=dict)
    key: str = ""
    made: str = ""
    probe_seconds: float = 0.0  # what estimating took (the probes and the data they read)
    note: str = ""

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    def to_dict(self) -> dict:
        return asdict(self) | {"hours": self.hours}


def probe_argv(ps: PlannedStage, prefix: Path, probe_steps: int) -> list[str]:
    """The stage's command for a probe, as its lineage writes one: its own prefix (arcface_torch: output
    directory), from scratch, a verification round halfway."""
    lin = of_argv(ps.argv)
    if lin is None:
        raise MfnError(f"stage {ps.name}: its command runs no trainer mfnpatch knows; it cannot be probed")
    return lin.probe_argv(list(ps.argv), str(prefix), probe_steps)


def measure(events: list[tuple[float, Event]], t0: float, t_end: float, steps: int, ended: str) -> Probe:
    """A probe's numbers from its events and their arrival times (monotonic seconds)."""
    batch = None
    for _, ev in events:
        if isinstance(ev, Config):
            bs = ev.args.get("batch_size")
            batch = bs if isinstance(bs, int) else None
    rounds: dict[int, float] = {}  # round step -> arrival of its last target
    for t, ev in events:
        if isinstance(ev, Verification) and ev.step is not None:
            rounds[ev.step] = t
    # (arrival, step, samples/s) of each Speedometer line
    speeds = [(t, ev.step, ev.samples_per_sec) for t, ev in events if isinstance(ev, Speed) and ev.step is not None]
    # a line's window runs from the line before it: a round at that line's step comes after it (the pinned code
    # calls the Speedometer, then verifies), so it falls into this window
    steady = [v for i, (_, st, v) in enumerate(speeds)
              if i > 0 and not any(speeds[i - 1][1] <= r < st for r in rounds)]  # fmt: skip
    sps: float | None = statistics.median(steady) if steady else None
    how = f"Speedometer ({len(steady)} line(s) without a verification)" if steady else ""
    step_s = batch / sps if (batch and sps) else None
    cost: dict[int, float] = {}  # round step -> its time
    for r, t_last in sorted(rounds.items()):
        before = [(t, st) for t, st, _ in speeds if st <= r and t <= t_last]
        if before:
            t_b, st_b = before[-1]
            cost[r] = max(0.0, t_last - t_b - ((r - st_b) * step_s if step_s else 0.0))
    if sps is None and len(speeds) >= 2 and batch:
        (ta, a, _), (tb, b, _) = speeds[0], speeds[-1]
        span = tb - ta - sum(c for r, c in cost.items() if a <= r < b)
        if span > 0 and b > a:
            sps, how = (b - a) * batch / span, "wall clock between Speedometer lines"
            step_s = batch / sps
    if sps is None and speeds and batch:  # one line: the Speedometer's own figure, start included
        sps, how = speeds[-1][2], "Speedometer (its only line, which holds the start)"
        step_s = batch / sps
    start = None
    if speeds and step_s:
        t1, st1, _ = speeds[0]
        start = max(0.0, t1 - t0 - st1 * step_s)
    ver = statistics.median(cost.values()) if cost else None
    return Probe(steps, batch, round(sps, 2) if sps else None, how, round(ver, 3) if ver is not None else None,
                 round(start, 3) if start is not None else None, round(t_end - t0, 3), ended)  # fmt: skip


def stage_seconds(steps: int | None, rounds: int, p: Probe | None) -> float | None:
    if steps is None or p is None or not p.samples_per_sec or not p.total_batch:
        return None
    train = steps * p.total_batch / p.samples_per_sec
    return (p.startup_seconds or 0.0) + train + rounds * (p.verification_seconds or 0.0)


class Estimator(Runner):
    """The runner's plan, tree and environment; each training stage probed instead of run."""

    budget: float = 120.0  # seconds one probe may run

    def estimate(self, probe_steps: int, warm: bool, price: float | None, say=lambda s: None) -> EstimateResult:
        import platform

        from mfnpatch.logs.expected import load_expected
        from mfnpatch.resources import data_dir
        from mfnpatch.runs.record import now
        from mfnpatch.source.patchset import Catalog, select_sets
        from mfnpatch.source.pin import resolve_pin

        if probe_steps < 2:
            raise MfnError(f"--probe-steps {probe_steps}: at least 2 (a verification round at half the probe)")
        work = Path(tempfile.mkdtemp(prefix="mfnpatch-estimate-"))
        t_start = time.monotonic()
        try:
            run_dir = work / "run"
            run_dir.mkdir()
            plan = self.plan(run_dir)
            pin = resolve_pin(plan.recipe.pin)
            sets = select_sets(Catalog.scan(data_dir("patches")), plan.patches, pin.commit)
            tree = self._prepare_tree(plan, sets)
            seed = load_expected().throughput
            gpus = len(plan.fit.gpus) if plan.fit and plan.fit.gpus else 1
            res = EstimateResult(plan.recipe.name, self.profile, probe_steps, gpus, price_per_gpu_hour=price,
                                 key=plan_key(plan, platform.node(), self._builtins), made=now())  # fmt: skip
            if seed:
                res.seed_reference = {"device": seed.device, "total_batch": seed.total_batch, "source": seed.source}
            for ps in plan.stages:
                if ps.skipped:
                    continue
                if ps.kind == "tool" and "data" in ps.outputs:  # the data the training stages read (smoke)
                    say(f"{ps.name}: making the data the probes read")
                    self._tool(ps, tree.root, run_dir)
                if ps.kind != "train":
                    continue
                res.stages.append(self._stage(ps, tree.root, work, probe_steps, warm, seed, say))
            known = [s.seconds for s in res.stages if s.seconds is not None]
            res.seconds = round(sum(known), 1)
            seeds = [s.seed_seconds for s in res.stages if s.seed_seconds is not None]
            res.seed_seconds = round(sum(seeds), 1) if seeds else None
            if price is not None:
                res.cost = round(res.hours * gpus * price, 2)
            res.probe_seconds = round(time.monotonic() - t_start, 1)
            if known and res.probe_seconds >= res.seconds:
                res.note = (f"estimating took {res.probe_seconds:.0f} s and the plan itself would take about "
                            f"{res.seconds:.0f} s here: run it instead (recipe run)")  # fmt: skip
            estimates_dir().mkdir(parents=True, exist_ok=True)
            atomic_write_json(estimates_dir() / f"{res.key}.json", res.to_dict())
            return res
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _tool(self, ps: PlannedStage, tree: Path, run_dir: Path) -> None:
        cwd = tree / ps.cwd
        r = run_process(ps.argv, cwd, self._stage_env(ps), run_dir / f"{ps.name}.log", None, lambda evs: None)
        if r.code != 0:
            raise MfnError(f"estimate: stage {ps.name} failed ({r.ended})", hint=f"see {run_dir / (ps.name + '.log')}")

    def _probe(self, ps: PlannedStage, tree: Path, work: Path, probe_steps: int, n: int) -> Probe:
        d = work / f"probe-{ps.name}-{n}"
        d.mkdir()
        argv = probe_argv(ps, d / "model", probe_steps)
        seen: list[tuple[float, Event]] = []
        t0 = time.monotonic()

        def over_budget() -> str | None:
            return f"the probe's time budget ({self.budget:g} s)" if time.monotonic() - t0 > self.budget else None

        r = run_process(argv, tree / ps.cwd, self._stage_env(ps), d / "probe.log",
                        StopPoint(kind="step", value=probe_steps, why="the probe's length"),
                        lambda evs: seen.extend((time.monotonic(), ev) for ev in evs), tripped=over_budget)  # fmt: skip
        if r.code is None or (r.end == "exited" and r.code != 0):
            tail = (d / "probe.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise MfnError(f"estimate: the probe of {ps.name} failed ({r.ended})", details=tail)
        return measure(seen, t0, time.monotonic(), probe_steps, r.ended)

    def _stage(
        self, ps: PlannedStage, tree: Path, work: Path, probe_steps: int, warm: bool, seed, say
    ) -> StageEstimate:
        steps = total_steps(ps)
        n = min(probe_steps, max(2, steps)) if steps else probe_steps  # never longer than the stage itself
        say(f"{ps.name}: probing {n} steps" + (f" (the whole stage: {steps})" if n < probe_steps else "")
            + f", at most {self.budget:g} s")  # fmt: skip
        cold = self._probe(ps, tree, work, n, 1)
        hot = None
        short = steps is not None and steps < 4 * probe_steps
        if warm and not short:
            say(f"{ps.name}: the same probe again, its data now in the page cache")
            hot = self._probe(ps, tree, work, n, 2)
        every = verbose_of(ps.argv)
        rounds = steps // every if steps else 0
        est = StageEstimate(ps.name, steps, rounds, cold.total_batch, cold, hot, None, None, None)
        if hot and cold.samples_per_sec and hot.samples_per_sec:
            est.data_loading = round(max(0.0, 1 - cold.samples_per_sec / hot.samples_per_sec), 3)
        secs = stage_seconds(steps, rounds, cold)
        if steps and n >= steps and "budget" not in cold.ended:  # the probe ran the whole stage: that is its time
            secs = cold.wall_seconds
        est.seconds = round(secs, 1) if secs is not None else None
        if steps is None:
            est.note = "no stop point: it trains until stopped; only its speed is given"
        elif warm and short:
            est.note = f"no warm probe: the stage ({steps} steps) is shorter than four probes"
        ref = seed.stages.get(ps.name) if seed else None
        batch = cold.total_batch or _per_batch(ps)
        if ref and steps and batch:
            est.seed_seconds = round(steps * batch / ref.samples_per_sec + rounds * ref.verification_seconds, 1)
        return est


def _per_batch(ps: PlannedStage) -> int | None:
    """The stage's total batch as its command states it (the probe's Config line says it otherwise)."""
    f = facts_of(ps.argv)
    return f.total_batch if f else None


def _num(x, fmt: str, suffix: str = "") -> str:
    return format(x, fmt) + suffix if x is not None else "–"


def table(res: EstimateResult) -> list[str]:
    """The estimate as lines of text: a row per training stage, the total, the seed's P40 beside it."""
    out = [f"{'stage':10s} {'steps':>8s} {'batch':>6s} {'samples/s':>10s} {'warm':>9s} {'data':>6s} "
           f"{'verif. s':>9s} {'start s':>8s} {'hours':>8s} {'seed P40 h':>10s}"]  # fmt: skip
    for s in res.stages:
        c, w = s.cold, s.warm
        load = s.data_loading * 100 if s.data_loading is not None else None
        hours = s.seconds / 3600 if s.seconds is not None else None
        seed = s.seed_seconds / 3600 if s.seed_seconds is not None else None
        out.append(
            f"{s.stage:10s} {_num(s.steps, ',d'):>8s} {_num(s.total_batch, 'd'):>6s} "
            f"{_num(c.samples_per_sec if c else None, ',.1f'):>10s} "
            f"{_num(w.samples_per_sec if w else None, ',.1f'):>9s} {_num(load, '.0f', '%'):>6s} "
            f"{_num(c.verification_seconds if c else None, '.1f'):>9s} "
            f"{_num(c.startup_seconds if c else None, '.1f'):>8s} {_num(hours, '.3f'):>8s} {_num(seed, '.1f'):>10s}"
        )  # fmt: skip
    seed_total = f"{res.seed_seconds / 3600:10.1f}" if res.seed_seconds else f"{'–':>10s}"
    out.append(f"{'total':10s} {'':>8s} {'':>6s} {'':>10s} {'':>9s} {'':>6s} {'':>9s} {'':>8s} {res.hours:8.3f} "
               f"{seed_total}")  # fmt: skip
    if res.cost is not None:
        out.append(f"cost: {res.hours:.2f} h x {res.gpus} GPU(s) x {res.price_per_gpu_hour:g} = {res.cost:,.2f}")
    return out
