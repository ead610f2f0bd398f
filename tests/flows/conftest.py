"""Whole journeys: the real gateway app over loopback HTTP in front of the real demo back-ends."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.audit.record import AuditRecord
from gateway.breaker import BreakerState, CircuitBreaker
from gateway.cli import main
from gateway.consent.contract import ConsentBook
from gateway.consent.factory import subject_keys
from gateway.demo.backends import DemoBackends, DemoSecrets, start_demo_backends
from gateway.demo.examples import issue_demo_tokens
from gateway.demo.residents import RESIDENTS
from gateway.demo.runner import demo_identity_env, point_at
from gateway.http.keys import STATE
from gateway.identity.devtokens import DevTokenIssuer
from gateway.identity.subject_keys import SubjectKeys
from gateway.logs import configure_logging
from gateway.settings import load_settings

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def config_tried_once(tmp_path: Path, system: str) -> Path:
    """A copy of the demo's configuration in which ``system`` is tried once per call (a 503
    is not retried into a 200, and a call's trace is that one attempt's)."""
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    systems = config / "systems.yaml"
    text = systems.read_text(encoding="utf-8")
    entry = f"\n  {system}:\n"
    assert entry in text
    systems.write_text(
        text.replace(entry, entry + "    retry: {max_attempts: 1}\n"), encoding="utf-8"
    )
    return config


@dataclass
class Journey:
    client: TestClient[Any, Any]
    backends: DemoBackends
    tokens: dict[str, dict[str, str]]
    issuer: DevTokenIssuer
    keys: SubjectKeys
    """How the gateway names data subjects (a token for a person carries its key)."""

    def auth(self, key: str = "citizen-l3") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[key]['token']}"}

    async def call(
        self, service: str, body: dict[str, Any], token: str = "citizen-l3", **headers: str
    ) -> tuple[int, dict[str, Any]]:
        response = await self.client.post(
            f"/api/v1/services/{service}/calls", json=body, headers={**self.auth(token), **headers}
        )
        return response.status, await response.json(content_type=None)


@pytest.fixture
def log_stream() -> Iterator[io.BytesIO]:
    """Every log line the journey writes, as JSON; checked for unmasked personal data after."""
    stream = io.BytesIO()
    configure_logging("debug", "json", stream=stream)
    yield stream
    text = stream.getvalue().decode()
    for resident in RESIDENTS:
        assert resident.id_number not in text, "an ID number reached the log unmasked"
        assert resident.name not in text, "a name reached the log unmasked"


def audit_verify(data_dir: Path) -> int:
    """`tongban audit verify --data-dir` as a user runs it (in a thread: it runs its own loop)."""
    return main(["audit", "verify", "--data-dir", str(data_dir)])


@contextlib.asynccontextmanager
async def demo_journey(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    poll_quickly: bool = False,
    config_dir: Path = CONFIG_DIR,
    consent_book: ConsentBook | None = None,
    server: Callable[[web.Application], TestServer] | None = None,
) -> AsyncIterator[Journey]:
    """The gateway as `tongban demo` configures it, on the demo provinces, stores in
    ``tmp_path``; ``poll_quickly``: a case status poll every 0.2 s instead of every minute;
    ``config_dir``: a variant of the demo's configuration (other stores, say); ``server``: the
    server to run the app on (aiohttp's test server by default, which cancels a handler whose
    client goes away)."""
    secrets = DemoSecrets.generate()
    for name, value in {**secrets.env(), **demo_identity_env(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    assert all(os.environ[k] for k in secrets.env())
    async with await start_demo_backends(secrets, config_dir=config_dir) as backends:
        settings = point_at(load_settings(config_dir), backends.overrides(), tmp_path)
        if poll_quickly:
            cases = settings.gateway.cases.model_copy(
                update={
                    "delivery": settings.gateway.cases.delivery.model_copy(
                        update={"status_poll_interval": 0.2, "poll_interval": 0.05}
                    )
                }
            )
            settings = dataclasses.replace(
                settings, gateway=settings.gateway.model_copy(update={"cases": cases})
            )
        issuer = DevTokenIssuer()
        app = create_app(settings, verifier=issuer, consent_book=consent_book)
        keys = subject_keys(settings)
        assert keys is not None, "the demo configuration has a link secret"
        served = server(app) if server is not None else TestServer(app, host="127.0.0.1")
        async with TestClient(served) as client:
            yield Journey(client, backends, issue_demo_tokens(issuer, keys), issuer, keys)


@pytest.fixture
def poll_quickly() -> bool:
    """Whether the journey's case worker polls statuses every 0.2 s instead of every minute; a
    test module that follows cases to their end overrides this fixture with True."""
    return False


@pytest.fixture
async def journey(
    tmp_path: Path,
    log_stream: io.BytesIO,
    monkeypatch: pytest.MonkeyPatch,
    poll_quickly: bool,
) -> AsyncIterator[Journey]:
    async with demo_journey(tmp_path, monkeypatch, poll_quickly=poll_quickly) as journey:
        yield journey
    # Every journey ends with the independent verifier passing on what it wrote.
    assert await asyncio.to_thread(audit_verify, tmp_path) == 0


# --- counted grants (the give-back flows) -----------------------------------------------------


async def grant_uses(journey: Journey, grant: str) -> int:
    """The uses the consent store has counted for ``grant``."""
    book = journey.client.app[STATE].consent
    assert book is not None
    stored, _ = await book.store.find(grant)
    assert stored is not None
    return int(stored.uses)


async def chain_records(journey: Journey) -> list[AuditRecord]:
    """Every record of this instance's chain, in order, once the writer has flushed."""
    state = journey.client.app[STATE]
    assert state.audit is not None
    assert state.audit_store is not None
    await state.audit.flush()
    found: list[AuditRecord] = []
    async for page in state.audit_store.read_pages(state.audit.chain, 1):
        found.extend(AuditRecord.from_stored(r.text, r.hash) for r in page)
    return found


async def consent_trail(journey: Journey, grant: str) -> list[tuple[str, Any]]:
    """The consent records of ``grant`` on this instance's chain, in order: (type, uses left)."""
    return [
        (r.event.type, r.event.extra.get("uses_left"))
        for r in await chain_records(journey)
        if r.event.type.startswith("consent_") and r.event.extra.get("grant") == grant
    ]


def open_circuit(journey: Journey, system: str) -> CircuitBreaker:
    """Open ``system``'s circuit breaker as failures would; the breaker, to close it again."""
    breaker: CircuitBreaker = journey.client.app[STATE].systems[system].breaker
    for _ in range(1000):
        if breaker.state is BreakerState.OPEN:
            return breaker
        breaker.record_failure("backend.unavailable: down for the test")
    raise AssertionError(f"the breaker of {system} did not open")
