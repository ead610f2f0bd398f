"""The autouse guards of tests/conftest.py hold: a test cannot reach beyond loopback."""

from __future__ import annotations

import socket

import pytest


@pytest.mark.parametrize("address", [("192.0.2.1", 443), ("2001:db8::1", 443), ("8.8.8.8", 53)])
def test_connections_beyond_loopback_are_refused(address: tuple[str, int]) -> None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        with pytest.raises(ConnectionRefusedError, match="only reach loopback"):
            sock.connect(address)
        with pytest.raises(ConnectionRefusedError, match="only reach loopback"):
            sock.connect_ex(address)


def test_loopback_stays_reachable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
