"""AuditStore on PostgreSQL (asyncpg): COPY per batch, canonical text in a TEXT column.

The record is never stored as jsonb (it reorders keys) and never passed as one parameter to two
columns (asyncpg would normalise both): the hash covers the exact text column. Triggers refuse
UPDATE, DELETE and TRUNCATE; also revoke those privileges from the gateway's role in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import asyncpg

from gateway.audit.query import (
    CHAINS_SQL,
    LOOKUP_FIELDS,
    AuditQuery,
    QueryPage,
    lookup_row,
    page_of,
    sql_filter,
    sql_order,
    sql_source,
    subject_rows,
)
from gateway.audit.store import (
    MAX_SEQUENCE,
    AuditStoreUnavailable,
    ChainConflict,
    ChainHead,
    DerivedRow,
    RawRecord,
    StoredCheckpoint,
    StoredRecord,
    StoredSubjectRow,
    derived_sequence,
    keyset_pages,
    raw_sequence,
    record_sequence,
)
from gateway.stores.migrations import Migration
from gateway.stores.postgres import MigratedPool, check_schema_name

AUDIT_MIGRATIONS: Final = (
    Migration(
        1,
        "audit chain tables",
        (
            """CREATE TABLE audit_chains (
                chain_id TEXT PRIMARY KEY,
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE audit_records (
                chain_id TEXT NOT NULL,
                sequence BIGINT NOT NULL CHECK (sequence > 0),
                recorded_at TEXT NOT NULL,
                record TEXT NOT NULL,
                hash TEXT NOT NULL,
                PRIMARY KEY (chain_id, sequence)
            )""",
            """CREATE TABLE audit_checkpoints (
                chain_id TEXT NOT NULL,
                sequence BIGINT NOT NULL,
                hash TEXT NOT NULL,
                signed_at TEXT NOT NULL,
                kid TEXT NOT NULL,
                jws TEXT NOT NULL,
                PRIMARY KEY (chain_id, sequence)
            )""",
            """CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
                    USING ERRCODE = 'insufficient_privilege';
            END $$""",
            *(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
                " FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"
                for table in ("audit_chains", "audit_records", "audit_checkpoints")
            ),
            *(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
                " FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
                for table in ("audit_chains", "audit_records", "audit_checkpoints")
            ),
        ),
    ),
    Migration(
        2,
        "audit lookup table",
        (
            # Filled at append time from the stored text; the text stays the hashed truth.
            """CREATE TABLE audit_index (
                chain_id TEXT NOT NULL,
                sequence BIGINT NOT NULL,
                recorded_at TEXT NOT NULL,
                type TEXT,
                principal TEXT,
                actor TEXT,
                case_id TEXT,
                service TEXT,
                receiving_province TEXT,
                handling_province TEXT,
                system TEXT,
                PRIMARY KEY (chain_id, sequence)
            )""",
            "CREATE INDEX audit_index_time ON audit_index (recorded_at, chain_id, sequence)",
            *(
                f"CREATE INDEX audit_index_{column} ON audit_index"
                f" ({column}, recorded_at, chain_id, sequence) WHERE {column} IS NOT NULL"
                for column in (
                    "principal",
                    "actor",
                    "case_id",
                    "service",
                    "receiving_province",
                    "handling_province",
                )
            ),
            # Records written before this migration get their lookup rows too; a text that
            # is not JSON (tampered) gets an empty row instead of failing the migration.
            """CREATE FUNCTION pg_temp.audit_try_jsonb(value TEXT) RETURNS jsonb
            LANGUAGE plpgsql IMMUTABLE AS $$
            BEGIN
                RETURN value::jsonb;
            EXCEPTION WHEN others THEN
                RETURN NULL;
            END $$""",
            "INSERT INTO audit_index SELECT chain_id, sequence, recorded_at, "  # noqa: S608
            + ", ".join(
                f"CASE WHEN jsonb_typeof(j -> '{name}') = 'string' THEN j ->> '{name}' END"
                for name in LOOKUP_FIELDS
            )
            + " FROM (SELECT chain_id, sequence, recorded_at,"
            " pg_temp.audit_try_jsonb(record) AS j FROM audit_records) r",
            "CREATE TRIGGER audit_index_append_only BEFORE UPDATE OR DELETE ON audit_index"
            " FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()",
            "CREATE TRIGGER audit_index_no_truncate BEFORE TRUNCATE ON audit_index"
            " FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()",
        ),
    ),
    Migration(
        3,
        "no lookup indexes on low-selectivity columns",
        # As in the SQLite store: three B-tree inserts per service-call record for filters
        # the time index answers as well.
        tuple(
            f"DROP INDEX IF EXISTS audit_index_{column}"
            for column in ("service", "receiving_province", "handling_province")
        ),
    ),
    Migration(
        4,
        "subject lookup table",
        (
            # Whose data a record touched (extra.subjects): the subject's access log.
            """CREATE TABLE audit_subjects (
                subject TEXT NOT NULL,
                recorded_at TEXT NOT NULL,
                chain_id TEXT NOT NULL,
                sequence BIGINT NOT NULL,
                PRIMARY KEY (subject, recorded_at, chain_id, sequence)
            )""",
            """CREATE OR REPLACE FUNCTION pg_temp.audit_try_jsonb(value TEXT) RETURNS jsonb
            LANGUAGE plpgsql IMMUTABLE AS $$
            BEGIN
                RETURN value::jsonb;
            EXCEPTION WHEN others THEN
                RETURN NULL;
            END $$""",
            # Records written before this migration get their subject rows too.
            "INSERT INTO audit_subjects SELECT DISTINCT s.value, r.recorded_at, r.chain_id,"
            " r.sequence FROM (SELECT chain_id, sequence, recorded_at,"
            " pg_temp.audit_try_jsonb(record) AS j FROM audit_records"
            " WHERE strpos(record, '\"subjects\":') > 0) r,"
            " jsonb_array_elements_text(CASE WHEN jsonb_typeof(r.j -> 'extra' -> 'subjects')"
            " = 'array' THEN r.j -> 'extra' -> 'subjects' ELSE '[]'::jsonb END) s(value)",
            "CREATE TRIGGER audit_subjects_append_only BEFORE UPDATE OR DELETE ON audit_subjects"
            " FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()",
            "CREATE TRIGGER audit_subjects_no_truncate BEFORE TRUNCATE ON audit_subjects"
            " FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()",
        ),
    ),
    Migration(
        5,
        "subject rows by record",
        # As in the SQLite store: `audit verify` reads each page of records' subject rows.
        ("CREATE INDEX audit_subjects_by_record ON audit_subjects (chain_id, sequence)",),
    ),
)
_LOOKUP_COLUMNS: Final = ("chain_id", "sequence", "recorded_at", *LOOKUP_FIELDS)

_RECORD_COLUMNS: Final = ("chain_id", "sequence", "recorded_at", "record", "hash")
_INSERT_BATCH: Final = (
    "WITH written AS (INSERT INTO audit_records ("  # noqa: S608 - constant column names
    + ", ".join(_RECORD_COLUMNS)
    + ") SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[]))"
    " INSERT INTO audit_index ("
    + ", ".join(_LOOKUP_COLUMNS)
    + ") SELECT * FROM unnest("
    + ", ".join(
        f"${6 + i}::{'bigint' if name == 'sequence' else 'text'}[]"
        for i, name in enumerate(_LOOKUP_COLUMNS)
    )
    + ")"
)
_N_BATCH: Final = len(_RECORD_COLUMNS) + len(_LOOKUP_COLUMNS)
# The same with the records' subject rows (extra.subjects), when the batch has any.
_INSERT_BATCH_SUBJECTS: Final = (
    _INSERT_BATCH.replace(" INSERT INTO audit_index (", ", indexed AS (INSERT INTO audit_index (")  # noqa: S608
    + ") INSERT INTO audit_subjects (subject, recorded_at, chain_id, sequence)"  # noqa: S608
    f" SELECT * FROM unnest(${_N_BATCH + 1}::text[], ${_N_BATCH + 2}::text[],"
    f" ${_N_BATCH + 3}::text[], ${_N_BATCH + 4}::bigint[])"
)
_INSERT_CHECKPOINT: Final = (
    "INSERT INTO audit_checkpoints (chain_id, sequence, hash, signed_at, kid, jws)"
    " VALUES ($1, $2, $3, $4, $5, $6)"
)
# Errors meaning "the database is not there or not working", as opposed to a conflict.
_UNAVAILABLE: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


def _checkpoint(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(
        row["chain_id"], row["sequence"], row["hash"], row["signed_at"], row["kid"], row["jws"]
    )


class PostgresAuditStore:
    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 4,
        command_timeout: float = 10.0,
    ) -> None:
        self._schema = check_schema_name(schema)
        self._timeout = command_timeout
        self._pool = MigratedPool(
            dsn,
            schema=self._schema,
            component="audit",
            label="audit",
            migrations=AUDIT_MIGRATIONS,
            min_size=min_size,
            max_size=max_size,
            errors=_UNAVAILABLE,
            unavailable=AuditStoreUnavailable,
        )

    async def open(self) -> None:
        await self._pool.open()

    async def aclose(self) -> None:
        await self._pool.aclose()

    def _p(self) -> asyncpg.Pool:
        return self._pool.get()

    async def _fetch(self, sql: str, *args: object) -> list[Any]:
        try:
            rows: list[Any] = await self._p().fetch(sql, *args, timeout=self._timeout)
        except _UNAVAILABLE as exc:
            raise AuditStoreUnavailable(type(exc).__name__) from exc
        return rows

    async def register_chain(self, chain: str, created: str) -> None:
        try:
            await self._p().execute(
                "INSERT INTO audit_chains (chain_id, created_at) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                chain,
                created,
                timeout=self._timeout,
            )
        except _UNAVAILABLE as exc:
            raise AuditStoreUnavailable(type(exc).__name__) from exc

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        try:
            async with self._p().acquire() as conn:
                if checkpoint is None:
                    # One statement is one transaction and one round trip (BEGIN, two COPYs
                    # and COMMIT were five or more).
                    await self._insert(conn, records)
                    return
                async with conn.transaction():
                    await self._insert(conn, records)
                    await conn.execute(
                        _INSERT_CHECKPOINT,
                        checkpoint.chain,
                        checkpoint.sequence,
                        checkpoint.hash,
                        checkpoint.time,
                        checkpoint.kid,
                        checkpoint.jws,
                        timeout=self._timeout,
                    )
        except asyncpg.UniqueViolationError as exc:
            raise ChainConflict("sequence already written") from exc
        except _UNAVAILABLE as exc:
            raise AuditStoreUnavailable(type(exc).__name__) from exc

    async def _insert(self, conn: asyncpg.Connection, records: Sequence[StoredRecord]) -> None:
        if not records:
            return
        # Column arrays, one parameter each and none reused (asyncpg: a parameter shared by
        # two columns takes one type for both). The text goes in exactly as it was hashed.
        lookups = [lookup_row(r) for r in records]
        columns: list[Sequence[object]] = [
            [r.chain for r in records],
            [r.sequence for r in records],
            [r.time for r in records],
            [r.text for r in records],
            [r.hash for r in records],
            *[[row[i] for row in lookups] for i in range(len(_LOOKUP_COLUMNS))],
        ]
        subjects = [row for r in records for row in subject_rows(r)]
        if subjects:
            columns.extend([[row[i] for row in subjects] for i in range(4)])
            await conn.execute(_INSERT_BATCH_SUBJECTS, *columns, timeout=self._timeout)
            return
        await conn.execute(_INSERT_BATCH, *columns, timeout=self._timeout)

    async def append_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        await self.append([], checkpoint)

    async def read_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[StoredRecord]]:
        async def page(after: int, last: int) -> list[StoredRecord]:
            rows = await self._fetch(
                "SELECT sequence, recorded_at, record, hash FROM audit_records"
                " WHERE chain_id = $1 AND sequence > $2 AND sequence <= $3"
                " ORDER BY sequence LIMIT $4",
                chain,
                after,
                last,
                page_size,
            )
            return [StoredRecord(chain, s, t, r, h) for s, t, r, h in rows]

        async for records in keyset_pages(page, record_sequence, start, end, page_size):
            yield records

    lookup_rows_trail = False
    """Lookup rows are written in their records' transaction: a record without one is a loss."""

    async def read_derived_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[DerivedRow]]:
        """Each record's text beside its stored time and lookup row (None when missing)."""
        columns = ", ".join(f"i.{name}" for name in ("recorded_at", *LOOKUP_FIELDS))

        async def page(after: int, last: int) -> list[DerivedRow]:
            rows = await self._fetch(
                f"SELECT r.sequence, r.record, r.recorded_at, i.sequence IS NOT NULL, {columns}"  # noqa: S608
                " FROM audit_records r LEFT JOIN audit_index i"
                " ON i.chain_id = r.chain_id AND i.sequence = r.sequence"
                " WHERE r.chain_id = $1 AND r.sequence > $2 AND r.sequence <= $3"
                " ORDER BY r.sequence LIMIT $4",
                chain,
                after,
                last,
                page_size,
            )
            return [(row[0], row[1], row[2], tuple(row[4:]) if row[3] else None) for row in rows]

        async for rows in keyset_pages(page, derived_sequence, start, end, page_size):
            yield rows

    async def orphan_lookup_rows(self, chain: str) -> list[int]:
        """Sequences of lookup rows that no record of ``chain`` has."""
        rows = await self._fetch(
            "SELECT i.sequence FROM audit_index i LEFT JOIN audit_records r"
            " ON r.chain_id = i.chain_id AND r.sequence = i.sequence"
            " WHERE i.chain_id = $1 AND r.sequence IS NULL ORDER BY i.sequence LIMIT 1000",
            chain,
        )
        return [int(row[0]) for row in rows]

    async def subject_rows_between(
        self, chain: str, first: int, last: int
    ) -> list[StoredSubjectRow]:
        """The subject rows of ``chain``'s records ``first`` to ``last``, by sequence."""
        rows = await self._fetch(
            "SELECT sequence, subject, recorded_at FROM audit_subjects"
            " WHERE chain_id = $1 AND sequence BETWEEN $2 AND $3 ORDER BY sequence, subject",
            chain,
            first,
            last,
        )
        return [(int(row[0]), str(row[1]), str(row[2])) for row in rows]

    async def orphan_subject_rows(self, chain: str) -> list[int]:
        """Sequences named by subject rows that no record of ``chain`` has."""
        rows = await self._fetch(
            "SELECT DISTINCT s.sequence FROM audit_subjects s LEFT JOIN audit_records r"
            " ON r.chain_id = s.chain_id AND r.sequence = s.sequence"
            " WHERE s.chain_id = $1 AND r.sequence IS NULL ORDER BY s.sequence LIMIT 1000",
            chain,
        )
        return [int(row[0]) for row in rows]

    async def lookup_gaps(self) -> dict[str, int]:
        """Per chain, how many lookup rows are missing below its highest one."""
        rows = await self._fetch(
            "SELECT chain_id, MAX(sequence) - COUNT(*) FROM audit_index GROUP BY chain_id"
        )
        return {str(row[0]): int(row[1]) for row in rows if row[1]}

    async def read_raw_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[RawRecord]]:
        async def page(after: int, last: int) -> list[RawRecord]:
            # convert_to gives the stored UTF-8 bytes as bytea: no decoding on our side.
            rows = await self._fetch(
                "SELECT sequence, convert_to(record, 'UTF8'), hash FROM audit_records"
                " WHERE chain_id = $1 AND sequence > $2 AND sequence <= $3"
                " ORDER BY sequence LIMIT $4",
                chain,
                after,
                last,
                page_size,
            )
            return [(row[0], row[1], row[2]) for row in rows]

        async for records in keyset_pages(page, raw_sequence, start, end, page_size):
            yield records

    async def checkpoints(
        self, chain: str, start: int = 0, end: int | None = None
    ) -> list[StoredCheckpoint]:
        rows = await self._fetch(
            "SELECT chain_id, sequence, hash, signed_at, kid, jws FROM audit_checkpoints"
            " WHERE chain_id = $1 AND sequence >= $2 AND sequence <= $3 ORDER BY sequence",
            chain,
            start,
            end if end is not None else MAX_SEQUENCE,
        )
        return [_checkpoint(row) for row in rows]

    async def last_checkpoint(self, chain: str) -> StoredCheckpoint | None:
        rows = await self._fetch(
            "SELECT chain_id, sequence, hash, signed_at, kid, jws FROM audit_checkpoints"
            " WHERE chain_id = $1 ORDER BY sequence DESC LIMIT 1",
            chain,
        )
        return _checkpoint(rows[0]) if rows else None

    async def chains(self) -> list[str]:
        rows = await self._fetch(CHAINS_SQL)
        return [row[0] for row in rows]

    async def head(self, chain: str) -> ChainHead | None:
        rows = await self._fetch(
            "SELECT sequence, hash FROM audit_records WHERE chain_id = $1"
            " ORDER BY sequence DESC LIMIT 1",
            chain,
        )
        return ChainHead(chain, rows[0][0], rows[0][1]) if rows else None

    async def heads(self) -> dict[str, ChainHead]:
        # One index probe per registered chain instead of a scan of every record.
        rows = await self._fetch(
            f"SELECT c.id, r.sequence, r.hash FROM ({CHAINS_SQL}) c(id) CROSS JOIN LATERAL"  # noqa: S608
            " (SELECT sequence, hash FROM audit_records WHERE chain_id = c.id"
            "  ORDER BY sequence DESC LIMIT 1) r"
        )
        return {row[0]: ChainHead(row[0], row[1], row[2]) for row in rows}

    async def sequence_range(
        self, chain: str, since: str | None, until: str | None
    ) -> tuple[int, int] | None:
        rows = await self._fetch(
            "SELECT min(sequence), max(sequence) FROM audit_records WHERE chain_id = $1"
            " AND ($2::text IS NULL OR recorded_at >= $2)"
            " AND ($3::text IS NULL OR recorded_at < $3)",
            chain,
            since,
            until,
        )
        low, high = rows[0][0], rows[0][1]
        return None if low is None else (low, high)

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def query(self, query: AuditQuery) -> QueryPage:
        where, params = sql_filter(query, lambda n: f"${n}")
        rows = await self._fetch(
            "SELECT r.chain_id, r.sequence, r.recorded_at, r.record, r.hash"
            + sql_source(query)
            + where  # fixed fragments only; every value is a parameter
            + sql_order(query)
            + f" LIMIT ${len(params) + 1}",
            *params,
            query.limit + 1,
        )
        return page_of(query, [StoredRecord(c, s, t, r, h) for c, s, t, r, h in rows])
