"""Event sinks: where case status changes and closures (好差评 rating) go from the outbox.

The worker hands each event entry to a sink and retries it on the outbox schedule when the
sink fails; a sink only says "taken" (returns) or "not taken" (raises EventSinkError).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson

from gateway.stores.sqlite import open_private_append


class EventSinkError(Exception):
    """The sink did not take the event; it will be offered again."""


class EventSink(Protocol):
    async def send(self, event: Mapping[str, Any]) -> None: ...

    async def aclose(self) -> None: ...


class NullEventSink:
    """Events are dropped (cases still work; nobody is notified)."""

    async def send(self, event: Mapping[str, Any]) -> None:
        return None

    async def aclose(self) -> None:
        return None


class JsonlEventSink:
    """One JSON object per line, appended and flushed to a file (the demo's event stream).

    Delivery is at least once: an event whose entry was not marked done before a crash is
    appended again; consumers deduplicate on ``event_id``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def _append(self, line: bytes) -> None:
        with open_private_append(self.path) as out:
            out.write(line)
            out.flush()

    async def send(self, event: Mapping[str, Any]) -> None:
        line = orjson.dumps(event) + b"\n"
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, line)
            except OSError as exc:
                raise EventSinkError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        return None


class WebhookEventSink:
    """POST each event as JSON, signed with HMAC-SHA256 when a secret is configured; any 2xx
    is taken, anything else is retried on the outbox schedule."""

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._secret = secret.encode() if secret else None
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def send(self, event: Mapping[str, Any]) -> None:
        body = orjson.dumps(event)
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            mac = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers["X-Tongban-Signature"] = f"sha256={mac}"
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise EventSinkError(type(exc).__name__) from exc
        if not 200 <= response.status_code < 300:
            raise EventSinkError(f"HTTP {response.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()
