"""What several worker processes share (settings), their chains, their sockets, and the one case
dispatcher per SQLite data directory (the processes themselves: tests/flows/test_serve_workers)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from pathlib import Path

import pytest

from gateway.cases.dispatcher import DispatcherLock, ElectedDispatcher
from gateway.identity.config import ProviderSettings
from gateway.settings import Settings, load_settings
from gateway.workers import (
    DEV_SECRET_ENV,
    dev_token_secret,
    listening_sockets,
    memory_stores,
    run_workers,
    shared_across_workers,
    worker_chain,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(ROOT / "config", resolve_secrets=False)


def _identity(settings: Settings) -> ProviderSettings:
    assert settings.gateway.identity is not None
    return settings.gateway.identity


def test_memory_stores_become_files_with_several_workers(settings: Settings) -> None:
    assert settings.gateway.rate_limits.store == "memory"
    assert _identity(settings).session.store == "memory"
    shared = shared_across_workers(settings, 2)
    assert shared.gateway.rate_limits.store == "sqlite"
    assert _identity(shared).session.store == "sqlite"
    assert _identity(shared).token_store == "sqlite"
    assert memory_stores(settings) == ["identity.session.store", "rate_limits.store"]
    # Everything else is as configured, and one worker keeps the configuration as it is.
    assert _identity(shared).session.cookie_name == _identity(settings).session.cookie_name
    assert shared.services == settings.services
    assert shared_across_workers(settings, 1) is settings


def test_redis_stores_are_left_alone(settings: Settings) -> None:
    identity = _identity(settings)
    redis_identity = identity.model_copy(
        update={
            "session": identity.session.model_copy(update={"store": "redis"}),
            "token_store": "redis",
        }
    )
    limits = settings.gateway.rate_limits.model_copy(update={"store": "redis"})
    gateway = settings.gateway.model_copy(
        update={"identity": redis_identity, "rate_limits": limits}
    )
    clustered = dataclasses.replace(settings, gateway=gateway)
    assert memory_stores(clustered) == []
    shared = shared_across_workers(clustered, 4)
    assert _identity(shared).session.store == "redis"
    assert shared.gateway.rate_limits.store == "redis"


def test_each_worker_writes_a_chain_of_its_own() -> None:
    assert worker_chain("gw-qh-1", 0, 1) == "gw-qh-1"
    assert [worker_chain("gw-qh-1", slot, 3) for slot in range(3)] == [
        "gw-qh-1.w1",
        "gw-qh-1.w2",
        "gw-qh-1.w3",
    ]


def test_sockets_share_one_port_and_a_taken_port_is_one_error() -> None:
    sockets = listening_sockets("127.0.0.1", 0, 3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1
        # A connection to the port is accepted by one of the sockets.
        with socket.create_connection(("127.0.0.1", ports.pop()), timeout=5):
            pass
    finally:
        for sock in sockets:
            sock.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: address already"):
            listening_sockets("127.0.0.1", port, 2)


class _Worker:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.closed = False

    def start(self) -> None:
        self.started.set()

    async def aclose(self) -> None:
        self.closed = True


async def test_one_dispatcher_per_lock_and_a_stand_in_takes_over(tmp_path: Path) -> None:
    database = tmp_path / "cases.db"
    first_worker, second_worker = _Worker(), _Worker()
    first = ElectedDispatcher(first_worker, DispatcherLock.beside(database), retry=0.01)  # type: ignore[arg-type]
    second = ElectedDispatcher(second_worker, DispatcherLock.beside(database), retry=0.01)  # type: ignore[arg-type]
    first.start()
    async with asyncio.timeout(10):
        await first_worker.started.wait()
    second.start()
    for _ in range(20):  # the second keeps trying, and never gets it while the first holds it
        await asyncio.sleep(0.01)
    assert not second_worker.started.is_set()
    await first.aclose()  # the holder stops (or dies: the kernel drops its lock either way)
    assert first_worker.closed
    async with asyncio.timeout(10):
        await second_worker.started.wait()
    await second.aclose()
    assert (tmp_path / "cases.db.dispatcher.lock").exists()


# --- the development tokens' key --------------------------------------------------------------


def test_the_dev_token_key_in_the_environment_is_ignored_without_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DEV_SECRET_ENV, "ab" * 32)
    assert dev_token_secret(dev_tokens=False) is None
    assert DEV_SECRET_ENV not in os.environ  # so no worker inherits it


def test_with_the_flag_the_dev_token_key_is_the_environment_s_or_a_random_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DEV_SECRET_ENV, "ab" * 32)
    assert dev_token_secret(dev_tokens=True) == bytes.fromhex("ab" * 32)
    assert DEV_SECRET_ENV not in os.environ
    first, second = dev_token_secret(dev_tokens=True), dev_token_secret(dev_tokens=True)
    assert first is not None
    assert second is not None
    assert len(first) == 32
    assert first != second


@pytest.mark.parametrize("value", ["ab" * 31, "not hex at all, but long enough" * 3])
def test_a_short_or_malformed_dev_token_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(DEV_SECRET_ENV, value)
    with pytest.raises(ValueError, match=DEV_SECRET_ENV):
        dev_token_secret(dev_tokens=True)


def test_serve_with_a_bad_dev_token_key_exits_with_one_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(DEV_SECRET_ENV, "short")
    code = asyncio.run(
        run_workers(config_dir=ROOT / "config", host=None, port=0, dev_tokens=True, workers=1)
    )
    assert code == 1
    assert capsys.readouterr().err == (
        f"tongban serve: {DEV_SECRET_ENV} must be a key of 32 bytes or more, in hex\n"
    )
