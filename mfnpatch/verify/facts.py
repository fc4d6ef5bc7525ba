"""What a stage's checks are judged on, gathered from disk: the log's summary (given), the reference logs and
the values of the result files its expectations name. The verdicts themselves are pure (logs/verdicts.py)."""

from __future__ import annotations

import json
from pathlib import Path

from mfnpatch.logs.events import Summary
from mfnpatch.logs.expected import Expectation, resolve_reference
from mfnpatch.logs.parser import summarize
from mfnpatch.logs.verdicts import StageFacts, Unreadable, result_value


def gather_facts(expectations: list[Expectation], summary: Summary | None, cwd: Path) -> StageFacts:
    """Read what ``expectations`` name: bundled or given reference logs, and result files (relative to cwd)."""
    facts = StageFacts(summary)
    for e in expectations:
        if e.reference is not None and e.reference not in facts.references:
            path, name = resolve_reference(e.reference)
            facts.references[e.reference] = (summarize(path), name)
        if e.json_file is not None:
            p = Path(e.json_file)
            p = p if p.is_absolute() else cwd / p
            try:
                value = result_value(json.loads(p.read_text()), e.key)
            except FileNotFoundError:
                value = Unreadable("not written")
            except (KeyError, IndexError, ValueError, TypeError, OSError) as err:
                value = Unreadable(str(err) or type(err).__name__)
            facts.results[(e.json_file, e.key)] = value
    return facts
