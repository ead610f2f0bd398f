"""A stand-in for the audit writer that keeps the events it is handed, in order."""

from __future__ import annotations

from gateway.audit.record import AuditEvent


class KeptWriter:
    """What ``CallAuditor`` calls of ``AuditWriter``; each event kept, nothing written."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def append(self, event: AuditEvent, mode: str = "required") -> int:
        self.events.append(event)
        return len(self.events)

    def append_nowait(self, event: AuditEvent) -> None:
        self.events.append(event)
