"""Models parsed at the boundary: a Loyale customer snapshot (the task payload) and a Klaviyo profile.

Inbound models ignore unknown fields, so a new upstream field never breaks a sync. A Loyale value of
the wrong type (a number where a name belongs, an object where a date belongs) does not make the whole
customer invalid: it is dropped and a warning says which field, so the rest of the customer still syncs.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


def _warn(info: ValidationInfo, message: str) -> None:
    if isinstance(info.context, dict):
        info.context.setdefault("warnings", []).append(message)


def parse_datetime(value: Any) -> datetime | None:
    """ISO-8601 in any of Loyale's shapes ("...Z", fractions, offsets, date only) -> aware UTC."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python < 3.12 accepts at most 6 fraction digits; .NET sends 7.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        tail = rest[len(digits):]
        text = f"{head}.{digits[:6]}{tail}" if digits else head + tail
    for candidate in (text, text.replace("/", "-")):
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


class AdditionalField(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: str | None = None
    value: Any = None
    internal: bool = False

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, value: Any, info: ValidationInfo) -> str | None:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        _warn(info, f"additional field key: ignored a value of type {type(value).__name__}, expected text")
        return None

    @field_validator("internal", mode="before")
    @classmethod
    def _internal(cls, value: Any, info: ValidationInfo) -> bool:
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        # Unreadable: treat the field as the brand's own bookkeeping rather than risk publishing it.
        _warn(info, f"additional field internal: {type(value).__name__} value is not true/false, so not synced")
        return True


class LoyaleCustomer(BaseModel):
    """A Loyale customer as the producer snapshotted it (CustomerResultView, trimmed, plus level names)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    id: str
    email: str | None = None
    first_name: str | None = Field(default=None, alias="firstName")
    last_name: str | None = Field(default=None, alias="lastName")
    dob: str | None = None
    area_code: str | None = Field(default=None, alias="areaCode")
    mobile_number: str | None = Field(default=None, alias="mobileNumber")
    address_line1: str | None = Field(default=None, alias="addressLine1")
    address_line2: str | None = Field(default=None, alias="addressLine2")
    town: str | None = None
    state: str | None = None
    post_code: str | None = Field(default=None, alias="postCode")
    country: str | None = None
    profile_image_url: str | None = Field(default=None, alias="profileImageUrl")
    marketing_sub: bool | None = Field(default=None, alias="marketingSub")
    deleted: bool = False
    on_hold: bool = Field(default=False, alias="onHold")
    updated_date: datetime | None = Field(default=None, alias="updatedDate")
    updated_by: str | None = Field(default=None, alias="updatedBy")
    points_balance: float | None = None
    monetary_balance: float | None = None
    level_names: list[str] = Field(default_factory=list, alias="levelNames")
    #: When the customer reached each level held (name -> Loyale's `detailedLevels[].createdDate`), for
    #: the time of a `Loyale Level Reached` event; empty when Loyale gives no date.
    level_since: dict[str, datetime] = Field(default_factory=dict, alias="levelSince")
    #: The producer could not read the customer's levels (or the payload carries no `levelNames`):
    #: Klaviyo's `Levels` is left as it is. False only when `levelNames` is a list Loyale confirmed.
    levels_unknown: bool = Field(default=False, alias="levelsUnknown")
    #: Loyale's `schemes` list no longer holds the tenant's scheme: the customer left it (opted out).
    left_scheme: bool = Field(default=False, alias="leftScheme")
    tags: list[str] = Field(default_factory=list)
    additional_fields: list[AdditionalField] = Field(default_factory=list, alias="additionalCustomerFields")
    #: What the producer's parse of Loyale's record dropped (a value of the wrong type...): it travels with
    #: the snapshot so that the worker records it with the outcome, as if it had parsed the record itself.
    parse_warnings: list[str] = Field(default_factory=list, alias="parseWarnings")

    @model_validator(mode="before")
    @classmethod
    def _levels_known(cls, data: Any) -> Any:
        # Fail safe: only a `levelNames` list means "these are all the levels" (an empty list: none).
        if isinstance(data, dict) and not isinstance(data.get("levelNames", data.get("level_names")), list):
            return {**data, "levelsUnknown": True}
        return data

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        if isinstance(value, int | str) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
        raise ValueError("the customer has no id")

    @field_validator(
        "email", "first_name", "last_name", "dob", "area_code", "mobile_number", "address_line1",
        "address_line2", "town", "state", "post_code", "country", "profile_image_url", "updated_by",
        mode="before",
    )
    @classmethod
    def _string(cls, value: Any, info: ValidationInfo) -> str | None:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        _warn(info, f"{info.field_name}: ignored a value of type {type(value).__name__}, expected text")
        return None

    @field_validator("levels_unknown", "left_scheme", mode="before")
    @classmethod
    def _flag(cls, value: Any, info: ValidationInfo) -> bool:
        # Each unreadable value reads as the safe side: levels unknown (touch nothing), not left (suppress no one).
        if value is None or value is False or (isinstance(value, str) and value.strip().lower() == "false"):
            return False
        if value is True or (isinstance(value, str) and value.strip().lower() == "true"):
            return True
        return info.field_name == "levels_unknown"

    @field_validator("marketing_sub", "deleted", "on_hold", mode="before")
    @classmethod
    def _boolean(cls, value: Any, info: ValidationInfo) -> bool | None:
        if isinstance(value, bool):
            return value
        if value is None:
            return None if info.field_name == "marketing_sub" else False
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        _warn(info, f"{info.field_name}: ignored {type(value).__name__} value, expected true/false")
        return None if info.field_name == "marketing_sub" else False

    @field_validator("updated_date", mode="before")
    @classmethod
    def _date(cls, value: Any, info: ValidationInfo) -> datetime | None:
        parsed = parse_datetime(value)
        if value not in (None, "") and parsed is None:
            _warn(info, "updatedDate: not a date, so out-of-order updates cannot be detected")
        return parsed

    @field_validator("points_balance", "monetary_balance", mode="before")
    @classmethod
    def _number(cls, value: Any, info: ValidationInfo) -> float | None:
        if value is None or isinstance(value, bool):
            return None
        try:
            number = float(value) if isinstance(value, int | float) else float(str(value))
        except (ValueError, OverflowError):  # OverflowError: an integer of hundreds of digits
            number = math.nan
        if not math.isfinite(number):  # "NaN", "Infinity", "1e999": JSON cannot carry them to Klaviyo
            _warn(info, f"{info.field_name}: ignored a value that is not a finite number")
            return None
        return number

    @field_validator("level_names", "tags", mode="before")
    @classmethod
    def _names(cls, value: Any, info: ValidationInfo) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            _warn(info, f"{info.field_name}: ignored a value that is not a list")
            return []
        return [str(v) for v in value if isinstance(v, str | int | float) and str(v).strip()]

    @field_validator("level_since", mode="before")
    @classmethod
    def _level_since(cls, value: Any) -> dict[str, datetime]:
        if not isinstance(value, dict):
            return {}
        return {str(name): moment for name, raw in value.items() if (moment := parse_datetime(raw)) is not None}

    @field_validator("parse_warnings", mode="before")
    @classmethod
    def _parse_warnings(cls, value: Any) -> list[str]:
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    @field_validator("additional_fields", mode="before")
    @classmethod
    def _fields(cls, value: Any, info: ValidationInfo) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            _warn(info, "additionalCustomerFields: ignored a value that is not a list")
            return []
        return [v for v in value if isinstance(v, dict)]

    @property
    def opted_in(self) -> bool:
        """Consent as DESIGN.md defines it: opted in, and not deleted, suspended, on hold or gone from the scheme."""
        return self.marketing_sub is True and not self.deleted and not self.on_hold and not self.left_scheme


def parse_customer(raw: dict[str, Any] | LoyaleCustomer) -> tuple[LoyaleCustomer, list[str]]:
    """Validate a task payload (or take a snapshot already parsed by the producer); returns the customer
    and the warnings about dropped values, those recorded when the producer parsed it included."""
    if isinstance(raw, LoyaleCustomer):
        return raw, list(raw.parse_warnings)
    context: dict[str, list[str]] = {"warnings": []}
    customer = LoyaleCustomer.model_validate(raw, context=context)
    return customer, [*customer.parse_warnings, *context["warnings"]]


# --- Klaviyo --------------------------------------------------------------------------------------

SUPPRESSION_USER = "USER_SUPPRESSED"


class KlaviyoProfile(BaseModel):
    """A Klaviyo profile as GET /api/profiles returns it (with additional-fields=subscriptions)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    attributes: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_resource(cls, resource: dict[str, Any]) -> KlaviyoProfile:
        return cls(id=str(resource["id"]), attributes=dict(resource.get("attributes") or {}))

    def value(self, path: str) -> Any:
        """The value at a dotted path such as `location.city` or `properties.Levels`."""
        node: Any = self.attributes
        for part in path.split(".", 1) if path.startswith(("location.", "properties.")) else [path]:
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node

    @property
    def email(self) -> str | None:
        value = self.attributes.get("email")
        return value.strip().lower() if isinstance(value, str) else None

    @property
    def phone(self) -> str | None:
        value = self.attributes.get("phone_number")
        return value.strip() if isinstance(value, str) and value.strip() else None

    @property
    def external_id(self) -> str | None:
        value = self.attributes.get("external_id")
        return str(value) if value not in (None, "") else None

    @property
    def suppression_reasons(self) -> list[str]:
        node: Any = self.attributes.get("subscriptions")
        for name in ("email", "marketing", "suppression"):  # any other shape reads as "no suppression"
            node = node.get(name) if isinstance(node, dict) else None
        return [str(s.get("reason")) for s in node if isinstance(s, dict)] if isinstance(node, list) else []
