"""KlaviyoClient against the fake Klaviyo over real HTTP: what the fake really does with the requests
(round trips, paging, jobs, suppression, a real stall and a real dropped connection). Which status
means what is the unit table in tests/test_klaviyo_statuses.py."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from tests.integration.scenario import private_key
from worker.errors import DuplicateProfile, RetryableError
from worker.klaviyo import KlaviyoClient


@pytest.fixture(autouse=True)
def kind_klaviyo(klaviyo) -> None:
    """The client's own contract, request by request: against the kind fake (jobs done on the next
    read, no lags); the sync's handling of the realistic one is tested in test_realism.py."""
    klaviyo.kind()


@pytest.fixture
def account(klaviyo) -> tuple[str, str]:
    key = private_key()
    return key, klaviyo.add_account(keys=[{"key": key}])


@pytest.fixture
def key(account) -> str:
    return account[0]


def client(klaviyo, key: str, timeout_s: float = 10.0) -> KlaviyoClient:
    return KlaviyoClient(httpx.Client(timeout=timeout_s), tenant="t", base_url=klaviyo.base_url,
                         private_key=SecretStr(key), revision="2026-07-15")


def test_create_find_update_round_trip(klaviyo, key):
    kc = client(klaviyo, key)
    created = kc.create_profile({"email": "ann@example.com", "external_id": "c-1", "first_name": "Ann",
                                 "properties": {"Levels": ["Gold"]}})
    assert kc.find_one("email", "ann@example.com").id == created.id
    assert kc.find_one("external_id", "c-1").id == created.id
    assert kc.find_one("email", "nobody@example.com") is None
    updated = kc.update_profile(created.id, {"last_name": "Lee", "properties": {"Tier": "x"}})
    assert updated.value("first_name") == "Ann" and updated.value("properties.Levels") == ["Gold"]
    assert [p.id for p in kc.find_many("email", ["ann@example.com", "x@example.com"])] == [created.id]


def test_find_many_chunks_values_into_lookups_of_100(klaviyo, account):
    key, account_id = account
    kc = client(klaviyo, key)
    klaviyo.seed_profiles([{"email": f"p{i}@example.com"} for i in range(250)], account_id=account_id)
    found = kc.find_many("email", [f"p{i}@example.com" for i in range(250)])
    assert len({p.id for p in found}) == 250
    assert klaviyo.requests()["by_endpoint"]["GET /api/profiles"] == 3


def test_suppress_and_unsuppress(klaviyo, key):
    kc = client(klaviyo, key)
    profile = kc.create_profile({"email": "sup@example.com"})
    kc.suppress(["sup@example.com"])
    assert kc.find_one("email", "sup@example.com").suppression_reasons == ["USER_SUPPRESSED"]
    kc.unsuppress(["sup@example.com"])
    assert kc.find_one("email", "sup@example.com").suppression_reasons == []
    assert klaviyo.profile(profile.id)["subscriptions"]["email"]["marketing"]["can_receive_email_marketing"]


def test_duplicate_identifier_is_a_duplicate_profile_with_the_owner(klaviyo, key):
    kc = client(klaviyo, key)
    owner = kc.create_profile({"email": "a@example.com", "phone_number": "+35679123456"})
    with pytest.raises(DuplicateProfile) as caught:
        kc.create_profile({"email": "b@example.com", "phone_number": "+35679123456"})
    assert caught.value.duplicate_profile_id == owner.id


def test_a_dropped_connection_is_retryable(klaviyo, key):
    klaviyo.set_knobs(drop_rate=1.0)
    with pytest.raises(RetryableError, match="connection to Klaviyo failed"):
        client(klaviyo, key).find_one("email", "a@example.com")


def test_a_stall_longer_than_the_timeout_is_retryable(klaviyo, key):
    klaviyo.set_knobs(stall_rate=1.0, stall_s=2.0)
    with pytest.raises(RetryableError, match="did not answer in time"):
        client(klaviyo, key, timeout_s=0.5).find_one("email", "a@example.com")


def test_bulk_import_job_and_its_errors(klaviyo, key):
    kc = client(klaviyo, key)
    kc.create_profile({"email": "x@example.com", "phone_number": "+35679000001"})
    kc.create_profile({"email": "other@example.com"})
    job = kc.start_bulk_import([
        {"type": "profile", "attributes": {"email": "new@example.com", "external_id": "n-1"}},
        # email and phone belong to two different profiles: that row fails, the other goes through
        {"type": "profile", "attributes": {"email": "other@example.com", "phone_number": "+35679000001"}},
    ])
    while not (job := kc.bulk_import_job(job.id)).done:
        pass
    assert (job.completed_count, job.failed_count) == (1, 1)
    [error] = kc.import_errors(job.id)
    assert error.attributes["email"] == "other@example.com"
