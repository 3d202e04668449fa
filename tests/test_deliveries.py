"""`worker.deliveries.HeldDeliveries`: a message two batches of one process are handed at once is synced
by the first only, and a message sent back to the queue after its batch is taken again."""

from __future__ import annotations

from worker.deliveries import HeldDeliveries


def test_a_second_delivery_of_a_held_message_is_a_duplicate_until_its_batch_lets_go():
    held = HeldDeliveries()
    assert held.claim(["a", "b"]) == ({"a", "b"}, set())
    # kombu gave "b" back on a dropped connection; it arrives in another batch with "c"
    assert held.claim(["b", "c"]) == ({"c"}, {"b"})
    held.release({"a", "b"})
    # "b" requeued by its batch (same task id) after the release: a new delivery, synced
    assert held.claim(["b"]) == ({"b"}, set())
    assert held.claim(["c"]) == (set(), {"c"})
