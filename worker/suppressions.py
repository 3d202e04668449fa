"""Suppressions Klaviyo has not applied yet, checked again until they have.

Klaviyo applies suppress and unsuppress jobs minutes to hours after accepting them, and two jobs for
one email (an opt-out, then an opt-in inside that lag) may land in either order. Every job this
service sends is remembered as pending (`Store.mark_suppressed` / `mark_unsuppressed`); this re-check,
run by beat, reads each pending email's profile once its job has finished (or once it is overdue) and
sends the last action Loyale asked for again if Klaviyo does not show it. So an opted-out customer
never stays marketable because a suppression was "already sent", nor the reverse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from worker.klaviyo import KlaviyoClient
from worker.models import SUPPRESSION_USER, KlaviyoProfile
from worker.store import Store

log = structlog.get_logger("suppressions")

FINISHED = ("complete", "cancelled")


@dataclass
class Recheck:
    settled: int = 0
    resent: int = 0
    waiting: int = 0


def shows(action: str, profile: KlaviyoProfile | None) -> bool:
    """Klaviyo's profile shows `action` applied (no profile: nothing left to suppress or lift)."""
    if profile is None:
        return True
    suppressed = bool(profile.suppression_reasons)
    return suppressed if action == "suppress" else SUPPRESSION_USER not in profile.suppression_reasons


def recheck_suppressions(store: Store, klaviyo: KlaviyoClient, tenant: str, *, overdue_s: float,
                         now: float | None = None) -> Recheck:
    """Check every pending suppression of the tenant once; returns what became of them."""
    now = time.time() if now is None else now
    result = Recheck()
    profile_ids = store.profile_ids_of(tenant)
    for email, entry in store.pending_suppressions(tenant).items():
        action = entry.get("action")
        if action not in ("suppress", "unsuppress"):
            store.settle_suppression(tenant, email, entry)
            continue
        overdue = now - float(entry.get("at") or 0) >= overdue_s
        job = entry.get("job") or ""
        if job and not overdue and klaviyo.suppression_job_status(action, job) not in FINISHED:
            result.waiting += 1
            continue
        profile = _profile(klaviyo, email, profile_ids.get(entry.get("customer_id") or ""))
        if shows(action, profile):
            store.settle_suppression(tenant, email, entry)
            result.settled += 1
            continue
        # The job ended (or is overdue) and Klaviyo does not show it: send the last wish again.
        send = klaviyo.suppress if action == "suppress" else klaviyo.unsuppress
        mark = store.mark_suppressed if action == "suppress" else store.mark_unsuppressed
        job_ids = send([email])
        mark(tenant, email, job_ids[0] if job_ids else "", entry.get("customer_id") or "")
        result.resent += 1
        log.warning("suppression_resent", tenant=tenant, action=action, customer_id=entry.get("customer_id"),
                    overdue=overdue)
    return result


def _profile(klaviyo: KlaviyoClient, email: str, profile_id: str | None) -> KlaviyoProfile | None:
    """Read by id where known: a read by id sees the profile's current state, a filter may lag."""
    if profile_id:
        found = klaviyo.get_profile(profile_id)
        if found is not None:
            return found
    return klaviyo.find_one("email", email)
