"""The pure undo plan: restore what is still ours, report what changed since, never send null."""

from __future__ import annotations

from worker.models import KlaviyoProfile
from worker.undo import group_journal, plan_undo


def entry(field: str, old, new, profile_id: str = "P1") -> dict:
    return {"run": "r", "tenant": "t", "customer_id": "c1", "profile_id": profile_id, "field": field,
            "old": old, "new": new, "at": 0}


def profile(**attributes) -> KlaviyoProfile:
    return KlaviyoProfile(id="P1", attributes=attributes)


def test_a_value_still_ours_is_restored():
    plan = plan_undo([entry("first_name", "Janet", "Jane")], profile(first_name="Jane"))
    assert plan.restore == {"first_name": "Janet"} and plan.conflicts == {}
    assert plan.attributes == {"first_name": "Janet"}


def test_a_value_changed_after_our_write_is_a_conflict_and_kept():
    plan = plan_undo([entry("first_name", "Janet", "Jane")], profile(first_name="Brand edit"))
    assert plan.restore == {} and plan.conflicts == {"first_name": ("Jane", "Brand edit")}


def test_a_value_already_back_is_left_alone():
    assert plan_undo([entry("first_name", "Janet", "Jane")], profile(first_name="Janet")).restore == {}


def test_nested_fields_go_back_into_their_groups():
    plan = plan_undo([entry("properties.Points", 5, 10), entry("location.city", "Old", "New")],
                     profile(properties={"Points": 10}, location={"city": "New"}))
    assert plan.attributes == {"properties": {"Points": 5}, "location": {"city": "Old"}}


def test_a_field_written_twice_goes_back_to_its_first_old_value():
    plan = plan_undo([entry("first_name", "A", "B"), entry("first_name", "B", "C")], profile(first_name="C"))
    assert plan.restore == {"first_name": "A"}


def test_a_profile_gone_from_klaviyo_is_reported():
    assert plan_undo([entry("first_name", "A", "B")], None).missing


def test_entries_are_grouped_per_profile_in_order():
    grouped = group_journal([entry("a", 1, 2, "P1"), entry("b", 1, 2, "P2"), entry("c", 1, 2, "P1")])
    assert [e["field"] for e in grouped["P1"]] == ["a", "c"] and list(grouped) == ["P1", "P2"]
