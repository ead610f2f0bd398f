"""The server's own timeouts, over raw loopback sockets against the runner `tongban serve` uses:
a connection that never completes its request head (sent slowly, or not at all) is closed after
``server.idle_timeout``; a body slower than ``server.body_timeout`` is 408 and the connection
closes; a client that goes away mid-body is a 499 access line, never a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.adapter import Adapter, SystemSpec
from gateway.app import create_app
from gateway.serve import app_runner, bound_port
from gateway.settings import SystemSettings
from tests.unit.http.test_app import ISSUER, Backend
from tests.unit.http.test_app import _settings as base_settings

IDLE = 0.6
BODY = 0.6


@pytest.fixture
async def port(tmp_path: Path, log_stream: io.BytesIO) -> AsyncIterator[int]:
    settings = base_settings(tmp_path)
    server = settings.gateway.server.model_copy(update={"idle_timeout": IDLE, "body_timeout": BODY})
    settings = dataclasses.replace(
        settings, gateway=settings.gateway.model_copy(update={"server": server})
    )
    backend = Backend()

    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    runner = app_runner(create_app(settings, verifier=ISSUER, open_adapter=open_adapter))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield bound_port(runner)
    finally:
        await runner.cleanup()


async def closed_after(reader: asyncio.StreamReader, within: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent before."""
    started = time.monotonic()
    received = b""
    async with asyncio.timeout(within):
        while chunk := await reader.read(4096):
            received += chunk
    return time.monotonic() - started, received


def log_lines(stream: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_an_idle_connection_and_slow_headers_are_closed(port: int) -> None:
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
    slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)

    async def drip() -> None:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            slow_w.write(bytes([byte]))
            await slow_w.drain()
            await asyncio.sleep(0.02)

    dripping = asyncio.create_task(drip())
    try:
        idle_s, idle_got = await closed_after(idle_r, IDLE * 5)
        slow_s, slow_got = await closed_after(slow_r, IDLE * 5)
    finally:
        dripping.cancel()
        idle_w.close()
        slow_w.close()
    assert idle_got == b""
    assert slow_got == b""
    assert idle_s < IDLE * 3
    assert slow_s < IDLE * 3


async def test_a_slow_body_is_408_and_the_connection_closes(
    port: int, log_stream: io.BytesIO
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/v1/callbacks/sys-61 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{"sequence": '
    )
    await writer.drain()
    _, answer = await closed_after(reader, BODY * 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["code"] == "client.request_timeout"
    assert b"X-Request-ID: " in head
    lines = log_lines(log_stream)
    assert [line["status"] for line in lines if line.get("event") == "request_completed"] == [408]
    assert not [line for line in lines if line.get("level") in ("error", "critical")]


async def test_a_client_abort_mid_body_is_a_499_line_not_a_500(
    port: int, log_stream: io.BytesIO
) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/v1/callbacks/sys-61 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"sequence": 1'
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        lines = log_lines(log_stream)
        if any(line.get("event") == "request_completed" for line in lines):
            break
        await asyncio.sleep(0.02)
    done = [line for line in lines if line.get("event") == "request_completed"]
    assert [(line["route"], line["status"]) for line in done] == [
        ("/api/v1/callbacks/{system}", 499)
    ]
    assert not [line for line in lines if line.get("level") in ("error", "critical")]
    assert "Traceback" not in log_stream.getvalue().decode()
