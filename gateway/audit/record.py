"""The audit record: what callers hand the writer (AuditEvent) and what a chain holds.

Records carry digests and identifiers, never bodies or personal data: ``principal`` is the
pairwise identifier, ``request_digest`` / ``response_digest`` are ``alg:hex`` digests.
"""

from __future__ import annotations

import enum
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from gateway.audit.canonical import MAX_SAFE_INTEGER, CanonicalError, HashAlg, canonical_bytes

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
    CONSENT_GRANTED = "consent_granted"
    CONSENT_USED = "consent_used"
    CONSENT_REFUSED = "consent_refused"
    CONSENT_RETURNED = "consent_returned"
    CONSENT_REVOKED = "consent_revoked"
    LICENCE_VERIFIED = "licence_verified"


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and ``Z``: fixed width, so text order is time order."""
    if moment.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:26] + "Z"


def utc_now() -> datetime:
    return datetime.now(UTC)


_second_text: tuple[int, str] = (-1, "")

_THREE_DIGITS: Final = tuple(f"{n:03d}" for n in range(1000))
"""``f"{n:03d}"`` for 0 to 999: a time's microseconds as two halves of three digits."""


def utc_now_text() -> str:
    """``format_time(utc_now())`` without building a datetime: the writer stamps every record
    with it, so the text of the current second (with its ``.``) is kept and only the
    microseconds change, written as two three-digit halves from a table
    (``f"{micro:06d}"``'s digits without formatting an integer: some 0.8 k instructions fewer
    a record)."""
    global _second_text  # noqa: PLW0603 - a one-entry cache; a race only recomputes it
    second, micro = divmod(_time.time_ns() // 1000, 1_000_000)
    cached, prefix = _second_text
    if second != cached:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second_text = (second, prefix)
    high, low = divmod(micro, 1000)
    return prefix + _THREE_DIGITS[high] + _THREE_DIGITS[low] + "Z"


_EMPTY_EXTRA: Final = orjson.Fragment(b"{}")


_NEW_EXTRA: Final[dict[str, Any]] = {}
"""The default of ``extra``, never used as one: a new dict stands in for it (a default_factory)."""

_TEXTUAL: Final = frozenset({str, type(None)})
_type: Final = type  # ``type`` is a field's name where the fields are checked
_new_object: Final = object.__new__
_dumps: Final = orjson.dumps
_SORTED: Final = orjson.OPT_SORT_KEYS
_Fragment: Final = orjson.Fragment


@dataclass(slots=True, kw_only=True, init=False)
class AuditEvent:
    """What happened, as a caller reports it. The writer adds chain, sequence, time and hashes.

    Checked when it is made (so a bad event is refused at its caller, not inside a batch shared
    with others) and treated as immutable from then on: ``extra`` is captured in canonical form
    at construction, so changing the dict afterwards changes nothing that is recorded. Not a
    frozen dataclass only because a frozen one's ``__init__`` costs twice as much, and every
    routed call makes two of these. For the same reason the checks are made on the arguments
    (``_fill``), not by a ``__post_init__`` reading the fields back, and a routed call's events
    are made by ``call_event_of``, which takes the fields in order: calling a class with
    keywords builds a dictionary of them twice over."""

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
    extra_json: orjson.Fragment = field(init=False, repr=False, compare=False)
    """``extra`` in canonical form, as it was when the event was made."""
    subjects: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The data subjects ``extra["subjects"]`` names, as ``subject_keys`` reads them, when the
    event was made: the subject lookup rows of its record, without parsing the text back."""

    def __init__(
        self,
        *,
        type: EventType,
        request_id: str | None = None,
        case_id: str | None = None,
        actor: str | None = None,
        principal: str | None = None,
        identity_level: str | None = None,
        client: str | None = None,
        service: str | None = None,
        receiving_province: str | None = None,
        handling_province: str | None = None,
        system: str | None = None,
        operation: str | None = None,
        purpose: str | None = None,
        outcome: str | None = None,
        error_code: str | None = None,
        attempts: int | None = None,
        latency_ms: int | None = None,
        request_digest: str | None = None,
        response_digest: str | None = None,
        extra: dict[str, Any] = _NEW_EXTRA,
        time: datetime | None = None,
    ) -> None:
        _fill(
            self, type, request_id, case_id, actor, principal, identity_level, client, service,
            receiving_province, handling_province, system, operation, purpose, outcome,
            error_code, attempts, latency_ms, request_digest, response_digest, extra, time,
        )  # fmt: skip


_PLAIN_TEXT: Final = frozenset({str})


def call_event_of(
    type: EventType,
    request_id: str | None,
    case_id: str | None,
    actor: str | None,
    principal: str | None,
    identity_level: str | None,
    client: str | None,
    service: str | None,
    receiving_province: str | None,
    handling_province: str | None,
    system: str | None,
    operation: str | None,
    purpose: str | None,
    outcome: str | None,
    error_code: str | None,
    attempts: int | None,
    latency_ms: int | None,
    request_digest: str | None,
    response_digest: str | None,
    extra: dict[str, Any],
    /,
) -> AuditEvent:
    """``AuditEvent(type=type, request_id=request_id, ...)`` for a routed call's event, every
    field given in order but the time (gateway/audit/calls.py): the same checks and the same
    event, without the keyword arguments' dictionary that calling the class builds. When every
    value of ``extra``
    is a plain string or a list of plain strings, the canonical check has nothing to refuse:
    ``orjson.dumps`` with sorted keys is its canonical text, made without the generic walk
    (``canonical.py``'s ``_check``). The keys are sorted here whatever order the caller gave
    them in (gateway/audit/calls.py builds them in code-point order, so orjson's sort finds
    them in place). Any other ``extra`` (a value of another type, a lone surrogate) is checked
    and encoded as ``AuditEvent`` does, with the same errors. The same event as the keyword
    form in every case; tests/unit/audit/test_audit_call_events.py and test_audit_event_of.py
    hold the two to the same fields and bytes."""
    raw = _plain_text_of(extra)
    event: AuditEvent = _new_object(AuditEvent)
    _fill(
        event, type, request_id, case_id, actor, principal, identity_level, client, service,
        receiving_province, handling_province, system, operation, purpose, outcome, error_code,
        attempts, latency_ms, request_digest, response_digest, extra, None, raw,
    )  # fmt: skip
    return event


def _plain_text_of(extra: dict[str, Any]) -> bytes | None:
    """The canonical text of ``extra`` when every value is a plain string or a list of plain
    strings (``orjson.dumps`` with sorted keys: nothing for the canonical walk to refuse or
    sort), else None: the generic path (``canonical_bytes``) then checks and encodes it."""
    for value in extra.values():
        kind = _type(value)
        if kind is str or (kind is list and _PLAIN_TEXT.issuperset(map(_type, value))):
            continue
        return None
    try:
        return _dumps(extra, option=_SORTED)
    except orjson.JSONEncodeError:  # a lone surrogate: the generic path says so
        return None


def call_outcome_of(
    requested: AuditEvent,
    outcome: str | None,
    error_code: str | None,
    attempts: int | None,
    latency_ms: int | None,
    request_digest: str | None,
    response_digest: str | None,
    extra: dict[str, Any],
    /,
) -> AuditEvent | None:
    """A routed call's outcome event made from its request event ``requested`` (the event
    ``call_event_of`` made for the same call; gateway/audit/calls.py): ``call_event_of(
    SERVICE_CALL_COMPLETED, requested.request_id, ..., requested.purpose, outcome, ...,
    extra)``, the twelve fields the two records share (``SHARED_CALL_FIELDS``) taken from the
    request event as they are. They were checked when it was made and an event is not changed
    afterwards, so they are not checked again; nor are the subjects read again when ``extra``
    names the same ``subjects`` as the request's ``extra``. None (the caller then goes the
    generic way, which refuses or normalises what it must, with the same errors) when any of
    the outcome's own values is not what this path takes as it is: a text field that is not a
    plain ``str`` or None, a count that is not a plain ``int`` in range, an ``extra`` that is
    not plain strings or too long, or other subjects than the request's.
    (tests/unit/audit/test_audit_call_events.py holds it to ``call_event_of``'s event.)"""
    if not (
        (outcome is None or _type(outcome) is str)
        and (error_code is None or _type(error_code) is str)
        and (request_digest is None or _type(request_digest) is str)
        and (response_digest is None or _type(response_digest) is str)
        and (attempts is None or (_type(attempts) is int and 0 <= attempts <= MAX_SAFE_INTEGER))
        and (
            latency_ms is None or (_type(latency_ms) is int and 0 <= latency_ms <= MAX_SAFE_INTEGER)
        )
        and extra
    ):
        return None
    if extra.get("subjects") != requested.extra.get("subjects"):
        return None
    raw = _plain_text_of(extra)
    if raw is None or len(raw) > EXTRA_MAX_BYTES:
        return None
    event: AuditEvent = _new_object(AuditEvent)
    event.extra_json = _Fragment(raw)
    event.subjects = requested.subjects
    event.type = EventType.SERVICE_CALL_COMPLETED
    event.request_id = requested.request_id
    event.case_id = requested.case_id
    event.actor = requested.actor
    event.principal = requested.principal
    event.identity_level = requested.identity_level
    event.client = requested.client
    event.service = requested.service
    event.receiving_province = requested.receiving_province
    event.handling_province = requested.handling_province
    event.system = requested.system
    event.operation = requested.operation
    event.purpose = requested.purpose
    event.outcome = outcome
    event.error_code = error_code
    event.attempts = attempts
    event.latency_ms = latency_ms
    event.request_digest = request_digest
    event.response_digest = response_digest
    event.extra = extra
    event.time = None
    return event


def call_request_of(
    request_id: str | None,
    case_id: str | None,
    actor: str | None,
    principal: str | None,
    identity_level: str | None,
    client: str | None,
    service: str | None,
    receiving_province: str | None,
    handling_province: str | None,
    system: str | None,
    operation: str | None,
    purpose: str | None,
    extra: dict[str, Any],
    /,
) -> AuditEvent | None:
    """A routed call's request event: ``call_event_of(SERVICE_CALL_REQUESTED, request_id, ...,
    purpose, None, None, None, None, None, None, extra)`` (gateway/audit/calls.py), the twelve
    text fields checked written out (``type(x) is str``) instead of through ``_fill``'s
    generic check of sixteen, in one frame instead of two. None (the caller then goes the
    generic way, which refuses or normalises what it must, with the same errors) when any
    value is not what this path takes as it is: a text field that is not a plain ``str`` or
    None, an empty ``extra``, one that is not plain strings or too long.
    (tests/unit/audit/test_audit_request_event.py holds it to ``call_event_of``'s event.)"""
    if not (
        (request_id is None or _type(request_id) is str)
        and (case_id is None or _type(case_id) is str)
        and (actor is None or _type(actor) is str)
        and (principal is None or _type(principal) is str)
        and (identity_level is None or _type(identity_level) is str)
        and (client is None or _type(client) is str)
        and (service is None or _type(service) is str)
        and (receiving_province is None or _type(receiving_province) is str)
        and (handling_province is None or _type(handling_province) is str)
        and (system is None or _type(system) is str)
        and (operation is None or _type(operation) is str)
        and (purpose is None or _type(purpose) is str)
        and extra
    ):
        return None
    raw = _plain_text_of(extra)
    if raw is None or len(raw) > EXTRA_MAX_BYTES:
        return None
    event: AuditEvent = _new_object(AuditEvent)
    event.extra_json = _Fragment(raw)
    found = extra.get("subjects")
    if found is None:
        event.subjects = ()
    elif _type(found) is list and len(found) == 1 and 0 < len(found[0]) <= 128:
        # ``subject_keys`` of a call's one subject without its frame: ``_plain_text_of``
        # took ``extra`` as it is, so a list holds plain strings.
        event.subjects = (found[0],)
    else:
        event.subjects = subject_keys(found)
    event.type = EventType.SERVICE_CALL_REQUESTED
    event.request_id = request_id
    event.case_id = case_id
    event.actor = actor
    event.principal = principal
    event.identity_level = identity_level
    event.client = client
    event.service = service
    event.receiving_province = receiving_province
    event.handling_province = handling_province
    event.system = system
    event.operation = operation
    event.purpose = purpose
    event.outcome = None
    event.error_code = None
    event.attempts = None
    event.latency_ms = None
    event.request_digest = None
    event.response_digest = None
    event.extra = extra
    event.time = None
    return event


SHARED_CALL_FIELDS: Final = (
    "request_id", "case_id", "actor", "principal", "identity_level", "client", "service",
    "receiving_province", "handling_province", "system", "operation", "purpose",
)  # fmt: skip
"""The fields a routed call's outcome event takes from its request event (``call_outcome_of``)."""


def _fill(
    event: AuditEvent,
    type: EventType,
    request_id: str | None,
    case_id: str | None,
    actor: str | None,
    principal: str | None,
    identity_level: str | None,
    client: str | None,
    service: str | None,
    receiving_province: str | None,
    handling_province: str | None,
    system: str | None,
    operation: str | None,
    purpose: str | None,
    outcome: str | None,
    error_code: str | None,
    attempts: int | None,
    latency_ms: int | None,
    request_digest: str | None,
    response_digest: str | None,
    extra: dict[str, Any],
    time: datetime | None,
    extra_raw: bytes | None = None,
) -> None:
    """Check an event's fields, in the order a bad one is reported, and set them.
    ``extra_raw``: the canonical text of ``extra``, when the caller has it (``call_event_of``)."""
    if _type(type) is not EventType:
        type = EventType(type)
    texts = (
        request_id, case_id, actor, principal, identity_level, client, service,
        receiving_province, handling_province, system, operation, purpose, outcome,
        error_code, request_digest, response_digest,
    )  # fmt: skip
    if not _TEXTUAL.issuperset(map(_type, texts)):
        (
            request_id, case_id, actor, principal, identity_level, client, service,
            receiving_province, handling_province, system, operation, purpose, outcome,
            error_code, request_digest, response_digest,
        ) = _plain_texts(texts)  # fmt: skip
    if attempts is not None and (
        _type(attempts) is not int or not 0 <= attempts <= MAX_SAFE_INTEGER
    ):
        raise ValueError("attempts must be a non-negative integer")
    if latency_ms is not None and (
        _type(latency_ms) is not int or not 0 <= latency_ms <= MAX_SAFE_INTEGER
    ):
        raise ValueError("latency_ms must be a non-negative integer")
    if extra is _NEW_EXTRA:
        extra = {}
    if extra:
        if extra_raw is not None:
            raw = extra_raw
        else:
            try:
                raw = canonical_bytes(extra)
            except CanonicalError as exc:
                raise ValueError(f"extra: {exc}") from exc
        if len(raw) > EXTRA_MAX_BYTES:
            raise ValueError(f"extra is {len(raw)} bytes; at most {EXTRA_MAX_BYTES}")
        event.extra_json = orjson.Fragment(raw)
        event.subjects = subject_keys(extra.get("subjects"))
    else:
        event.extra_json = _EMPTY_EXTRA
        event.subjects = ()
    event.type = type
    event.request_id = request_id
    event.case_id = case_id
    event.actor = actor
    event.principal = principal
    event.identity_level = identity_level
    event.client = client
    event.service = service
    event.receiving_province = receiving_province
    event.handling_province = handling_province
    event.system = system
    event.operation = operation
    event.purpose = purpose
    event.outcome = outcome
    event.error_code = error_code
    event.attempts = attempts
    event.latency_ms = latency_ms
    event.request_digest = request_digest
    event.response_digest = response_digest
    event.extra = extra
    event.time = time


def _plain_texts(values: tuple[object, ...]) -> tuple[Any, ...]:
    """The text fields' values, each a plain ``str`` or None; a StrEnum member becomes its plain
    text; ValueError naming the first field that holds anything else."""
    plain: list[object] = []
    for name, value in zip(_TEXT_FIELDS, values, strict=True):
        if value is None or _type(value) is str:
            plain.append(value)
        elif isinstance(value, str):
            plain.append(str.__str__(value))  # a StrEnum member: its plain text
        else:
            raise ValueError(f"{name} must be a string")
    return tuple(plain)


MAX_SUBJECTS: Final = 16


def subject_keys(found: object) -> tuple[str, ...]:
    """The data subjects an ``extra.subjects`` value names: its strings of 1 to 128 characters,
    each once, in order, at most ``MAX_SUBJECTS``; none unless it is an array. The one rule
    for both an event's ``extra`` (where an array may be a tuple) and a parsed record's."""
    if not isinstance(found, (list, tuple)):  # faster than ``list | tuple``
        return ()
    if len(found) == 1:  # a call's one subject, most often
        key = found[0]
        return (key,) if isinstance(key, str) and 0 < len(key) <= 128 else ()
    keys = [k for k in found if isinstance(k, str) and 0 < len(k) <= 128]
    return tuple(dict.fromkeys(keys))[:MAX_SUBJECTS]


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


_TEXT_FIELDS: Final = tuple(n for n in CONTENT_FIELDS if n not in ("attempts", "latency_ms"))


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


RECORD_KEYS: Final = tuple(
    sorted(("v", "chain", "sequence", "time", "type", "alg", "prev_hash", "extra", *CONTENT_FIELDS))
)
"""The keys of a record's body in code-point order, as its canonical text has them."""

RecordEncoder = Callable[[AuditEvent, int, str, str], bytes]
"""``encode(event, sequence, time, prev_hash)``: a record's canonical text on one chain."""


def record_encoder(chain: str, alg: str) -> RecordEncoder:
    """``record_text`` for one chain and hash algorithm, for the writer's hot path: every value
    was checked when the event was made, and ``extra`` goes in as the canonical text captured
    then. The body is one dictionary, made once with its keys in code-point order (so orjson
    need not sort them) and its values replaced for each record: no dictionary of 26 items is
    built and freed per record. Not for two threads at once: one writer's loop uses it.
    (tests/unit/audit/test_audit_chain_property.py and test_audit_canonical.py hold it to the
    bytes of ``canonical_bytes(record_body(...))``.)"""
    body: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    body["alg"] = alg
    body["chain"] = chain
    body["v"] = RECORD_VERSION
    dumps = orjson.dumps

    def encode(e: AuditEvent, sequence: int, time: str, prev_hash: str) -> bytes:
        b = body
        b["actor"] = e.actor
        b["attempts"] = e.attempts
        b["case_id"] = e.case_id
        b["client"] = e.client
        b["error_code"] = e.error_code
        b["extra"] = e.extra_json
        b["handling_province"] = e.handling_province
        b["identity_level"] = e.identity_level
        b["latency_ms"] = e.latency_ms
        b["operation"] = e.operation
        b["outcome"] = e.outcome
        b["prev_hash"] = prev_hash
        b["principal"] = e.principal
        b["purpose"] = e.purpose
        b["receiving_province"] = e.receiving_province
        b["request_digest"] = e.request_digest
        b["request_id"] = e.request_id
        b["response_digest"] = e.response_digest
        b["sequence"] = sequence
        b["service"] = e.service
        b["system"] = e.system
        b["time"] = time
        b["type"] = e.type._value_  # the member's text without the ``value`` property's frames
        return dumps(b)

    return encode


def record_text(
    event: AuditEvent, chain: str, sequence: int, time: str, alg: str, prev_hash: str
) -> bytes:
    """``canonical_bytes(record_body(...))`` as the writer encodes it (``record_encoder``)."""
    return record_encoder(chain, alg)(event, sequence, time, prev_hash)
