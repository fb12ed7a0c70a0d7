"""Every way the hub refuses a request: the reason's label (counted at /metrics) and the HTTP
status it is answered with, in one table."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Rejection(Enum):
    """A reason to refuse a request; `.label` names it at /metrics, `.status` is its HTTP status."""

    RATE_LIMITED = ("rate_limited", 429)
    EVICT_LIMITED = ("evict_limited", 429)
    BODY_TOO_LARGE = ("body_too_large", 413)
    BAD_JSON = ("bad_json", 400)
    BAD_NAME = ("bad_name", 400)
    TOO_MANY_CHANNELS = ("too_many_channels", 400)
    CHANNEL_FULL = ("channel_full", 429)
    NOT_FOUND = ("not_found", 404)
    METHOD_NOT_ALLOWED = ("method_not_allowed", 405)
    BAD_RECORD = ("bad_record", 400)
    BAD_SIGNATURE = ("bad_signature", 403)
    NAME_TAKEN = ("name_taken", 409)
    STALE_RECORD = ("stale_record", 409)
    NAMES_FULL = ("names_full", 429)
    UNAVAILABLE = ("unavailable", 503)

    def __init__(self, label: str, status: int) -> None:
        self.label = label
        self.status = status


@dataclass(frozen=True, slots=True)
class Refused:
    """A refusal decided by a sans-IO part of the hub: why, and one line saying what to do."""

    reason: Rejection
    message: str


REJECTION_REASONS = tuple(r.label for r in Rejection)
