"""Builders for test data: a Loyale customer payload and a Klaviyo profile, with overrides."""

from __future__ import annotations

from typing import Any

from worker.models import KlaviyoProfile


def loyale_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": "c-1",
        "email": "Jane@Example.com",
        "firstName": "Jane",
        "lastName": "Doe",
        "dob": "1990-05-01T00:00:00Z",
        "areaCode": "+356",
        "mobileNumber": "79123456",
        "addressLine1": "1 Main St",
        "town": "Valletta",
        "postCode": "VLT 1000",
        "country": "Malta",
        "marketingSub": True,
        "deleted": False,
        "onHold": False,
        "updatedDate": "2026-01-02T10:00:00.000000Z",
        "points_balance": 1200,
        "monetary_balance": 12.5,
        "levelNames": ["Gold"],
        "tags": ["vip"],
        "additionalCustomerFields": [{"key": "ShoeSize", "value": "38", "internal": False}],
    }
    payload.update(overrides)
    return payload


def klaviyo_profile(profile_id: str = "01KPROFILE0000000000000001", *, suppression: list[str] | None = None,
                    properties: dict[str, Any] | None = None, location: dict[str, Any] | None = None,
                    **attributes: Any) -> KlaviyoProfile:
    attrs: dict[str, Any] = {"email": "jane@example.com", "properties": properties or {}, "location": location or {}}
    attrs.update(attributes)
    attrs["subscriptions"] = {"email": {"marketing": {
        "can_receive_email_marketing": not suppression, "consent": "SUBSCRIBED",
        "suppression": [{"reason": r, "timestamp": "2026-01-01T00:00:00+00:00"} for r in suppression or []],
    }}}
    return KlaviyoProfile(id=profile_id, attributes=attrs)
