"""The messages this process's batches hold right now, so that a second delivery of one is not synced
beside the first.

kombu's Redis transport gives a consumer's unacknowledged messages back to the queue when its broker
connection drops ("Restoring N unacknowledged message(s)"), while the batches of this process still
work on them; after the reconnect the same messages arrive again. A customer's locks are taken with its
task id as token (so that a message redelivered after its pool process died can take the dead one's
locks over), so the two deliveries would both get them: two syncs of one customer at once, the later
one looking Klaviyo up while the first one's write does not show in the filters yet.

A batch claims its task ids before it starts and gives them up when it has finished with them, before
it sends any customer back to the queue (a requeued message keeps its task id and must never be taken
for a duplicate). A delivery whose task id another batch of this process holds is acknowledged and
dropped: the batch that holds it records the customer's outcome or sends it back to the queue.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class HeldDeliveries:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[str] = set()

    def claim(self, task_ids: Iterable[str]) -> tuple[set[str], set[str]]:
        """Claim the ids no batch of this process holds; returns (claimed, held elsewhere)."""
        with self._lock:
            ids = set(task_ids)
            duplicates = ids & self._held
            claimed = ids - duplicates
            self._held |= claimed
        return claimed, duplicates

    def release(self, task_ids: Iterable[str]) -> None:
        with self._lock:
            self._held.difference_update(task_ids)


#: This process's batches (the backfill worker runs several on its threads pool).
HELD = HeldDeliveries()
