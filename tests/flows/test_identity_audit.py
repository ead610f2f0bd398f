"""Identity events in the audit trail: logins, tokens issued / refreshed / revoked, logouts and
back-channel deliveries, each under the pairwise subject of the portal concerned.

The OpenID provider journeys (tests/flows/test_oidc_provider.py's world, a FakeAuthenticator)
record into a FakeAuditSink; the federated SSO journey (tests/flows/test_federated_sso.py) runs
the real gateway, whose provider records into its audit writer, and ends with the independent
verifier passing on the trail it wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.query import AuditQuery
from gateway.audit.record import AuditEvent, AuditRecord, EventType
from gateway.audit.sink import FakeAuditSink, WriterAuditSink
from gateway.audit.writer import AuditWriter
from gateway.demo.residents import SU_LANXIN
from gateway.stores.memory_audit import MemoryAuditStore
from gateway.stores.sqlite_audit import SqliteAuditStore
from tests.flows.conftest import audit_verify
from tests.flows.test_federated_sso import (
    QH,
    SX,
    Sso,
    browser,
    call_via_portal,
    eventually,
    only_session,
    sign_in,
    sso,  # noqa: F401 - the fixture
)
from tests.flows.test_oidc_provider import (
    World,
    exchange,
    get_code,
    refresh,
    tokens,
    unverified_claims,
    world,  # noqa: F401 - the fixture
)


@pytest.fixture
def sink(world: World) -> FakeAuditSink:  # noqa: F811
    recorded = FakeAuditSink()
    world.provider.audit = recorded
    return recorded


def _of(sink: FakeAuditSink, kind: EventType) -> list[AuditEvent]:
    return [e for e in sink.events if e.type == kind]


async def test_tokens_issued_refreshed_and_revoked_are_recorded(
    world: World,  # noqa: F811
    sink: FakeAuditSink,
) -> None:
    first = await tokens(world)
    subject = unverified_claims(first["access_token"])["sub"]
    status, second = await refresh(world, first["refresh_token"])
    assert status == 200, second
    issued, refreshed = _of(sink, EventType.TOKEN_ISSUED), _of(sink, EventType.TOKEN_REFRESHED)
    assert [(e.principal, e.client, e.identity_level, e.operation) for e in issued] == [
        (subject, "portal-qh", "L3", "authorization_code")
    ]
    assert [(e.principal, e.operation) for e in refreshed] == [(subject, "refresh_token")]
    assert issued[0].extra["family"] == refreshed[0].extra["family"]
    assert issued[0].extra["jti"] == unverified_claims(first["access_token"])["jti"]

    for token, hint in ((second["access_token"], None), (second["refresh_token"], "refresh_token")):
        data = {"token": token, "client_id": "portal-qh"}
        if hint:
            data["token_type_hint"] = hint
        assert (await world.http.post("/oauth2/revoke", data=data)).status == 200
    revoked = _of(sink, EventType.TOKEN_REVOKED)
    assert [(e.principal, e.operation, e.extra["token_type"]) for e in revoked] == [
        (subject, "revocation", "access_token"),
        (subject, "revocation", "refresh_token"),
    ]
    assert revoked[1].extra["family"] == issued[0].extra["family"]
    # The trail holds identifiers, never a credential.
    text = repr(sink.events)
    for credential in (first["access_token"], first["refresh_token"], second["refresh_token"]):
        assert credential not in text
    assert "u-1001" not in text, "the internal user id never leaves the gateway"


async def test_refresh_reuse_and_code_replay_are_recorded_as_revocations(
    world: World,  # noqa: F811
    sink: FakeAuditSink,
) -> None:
    first = await tokens(world)
    await refresh(world, first["refresh_token"])
    status, _ = await refresh(world, first["refresh_token"])  # reuse of a spent token
    assert status == 400
    code, verifier, _ = await get_code(world)
    assert (await exchange(world, code, verifier))[0] == 200
    assert (await exchange(world, code, verifier))[0] == 400  # replay
    revoked = _of(sink, EventType.TOKEN_REVOKED)
    assert [(e.operation, e.outcome, e.error_code) for e in revoked] == [
        ("refresh_reuse_detected", "revoked", "refresh_token_reused"),
        ("code_replay_detected", "revoked", "authorization_code_replayed"),
    ]
    assert all(e.principal == unverified_claims(first["access_token"])["sub"] for e in revoked)


async def test_rp_initiated_logout_is_recorded(
    world: World,  # noqa: F811
    sink: FakeAuditSink,
) -> None:
    body = await tokens(world)
    response = await world.http.get(
        "/oauth2/logout", params={"id_token_hint": body["id_token"]}, allow_redirects=False
    )
    assert response.status == 200
    logouts = _of(sink, EventType.LOGOUT)
    assert [(e.operation, e.client, e.principal) for e in logouts] == [
        ("rp_initiated_logout", "portal-qh", unverified_claims(body["access_token"])["sub"])
    ]


async def test_no_token_leaves_when_the_trail_cannot_take_its_record(
    world: World,  # noqa: F811
) -> None:
    writer = AuditWriter(
        MemoryAuditStore(),
        chain="gw-t",
        signer=CheckpointSigner(StaticKeyStore([new_signing_key()])),
    )
    await writer.start()
    await writer.aclose()  # a writer that stopped: nothing can be queued
    stopped = WriterAuditSink()
    stopped.bind(writer)
    world.provider.audit = stopped
    code, verifier, _ = await get_code(world)
    status, body, _ = await exchange(world, code, verifier)
    assert status == 503
    assert body["code"] == "gateway.audit_unavailable"
    assert "access_token" not in body


# --- the federated journey on the real gateway ---------------------------------------------------


@pytest.fixture
async def verified_trail(tmp_path: Path) -> AsyncIterator[Path]:
    """Requested before ``sso``: torn down after it, when the gateway has closed its chain."""
    yield tmp_path
    assert await asyncio.to_thread(audit_verify, tmp_path) == 0


async def _records(data_dir: Path, kinds: tuple[str, ...]) -> list[AuditRecord]:
    store = SqliteAuditStore(data_dir / "audit.sqlite")
    await store.open()
    try:
        page = await store.query(AuditQuery(types=kinds, limit=500, oldest_first=True))
    finally:
        await store.aclose()
    return [AuditRecord.from_stored(r.text, r.hash) for r in page.records]


async def _wait_for(data_dir: Path, kinds: tuple[str, ...], count: int) -> list[AuditRecord]:
    found: list[AuditRecord] = []
    for _ in range(100):  # buffered records reach the store within a few milliseconds
        found = await _records(data_dir, kinds)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {len(found)} of {count} {kinds} records: {found}")


async def test_federated_journey_leaves_identity_records(
    verified_trail: Path,
    sso: Sso,  # noqa: F811
) -> None:
    portal_a, portal_b = sso.portal(QH), sso.portal(SX)
    async with browser() as b:
        # A callback with a state nobody issued: refused, and recorded as a denied login.
        async with aiohttp.ClientSession() as http:
            refused = await http.get(f"{sso.gateway}/login/callback/qinghai?state=forged&code=x")
            assert refused.status == 400
        await sign_in(sso, b, "qh-100233")  # 苏兰心 at the Qinghai platform, L2
        session_a = only_session(portal_a)
        answer = await call_via_portal(b, portal_a, 0)
        assert "data-http-status='200'" in answer
        page = await b.get(f"{portal_b.base_url}/login")  # portal B: SSO, no second login
        assert str(page.url) == f"{portal_b.base_url}/"
        session_b = only_session(portal_b)
        await b.get(f"{portal_a.base_url}/logout")
        await eventually(lambda: bool(portal_b.backchannel_logouts))

    logins = await _wait_for(verified_trail, ("login",), 2)
    denied, ok = (r.event for r in logins)
    assert (denied.outcome, denied.error_code, denied.principal) == (
        "denied",
        "state_mismatch",
        None,
    )
    assert (ok.outcome, ok.principal, ok.client, ok.identity_level) == (
        "ok",
        session_a.subject,
        QH,
        "L2",
    )
    assert ok.extra["idp"] == "qinghai"
    assert ok.extra["idp_province"] == "63"

    issued = [r.event for r in await _wait_for(verified_trail, ("token_issued",), 2)]
    assert {(e.client, e.principal) for e in issued} >= {
        (QH, session_a.subject),
        (SX, session_b.subject),
    }, "each portal's tokens under that portal's pairwise subject"

    logouts = [r.event for r in await _wait_for(verified_trail, ("logout",), 5)]
    kinds = [(e.operation, e.client) for e in logouts]
    assert ("rp_initiated_logout", QH) in kinds
    assert {("sso_session_ended", QH), ("sso_session_ended", SX)} <= set(kinds)
    delivered = [e for e in logouts if e.operation == "backchannel_logout"]
    assert {(e.client, e.outcome) for e in delivered} >= {(SX, "delivered")}
    by_client = {e.client: e.principal for e in delivered}
    assert by_client[SX] == session_b.subject

    calls = await _records(verified_trail, ("service_call_completed",))
    assert any(r.event.principal == session_a.subject for r in calls)
    everything = await _records(verified_trail, ())
    text = " ".join(r.text for r in everything)
    for value in (SU_LANXIN.id_number, SU_LANXIN.name, session_a.access_token):
        assert value not in text


async def test_a_token_answer_leaves_only_after_its_record_is_committed(
    verified_trail: Path,
    sso: Sso,  # noqa: F811
) -> None:
    """End to end, with no polling: by the time the portal has its tokens, the login and token
    records are in the store. The group commit is quick enough that this would mostly hold
    without identity_audit_middleware too; what the middleware adds (the answer waits for the
    commit) is proven against a slow store in tests/unit/http/test_identity_audit_middleware.py."""
    async with browser() as b:
        await sign_in(sso, b, "qh-100233")  # the portal's callback redeemed its code at /token
        session_a = only_session(sso.portal(QH))
        logins = await _records(verified_trail, ("login",))
        issued = await _records(verified_trail, ("token_issued",))
    assert [(r.event.outcome, r.event.principal) for r in logins] == [("ok", session_a.subject)]
    assert [(r.event.client, r.event.principal) for r in issued] == [(QH, session_a.subject)]
