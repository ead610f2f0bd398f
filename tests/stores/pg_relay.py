"""A TCP relay on 127.0.0.1 between a store and PostgreSQL that can lose the answer to a COMMIT.

It reads PostgreSQL's wire protocol (v3, no TLS: the DSN through it says ``sslmode=disable``)
message by message in both directions and forwards every one, but for the one it is told to
lose: armed, on the first connection whose transaction sent an ``INSERT INTO <table>`` (the
statement's text, as it goes out the first time on a connection), its ``COMMIT`` is

- ``after``: forwarded, the server's answer read (``CommandComplete`` COMMIT: it committed, or
  an error: it did not) and not forwarded, and both sides closed; or
- ``before``: never forwarded, and both sides closed (the server rolls the transaction back).

Either way the store is left with a connection lost after it sent its COMMIT, and the test is
told what the server did (``outcome``).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

Moment = Literal["after", "before"]


@dataclass
class Lost:
    """What became of the COMMIT whose answer was lost."""

    committed: bool
    """The server answered it with CommandComplete (only ``after``)."""


@dataclass
class CommitLosingRelay:
    upstream: tuple[str, int]
    table: str = "cases"
    moment: Moment | None = None
    """Armed when set; disarmed again once it has lost one COMMIT."""
    outcome: asyncio.Future[Lost] | None = None
    """Set by ``arm``: what the server did with the COMMIT the relay lost."""
    port: int = 0
    _server: asyncio.Server | None = None
    _links: set[asyncio.Task[None]] = field(default_factory=set)

    def arm(self, moment: Moment) -> None:
        self.moment = moment
        self.outcome = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def dsn(self, user: str, database: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.cancel()
        for link in list(self._links):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await link
        if self._server is not None:
            await self._server.wait_closed()

    async def _link(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        server_r, server_w = await asyncio.open_connection(*self.upstream)
        link = _Link(self, client_r, client_w, server_r, server_w)
        try:
            await link.run()
        finally:
            self._links.discard(task)
            for writer in (client_w, server_w):
                writer.transport.abort()


class _Link:
    def __init__(
        self,
        relay: CommitLosingRelay,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        server_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
    ) -> None:
        self.relay = relay
        self.client_r, self.client_w = client_r, client_w
        self.server_r, self.server_w = server_r, server_w
        self.inserting = False
        self.holding: asyncio.Future[Lost] | None = None

    async def run(self) -> None:
        up = asyncio.ensure_future(self._client_to_server())
        down = asyncio.ensure_future(self._server_to_client())
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for side in (up, down):
                side.cancel()
                with contextlib.suppress(
                    asyncio.CancelledError, OSError, asyncio.IncompleteReadError
                ):
                    await side

    async def _client_to_server(self) -> None:
        (length,) = struct.unpack("!I", await self.client_r.readexactly(4))
        startup = await self.client_r.readexactly(length - 4)
        self.server_w.write(struct.pack("!I", length) + startup)
        insert = f"INSERT INTO {self.relay.table} ".encode()
        while True:
            head = await self.client_r.readexactly(5)
            kind, length = head[:1], struct.unpack("!I", head[1:])[0]
            body = await self.client_r.readexactly(length - 4)
            if kind in (b"P", b"Q") and insert in body:
                self.inserting = True
            commit = kind == b"Q" and body.upper().startswith(b"COMMIT")
            if commit and self.inserting and self.relay.moment is not None:
                moment, self.relay.moment = self.relay.moment, None
                assert self.relay.outcome is not None
                if moment == "before":
                    self.relay.outcome.set_result(Lost(committed=False))
                    return  # never sent: both sides closed, the server rolls back
                self.holding = asyncio.get_running_loop().create_future()
                self.server_w.write(head + body)
                self.relay.outcome.set_result(await self.holding)
                return
            self.server_w.write(head + body)
            if kind == b"Q" and (commit or body.upper().startswith(b"ROLLBACK")):
                self.inserting = False

    async def _server_to_client(self) -> None:
        while True:
            head = await self.server_r.readexactly(5)
            kind, length = head[:1], struct.unpack("!I", head[1:])[0]
            body = await self.server_r.readexactly(length - 4)
            if self.holding is not None:
                if not self.holding.done() and kind == b"C":
                    self.holding.set_result(Lost(committed=body.startswith(b"COMMIT")))
                elif not self.holding.done() and kind == b"E":
                    self.holding.set_result(Lost(committed=False))
                continue  # the answer is lost
            self.client_w.write(head + body)


@contextlib.asynccontextmanager
async def commit_losing_relay(
    host: str, port: int, table: str = "cases"
) -> AsyncIterator[CommitLosingRelay]:
    relay = CommitLosingRelay((host, port), table)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.aclose()
