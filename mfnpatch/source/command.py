"""`mfnpatch apply --commit C`, the whole command below the CLI: the pin resolved and the series chosen before
anything is fetched, the tree prepared under its lock (fetched and verified), the sets applied all or
nothing — or, with ``--check`` and no tree yet, the series applied in memory to the pinned files from the
cache. The CLI renders what comes back (``ApplyResult``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mfnpatch.errors import EXIT_NOTHING_TO_DO, EXIT_OK, MfnError, UsageError
from mfnpatch.source.diff import ApplyFailure
from mfnpatch.source.partial import normalise, set_paths
from mfnpatch.source.patchset import Catalog, PatchSet, apply_series, select_sets, series_paths
from mfnpatch.source.pin import Cache, Pin, pristine_blob, resolve_pin, resolve_source
from mfnpatch.source.tree import Prepared, prepare_tree, tree_lock, under_a_file, widen
from mfnpatch.source.worktree import ApplyOutcome
from mfnpatch.source.worktree import apply as apply_sets

DEFAULT_SERIES = "mfn"


@dataclass
class CheckedInMemory:
    """``apply --check`` where no tree exists: what the series would change; nothing was created."""

    pin: Pin
    dest: Path
    sets: list[str]
    changed: list[str]
    from_cache: bool

    def to_dict(self) -> dict:
        return {"action": "checked", "tree": str(self.dest.absolute()), "created": False, "sets": self.sets,
                "changed": self.changed, "from_cache": self.from_cache}  # fmt: skip


@dataclass
class ApplyResult:
    outcome: ApplyOutcome | None
    prepared: Prepared | None
    checked: CheckedInMemory | None = None

    @property
    def exit_code(self) -> int:
        """0 done, 2 nothing to do (already applied, or adopted as applied)."""
        if self.outcome is not None and self.outcome.action in ("nothing", "adopted"):
            return EXIT_NOTHING_TO_DO
        return EXIT_OK

    def to_dict(self) -> dict:
        if self.checked is not None:
            return self.checked.to_dict() | {"exit_code": self.exit_code}
        assert self.outcome is not None and self.prepared is not None
        return self.outcome.to_dict() | {
            "created": self.prepared.created,
            "fetch": self.prepared.fetch_dict(),
            "exit_code": self.exit_code,
        }


def apply_commit(commit: str, series: str | None, dest: Path, patches: Path, source: str | None = None, *,
                 fuzz: int = 0, force: bool = False, check: bool = False,
                 on_wait: Callable[[str], None] | None = None,
                 on_progress: Callable[[str], None] | None = None,
                 paths: list[str] | None = None, full: bool = False) -> ApplyResult:  # fmt: skip
    """Fetch ``commit`` into ``dest`` (verified) and apply ``series`` (default: the sets the tree has, else mfn).
    A new tree materialises the directories the sets touch and ``paths`` (None: the pin's own paths, what the
    pinned code needs to run the seed's commands; 4bc8132: all of src/ and deploy/'s files) — a partial fetch,
    unless ``full``; an existing sparse tree is widened to them."""
    pin = resolve_pin(commit)  # a wrong --commit is reported before anything else
    pinned = pin.commit
    catalog = Catalog.scan(patches)
    sets = select_sets(catalog, series, pinned) if series else None  # a bad --series fails before any fetch
    try:
        extra = normalise(pin.manifest.paths if paths is None else paths)
    except UsageError as e:
        raise UsageError(f"--paths: {e.message}", hint=e.hint) from None
    if check and not Path(dest).exists():
        return ApplyResult(None, None, check_in_memory(commit, Path(dest), source, catalog, sets, fuzz))
    with tree_lock(dest, on_wait=on_wait):
        first = sets or (None if Path(dest).exists() else _default_sets(catalog, pinned))
        want = set_paths(series_paths(first)) + extra if first else extra
        prepared = prepare_tree(commit, dest, source, on_progress=on_progress, paths=want, full=full)
        tree = prepared.tree
        if sets is None:
            state = tree.load_state()
            sets = select_sets(catalog, ",".join(state.labels()) if state else DEFAULT_SERIES, pinned)
            widened = widen(tree, set_paths(series_paths(sets)), source, on_progress=on_progress)
            prepared.fetch = prepared.fetch or widened
        outcome = apply_sets(tree, sets, fuzz=fuzz, force=force, check=check, source=prepared.source)
    return ApplyResult(outcome, prepared)


def _default_sets(catalog: Catalog, pinned: str) -> list[PatchSet] | None:
    """The default series, when the catalog has it (its absence is reported where the series is chosen)."""
    try:
        return select_sets(catalog, DEFAULT_SERIES, pinned)
    except MfnError:
        return None


def check_in_memory(commit: str, dest: Path, source: str | None, catalog: Catalog, sets: list[PatchSet] | None,
                    fuzz: int) -> CheckedInMemory:  # fmt: skip
    """The series applied in memory to the pinned files (from the cache, fetched into it if needed)."""
    pin = resolve_pin(commit)
    sets = sets or select_sets(catalog, DEFAULT_SERIES, pin.commit)
    cache = Cache()
    url, _ = resolve_source(source, pin)
    paths = series_paths(sets)
    fetched = cache.fetch(pin, url, paths=set_paths(paths))
    repo = cache.repo()
    pinned = set(pin.manifest.files)
    dirs = {"/".join(p.split("/")[:k]) for p in pinned for k in range(1, p.count("/") + 1)}
    for p in paths:  # the same refusals as a real apply (Tree.safe_path), against the pinned tree
        parts = p.split("/")
        for i in range(len(parts)):
            prefix = "/".join(parts[: i + 1])
            exists = prefix in pinned or prefix in dirs
            why = under_a_file(parts, i, prefix in dirs) if exists else None
            if why:
                raise ApplyFailure(why, kind="unsafe-path", path=p)
    result = apply_series(sets, {p: pristine_blob(repo, pin, p) for p in paths}, fuzz=fuzz)
    changed = sorted(p for p in paths if result.files.get(p) is not None)
    return CheckedInMemory(pin, dest, [s.label for s in sets], changed, fetched.from_cache)


def prepare_and_apply(commit: str, dest: Path, source: str | None, sets: list[PatchSet], paths: list[str],
                      on_note: Callable[[str], None]) -> tuple[Prepared, ApplyOutcome]:  # fmt: skip
    """A recipe's tree: the pin prepared under the tree's lock — only ``paths`` and what the sets touch when the
    recipe names its paths (a partial fetch), else whole — and the sets applied."""
    want = list(paths) + set_paths(series_paths(sets))
    with tree_lock(dest, on_wait=on_note):
        prepared = prepare_tree(commit, dest, source, paths=want, full=not paths)
        if prepared.tree.recovered:
            on_note(f"tree {prepared.tree.root}: {prepared.tree.recovered}")
        if prepared.fetch is not None and prepared.fetch.note:
            on_note(prepared.fetch.note)
        outcome = apply_sets(prepared.tree, sets, source=prepared.source)
    return prepared, outcome
