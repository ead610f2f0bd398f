"""Where the identity core reports its events: a non-blocking ``AuditSink`` bound at start-up.

Why non-blocking (buffered) and not awaited: authlib calls the grant and endpoint hooks
synchronously on the event loop, so the token, refresh and revocation paths cannot await a
group commit; the login, logout and back-channel paths could, but one mechanism for every
identity event keeps the order of a session's records (login before its tokens before its
logout) the order of the chain. The design rule "fail closed where a case legally comes to
exist" does not cover logins and tokens, and a buffered record is still sealed into the chain
in order within milliseconds. The HTTP layer then holds each identity answer until the group
commit holding its records is done (``AuditWriter.settle`` in ``identity_audit_middleware``),
so while the store is healthy a login or token never leaves before its record is on disk; what
buffering gives up is only records queued when the process dies during an audit store outage
(or a commit slower than the middleware's wait). Fail closed where it is cheap to: when the
writer cannot even queue the record (buffer full, writer stopped or failed), ``record`` raises
AuditUnavailable and the identity operation is refused before anything is handed out.

The provider is built before the application opens its audit writer, so the sink is created
empty and bound to the writer by the audit cleanup context (``bind`` / ``unbind``). Events
reported while nothing is bound (a provider used without a gateway around it, in unit tests)
are counted and dropped.

Must not: import aiohttp; receive personal data (callers pass pairwise ids and digests only).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import structlog

from gateway.audit.record import AuditEvent
from gateway.audit.writer import AuditWriter

log = structlog.get_logger("gateway.audit")


class AuditSink(Protocol):
    """Takes an audit event without blocking; raises AuditUnavailable if it cannot keep it."""

    def record(self, event: AuditEvent) -> None: ...


class WriterAuditSink:
    """An ``AuditSink`` on this instance's chain, once ``bind`` gave it the writer."""

    def __init__(self) -> None:
        self._writer: AuditWriter | None = None
        self.dropped = 0
        """Events reported while no writer was bound."""

    @property
    def bound(self) -> bool:
        return self._writer is not None

    def bind(self, writer: AuditWriter) -> None:
        self._writer = writer

    def unbind(self) -> None:
        self._writer = None

    def record(self, event: AuditEvent) -> None:
        if self._writer is None:
            self.dropped += 1
            log.debug("audit_event_unbound", type=event.type.value)
            return
        if event.request_id is None:
            # The HTTP layer binds the request id to the log context; the core never sees it.
            request_id = structlog.contextvars.get_contextvars().get("request_id")
            if isinstance(request_id, str):
                event = replace(event, request_id=request_id)
        self._writer.append_nowait(event)


class FakeAuditSink:
    """Test double: keeps every event in ``events``."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)
