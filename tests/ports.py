"""Loopback ports held from the moment a test chooses them until its server listens on them.

A port picked free, released and bound again later can be taken in between by anything else on
a busy machine (the demo's own servers on ephemeral ports, another test run): 'Address already
in use'. A ``HeldPort`` stays bound from the start and hands that very socket to aiohttp's
``TestServer`` (its ``socket_factory``), so there is no in-between.
"""

from __future__ import annotations

import socket


class HeldPort:
    """A bound (not yet listening) loopback socket, and its port."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]

    def socket_factory(self, host: str, port: int, family: socket.AddressFamily) -> socket.socket:
        """For ``TestServer(..., port=held.port, socket_factory=held.socket_factory)``."""
        assert self._sock is not None, "the held socket was handed over already"
        assert (host, port) == ("127.0.0.1", self.port), (host, port)
        sock, self._sock = self._sock, None
        return sock

    def close(self) -> None:
        """Release the port if no server took it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
