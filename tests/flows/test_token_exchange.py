"""RFC 8693 token exchange at /oauth2/token over real loopback HTTP: a window clerk's token and an
applicant's ID document become a Counter token for the applicant with the clerk as ``act``.

The clerk signs in through a ``FakeAuthenticator`` here (the staff directory and the console are
tests/flows/test_clerk_token_exchange.py). Every refusal asserts the exact error of RFC 8693
§2.2.2 / RFC 6749 §5.2 and that nothing was issued or stored: no grant family, no access token,
no audit record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from gateway.audit.record import EventType
from gateway.audit.sink import FakeAuditSink
from gateway.demo.residents import MA_WENHUA, SU_LANXIN
from gateway.http.keys import METRICS, VERIFIER
from gateway.http.middlewares import auth_middleware, problem_middleware, request_context_middleware
from gateway.http.oidc import add_oidc_routes
from gateway.identity.authn import AuthenticatedUser, FakeAuthenticator
from gateway.identity.citizen import natural_person_id
from gateway.identity.clients import TOKEN_EXCHANGE, ClientRegistration
from gateway.identity.config import ProviderSettings, pairwise_subject
from gateway.identity.identifiers import link_keyer
from gateway.identity.provider import KEY_FILE_NAME, OpenIDProvider
from gateway.identity.store import MemoryIdentityStore
from gateway.identity.token_exchange import ACCESS_TOKEN_TYPE, ID_DOCUMENT_TOKEN_TYPE
from gateway.metrics import Metrics
from tests.flows.test_oidc_provider import (
    Basic,
    FakeClock,
    pkce,
    query_of,
    unverified_claims,
    whoami,
)
from tests.ports import HeldPort

WINDOW = "window-61-yanta"
WINDOW_SECRET = "window-61-yanta-secret-0123"
OTHER_WINDOW = "window-61-beilin"
OTHER_SECRET = "window-61-beilin-secret-0123"
NO_GRANT = "window-61-lianhu"
NO_GRANT_SECRET = "window-61-lianhu-secret-0123"
PORTAL = "portal-qh"
WINDOW_REDIRECT = "https://window-61.example/cb"
WINDOW_AUTH = Basic(WINDOW, WINDOW_SECRET)
LINK_SECRET = "l" * 40
PAIRWISE_SECRET = "p" * 40
CLERK = AuthenticatedUser(
    local_id="staff:shaanxi-staff:clerk-61-0007",
    acr="L3",
    auth_time=0,
    claims={"name": "王静", "preferred_username": "clerk-61-0007"},
    roles=frozenset({"clerk"}),
    session_id="clerk-session-1",
)
_KEY_FILE: dict[str, bytes] = {}


@dataclass
class Desk:
    http: TestClient[Any, Any]
    provider: OpenIDProvider
    store: MemoryIdentityStore
    authenticator: FakeAuthenticator
    clock: FakeClock
    audit: FakeAuditSink

    def untouched(self) -> dict[str, int]:
        return {**self.store.counts(), "audit": len(self.audit.events)}


def _window(client_id: str, secret: str, **extra: Any) -> ClientRegistration:
    return ClientRegistration(
        client_id=client_id,
        type="confidential",
        client_secret=SecretStr(secret),
        window=True,
        redirect_uris=(WINDOW_REDIRECT,),
        sector_identifier=f"{client_id}.example",
        scopes=("openid", "profile", "services:call"),
        grant_types=extra.pop(
            "grant_types", ("authorization_code", "refresh_token", TOKEN_EXCHANGE)
        ),
        allowed_services=("disability-card",),
        **extra,
    )


def _clients() -> list[ClientRegistration]:
    return [
        _window(WINDOW, WINDOW_SECRET),
        _window(OTHER_WINDOW, OTHER_SECRET),
        _window(NO_GRANT, NO_GRANT_SECRET, grant_types=("authorization_code",)),
        ClientRegistration(
            client_id=PORTAL,
            type="public",
            redirect_uris=("https://portal-qh.example/callback",),
            scopes=("openid", "profile", "services:call"),
        ),
    ]


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    if _KEY_FILE:
        (tmp_path / KEY_FILE_NAME).write_bytes(_KEY_FILE["jwks"])
        (tmp_path / KEY_FILE_NAME).chmod(0o600)
    held = HeldPort()
    port = held.port
    clock = FakeClock()
    settings = ProviderSettings(
        issuer=f"http://127.0.0.1:{port}",
        pairwise_secret=SecretStr(PAIRWISE_SECRET),
        link_secret=SecretStr(LINK_SECRET),
        algorithms=("ES256",),
    )
    authenticator = FakeAuthenticator(replace(CLERK, auth_time=int(clock())))
    store = MemoryIdentityStore()
    provider = OpenIDProvider.from_config(
        settings, _clients(), data_dir=tmp_path, authenticator=authenticator, store=store,
        clock=clock,
    )  # fmt: skip
    _KEY_FILE.setdefault("jwks", (tmp_path / KEY_FILE_NAME).read_bytes())
    audit = FakeAuditSink()
    provider.audit = audit
    app = web.Application(
        middlewares=[request_context_middleware, problem_middleware, auth_middleware]
    )
    app[METRICS] = Metrics()
    app[VERIFIER] = provider.access_token_verifier()
    app.router.add_get("/api/v1/whoami", whoami)
    add_oidc_routes(app, provider)
    async with TestClient(
        TestServer(app, host="127.0.0.1", port=port, socket_factory=held.socket_factory)
    ) as http:
        yield Desk(http, provider, store, authenticator, clock, audit)


# --- helpers ---------------------------------------------------------------------------------


async def sign_in(
    desk: Desk, client_id: str = WINDOW, secret: str = WINDOW_SECRET, scope: str | None = None
) -> dict[str, Any]:
    """The code flow for whoever the authenticator names; the token response."""
    verifier, challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": WINDOW_REDIRECT,
        "scope": scope or "openid profile services:call",
        "state": "st",
        "nonce": "n",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    resp = await desk.http.get("/oauth2/authorize", params=params, allow_redirects=False)
    assert resp.status == 302, await resp.text()
    code = query_of(resp.headers["Location"])["code"]
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": WINDOW_REDIRECT,
        "code_verifier": verifier,
    }
    status, body = await post(desk, data, Basic(client_id, secret))
    assert status == 200, body
    return body


async def post(
    desk: Desk, data: dict[str, str], auth: Basic | None = None
) -> tuple[int, dict[str, Any]]:
    resp = await desk.http.post("/oauth2/token", data=data, headers=auth.header if auth else {})
    body: dict[str, Any] = await resp.json()
    return resp.status, body


def exchange_form(actor_token: str | None, id_number: str = SU_LANXIN.id_number) -> dict[str, str]:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": f"111:{id_number}",
        "subject_token_type": ID_DOCUMENT_TOKEN_TYPE,
    }
    if actor_token is not None:
        form.update(actor_token=actor_token, actor_token_type=ACCESS_TOKEN_TYPE)
    return form


async def exchange(desk: Desk, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    return await post(desk, form, WINDOW_AUTH)


def person_sub(client_id: str, id_number: str) -> str:
    local_id = natural_person_id(link_keyer(LINK_SECRET)("111", id_number))
    return pairwise_subject(SecretStr(PAIRWISE_SECRET), f"{client_id}.example", local_id)


async def refused(
    desk: Desk,
    form: dict[str, str],
    status: int,
    error: str,
    auth: Basic | None = WINDOW_AUTH,
) -> dict[str, Any]:
    """The exchange is refused with ``error``, and nothing was issued, stored or recorded."""
    before = desk.untouched()
    got, body = await post(desk, form, auth)
    assert (got, body.get("error")) == (status, error), body
    assert "access_token" not in body
    assert desk.untouched() == before
    return body


# --- the exchange ----------------------------------------------------------------------------


async def test_clerk_token_and_id_document_give_a_counter_token_for_the_person(
    desk: Desk,
) -> None:
    clerk = await sign_in(desk)
    clerk_claims = unverified_claims(clerk["access_token"])
    assert clerk_claims["roles"] == ["clerk"]
    assert "act" not in clerk_claims

    with structlog.testing.capture_logs() as logs:
        status, body = await exchange(desk, exchange_form(clerk["access_token"]))
    assert status == 200, body
    # RFC 8693 §2.2.1: an access token, Bearer, its type, its life; no refresh token.
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert "refresh_token" not in body
    assert 0 < body["expires_in"] <= 300
    assert body["scope"] == "profile services:call"  # the clerk's, without openid

    claims = unverified_claims(body["access_token"])
    assert claims["sub"] == person_sub(WINDOW, SU_LANXIN.id_number)
    assert claims["sub"] != clerk_claims["sub"]
    assert claims["acr"] == "Counter"
    assert claims["act"] == {"sub": clerk_claims["sub"], "role": "clerk"}
    assert claims["client_id"] == WINDOW
    assert "roles" not in claims, "the applicant holds no staff role"
    assert claims["exp"] <= clerk_claims["exp"]

    # The API sees the citizen as principal and the clerk as actor.
    resp = await desk.http.get(
        "/api/v1/whoami", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    me = await resp.json()
    assert (me["subject"], me["level"], me["actor"], me["actor_role"]) == (
        claims["sub"],
        "Counter",
        clerk_claims["sub"],
        "clerk",
    )

    # Audited as a token issued for the person, the clerk as actor, operation token_exchange.
    (event,) = [
        e
        for e in desk.audit.events
        if e.type == EventType.TOKEN_ISSUED and e.operation == "token_exchange"
    ]
    assert (event.principal, event.actor, event.identity_level, event.client) == (
        claims["sub"],
        clerk_claims["sub"],
        "Counter",
        WINDOW,
    )
    assert event.extra["refresh_token"] is False
    text = repr(logs) + repr(desk.audit.events)
    assert SU_LANXIN.id_number not in text, "the ID number is never logged or audited"

    # The same person as federation links her: another document gives another person.
    _, other = await exchange(desk, exchange_form(clerk["access_token"], MA_WENHUA.id_number))
    assert unverified_claims(other["access_token"])["sub"] == person_sub(
        WINDOW, MA_WENHUA.id_number
    )


async def test_counter_token_is_introspected_revoked_and_ends_with_the_clerks_session(
    desk: Desk,
) -> None:
    clerk = await sign_in(desk)
    status, body = await exchange(
        desk, {**exchange_form(clerk["access_token"]), "scope": "services:call"}
    )
    assert status == 200, body
    assert body["scope"] == "services:call"
    token = body["access_token"]
    resp = await desk.http.post(
        "/oauth2/introspect", data={"token": token}, headers=WINDOW_AUTH.header
    )
    view = await resp.json()
    assert view["active"] is True
    assert view["acr"] == "Counter"
    assert view["act"]["role"] == "clerk"

    # Revocation (RFC 7009) of the Counter token leaves the clerk's own token alone.
    resp = await desk.http.post("/oauth2/revoke", data={"token": token}, headers=WINDOW_AUTH.header)
    assert resp.status == 200
    whoami_status = await desk.http.get(
        "/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}
    )
    assert whoami_status.status == 401
    _, again = await exchange(desk, exchange_form(clerk["access_token"]))
    # The clerk's logout ends her session's grants: her Counter tokens with them.
    assert desk.store.revoke_session(CLERK.session_id or "") >= 2
    for revoked in (again["access_token"], clerk["access_token"]):
        resp = await desk.http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {revoked}"})
        assert resp.status == 401


async def test_discovery_advertises_the_grant(desk: Desk) -> None:
    resp = await desk.http.get("/.well-known/openid-configuration")
    assert TOKEN_EXCHANGE in (await resp.json())["grant_types_supported"]


# --- refusals: each with no token and no side effect -----------------------------------------


async def test_refused_without_an_actor_token(desk: Desk) -> None:
    await refused(desk, exchange_form(None), 400, "invalid_request")
    clerk = await sign_in(desk)
    form = exchange_form(clerk["access_token"])
    del form["actor_token_type"]
    await refused(desk, form, 400, "invalid_request")


async def test_refused_without_the_id_document(desk: Desk) -> None:
    clerk = await sign_in(desk)
    form = exchange_form(clerk["access_token"])
    del form["subject_token"]
    await refused(desk, form, 400, "invalid_request")
    form = {**exchange_form(clerk["access_token"]), "subject_token_type": ACCESS_TOKEN_TYPE}
    await refused(desk, form, 400, "invalid_request")


async def test_refused_when_the_actor_is_not_a_clerk(desk: Desk) -> None:
    assert desk.authenticator.user is not None
    desk.authenticator.user = replace(
        desk.authenticator.user, local_id="person:someone", roles=frozenset()
    )
    citizen = await sign_in(desk)
    body = await refused(desk, exchange_form(citizen["access_token"]), 400, "invalid_request")
    assert "clerk" in body["error_description"]


async def test_refused_when_the_actor_token_is_itself_acting_for_someone(desk: Desk) -> None:
    clerk = await sign_in(desk)
    _, counter = await exchange(desk, exchange_form(clerk["access_token"]))
    # A Counter token is the citizen's (with the clerk as act): no chains of exchanges.
    await refused(desk, exchange_form(counter["access_token"]), 400, "invalid_request")


async def test_refused_when_the_actor_token_was_issued_to_another_client(desk: Desk) -> None:
    other = await sign_in(desk, OTHER_WINDOW, OTHER_SECRET)
    body = await refused(desk, exchange_form(other["access_token"]), 400, "invalid_request")
    assert "another client" in body["error_description"]


async def test_refused_with_a_revoked_actor_token(desk: Desk) -> None:
    clerk = await sign_in(desk)
    resp = await desk.http.post(
        "/oauth2/revoke",
        data={"token": clerk["access_token"]},
        headers=WINDOW_AUTH.header,
    )
    assert resp.status == 200
    await refused(desk, exchange_form(clerk["access_token"]), 400, "invalid_request")


async def test_refused_with_an_expired_actor_token(desk: Desk) -> None:
    clerk = await sign_in(desk)
    desk.clock.advance(clerk["expires_in"] + 1)  # no leeway for an actor token
    await refused(desk, exchange_form(clerk["access_token"]), 400, "invalid_request")


async def test_refused_with_a_forged_actor_token(desk: Desk) -> None:
    clerk = await sign_in(desk)
    head, payload, signature = clerk["access_token"].split(".")
    forged = f"{head}.{payload}.{signature[::-1]}"
    await refused(desk, exchange_form(forged), 400, "invalid_request")


_WRONG_CHECK = "0" if SU_LANXIN.id_number[-1] != "0" else "1"


@pytest.mark.parametrize(
    "document",
    [
        f"111:{SU_LANXIN.id_number[:17]}{_WRONG_CHECK}",  # GB 11643 check character
        f"111:{SU_LANXIN.id_number[:17]}",  # too short
        SU_LANXIN.id_number,  # no ID type
        "990:E12345678",  # 其他: nothing the window can check
        "414:护照",  # a passport number of the wrong shape
    ],
)
async def test_refused_with_a_bad_id_document(desk: Desk, document: str) -> None:
    clerk = await sign_in(desk)
    form = {**exchange_form(clerk["access_token"]), "subject_token": document}
    body = await refused(desk, form, 400, "invalid_request")
    assert SU_LANXIN.id_number[:17] not in body.get("error_description", "")


async def test_refused_for_a_public_client(desk: Desk) -> None:
    clerk = await sign_in(desk)
    form = {**exchange_form(clerk["access_token"]), "client_id": PORTAL}
    # A public client cannot authenticate, which the grant requires (RFC 6749 §5.2).
    await refused(desk, form, 401, "invalid_client", auth=None)


async def test_refused_for_a_window_client_not_allowed_the_grant(desk: Desk) -> None:
    clerk = await sign_in(desk)
    await refused(
        desk,
        exchange_form(clerk["access_token"]),
        400,
        "unauthorized_client",
        auth=Basic(NO_GRANT, NO_GRANT_SECRET),
    )


async def test_refused_for_a_wrong_client_secret(desk: Desk) -> None:
    clerk = await sign_in(desk)
    await refused(
        desk,
        exchange_form(clerk["access_token"]),
        401,
        "invalid_client",
        auth=Basic(WINDOW, "not-the-secret-0123456789"),
    )


async def test_refused_when_the_scope_would_widen(desk: Desk) -> None:
    clerk = await sign_in(desk, scope="openid services:call")
    form = {**exchange_form(clerk["access_token"]), "scope": "services:call profile"}
    await refused(desk, form, 400, "invalid_scope")


@pytest.mark.parametrize("parameter", ["resource", "audience"])
async def test_refused_for_another_target(desk: Desk, parameter: str) -> None:
    clerk = await sign_in(desk)
    form = {**exchange_form(clerk["access_token"]), parameter: "https://elsewhere.example/api"}
    await refused(desk, form, 400, "invalid_target")


async def test_refused_for_another_requested_token_type(desk: Desk) -> None:
    clerk = await sign_in(desk)
    form = {
        **exchange_form(clerk["access_token"]),
        "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
    }
    await refused(desk, form, 400, "invalid_request")
