"""Building the configured consent book from settings: what the app wires in, and what the
data-subject rule takes by injection (it sees only the ConsentBook protocol).

Must not: import aiohttp.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.audit.writer import AuditWriter
from gateway.consent.book import ConsentService, WriterConsentAudit
from gateway.consent.store import ConsentStore
from gateway.consent.subjects import SubjectDigest
from gateway.identity.subject_keys import SubjectKeys
from gateway.settings import Settings
from gateway.stores.postgres_consent import PostgresConsentStore
from gateway.stores.sqlite_consent import SqliteConsentStore


def open_consent_store(settings: Settings) -> ConsentStore:
    """The configured store, not yet opened."""
    config = settings.gateway.consent
    if config.store == "postgres":
        assert config.dsn is not None  # the settings validator requires it
        return PostgresConsentStore(
            config.dsn, schema=config.schema_name, max_size=config.pool_size
        )
    return SqliteConsentStore(settings.data_dir() / config.path)


def build_consent_book(
    settings: Settings,
    audit: AuditWriter | None,
    *,
    store: ConsentStore | None = None,
    clock: Callable[[], float] | None = None,
) -> ConsentService:
    """The consent book on the configured store (open it with ``book.store.open()``), writing
    to ``audit``; None writes nothing (tests of the rule alone)."""
    book_audit = WriterConsentAudit(audit) if audit is not None else None
    opened = store if store is not None else open_consent_store(settings)
    if clock is None:
        return ConsentService(opened, book_audit)
    return ConsentService(opened, book_audit, clock=clock)


def subject_keys(settings: Settings) -> SubjectKeys | None:
    """Keys naming data subjects by identifier, when the identity provider has its pairwise and
    link secrets; None otherwise (no delegation can name an agent then)."""
    identity = settings.gateway.identity
    if identity is None or identity.link_secret is None:
        return None
    return SubjectKeys(
        pairwise_secret=identity.pairwise_secret,
        link_secret=identity.link_secret,
        link_algorithm=identity.link_algorithm,
    )


def subject_digest(settings: Settings) -> SubjectDigest | None:
    """The digest naming subjects in answers, from the pairwise secret; None without one."""
    identity = settings.gateway.identity
    return SubjectDigest(identity.pairwise_secret) if identity is not None else None
