"""``IdentityStore`` on SQLite: the embedded default, one file (``identity.sqlite``) per data dir.

Synchronous on purpose, on the stdlib ``sqlite3`` module: authlib's callbacks are synchronous
and each call here is one short statement on a local file, a few microseconds, less than a hop
to a worker thread and back would cost; so ``blocking`` is False and the provider calls it on the
event loop. A lock serialises the calls, so the store is also safe from threads (the provider is
built in one at start-up).

Durability: WAL with ``synchronous = NORMAL``. A commit is in the WAL file before the call
returns, so it survives a crash or kill of the process; only a power cut or kernel crash may
lose the last commits (WAL skips the fsync at commit in NORMAL mode). What could be lost is
minutes of tokens at most, and the worst case (a code redeemed just before the power cut is
accepted once more) is bounded by the code's 60-second lifetime. The audit trail, which must
not lose what it acknowledged, uses FULL (gateway/stores/sqlite.py).

Each protocol call is one transaction. The check-and-set operations are done by SQL itself
(``UPDATE ... WHERE family_id IS NULL`` and the row count), so they also hold when a second
process opens the same file. Several gateway instances on several hosts use Redis instead.

The file holds the userinfo claims of codes and families (personal data): it is created 0600.
"""

# ruff: noqa: S608 - SQL is built only from this module's column and table constants.
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Final

from gateway.identity.store import (
    AccessTokenRecord,
    CodeRecord,
    GrantFamily,
    RefreshTokenRecord,
    user_from_json,
    user_to_json,
)
from gateway.stores.migrations import Migration
from gateway.stores.sqlite import LockedConnection

FILE_NAME: Final = "identity.sqlite"
"""Wait this long for another process's write lock (only a second process on the file takes
it; the gateway's own calls are serialised by the store's lock). Also used by the session
store (sqlite_sessions.py)."""

IDENTITY_MIGRATIONS: Final = (
    Migration(
        1,
        "codes, nonces, grant families, access-token ids, refresh tokens",
        (
            """CREATE TABLE identity_codes (
                code_hash TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                redirect_uri TEXT NOT NULL,
                scope TEXT NOT NULL,
                user TEXT NOT NULL,
                session_id TEXT,
                nonce TEXT,
                code_challenge TEXT NOT NULL,
                code_challenge_method TEXT NOT NULL,
                issued_at REAL NOT NULL,
                expires_at REAL NOT NULL,
                family_id TEXT
            ) WITHOUT ROWID""",
            "CREATE INDEX identity_codes_session ON identity_codes (session_id)",
            "CREATE INDEX identity_codes_expiry ON identity_codes (expires_at)",
            """CREATE TABLE identity_nonces (
                client_id TEXT NOT NULL,
                nonce TEXT NOT NULL,
                expires_at REAL NOT NULL,
                PRIMARY KEY (client_id, nonce)
            ) WITHOUT ROWID""",
            "CREATE INDEX identity_nonces_expiry ON identity_nonces (expires_at)",
            """CREATE TABLE identity_families (
                family_id TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                user TEXT,
                session_id TEXT,
                scope TEXT NOT NULL,
                created_at REAL NOT NULL,
                expires_at REAL NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            ) WITHOUT ROWID""",
            "CREATE INDEX identity_families_session ON identity_families (session_id)",
            "CREATE INDEX identity_families_expiry ON identity_families (expires_at)",
            """CREATE TABLE identity_access_tokens (
                jti TEXT PRIMARY KEY,
                family_id TEXT NOT NULL,
                client_id TEXT NOT NULL,
                subject TEXT NOT NULL,
                scope TEXT NOT NULL,
                issued_at REAL NOT NULL,
                expires_at REAL NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            ) WITHOUT ROWID""",
            "CREATE INDEX identity_access_tokens_expiry ON identity_access_tokens (expires_at)",
            """CREATE TABLE identity_refresh_tokens (
                token_hash TEXT PRIMARY KEY,
                family_id TEXT NOT NULL,
                client_id TEXT NOT NULL,
                scope TEXT NOT NULL,
                issued_at REAL NOT NULL,
                expires_at REAL NOT NULL,
                rotated INTEGER NOT NULL DEFAULT 0,
                revoked INTEGER NOT NULL DEFAULT 0
            ) WITHOUT ROWID""",
            "CREATE INDEX identity_refresh_tokens_expiry ON identity_refresh_tokens (expires_at)",
        ),
    ),
)

_CODE_COLUMNS = (
    "client_id, redirect_uri, scope, user, nonce, code_challenge, code_challenge_method, "
    "issued_at, expires_at, family_id"
)
_FAMILY_COLUMNS = "family_id, client_id, user, scope, created_at, expires_at, revoked"
_ACCESS_COLUMNS = "jti, family_id, client_id, subject, scope, issued_at, expires_at, revoked"
_REFRESH_COLUMNS = (
    "token_hash, family_id, client_id, scope, issued_at, expires_at, rotated, revoked"
)
_INSERT_ACCESS = (
    f"INSERT OR REPLACE INTO identity_access_tokens ({_ACCESS_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_REFRESH = (
    f"INSERT OR REPLACE INTO identity_refresh_tokens ({_REFRESH_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# purge(): the tables whose rows count as records (nonces ride along with their codes).
_RECORD_TABLES = (
    "identity_codes",
    "identity_access_tokens",
    "identity_refresh_tokens",
    "identity_families",
)


def _access_row(record: AccessTokenRecord) -> tuple[object, ...]:
    return (
        record.jti,
        record.family_id,
        record.client_id,
        record.subject,
        record.scope,
        record.issued_at,
        record.expires_at,
        int(record.revoked),
    )


def _refresh_row(record: RefreshTokenRecord) -> tuple[object, ...]:
    return (
        record.token_hash,
        record.family_id,
        record.client_id,
        record.scope,
        record.issued_at,
        record.expires_at,
        int(record.rotated),
        int(record.revoked),
    )


class SqliteIdentityStore:
    """The identity store in one SQLite file (see the module docstring)."""

    blocking: ClassVar[bool] = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = LockedConnection(path, component="identity", migrations=IDENTITY_MIGRATIONS)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SqliteIdentityStore:
        return cls(data_dir / FILE_NAME)

    # --- codes and nonces ----------------------------------------------------------------------

    def put_code(self, code_hash: str, record: CodeRecord) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO identity_codes (code_hash, session_id, {_CODE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    code_hash,
                    record.user.session_id,
                    record.client_id,
                    record.redirect_uri,
                    record.scope,
                    user_to_json(record.user),
                    record.nonce,
                    record.code_challenge,
                    record.code_challenge_method,
                    record.issued_at,
                    record.expires_at,
                    record.family_id,
                ),
            )
            if record.nonce:
                conn.execute(
                    "INSERT OR REPLACE INTO identity_nonces (client_id, nonce, expires_at) "
                    "VALUES (?, ?, ?)",
                    (record.client_id, record.nonce, record.expires_at),
                )

    def get_code(self, code_hash: str) -> CodeRecord | None:
        row = self._db.one(
            f"SELECT {_CODE_COLUMNS} FROM identity_codes WHERE code_hash = ?", (code_hash,)
        )
        if row is None:
            return None
        (client_id, redirect_uri, scope, user, nonce, challenge, method, issued, expires, fam) = row
        return CodeRecord(
            client_id=str(client_id),
            redirect_uri=str(redirect_uri),
            scope=str(scope),
            user=user_from_json(str(user)),
            nonce=None if nonce is None else str(nonce),
            code_challenge=str(challenge),
            code_challenge_method=str(method),
            issued_at=float(issued),
            expires_at=float(expires),
            family_id=None if fam is None else str(fam),
        )

    def redeem_code(self, code_hash: str, family_id: str) -> bool:
        return (
            self._db.change(
                "UPDATE identity_codes SET family_id = ? WHERE code_hash = ? AND family_id IS NULL",
                (family_id, code_hash),
            )
            == 1
        )

    def nonce_seen(self, client_id: str, nonce: str) -> bool:
        row = self._db.one(
            "SELECT 1 FROM identity_nonces WHERE client_id = ? AND nonce = ?", (client_id, nonce)
        )
        return row is not None

    # --- grant families ------------------------------------------------------------------------

    def put_family(self, family: GrantFamily) -> None:
        user = family.user
        self._db.change(
            f"INSERT OR REPLACE INTO identity_families (session_id, {_FAMILY_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                None if user is None else user.session_id,
                family.family_id,
                family.client_id,
                None if user is None else user_to_json(user),
                family.scope,
                family.created_at,
                family.expires_at,
                int(family.revoked),
            ),
        )

    def get_family(self, family_id: str) -> GrantFamily | None:
        row = self._db.one(
            f"SELECT {_FAMILY_COLUMNS} FROM identity_families WHERE family_id = ?", (family_id,)
        )
        if row is None:
            return None
        fid, client_id, user, scope, created, expires, revoked = row
        return GrantFamily(
            family_id=str(fid),
            client_id=str(client_id),
            user=None if user is None else user_from_json(str(user)),
            scope=str(scope),
            created_at=float(created),
            expires_at=float(expires),
            revoked=bool(revoked),
        )

    def revoke_family(self, family_id: str) -> None:
        self._db.change(
            "UPDATE identity_families SET revoked = 1 WHERE family_id = ?", (family_id,)
        )

    # --- access tokens -------------------------------------------------------------------------

    def put_access_token(self, record: AccessTokenRecord) -> None:
        self._db.change(_INSERT_ACCESS, _access_row(record))

    def get_access_token(self, jti: str) -> AccessTokenRecord | None:
        row = self._db.one(
            f"SELECT {_ACCESS_COLUMNS} FROM identity_access_tokens WHERE jti = ?", (jti,)
        )
        if row is None:
            return None
        key, family_id, client_id, subject, scope, issued, expires, revoked = row
        return AccessTokenRecord(
            jti=str(key),
            family_id=str(family_id),
            client_id=str(client_id),
            subject=str(subject),
            scope=str(scope),
            issued_at=float(issued),
            expires_at=float(expires),
            revoked=bool(revoked),
        )

    def revoke_access_token(self, jti: str) -> None:
        self._db.change("UPDATE identity_access_tokens SET revoked = 1 WHERE jti = ?", (jti,))

    def is_revoked(self, jti: str) -> bool:
        row = self._db.one(
            "SELECT a.revoked, f.revoked FROM identity_access_tokens AS a "
            "LEFT JOIN identity_families AS f ON f.family_id = a.family_id WHERE a.jti = ?",
            (jti,),
        )
        if row is None:
            return False
        token_revoked, family_revoked = row
        # A token whose family is gone (purged or never stored) is not trusted either.
        return bool(token_revoked) or family_revoked is None or bool(family_revoked)

    # --- refresh tokens ------------------------------------------------------------------------

    def put_refresh_token(self, record: RefreshTokenRecord) -> None:
        self._db.change(_INSERT_REFRESH, _refresh_row(record))

    def put_tokens(self, access: AccessTokenRecord, refresh: RefreshTokenRecord | None) -> None:
        if refresh is None:
            self.put_access_token(access)
            return
        with self._db.transaction() as conn:  # one commit for both
            conn.execute(_INSERT_ACCESS, _access_row(access))
            conn.execute(_INSERT_REFRESH, _refresh_row(refresh))

    def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        row = self._db.one(
            f"SELECT {_REFRESH_COLUMNS} FROM identity_refresh_tokens WHERE token_hash = ?",
            (token_hash,),
        )
        if row is None:
            return None
        key, family_id, client_id, scope, issued, expires, rotated, revoked = row
        return RefreshTokenRecord(
            token_hash=str(key),
            family_id=str(family_id),
            client_id=str(client_id),
            scope=str(scope),
            issued_at=float(issued),
            expires_at=float(expires),
            rotated=bool(rotated),
            revoked=bool(revoked),
        )

    def get_refresh_grant(
        self, token_hash: str
    ) -> tuple[RefreshTokenRecord, GrantFamily | None] | None:
        # Two reads, microseconds apart: what must not race is decided by compare-and-set.
        record = self.get_refresh_token(token_hash)
        return None if record is None else (record, self.get_family(record.family_id))

    def rotate_refresh_token(self, token_hash: str) -> bool:
        return (
            self._db.change(
                "UPDATE identity_refresh_tokens SET rotated = 1 "
                "WHERE token_hash = ? AND rotated = 0",
                (token_hash,),
            )
            == 1
        )

    # --- sessions, housekeeping ----------------------------------------------------------------

    def revoke_session(self, sid: str) -> int:
        # OIDC Back-Channel Logout 1.0 §2.7 leaves refresh tokens to the OP's policy: a logout
        # ends every grant of the session (same policy as MemoryIdentityStore).
        with self._db.transaction() as conn:
            revoked = conn.execute(
                "UPDATE identity_families SET revoked = 1 WHERE session_id = ? AND revoked = 0",
                (sid,),
            ).rowcount
            conn.execute(
                "DELETE FROM identity_codes WHERE session_id = ? AND family_id IS NULL", (sid,)
            )
        return revoked

    def purge(self, now: float) -> int:
        gone = 0
        with self._db.transaction() as conn:
            for table in _RECORD_TABLES:
                gone += conn.execute(f"DELETE FROM {table} WHERE expires_at < ?", (now,)).rowcount
            conn.execute("DELETE FROM identity_nonces WHERE expires_at < ?", (now,))
        return gone

    def counts(self) -> dict[str, int]:
        row = self._db.one(
            "SELECT (SELECT count(*) FROM identity_codes), "
            "(SELECT count(*) FROM identity_codes WHERE family_id IS NOT NULL), "
            "(SELECT count(*) FROM identity_families), "
            "(SELECT count(*) FROM identity_families WHERE revoked = 1), "
            "(SELECT count(*) FROM identity_access_tokens), "
            "(SELECT count(*) FROM identity_refresh_tokens)",
            (),
        )
        assert row is not None
        names = (
            "codes",
            "redeemed_codes",
            "families",
            "revoked_families",
            "access_tokens",
            "refresh_tokens",
        )
        return {name: int(value) for name, value in zip(names, row, strict=True)}

    def close(self) -> None:
        self._db.close()
