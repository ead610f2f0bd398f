"""The SOAP adapter's envelopes sent past ``ClientSession._request``'s general layers
(adapters/lean_send.py): the same bytes on the wire as through ``session.post``, the same answers.

A relay on loopback in front of an ASMX-style service records every byte the adapter writes;
the same calls are made with the lean sender and with it refused (the session's path)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.lean_send import LeanSender
from adapters.soap import build_soap_adapter
from gateway.adapter import Call
from tests.adapters.dotnet_backend import REGISTRATIONS, DotnetService, running_dotnet_service
from tests.adapters.loopback_backends import CONTEXT
from tests.adapters.test_asmx import OWNER, asmx_spec


class Relay:
    """Forwards each connection to the service and keeps what the client wrote on it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.written: list[bytearray] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent = bytearray()
        self.written.append(sent)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, keep: bytearray | None
        ) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if keep is not None:
                        keep += data
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer, sent), pipe(up_reader, writer, None))


@contextlib.asynccontextmanager
async def relayed() -> AsyncIterator[tuple[DotnetService, Relay]]:
    async with running_dotnet_service(DotnetService()) as service:
        port = int(service.address.split(":")[2].split("/")[0])
        relay = Relay(port)
        await relay.start()
        try:
            yield service, relay
        finally:
            await relay.stop()


def _calls(service: DotnetService) -> list[Call]:
    certificate = REGISTRATIONS[0].certificate
    return [
        Call("CheckCertificate", {"certNo": certificate, "ownerIdNo": OWNER}, CONTEXT),
        Call(
            "QueryRegistrations",
            {"userName": service.user, "password": service.password, "ownerIdNo": OWNER},
            CONTEXT,
        ),
        Call("GetRegistrationCount", {"ownerIdNo": "nobody-张"}, CONTEXT),
    ]


async def _both_ways(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[tuple[bytes, list[Any]], tuple[bytes, list[Any]]]:
    runs = []
    for lean in (True, False):
        async with relayed() as (service, relay):
            address = service.address.replace(
                service.address.split("/")[2], f"127.0.0.1:{relay.port}"
            )
            with monkeypatch.context() as patch:
                if not lean:
                    patch.setattr(LeanSender, "for_", classmethod(lambda cls, *a: None))
                adapter = await build_soap_adapter.open(asmx_spec(service, address=address))
                try:
                    answers = [(await adapter.call(call)).data for call in _calls(service)]
                    senders = adapter._client.transport._lean
                    assert all((s is not None) == lean for s in senders.values())
                    assert senders
                finally:
                    await adapter.aclose()
            wire = b"".join(relay.written).replace(f"127.0.0.1:{relay.port}".encode(), b"relay")
            runs.append((wire, answers))
    return runs[0], runs[1]


async def test_the_same_bytes_and_answers_past_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    (lean_bytes, lean_answers), (plain_bytes, plain_answers) = await _both_ways(monkeypatch)
    assert lean_bytes == plain_bytes
    assert lean_answers == plain_answers
    assert lean_bytes.count(b"POST ") == 3
    assert b"\r\nSOAPAction: " in lean_bytes
    assert lean_answers[0] == {"CheckCertificateResult": True}
