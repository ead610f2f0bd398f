"""The audit record: what callers hand the writer (AuditEvent) and what a chain holds.

Records carry digests and identifiers, never bodies or personal data: ``principal`` is the
pairwise identifier, ``request_digest`` / ``response_digest`` are ``alg:hex`` digests.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from gateway.audit.canonical import CanonicalError, HashAlg, canonical_bytes

RECORD_VERSION: Final = 1
EXTRA_MAX_BYTES: Final = 2048


class EventType(enum.StrEnum):
    LOGIN = "login"
    TOKEN_ISSUED = "token_issued"
    TOKEN_REFRESHED = "token_refreshed"
    TOKEN_REVOKED = "token_revoked"
    LOGOUT = "logout"
    SERVICE_CALL_REQUESTED = "service_call_requested"
    SERVICE_CALL_COMPLETED = "service_call_completed"
    CASE_TRANSITION = "case_transition"
    CALLBACK_RECEIVED = "callback_received"
    ADMIN_ACTION = "admin_action"
    CONFIG_LOADED = "config_loaded"
    KEY_ROTATED = "key_rotated"


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and ``Z``: fixed width, so text order is time order."""
    if moment.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:26] + "Z"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """What happened, as a caller reports it. The writer adds chain, sequence, time and hashes."""

    type: EventType
    request_id: str | None = None
    case_id: str | None = None
    actor: str | None = None
    """Who acted when not the principal: a window clerk, an agent, an operator."""
    principal: str | None = None
    """Pairwise identifier of the person or enterprise concerned; never an ID number."""
    identity_level: str | None = None
    client: str | None = None
    service: str | None = None
    receiving_province: str | None = None
    handling_province: str | None = None
    system: str | None = None
    operation: str | None = None
    purpose: str | None = None
    outcome: str | None = None
    """ok, error, denied, or a case step outcome (补齐补正 / 不予受理 / 退件 codes)."""
    error_code: str | None = None
    attempts: int | None = None
    latency_ms: int | None = None
    request_digest: str | None = None
    response_digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Small, non-personal details (≤ 2 KiB canonical); integers, strings, booleans only."""
    time: datetime | None = None
    """When it happened; the writer's clock when left out."""

    def __post_init__(self) -> None:
        # Refuse a bad event at the caller, not later inside a batch shared with others.
        if type(self.type) is not EventType:
            object.__setattr__(self, "type", EventType(self.type))
        for name in ("attempts", "latency_ms"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"{name} must be a non-negative integer")
        if self.extra:
            try:
                size = len(canonical_bytes(self.extra))
            except CanonicalError as exc:
                raise ValueError(f"extra: {exc}") from exc
            if size > EXTRA_MAX_BYTES:
                raise ValueError(f"extra is {size} bytes; at most {EXTRA_MAX_BYTES}")


# Content fields in record order; the canonical encoding sorts keys anyway.
CONTENT_FIELDS: Final = (
    "request_id",
    "case_id",
    "actor",
    "principal",
    "identity_level",
    "client",
    "service",
    "receiving_province",
    "handling_province",
    "system",
    "operation",
    "purpose",
    "outcome",
    "error_code",
    "attempts",
    "latency_ms",
    "request_digest",
    "response_digest",
)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One sealed link of a chain: ``text`` is the canonical record, ``hash`` chains it."""

    chain: str
    sequence: int
    time: str
    alg: HashAlg
    prev_hash: str
    hash: str
    text: str
    event: AuditEvent

    def as_dict(self) -> dict[str, Any]:
        return record_body(
            self.event, self.chain, self.sequence, self.time, self.alg, self.prev_hash
        )

    @classmethod
    def from_stored(cls, text: str, hash: str) -> AuditRecord:
        """Read a stored record back (for access logs and admin views; not a verification)."""
        body = orjson.loads(text)
        event = AuditEvent(
            type=EventType(body["type"]),
            extra=body.get("extra") or {},
            time=datetime.fromisoformat(body["time"]),
            **{name: body.get(name) for name in CONTENT_FIELDS},
        )
        return cls(
            chain=body["chain"],
            sequence=body["sequence"],
            time=body["time"],
            alg=body["alg"],
            prev_hash=body["prev_hash"],
            hash=hash,
            text=text,
            event=event,
        )


def record_body(
    event: AuditEvent, chain: str, sequence: int, time: str, alg: str, prev_hash: str
) -> dict[str, Any]:
    """The object whose canonical text is hashed: every field present, absent ones null."""
    body: dict[str, Any] = {
        "v": RECORD_VERSION,
        "chain": chain,
        "sequence": sequence,
        "time": time,
        "type": event.type.value,
        "alg": alg,
        "prev_hash": prev_hash,
        "extra": event.extra,
    }
    for name in CONTENT_FIELDS:
        body[name] = getattr(event, name)
    return body
