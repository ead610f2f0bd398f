"""The one-method face a component records audit events through (cases, consent grants), and
its two implementations: on the gateway's AuditWriter, and a list for tests."""

from __future__ import annotations

from typing import Protocol

from gateway.audit.record import AuditEvent
from gateway.audit.writer import AuditWriter


class EventRecorder(Protocol):
    async def record(self, event: AuditEvent, *, required: bool) -> None:
        """``required``: return only once the event is durably committed (fail closed)."""


class WriterRecorder:
    """EventRecorder on the gateway's AuditWriter."""

    def __init__(self, writer: AuditWriter) -> None:
        self._writer = writer

    async def record(self, event: AuditEvent, *, required: bool) -> None:
        await self._writer.append(event, mode="required" if required else "buffered")


class MemoryRecorder:
    """Keeps the events in a list: tests and throw-away runs."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent, *, required: bool) -> None:
        self.events.append(event)
