"""Which runs are stranded (producers/rescue.py): a pure decision, one case per rule."""

from __future__ import annotations

import pytest

from producers.rescue import is_stranded
from worker.store import RunInfo

NOW = 10_000.0
STALL_S = 600.0


def run(**overrides) -> RunInfo:
    fields = dict(id="r", tenant="t", kind="backfill", state="running", started_at=NOW - 5000, finished_at=None,
                  expected=100, completed=99, produced_at=NOW - 4000, progress_at=NOW - STALL_S - 1)
    return RunInfo(**{**fields, **overrides})


@pytest.mark.parametrize(("case", "overrides", "stranded"), [
    ("quiet for longer than the threshold, one customer short", {}, True),
    ("an incremental pass, likewise", {"kind": "incremental"}, True),
    ("a customer got an outcome recently", {"progress_at": NOW - 10}, False),
    ("the producer finished recently (a slow Loyale)", {"produced_at": NOW - 10, "progress_at": None}, False),
    ("the producer has not finished", {"expected": None, "produced_at": None}, False),
    ("every customer has an outcome", {"completed": 100}, False),
    ("already done", {"state": "done"}, False),
    ("undo runs in the command, not on the queues", {"kind": "undo"}, False),
    ("sync-one likewise", {"kind": "sync-one"}, False),
])
def test_a_run_is_stranded_only_when_its_producer_is_done_and_it_went_quiet_short_of_its_customers(
        case, overrides, stranded):
    assert is_stranded(run(**overrides), NOW, STALL_S) is stranded, case
