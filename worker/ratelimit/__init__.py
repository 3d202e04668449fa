"""Klaviyo's rate limits, fleet-wide: the limiter in Redis (`limiter`), the account each key is limited
under (`accounts`), and the gate every Klaviyo request passes (`gate`)."""

from worker.ratelimit.limiter import (
    BUILT_IN,
    EndpointLimit,
    LimiterUnavailable,
    RateLimiter,
    Window,
    endpoint_limits,
    key_fingerprint,
    load_spec_limits,
)
from worker.settings import TRANSIT_S

__all__ = ["BUILT_IN", "TRANSIT_S", "EndpointLimit", "LimiterUnavailable", "RateLimiter", "Window", "endpoint_limits",
           "key_fingerprint", "load_spec_limits"]
