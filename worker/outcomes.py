"""The terminal outcomes of a customer in a run (DESIGN.md, decision 9)."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    CREATED = "created"                        #: a new Klaviyo profile was created
    UPDATED = "updated"                        #: fields of an existing profile were written
    UNCHANGED = "unchanged"                    #: Klaviyo already matched; nothing was sent
    SKIPPED_EXISTING = "skipped_existing"      #: merge off: the existing profile was left as it is
    SKIPPED_NO_CONSENT = "skipped_no_consent"  #: not opted in and not in Klaviyo: never created
    SUPPRESSED = "suppressed"                  #: opted out (or deleted/suspended): suppressed in Klaviyo
    UNSUPPRESSED = "unsuppressed"              #: opted in again: our own suppression was lifted
    STALE = "stale"                            #: an older snapshot than one already synced: dropped
    INVALID = "invalid"                        #: refused before sending (no email and phone, bad email)
    REJECTED = "rejected"                      #: Klaviyo refused it (4xx); its detail is kept
    CONFLICT = "conflict"                      #: email and external id point at different profiles
    FAILED = "failed"                          #: retries exhausted or tenant paused; re-drivable


#: Outcomes an operator has to look at; `loyale-sync failures` lists FAILED and REJECTED.
PROBLEMS = frozenset({Outcome.INVALID, Outcome.REJECTED, Outcome.CONFLICT, Outcome.FAILED})
#: Outcomes `loyale-sync retry-failures` re-drives: FAILED, and REJECTED, which the task never retries
#: (Klaviyo refused the data) but which is worth another try once the data or the account is fixed.
REDRIVABLE = frozenset({Outcome.FAILED, Outcome.REJECTED})
#: Outcomes after which the snapshot counts as synced (a later, older snapshot is stale).
SETTLED = frozenset(Outcome) - {Outcome.FAILED, Outcome.STALE}


#: Outcomes an attempt plans only when its lookup found the customer's profile in Klaviyo.
FOUND_A_PROFILE = frozenset({Outcome.UPDATED, Outcome.UNSUPPRESSED, Outcome.SUPPRESSED})

LOOKUP_LAGS = ("Klaviyo's lookup shows no profile for this customer, but an earlier attempt of this run found one "
               "and wrote to it (Klaviyo's filters lag behind writes): tried again later rather than sent as new")


def lookup_lags(planned: str | None, now: Outcome, profile_id: str | None) -> bool:
    """Whether this attempt's lookup contradicts an earlier attempt of the same run: that one found the
    customer's profile and planned a write (`planned`), this one finds no profile at all. Klaviyo's
    filters lag behind writes (ours included: a duplicate delivery of the message, or a redelivery after
    the first attempt's write), so "not found" is not a fact here. Acting on it would report `created`
    for a profile that existed and, with merge off, upsert every Loyale field over the brand's data."""
    return planned is not None and Outcome(planned) in FOUND_A_PROFILE and profile_id is None \
        and now in (Outcome.CREATED, Outcome.SKIPPED_NO_CONSENT)


def after_interruption(planned: str | None, now: Outcome) -> Outcome:
    """The outcome to report when an earlier attempt of this run planned `planned` and may have
    written it before its worker died: a write that took effect is not `unchanged` the second time."""
    if planned is None:
        return now
    earlier = Outcome(planned)
    if now in (Outcome.UNCHANGED, Outcome.SKIPPED_EXISTING) or (now == Outcome.UPDATED and earlier == Outcome.CREATED):
        return earlier
    return now
