"""Undo a run's overwrites from the journal, but never over a value that changed after our write.

The journal holds, for every field a run overwrote, the value Klaviyo had before (written before the
write was sent). For each profile, `plan_undo` (pure) compares Klaviyo's current value with what we
wrote: still ours -> restore the old value; anything else -> a conflict, left as it is and reported.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from worker.mapping import to_attributes
from worker.merge import same
from worker.models import KlaviyoProfile


@dataclass(frozen=True)
class UndoPlan:
    profile_id: str
    customer_id: str
    #: field path -> the old value to put back
    restore: dict[str, Any] = field(default_factory=dict)
    #: field path -> (what we wrote, what Klaviyo holds now)
    conflicts: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    missing: bool = False

    @property
    def attributes(self) -> dict[str, Any]:
        return to_attributes(self.restore)


def group_journal(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Journal entries per profile, in the order they were written."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        grouped[entry["profile_id"]].append(entry)
    return dict(grouped)


def plan_undo(entries: list[dict[str, Any]], profile: KlaviyoProfile | None) -> UndoPlan:
    """What to restore on one profile. A field overwritten twice in the run goes back to its first old
    value, provided Klaviyo still holds the last value we wrote."""
    first = entries[0]
    if profile is None:
        return UndoPlan(first["profile_id"], first["customer_id"], missing=True)
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for entry in entries:
        old.setdefault(entry["field"], entry["old"])
        new[entry["field"]] = entry["new"]
    restore: dict[str, Any] = {}
    conflicts: dict[str, tuple[Any, Any]] = {}
    for path, ours in new.items():
        current = profile.value(path)
        if same(current, old[path]):
            continue                    # already back (an earlier undo, or someone restored it)
        if same(current, ours):
            restore[path] = old[path]   # never null: only non-empty values are journaled
        else:
            conflicts[path] = (ours, current)
    return UndoPlan(profile.id, first["customer_id"], restore=restore, conflicts=conflicts)
