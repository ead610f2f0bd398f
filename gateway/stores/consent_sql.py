"""The consent tables and statements shared by SQLite and PostgreSQL (``?`` placeholders; the
PostgreSQL store numbers them).

One table holds consent grants and delegations alike (``kind``): a delegation is a grant whose
requester is a person. Services and operations are JSON arrays of names; subjects, agents and
grantors are keyed hashes only (用而不存). Times are seconds since the epoch.
"""

# ruff: noqa: S608 - SQL is built only from this module's constants; every value is a parameter.

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from gateway.consent.contract import DataSubject
from gateway.consent.model import Grant
from gateway.stores.migrations import Migration


def consent_migrations(real: str) -> tuple[Migration, ...]:
    """``real``: the dialect's floating-point type."""
    return (
        Migration(
            1,
            "consent grants and delegations",
            (
                f"""CREATE TABLE consent_grants (
                    grant_id TEXT PRIMARY KEY,
                    kind TEXT NOT NULL CHECK (kind IN ('consent', 'delegation')),
                    subject_kind TEXT NOT NULL CHECK (subject_kind IN ('person', 'enterprise')),
                    subject_key TEXT NOT NULL,
                    granted_by TEXT NOT NULL,
                    grantor TEXT,
                    delegation TEXT,
                    requester_client TEXT,
                    requester_province TEXT,
                    agent_key TEXT,
                    services TEXT NOT NULL,
                    operations TEXT,
                    purpose TEXT,
                    created_at {real} NOT NULL,
                    expires_at {real} NOT NULL,
                    max_uses INTEGER,
                    uses INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),
                    revoked_at {real},
                    CHECK (max_uses IS NULL OR uses <= max_uses)
                )""",
                "CREATE INDEX consent_grants_by_subject"
                " ON consent_grants (subject_kind, subject_key, created_at)",
                "CREATE INDEX consent_grants_by_agent ON consent_grants (agent_key, created_at)"
                " WHERE agent_key IS NOT NULL",
            ),
        ),
    )


COLUMNS: Final = (
    "grant_id, kind, subject_kind, subject_key, granted_by, grantor, delegation,"
    " requester_client, requester_province, agent_key, services, operations, purpose,"
    " created_at, expires_at, max_uses, uses, revoked_at"
)
_N: Final = len(COLUMNS.split(","))
_D_COLUMNS: Final = ", ".join("d." + c.strip() for c in COLUMNS.split(","))
_G_COLUMNS: Final = ", ".join("g." + c.strip() for c in COLUMNS.split(","))

INSERT: Final = f"INSERT INTO consent_grants ({COLUMNS}) VALUES ({', '.join('?' * _N)})"
FIND: Final = (
    f"SELECT {_G_COLUMNS}, {_D_COLUMNS} FROM consent_grants g"
    " LEFT JOIN consent_grants d ON d.grant_id = g.delegation WHERE g.grant_id = ?"
)
SPEND: Final = (
    "UPDATE consent_grants SET uses = uses + 1 WHERE grant_id = ? AND revoked_at IS NULL"
    " AND expires_at > ? AND max_uses IS NOT NULL AND uses < max_uses RETURNING uses, max_uses"
)
GIVE_BACK: Final = (
    "UPDATE consent_grants SET uses = uses - 1 WHERE grant_id = ? AND max_uses IS NOT NULL"
    " AND uses > 0 RETURNING max_uses - uses"
)
"""One counted use handed back: never below zero, never for a grant without a count; the
uses left after it."""
REVOKE: Final = (
    "UPDATE consent_grants SET revoked_at = ? WHERE (grant_id = ? OR delegation = ?)"
    " AND revoked_at IS NULL"
)
"""A grant, and every grant an agent gave under it when it is a delegation."""
GET: Final = f"SELECT {COLUMNS} FROM consent_grants WHERE grant_id = ?"
OF_SUBJECT: Final = (
    f"SELECT {COLUMNS} FROM consent_grants WHERE subject_kind = ? AND subject_key = ?"
    " ORDER BY created_at DESC, grant_id LIMIT ?"
)
OF_AGENT: Final = (
    f"SELECT {COLUMNS} FROM consent_grants WHERE agent_key = ? AND kind = 'delegation'"
    " ORDER BY created_at DESC, grant_id LIMIT ?"
)


def _names(values: tuple[str, ...] | None) -> str | None:
    return None if values is None else orjson.dumps(list(values)).decode()


def grant_row(grant: Grant) -> tuple[Any, ...]:
    g = grant
    return (
        g.grant_id,
        g.kind,
        g.subject.kind,
        g.subject.key,
        g.granted_by,
        g.grantor,
        g.delegation,
        g.requester_client,
        g.requester_province,
        g.agent.key if g.agent is not None else None,
        _names(g.services),
        _names(g.operations),
        g.purpose,
        g.created_at,
        g.expires_at,
        g.max_uses,
        g.uses,
        g.revoked_at,
    )


def grant_from_row(row: Sequence[Any]) -> Grant | None:
    """A grant from the first ``len(COLUMNS)`` values of ``row``; None for a row of nulls (an
    outer join that found nothing)."""
    if row[0] is None:
        return None
    operations = row[11]
    return Grant(
        grant_id=row[0],
        kind=row[1],
        subject=DataSubject(row[2], row[3]),
        granted_by=row[4],
        grantor=row[5],
        delegation=row[6],
        requester_client=row[7],
        requester_province=row[8],
        agent=DataSubject("person", row[9]) if row[9] is not None else None,
        services=tuple(orjson.loads(row[10])),
        operations=tuple(orjson.loads(operations)) if operations is not None else None,
        purpose=row[12],
        created_at=float(row[13]),
        expires_at=float(row[14]),
        max_uses=row[15],
        uses=int(row[16]),
        revoked_at=float(row[17]) if row[17] is not None else None,
    )


def pair_from_row(row: Sequence[Any] | None) -> tuple[Grant | None, Grant | None]:
    if row is None:
        return None, None
    return grant_from_row(row[:_N]), grant_from_row(row[_N:])
