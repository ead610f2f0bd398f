"""Guards for every test: loopback-only network, and no silently skipped service tests in CI."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Generator
from typing import Any

import pytest

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address: Any) -> bool:
    if isinstance(address, tuple) and address:
        host = address[0]
        if host in ("localhost",):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    return True  # unix sockets


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise ConnectionRefusedError(f"tests may only reach loopback, not {address!r}")
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise ConnectionRefusedError(f"tests may only reach loopback, not {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)


def _release_finished_apps() -> None:
    """aiohttp memoises each application's middleware chain per (handler, apps) in a
    module-level LRU cache of 1,024 entries, which keeps every application a test started
    alive, with its WSDL models, schemas and stores, long after the test: the suite's heap
    grew past a gigabyte and every full garbage collection walked all of it. A gateway process
    runs one application, so only the tests need this."""
    from aiohttp import web_app  # noqa: PLC0415 - only the suite needs it

    cache = getattr(web_app, "_cached_build_middleware", None)
    if cache is not None and hasattr(cache, "cache_clear"):
        cache.cache_clear()


@pytest.fixture(autouse=True)
def _no_finished_app_kept() -> Generator[None, None, None]:
    yield
    _release_finished_apps()


@pytest.fixture(autouse=True)
def _secrets_of_this_test_only() -> Generator[None, None, None]:
    """Every configuration a test loads registers its secrets for masking in log lines; kept
    across hundreds of tests, the mask grew to tens of thousands of alternatives, applied to
    every log line of every later test."""
    from gateway.logs import forget_secrets_except, registered_secrets  # noqa: PLC0415

    before = registered_secrets()
    yield
    forget_secrets_except(before)


_SERVICE_MARKERS = ("postgres", "redis", "browser", "kernel_aio")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI a test that needs PostgreSQL, Redis, Chromium or the kernel's asynchronous I/O
    fails instead of skipping."""
    report = yield
    if (
        os.environ.get("CI")
        and report.skipped
        and any(item.get_closest_marker(m) for m in _SERVICE_MARKERS)
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which is not allowed: {report.longrepr}"
    return report
