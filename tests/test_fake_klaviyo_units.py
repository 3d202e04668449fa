"""The fake Klaviyo's pure helpers: filter parser, fixed windows, ids, validation, knobs."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from fakes.klaviyo.app import create_app
from fakes.klaviyo.config import Knobs
from fakes.klaviyo.filters import Condition, FilterError, parse_filter
from fakes.klaviyo.profiles import UlidGenerator, is_e164, is_valid_email
from fakes.klaviyo.ratelimit import RateLimiter, ceil_seconds, scaled
from fakes.klaviyo.spec import Limit, allow_null_in_nullable_oneof, load_spec_info, parse_rate


def test_filter_equals_and_any_with_either_quote() -> None:
    assert parse_filter('equals(email,"a@x.com")') == [Condition("equals", "email", "a@x.com")]
    assert parse_filter("equals(email,'a@x.com')") == [Condition("equals", "email", "a@x.com")]
    assert parse_filter("any(external_id,['L-1', \"L-2\"])") == [Condition("any", "external_id", ["L-1", "L-2"])]


def test_filter_commas_and_nested_and_are_conjunctions() -> None:
    conds = parse_filter(
        'equals(email,"a@x.com"),and(less-than(updated,2023-04-26T00:00:00Z),greater-than(created,"2023-04-19"))'
    )
    assert [(c.op, c.field) for c in conds] == [
        ("equals", "email"), ("less-than", "updated"), ("greater-than", "created")]
    assert conds[1].value == datetime(2023, 4, 26, tzinfo=UTC)
    assert conds[2].value == datetime(2023, 4, 19, tzinfo=UTC)


def test_filter_keeps_commas_and_escaped_quotes_inside_strings() -> None:
    assert parse_filter(r'equals(external_id,"a,b\"c")') == [Condition("equals", "external_id", 'a,b"c')]


@pytest.mark.parametrize("text", [
    'equals(first_name,"x")',          # field not filterable
    'greater-than(email,"x")',          # operator not allowed on the field
    'equals(email,["a"])',             # equals needs a scalar
    'any(email,"a")',                   # any needs a list
    "greater-than(updated,yesterday)",  # not a datetime
    'equals(email,"a"',                 # unbalanced
    'or(equals(email,"a"),equals(email,"b"))',
    'equals(_kx,"abc")',                # valid in Klaviyo, not modelled
])
def test_filter_rejects_what_it_cannot_answer(text: str) -> None:
    with pytest.raises(FilterError):
        parse_filter(text)


def test_filter_caps_any_values() -> None:
    values = ",".join(f'"{i}"' for i in range(101))
    assert len(parse_filter(f"any(id,[{values}])", max_any_values=0)[0].value) == 101
    with pytest.raises(FilterError, match="at most 100"):
        parse_filter(f"any(id,[{values}])", max_any_values=100)


def test_fixed_windows_count_burst_and_steady_separately() -> None:
    limiter = RateLimiter()
    bucket = ("acct", "GET /api/profiles")
    burst, steady = (2, 1.0), (3, 60.0)
    t0 = 100.0
    assert limiter.hit(bucket, burst, steady, t0).remaining == 2
    assert limiter.hit(bucket, burst, steady, t0 + 0.1).remaining == 1
    refused = limiter.hit(bucket, burst, steady, t0 + 0.2)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(0.8)   # burst window of t0
    assert limiter.hit(bucket, burst, steady, t0 + 1.0).remaining == 0           # new burst window
    steady_refusal = limiter.hit(bucket, burst, steady, t0 + 2.5)
    assert not steady_refusal.allowed and steady_refusal.retry_after_s == pytest.approx(57.5)
    assert limiter.hit(bucket, burst, steady, t0 + 60.0).allowed                  # steady window reset
    # Other buckets (another account or endpoint) are untouched.
    assert limiter.hit(("other", "GET /api/profiles"), burst, steady, t0 + 2.5).allowed


def test_scaling_and_header_seconds() -> None:
    assert scaled(Limit(75, 1.0), 0.1, 1.0) == (7, 1.0)
    assert scaled(Limit(1, 1.0), 0.1, 0.05) == (1, 0.05)       # never below one request
    assert scaled(Limit(750, 60.0), 1.0, 0.05) == (750, 3.0)
    assert [ceil_seconds(s) for s in (0.0, 0.01, 1.0, 1.2, 59.9)] == [0, 1, 1, 2, 60]
    assert parse_rate("750/m") == Limit(750, 60.0) and parse_rate("1/s") == Limit(1, 1.0)


def test_ulids_are_26_chars_and_strictly_increasing() -> None:
    gen = UlidGenerator(seed=1)
    ids = [gen.new() for _ in range(1000)]
    assert all(len(i) == 26 and set(i) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ") for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_email_and_phone_validation() -> None:
    assert is_valid_email("sarah.mason+tag@klaviyo-demo.com")
    assert not any(is_valid_email(e) for e in ("no-at-sign", "a@b", "a b@x.com", "a@x..com", " a@x.com"))
    assert is_e164("+15005550006") and is_e164("+447700900123")
    assert not any(is_e164(p) for p in ("15005550006", "+1234", "+1 500 555 0006", "+0123456789", "(500) 555"))


def test_knob_updates_are_checked() -> None:
    knobs = Knobs().updated({"error_rate": 1, "error_statuses": [503], "seed": 3})
    assert knobs.error_rate == 1.0 and knobs.error_statuses == [503] and knobs.seed == 3
    for bad in ({"nope": 1}, {"error_rate": 2}, {"window_scale": 0}, {"omit_retry_after": "yes"},
                {"error_statuses": [200]}, {"request_log_size": -1}):
        with pytest.raises(ValueError):
            Knobs().updated(bad)


def test_missing_spec_falls_back_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fakes.klaviyo"):
        info = load_spec_info(tmp_path / "absent.json")
    assert info.source == "builtin" and info.raw is None
    assert "built-in" in caplog.text and "absent.json" in caplog.text
    accounts = info.operations[("GET", "/api/accounts")]
    assert (accounts.burst, accounts.steady, accounts.scopes) == (Limit(1, 1.0), Limit(15, 60.0), ("accounts:read",))
    bulk = info.operations[("POST", "/api/profile-bulk-import-jobs")]
    assert (bulk.burst, bulk.steady) == (Limit(10, 1.0), Limit(150, 60.0))


def test_nullable_unions_accept_null_after_normalisation() -> None:
    schema = {"properties": {"latitude": {"nullable": True, "oneOf": [{"type": "string"}, {"type": "number"}]},
                             "city": {"nullable": True, "type": "string"}}}
    fixed = allow_null_in_nullable_oneof(schema)
    assert fixed["properties"]["latitude"]["oneOf"][-1] == {"enum": [None]}
    assert "oneOf" not in fixed["properties"]["city"]
    assert allow_null_in_nullable_oneof(fixed) == fixed  # idempotent


def test_the_fake_reports_how_late_its_event_loop_was_since_it_was_last_asked():
    """A request waits in the fake's event loop before it is counted against a rate limit: the
    benchmark reads this lateness beside the 429s it sees."""
    with TestClient(create_app()) as client:
        client.get("/_fake/loop-lag")                  # from here on
        client.portal.call(lambda: time.sleep(1.0))    # block the event loop for a second
        late_s = client.get("/_fake/loop-lag").json()["loop_lag_max_s"]
        again_s = client.get("/_fake/loop-lag").json()["loop_lag_max_s"]
    assert late_s >= 0.9
    assert again_s < late_s      # reading resets it
