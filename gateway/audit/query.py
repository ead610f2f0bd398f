"""Looking records up: the query shape every store answers, its keyset cursor, the lookup row.

The lookup columns (type, principal, actor, case, service, provinces, system) hold the values of
the stored canonical text, in a side table (audit migrations 2 and 3; docs/audit.md, Querying).
They only *find* records: what a query returns is always the stored text and hash itself, so
a lookup row that was tampered with can hide a record from a query but never change one
(the verifier reads the chain, not the lookup table).

Order is stable and total: (time, chain, sequence), newest first unless ``oldest_first``.
A cursor is the position of the last record of a page, encoded opaquely (base64url JSON);
it carries the order it was made for, so it cannot be replayed against the other order.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.audit.record import AuditEvent, subject_keys
from gateway.audit.store import LookupRow, StoredRecord

MAX_LIMIT: Final = 500
LOOKUP_FIELDS: Final = (
    "type",
    "principal",
    "actor",
    "case_id",
    "service",
    "receiving_province",
    "handling_province",
    "system",
)
"""Columns of the lookup row besides (chain, sequence, time), in table order."""


class InvalidCursor(ValueError):
    """A cursor that this gateway did not make (or made for another order)."""


@dataclass(frozen=True, slots=True, order=True)
class QueryPosition:
    """Where a page ended: the sort key of its last record."""

    time: str
    chain: str
    sequence: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditQuery:
    """Filters are ANDed; each one left None matches everything."""

    principal: str | None = None
    actor: str | None = None
    case_id: str | None = None
    service: str | None = None
    province: str | None = None
    """Matches the receiving *or* the handling province."""
    subject: str | None = None
    """Records whose ``extra.subjects`` names this data subject's key (the subject lookup
    table, audit migration 4): whose data a call, a case step or a grant's use touched."""
    since: str | None = None
    """First time included (RFC 3339 text as the writer formats it)."""
    until: str | None = None
    """First time excluded."""
    types: tuple[str, ...] = ()
    """Event types; empty means every type."""
    after: QueryPosition | None = None
    """Continue after this record (from the previous page's cursor)."""
    limit: int = 100
    oldest_first: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}")


@dataclass(frozen=True, slots=True)
class QueryPage:
    records: list[StoredRecord]
    next: QueryPosition | None
    """Position to continue after, or None when this was the last page."""


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) else None


CHAINS_SQL: Final = (
    "WITH RECURSIVE present(id) AS ("
    " SELECT min(chain_id) FROM audit_records"
    " UNION ALL SELECT (SELECT min(chain_id) FROM audit_records WHERE chain_id > present.id)"
    " FROM present WHERE present.id IS NOT NULL)"
    " SELECT id FROM present WHERE id IS NOT NULL"
    " UNION SELECT chain_id FROM audit_chains ORDER BY 1"
)
"""Every chain a SQL store holds, in the same SQL on SQLite and PostgreSQL: the registered ones
and any that has records (a loose index scan, one probe per chain), so a chain whose
registration row vanished is still verified."""


def event_lookup_row(event: AuditEvent, chain: str, sequence: int, time: str) -> LookupRow:
    """The lookup row of the record the writer encodes from ``event`` (LOOKUP_FIELDS order):
    the same values the text holds, with no parse. Text fields are strings or None, checked
    when the event was made."""
    e = event
    return (chain, sequence, time, e.type.value, e.principal, e.actor, e.case_id, e.service,
            e.receiving_province, e.handling_province, e.system)  # fmt: skip


def lookup_row(record: StoredRecord) -> LookupRow:
    """The lookup columns of a record: the writer's, made from the event it encoded as the
    text, or else read from the stored text."""
    if record.lookup is not None:
        return record.lookup
    try:
        body = orjson.loads(record.text)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        body = {}
    return (
        record.chain,
        record.sequence,
        record.time,
        *(_text(body, name) for name in LOOKUP_FIELDS),
    )  # type: ignore[return-value]


SUBJECTS_MARK: Final = '"subjects":'
"""How ``extra.subjects`` starts in canonical text: records without it are never parsed."""


def record_subjects(text: str) -> list[str]:
    """The data subjects a record's ``extra.subjects`` names (keys, each once, at most 16;
    the rule is ``gateway.audit.record.subject_keys``)."""
    if SUBJECTS_MARK not in text:
        return []
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    extra = body.get("extra") if isinstance(body, dict) else None
    return list(subject_keys(extra.get("subjects") if isinstance(extra, dict) else None))


SubjectRow = tuple[str, str, str, int]
"""(subject, recorded_at, chain, sequence): one row of the subject lookup table."""


def subject_rows(record: StoredRecord) -> list[SubjectRow]:
    """A record's subject lookup rows: from the subjects the writer took from the event it
    encoded as the text (the same keys), or else read from the stored text."""
    keys = record.subjects if record.subjects is not None else record_subjects(record.text)
    return [(k, record.time, record.chain, record.sequence) for k in keys]


def matches(query: AuditQuery, row: LookupRow) -> bool:
    """The filter in Python, for the memory store and for tests of the SQL stores."""
    _, _, time, kind, principal, actor, case_id, service, receiving, handling, _ = row
    return (
        (query.principal is None or principal == query.principal)
        and (query.actor is None or actor == query.actor)
        and (query.case_id is None or case_id == query.case_id)
        and (query.service is None or service == query.service)
        and (query.province is None or query.province in (receiving, handling))
        and (query.since is None or time >= query.since)
        and (query.until is None or time < query.until)
        and (not query.types or kind in query.types)
    )


def sql_filter(query: AuditQuery, placeholder: Any) -> tuple[str, list[object]]:
    """The WHERE clause (over alias ``i`` of the lookup table) and its parameters.

    Built from fixed fragments only, one per filter present, so the planner sees plain
    equality terms and can pick the matching partial index; values are always parameters.
    ``placeholder(n)`` renders the n-th parameter (``?`` for SQLite, ``$n`` for PostgreSQL).
    """
    terms: list[str] = []
    params: list[object] = []

    def param(value: object) -> str:
        params.append(value)
        return str(placeholder(len(params)))

    for column, value in (
        ("principal", query.principal),
        ("actor", query.actor),
        ("case_id", query.case_id),
        ("service", query.service),
    ):
        if value is not None:
            terms.append(f"i.{column} = {param(value)}")
    if query.province is not None:
        receiving, handling = param(query.province), param(query.province)
        terms.append(f"(i.receiving_province = {receiving} OR i.handling_province = {handling})")
    # With a subject the subject table drives (its key orders by time): position terms on it.
    t = "s" if query.subject is not None else "i"
    if query.subject is not None:
        terms.append(f"s.subject = {param(query.subject)}")
    if query.since is not None:
        terms.append(f"{t}.recorded_at >= {param(query.since)}")
    if query.until is not None:
        terms.append(f"{t}.recorded_at < {param(query.until)}")
    if query.types:
        terms.append(f"i.type IN ({', '.join(param(t) for t in query.types)})")
    if query.after is not None:
        op = ">" if query.oldest_first else "<"
        a = query.after
        terms.append(
            f"({t}.recorded_at, {t}.chain_id, {t}.sequence) {op} "
            f"({param(a.time)}, {param(a.chain)}, {param(a.sequence)})"
        )
    return (" WHERE " + " AND ".join(terms)) if terms else "", params


def sql_source(query: AuditQuery) -> str:
    """The FROM clause: the lookup table (alias ``i``) joined to the records (``r``), driven by
    the subject table (``s``) when the query names a subject."""
    records = " JOIN audit_records r ON r.chain_id = i.chain_id AND r.sequence = i.sequence"
    if query.subject is None:
        return " FROM audit_index i" + records
    return (
        " FROM audit_subjects s JOIN audit_index i"
        " ON i.chain_id = s.chain_id AND i.sequence = s.sequence" + records
    )


def sql_order(query: AuditQuery) -> str:
    direction = "ASC" if query.oldest_first else "DESC"
    t = "s" if query.subject is not None else "i"
    return (
        f" ORDER BY {t}.recorded_at {direction}, {t}.chain_id {direction}, {t}.sequence {direction}"
    )


def page_of(query: AuditQuery, records: list[StoredRecord]) -> QueryPage:
    """Cut a ``limit + 1`` fetch into a page and the position to continue after."""
    if len(records) <= query.limit:
        return QueryPage(records, None)
    kept = records[: query.limit]
    last = kept[-1]
    return QueryPage(kept, QueryPosition(last.time, last.chain, last.sequence))


def encode_cursor(position: QueryPosition, *, oldest_first: bool) -> str:
    raw = orjson.dumps(
        [position.time, position.chain, position.sequence, "asc" if oldest_first else "desc"]
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, *, oldest_first: bool) -> QueryPosition:
    """The position a cursor names; InvalidCursor for anything this gateway did not make."""
    if not cursor or len(cursor) > 512:
        raise InvalidCursor("cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidCursor("cursor") from None
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not isinstance(value[0], str)
        or not isinstance(value[1], str)
        or type(value[2]) is not int
        or value[3] != ("asc" if oldest_first else "desc")
    ):
        raise InvalidCursor("cursor")
    return QueryPosition(value[0], value[1], value[2])
