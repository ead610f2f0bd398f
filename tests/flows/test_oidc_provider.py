"""The OpenID provider over real loopback HTTP: the whole code + PKCE journey and every refusal.

Each refusal asserts the exact RFC error code and that nothing changed that should not have:
no code stored, no token issued, or (for replay and reuse) exactly the family revoked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import structlog.testing
from aiohttp import encode_basic_auth, web
from aiohttp.test_utils import TestClient, TestServer
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from pydantic import SecretStr

from gateway.http.keys import METRICS, VERIFIER, principal_of
from gateway.http.middlewares import auth_middleware, problem_middleware, request_context_middleware
from gateway.http.oidc import add_oidc_routes
from gateway.identity.authn import AuthenticatedUser, FakeAuthenticator
from gateway.identity.clients import ClientRegistration
from gateway.identity.config import ProviderSettings
from gateway.identity.person_key import PERSON_CLAIM
from gateway.identity.provider import KEY_FILE_NAME, OpenIDProvider
from gateway.identity.store import IdentityStore, MemoryIdentityStore
from gateway.metrics import Metrics
from tests.ports import HeldPort

PUBLIC_REDIRECT = "https://portal-qh.example/callback"
CONFIDENTIAL_REDIRECT = "https://portal-sx.example/cb"
SX_SECRET = "sx-portal-secret-0123456789"
SYSTEM_SECRET = "system-61-secret-0123456789"
OTHER_SECRET = "other-portal-secret-0123456789"


@dataclass(frozen=True)
class Basic:
    """client_secret_basic credentials (RFC 6749 §2.3.1)."""

    client_id: str
    secret: str

    @property
    def header(self) -> dict[str, str]:
        return {"Authorization": encode_basic_auth(self.client_id, self.secret)}


class FakeClock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    http: TestClient[Any, Any]
    provider: OpenIDProvider
    store: IdentityStore
    authenticator: FakeAuthenticator
    clock: FakeClock
    issuer: str


def _clients() -> list[ClientRegistration]:
    return [
        ClientRegistration(
            client_id="portal-qh",
            name="青海政务服务网",
            type="public",
            redirect_uris=(PUBLIC_REDIRECT,),
            post_logout_redirect_uris=("https://portal-qh.example/bye",),
            scopes=("openid", "profile", "phone"),
            allowed_services=("*",),
        ),
        ClientRegistration(
            client_id="portal-sx",
            type="confidential",
            client_secret=SecretStr(SX_SECRET),
            redirect_uris=(CONFIDENTIAL_REDIRECT,),
            scopes=("openid", "profile"),
            id_token_signed_response_alg="RS256",
        ),
        ClientRegistration(
            client_id="portal-other",
            type="confidential",
            client_secret=SecretStr(OTHER_SECRET),
            redirect_uris=("https://other.example/cb",),
            scopes=("openid",),
        ),
        ClientRegistration(
            client_id="system-61",
            type="confidential",
            client_secret=SecretStr(SYSTEM_SECRET),
            grant_types=("client_credentials",),
            scopes=("cases:write", "services:call"),
            may_introspect=True,
        ),
    ]


async def whoami(request: web.Request) -> web.Response:
    principal = principal_of(request)
    return web.json_response(
        {
            "subject": principal.subject,
            "level": principal.level,
            "client_id": principal.client_id,
            "actor": principal.actor,
            "actor_role": principal.actor_role,
            "scopes": sorted(principal.scopes),
            "roles": sorted(principal.roles),
        }
    )


_KEY_FILE: dict[str, bytes] = {}


def _reuse_signing_keys(data_dir: Path) -> None:
    """RSA-3072 generation is slow: every test starts from the first test's key file."""
    path = data_dir / KEY_FILE_NAME
    if _KEY_FILE:
        path.write_bytes(_KEY_FILE["jwks"])
        path.chmod(0o600)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    _reuse_signing_keys(tmp_path)
    held = HeldPort()
    port = held.port
    issuer = f"http://127.0.0.1:{port}"
    clock = FakeClock()
    settings = ProviderSettings(
        issuer=issuer,
        pairwise_secret=SecretStr("p" * 40),
        algorithms=("ES256", "RS256"),
    )
    user = AuthenticatedUser(
        local_id="u-1001",
        acr="L3",
        auth_time=int(clock()),
        amr=("face",),
        claims={"name": "张三", "phone_number": "+86 138 0000 0000", "email": "z@example.cn"},
        session_id="sess-1",
    )
    authenticator = FakeAuthenticator(user)
    store = MemoryIdentityStore()
    provider = OpenIDProvider.from_config(
        settings,
        _clients(),
        data_dir=tmp_path,
        authenticator=authenticator,
        store=store,
        clock=clock,
    )
    _KEY_FILE.setdefault("jwks", (tmp_path / KEY_FILE_NAME).read_bytes())
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
        yield World(http, provider, store, authenticator, clock, issuer)


# --- helpers ---------------------------------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def auth_params(
    client_id: str = "portal-qh",
    redirect_uri: str = PUBLIC_REDIRECT,
    challenge: str | None = None,
    **extra: str,
) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": "openid profile phone",
        "state": "st-" + secrets.token_hex(4),
        "nonce": "n-" + secrets.token_hex(8),
    }
    if challenge is not None:
        params["code_challenge"] = challenge
        params["code_challenge_method"] = "S256"
    params.update(extra)
    return params


async def authorize(world: World, params: dict[str, str]) -> tuple[int, str | None, str]:
    resp = await world.http.get("/oauth2/authorize", params=params, allow_redirects=False)
    return resp.status, resp.headers.get("Location"), await resp.text()


async def get_code(
    world: World, client_id: str = "portal-qh", redirect_uri: str = PUBLIC_REDIRECT
) -> tuple[str, str, dict[str, str]]:
    verifier, challenge = pkce()
    params = auth_params(client_id, redirect_uri, challenge)
    status, location, _ = await authorize(world, params)
    assert status == 302
    assert location is not None
    answer = query_of(location)
    assert answer["state"] == params["state"]
    return answer["code"], verifier, params


async def post_token(
    world: World, data: dict[str, str], auth: Basic | None = None
) -> tuple[int, dict[str, Any], Any]:
    headers = auth.header if auth else {}
    resp = await world.http.post("/oauth2/token", data=data, headers=headers)
    return resp.status, await resp.json(), resp.headers


async def exchange(
    world: World,
    code: str,
    verifier: str | None,
    client_id: str = "portal-qh",
    redirect_uri: str = PUBLIC_REDIRECT,
    auth: Basic | None = None,
) -> tuple[int, dict[str, Any], Any]:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if auth is None:
        data["client_id"] = client_id
    if verifier is not None:
        data["code_verifier"] = verifier
    return await post_token(world, data, auth)


async def tokens(world: World) -> dict[str, Any]:
    code, verifier, _ = await get_code(world)
    status, body, _ = await exchange(world, code, verifier)
    assert status == 200, body
    return body


async def refresh(
    world: World, refresh_token: str, client_id: str = "portal-qh"
) -> tuple[int, dict[str, Any]]:
    status, body, _ = await post_token(
        world,
        {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id},
    )
    return status, body


async def api_status(world: World, token: str) -> int:
    resp = await world.http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    return resp.status


async def introspect(world: World, token: str, hint: str | None = None) -> dict[str, Any]:
    data = {"token": token}
    if hint:
        data["token_type_hint"] = hint
    resp = await world.http.post(
        "/oauth2/introspect", data=data, headers=Basic("system-61", SYSTEM_SECRET).header
    )
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


def unverified_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


def unverified_header(token: str) -> dict[str, Any]:
    head = token.split(".", maxsplit=1)[0]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return data


# --- discovery and keys ----------------------------------------------------------------------


async def test_discovery_document_has_every_required_field(world: World) -> None:
    resp = await world.http.get("/.well-known/openid-configuration")
    assert resp.status == 200
    doc = await resp.json()
    # OpenID Connect Discovery 1.0 §3 REQUIRED fields
    for field in (
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ):
        assert doc[field], field
    assert doc["issuer"] == world.issuer
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["subject_types_supported"] == ["pairwise"]
    assert doc["id_token_signing_alg_values_supported"] == ["ES256", "RS256"]
    for name in ("userinfo", "introspection", "revocation", "end_session"):
        assert doc[f"{name}_endpoint"].startswith(world.issuer + "/oauth2/")
    assert doc["backchannel_logout_supported"] is False
    assert "none" not in doc["id_token_signing_alg_values_supported"]
    assert {"openid", "profile", "phone"} <= set(doc["scopes_supported"])


async def test_jwks_publishes_public_keys_only(world: World) -> None:
    resp = await world.http.get("/oauth2/jwks")
    keys = (await resp.json())["keys"]
    assert {k["alg"] for k in keys} == {"ES256", "RS256"}
    for key in keys:
        assert "d" not in key
        assert "p" not in key
        assert key["kid"]


# --- the whole journey -----------------------------------------------------------------------


async def test_code_flow_with_pkce_userinfo_refresh_introspection_revocation(world: World) -> None:
    code, verifier, params = await get_code(world)
    status, body, headers = await exchange(world, code, verifier)
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "openid profile phone"

    # the access token: RFC 9068 shape, pairwise subject, acr
    access = body["access_token"]
    header, claims = unverified_header(access), unverified_claims(access)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    assert claims["iss"] == world.issuer
    assert claims["aud"] == world.issuer + "/api"
    assert claims["client_id"] == "portal-qh"
    assert claims["acr"] == "L3"
    assert claims["sub"] != "u-1001"
    assert "u-1001" not in access
    assert {"exp", "iat", "jti", "auth_time"} <= set(claims)

    # the ID token: nonce, acr, auth_time, at_hash, the same pairwise sub
    id_token = body["id_token"]
    id_claims = world.provider.decode_id_token_hint(id_token)
    assert id_claims is not None
    assert id_claims["nonce"] == params["nonce"]
    assert id_claims["aud"] == "portal-qh"
    assert id_claims["acr"] == "L3"
    assert id_claims["sub"] == claims["sub"]
    assert id_claims["sid"] == "sess-1"
    digest = hashlib.sha256(access.encode()).digest()[:16]
    assert id_claims["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    # the API accepts it and sees the Principal
    resp = await world.http.get("/api/v1/whoami", headers={"Authorization": f"Bearer {access}"})
    assert resp.status == 200
    me = await resp.json()
    assert me["subject"] == claims["sub"]
    assert me["level"] == "L3"
    assert me["client_id"] == "portal-qh"
    assert "openid" in me["scopes"]

    # userinfo releases claims by scope (profile → name, phone → phone_number; no email)
    resp = await world.http.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert resp.status == 200
    info = await resp.json()
    assert info == {"sub": claims["sub"], "name": "张三", "phone_number": "+86 138 0000 0000"}

    # refresh rotates: a new refresh token, the old one spent
    status, refreshed = await refresh(world, body["refresh_token"])
    assert status == 200, refreshed
    assert refreshed["refresh_token"] != body["refresh_token"]
    assert await api_status(world, refreshed["access_token"]) == 200

    # introspection: active for the live tokens, inactive for the spent refresh token
    active = await introspect(world, refreshed["access_token"])
    assert active["active"] is True
    assert active["client_id"] == "portal-qh"
    assert active["sub"] == claims["sub"]
    assert active["token_type"] == "access_token"
    assert (await introspect(world, refreshed["refresh_token"], "refresh_token"))["active"]
    assert (await introspect(world, body["refresh_token"]))["active"] is False
    assert (await introspect(world, "not-a-token"))["active"] is False

    # revocation of the access token: refused by the API and inactive afterwards
    resp = await world.http.post(
        "/oauth2/revoke", data={"token": refreshed["access_token"], "client_id": "portal-qh"}
    )
    assert resp.status == 200
    assert await api_status(world, refreshed["access_token"]) == 401
    assert (await introspect(world, refreshed["access_token"]))["active"] is False

    # revoking the refresh token ends the family (RFC 7009 §2.1)
    resp = await world.http.post(
        "/oauth2/revoke",
        data={
            "token": refreshed["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": "portal-qh",
        },
    )
    assert resp.status == 200
    status, again = await refresh(world, refreshed["refresh_token"])
    assert (status, again["error"]) == (400, "invalid_grant")


async def test_refresh_reuse_revokes_the_whole_family(world: World) -> None:
    first = await tokens(world)
    status, second = await refresh(world, first["refresh_token"])
    assert status == 200
    assert await api_status(world, second["access_token"]) == 200

    status, body = await refresh(world, first["refresh_token"])  # reuse of the spent token
    assert (status, body["error"]) == (400, "invalid_grant")
    assert world.store.counts()["revoked_families"] == 1
    # every member of the family is dead: the newest refresh token and both access tokens
    status, body = await refresh(world, second["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")
    assert await api_status(world, second["access_token"]) == 401
    assert await api_status(world, first["access_token"]) == 401


async def test_confidential_client_with_basic_auth_and_rs256_id_token(world: World) -> None:
    code, verifier, _ = await get_code(world, "portal-sx", CONFIDENTIAL_REDIRECT)
    status, body, _ = await exchange(
        world,
        code,
        verifier,
        redirect_uri=CONFIDENTIAL_REDIRECT,
        auth=Basic("portal-sx", SX_SECRET),
    )
    assert status == 200, body
    assert unverified_header(body["id_token"])["alg"] == "RS256"
    # pairwise: the same person has another subject at another portal
    qh = await tokens(world)
    assert (
        unverified_claims(qh["access_token"])["sub"]
        != unverified_claims(body["access_token"])["sub"]
    )


async def test_client_credentials_for_a_provincial_system(world: World) -> None:
    status, body, _ = await post_token(
        world,
        {"grant_type": "client_credentials", "scope": "cases:write"},
        auth=Basic("system-61", SYSTEM_SECRET),
    )
    assert status == 200, body
    assert "refresh_token" not in body
    assert "id_token" not in body
    claims = unverified_claims(body["access_token"])
    assert claims["sub"] == "system-61"
    assert "acr" not in claims
    resp = await world.http.get(
        "/api/v1/whoami", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    me = await resp.json()
    assert me["level"] == "system"
    assert me["scopes"] == ["cases:write"]


async def test_actor_is_carried_when_a_clerk_acts(world: World) -> None:
    assert world.authenticator.user is not None
    world.authenticator.user = replace(
        world.authenticator.user,
        acr="Counter",
        actor="clerk-6101-007",
        actor_role="clerk",
        roles=frozenset({"clerk"}),
    )
    body = await tokens(world)
    resp = await world.http.get(
        "/api/v1/whoami", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    me = await resp.json()
    assert me["actor"] == "clerk-6101-007"
    assert me["actor_role"] == "clerk"
    assert me["level"] == "Counter"
    assert me["roles"] == ["clerk"]


async def test_rp_initiated_logout_redirects_only_to_registered_uri(world: World) -> None:
    body = await tokens(world)
    resp = await world.http.get(
        "/oauth2/logout",
        params={
            "id_token_hint": body["id_token"],
            "post_logout_redirect_uri": "https://portal-qh.example/bye",
            "state": "s1",
        },
        allow_redirects=False,
    )
    assert resp.status == 302
    assert resp.headers["Location"] == "https://portal-qh.example/bye?state=s1"
    assert world.authenticator.signed_out == ["sess-1"]


# --- refusals: authorization endpoint --------------------------------------------------------


async def test_missing_pkce_is_refused(world: World) -> None:
    params = auth_params()
    status, location, _ = await authorize(world, params)
    assert status == 302
    assert location is not None
    answer = query_of(location)
    assert answer["error"] == "invalid_request"
    assert answer["state"] == params["state"]
    assert "code" not in answer
    assert world.store.counts()["codes"] == 0


async def test_pkce_plain_is_refused_even_for_confidential_clients(world: World) -> None:
    verifier = secrets.token_urlsafe(48)
    params = auth_params(
        "portal-sx",
        CONFIDENTIAL_REDIRECT,
        code_challenge=verifier,
        code_challenge_method="plain",
    )
    status, location, _ = await authorize(world, params)
    assert status == 302
    assert location is not None
    assert query_of(location)["error"] == "invalid_request"
    assert world.store.counts()["codes"] == 0


async def test_challenge_without_method_means_plain_and_is_refused(world: World) -> None:
    _, challenge = pkce()
    _status, location, _ = await authorize(world, auth_params(code_challenge=challenge))
    assert location is not None
    assert query_of(location)["error"] == "invalid_request"
    assert world.store.counts()["codes"] == 0


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/callback",  # unregistered
        PUBLIC_REDIRECT + "/../steal",  # altered path
        PUBLIC_REDIRECT + "?next=https://evil.example",  # altered query
        "https://portal-qh.example/Callback",  # altered case
        "",  # missing (OIDC makes it REQUIRED)
    ],
)
async def test_unregistered_or_altered_redirect_uri_shows_a_page_never_redirects(
    world: World, redirect_uri: str
) -> None:
    _, challenge = pkce()
    status, location, text = await authorize(
        world, auth_params(redirect_uri=redirect_uri, challenge=challenge)
    )
    assert status == 400
    assert location is None
    assert "invalid_request" in text
    assert "evil" not in text
    assert world.store.counts()["codes"] == 0


async def test_unknown_client_shows_a_page_never_redirects(world: World) -> None:
    _, challenge = pkce()
    status, location, text = await authorize(world, auth_params("nobody", challenge=challenge))
    assert (status, location) == (400, None)
    assert "invalid_client" in text


async def test_prompt_none_without_session_is_login_required(world: World) -> None:
    world.authenticator.user = None
    _, challenge = pkce()
    status, location, _ = await authorize(world, auth_params(challenge=challenge, prompt="none"))
    assert status == 302
    assert location is not None
    assert query_of(location)["error"] == "login_required"
    assert world.store.counts()["codes"] == 0


async def test_nonce_replay_is_refused(world: World) -> None:
    _, challenge = pkce()
    params = auth_params(challenge=challenge)
    status, _, _ = await authorize(world, params)
    assert status == 302
    status, location, _ = await authorize(world, params)
    assert location is not None
    assert query_of(location)["error"] == "invalid_request"
    assert world.store.counts()["codes"] == 1


async def test_scope_the_client_may_not_have_is_dropped_not_granted(world: World) -> None:
    verifier, challenge = pkce()
    params = auth_params("portal-sx", CONFIDENTIAL_REDIRECT, challenge, scope="openid phone")
    status, location, _ = await authorize(world, params)
    assert status == 302
    assert location is not None
    status, body, _ = await exchange(
        world,
        query_of(location)["code"],
        verifier,
        redirect_uri=CONFIDENTIAL_REDIRECT,
        auth=Basic("portal-sx", SX_SECRET),
    )
    assert status == 200
    assert body["scope"] == "openid"


async def test_oversized_parameter_is_refused_before_any_lookup(world: World) -> None:
    _, challenge = pkce()
    status, location, text = await authorize(
        world, auth_params(challenge=challenge, state="x" * 5000)
    )
    assert (status, location) == (400, None)
    assert "invalid_request" in text
    assert world.store.counts()["codes"] == 0


async def test_repeated_parameter_is_refused(world: World) -> None:
    _, challenge = pkce()
    query = "&".join(f"{k}={v}" for k, v in auth_params(challenge=challenge).items())
    resp = await world.http.get(
        f"/oauth2/authorize?{query}&client_id=portal-sx", allow_redirects=False
    )
    assert resp.status == 400
    assert "Location" not in resp.headers
    assert world.store.counts()["codes"] == 0


# --- refusals: token endpoint ----------------------------------------------------------------


async def test_wrong_code_verifier_is_invalid_grant_and_spends_nothing(world: World) -> None:
    code, verifier, _ = await get_code(world)
    wrong, _ = pkce()
    status, body, _ = await exchange(world, code, wrong)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert world.store.counts()["access_tokens"] == 0
    # the code is still good for the holder of the right verifier
    status, body, _ = await exchange(world, code, verifier)
    assert status == 200


async def test_missing_code_verifier_is_invalid_request(world: World) -> None:
    code, _, _ = await get_code(world)
    status, body, _ = await exchange(world, code, None)
    assert (status, body["error"]) == (400, "invalid_request")
    assert world.store.counts()["access_tokens"] == 0


async def test_code_replay_is_refused_and_revokes_what_the_code_issued(world: World) -> None:
    code, verifier, _ = await get_code(world)
    status, first, _ = await exchange(world, code, verifier)
    assert status == 200
    assert await api_status(world, first["access_token"]) == 200

    status, body, _ = await exchange(world, code, verifier)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert world.store.counts()["access_tokens"] == 1  # nothing new issued
    assert await api_status(world, first["access_token"]) == 401
    assert (await introspect(world, first["access_token"]))["active"] is False
    status, body = await refresh(world, first["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_expired_code_is_invalid_grant(world: World) -> None:
    code, verifier, _ = await get_code(world)
    world.clock.advance(61)
    status, body, _ = await exchange(world, code, verifier)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert world.store.counts()["access_tokens"] == 0


async def test_redirect_uri_must_match_the_authorization_request(world: World) -> None:
    code, verifier, _ = await get_code(world)
    status, body, _ = await exchange(world, code, verifier, redirect_uri=PUBLIC_REDIRECT + "x")
    assert (status, body["error"]) == (400, "invalid_grant")
    assert world.store.counts()["access_tokens"] == 0


async def test_code_of_another_client_is_invalid_grant(world: World) -> None:
    code, verifier, _ = await get_code(world)
    status, body, _ = await exchange(
        world, code, verifier, auth=Basic("portal-other", OTHER_SECRET)
    )
    assert (status, body["error"]) == (400, "invalid_grant")
    assert world.store.counts()["access_tokens"] == 0


async def test_wrong_client_secret_is_invalid_client_401(world: World) -> None:
    code, verifier, _ = await get_code(world, "portal-sx", CONFIDENTIAL_REDIRECT)
    status, body, headers = await exchange(
        world,
        code,
        verifier,
        redirect_uri=CONFIDENTIAL_REDIRECT,
        auth=Basic("portal-sx", "wrong-secret-0123456789"),
    )
    assert (status, body["error"]) == (401, "invalid_client")
    assert headers["WWW-Authenticate"].startswith("Basic")
    assert world.store.counts()["access_tokens"] == 0
    assert world.store.counts()["redeemed_codes"] == 0


async def test_confidential_client_cannot_skip_authentication(world: World) -> None:
    code, verifier, _ = await get_code(world, "portal-sx", CONFIDENTIAL_REDIRECT)
    status, body, _ = await exchange(
        world, code, verifier, client_id="portal-sx", redirect_uri=CONFIDENTIAL_REDIRECT
    )
    assert (status, body["error"]) == (401, "invalid_client")
    assert world.store.counts()["access_tokens"] == 0


async def test_refresh_by_another_client_is_refused_without_side_effect(world: World) -> None:
    first = await tokens(world)
    status, body, _ = await post_token(
        world,
        {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=Basic("portal-other", OTHER_SECRET),
    )
    assert (status, body["error"]) == (400, "invalid_grant")
    assert world.store.counts()["revoked_families"] == 0
    status, _ = await refresh(world, first["refresh_token"])  # the owner still can
    assert status == 200


async def test_refresh_cannot_widen_scope(world: World) -> None:
    first = await tokens(world)
    status, body, _ = await post_token(
        world,
        {
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": "portal-qh",
            "scope": "openid email",
        },
    )
    assert (status, body["error"]) == (400, "invalid_scope")
    status, _ = await refresh(world, first["refresh_token"])
    assert status == 200


async def test_unsupported_grant_type(world: World) -> None:
    status, body, _ = await post_token(
        world, {"grant_type": "password", "username": "a", "password": "b"}
    )
    assert (status, body["error"]) == (400, "unsupported_grant_type")


async def test_client_credentials_refusals(world: World) -> None:
    status, body, _ = await post_token(
        world,
        {"grant_type": "client_credentials", "scope": "openid"},
        auth=Basic("system-61", SYSTEM_SECRET),
    )
    assert (status, body["error"]) == (400, "invalid_scope")
    status, body, _ = await post_token(
        world,
        {"grant_type": "client_credentials"},
        auth=Basic("portal-sx", SX_SECRET),
    )
    assert (status, body["error"]) == (400, "unauthorized_client")
    assert world.store.counts()["access_tokens"] == 0


async def test_oversized_or_non_form_token_request_is_invalid_request(world: World) -> None:
    code, verifier, _ = await get_code(world)
    status, body, _ = await post_token(
        world,
        {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": "portal-qh",
            "redirect_uri": PUBLIC_REDIRECT,
            "code_verifier": verifier,
            "padding": "x" * 5000,
        },
    )
    assert (status, body["error"]) == (400, "invalid_request")
    resp = await world.http.post(
        "/oauth2/token", json={"grant_type": "authorization_code", "code": code}
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"
    resp = await world.http.post(
        "/oauth2/token",
        data=b"a=1&" * 100,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"
    assert world.store.counts()["access_tokens"] == 0
    status, _, _ = await exchange(world, code, verifier)  # the code was not touched
    assert status == 200


# --- refusals: bearer tokens at /api/* --------------------------------------------------------


def _forge(world: World, header: dict[str, Any], claims: dict[str, Any], key: Any) -> str:
    return jwt.encode(header, claims, key, algorithms=[header["alg"]])


def _good_claims(world: World, **changes: Any) -> dict[str, Any]:
    now = int(world.clock())
    claims: dict[str, Any] = {
        "iss": world.issuer,
        "aud": world.issuer + "/api",
        "sub": "someone",
        "client_id": "portal-qh",
        "scope": "openid",
        "acr": "L3",
        "iat": now,
        "exp": now + 300,
        "jti": secrets.token_hex(8),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(world: World, **changes: Any) -> str:
    return world.provider.keys.sign(_good_claims(world, **changes), algorithm="ES256", typ="at+jwt")


async def test_a_correctly_signed_token_passes(world: World) -> None:
    assert await api_status(world, _signed(world)) == 200


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_token_with_alg_none_is_refused(world: World) -> None:
    kid = world.provider.keys.active_kid("ES256")
    head = b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": kid}).encode())
    body = b64(json.dumps(_good_claims(world)).encode())
    assert await api_status(world, f"{head}.{body}.") == 401


async def test_hs256_token_signed_with_the_public_key_is_refused(world: World) -> None:
    # The classic confusion: the verifier's public key (PEM or JWK text) used as an HMAC secret.
    kid = world.provider.keys.active_kid("RS256")
    public = world.provider.keys.public_key(kid)
    assert isinstance(public, RSAKey)
    head = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": kid}).encode())
    body = b64(json.dumps(_good_claims(world)).encode())
    for secret in (public.as_pem(private=False), json.dumps(public.as_dict()).encode()):
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        assert await api_status(world, f"{head}.{body}.{b64(mac)}") == 401


async def test_wrong_audience_is_refused(world: World) -> None:
    assert await api_status(world, _signed(world, aud="portal-qh")) == 401


async def test_wrong_issuer_is_refused(world: World) -> None:
    assert await api_status(world, _signed(world, iss="https://evil.example")) == 401


async def test_expired_token_is_refused(world: World) -> None:
    token = _signed(world)
    assert await api_status(world, token) == 200  # now cached
    world.clock.advance(300 + 31)
    assert await api_status(world, token) == 401


async def test_missing_required_claims_are_refused(world: World) -> None:
    assert await api_status(world, _signed(world, jti=None)) == 401
    assert await api_status(world, _signed(world, exp=None)) == 401
    assert await api_status(world, _signed(world, client_id=None)) == 401


async def test_tampered_signature_is_refused(world: World) -> None:
    head, body, sig = _signed(world).split(".")
    claims = unverified_claims(f"{head}.{body}.{sig}")
    claims["acr"] = "L3"
    claims["sub"] = "victim"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert await api_status(world, f"{head}.{forged_body}.{sig}") == 401
    flipped = sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")
    assert await api_status(world, f"{head}.{body}.{flipped}") == 401


async def test_unknown_kid_is_refused(world: World) -> None:
    stranger = ECKey.generate_key("P-256", parameters={"kid": "stranger", "alg": "ES256"})
    token = _forge(
        world, {"alg": "ES256", "typ": "at+jwt", "kid": "stranger"}, _good_claims(world), stranger
    )
    assert await api_status(world, token) == 401


async def test_key_confusion_between_algorithms_is_refused(world: World) -> None:
    rsa_kid = world.provider.keys.active_kid("RS256")
    stranger = RSAKey.generate_key(2048)
    token = _forge(
        world, {"alg": "RS256", "typ": "at+jwt", "kid": rsa_kid}, _good_claims(world), stranger
    )
    assert await api_status(world, token) == 401
    es_kid = world.provider.keys.active_kid("ES256")
    token = _forge(
        world, {"alg": "RS256", "typ": "at+jwt", "kid": es_kid}, _good_claims(world), stranger
    )
    assert await api_status(world, token) == 401


async def test_id_token_is_not_an_access_token(world: World) -> None:
    body = await tokens(world)
    assert await api_status(world, body["id_token"]) == 401
    resp = await world.http.get(
        "/oauth2/userinfo", headers={"Authorization": f"Bearer {body['id_token']}"}
    )
    assert resp.status == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_refusal_detail_does_not_leak_the_reason(world: World) -> None:
    resp = await world.http.get(
        "/api/v1/whoami",
        headers={"Authorization": f"Bearer {_signed(world, iss='https://evil.example')}"},
    )
    problem = await resp.json()
    assert problem["code"] == "client.unauthenticated"
    assert "iss" not in problem["detail"]
    assert "evil" not in problem["detail"]


# --- refusals: introspection, revocation, logout ---------------------------------------------


async def test_introspection_needs_client_authentication(world: World) -> None:
    body = await tokens(world)
    resp = await world.http.post("/oauth2/introspect", data={"token": body["access_token"]})
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_client"


@pytest.mark.parametrize("path", ["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"])
async def test_basic_credentials_that_are_not_utf8_are_an_invalid_client(
    world: World, path: str
) -> None:
    body = await tokens(world)
    blob = base64.b64encode(b"portal-sx:\xff\xfe\xfa").decode()
    resp = await world.http.post(
        path,
        data={"token": body["access_token"], "grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {blob}"},
    )
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_client"
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert await api_status(world, body["access_token"]) == 200


async def test_introspection_of_another_clients_token_is_inactive(world: World) -> None:
    body = await tokens(world)
    resp = await world.http.post(
        "/oauth2/introspect",
        data={"token": body["access_token"]},
        headers=Basic("portal-other", OTHER_SECRET).header,
    )
    assert await resp.json() == {"active": False}


async def test_revoking_another_clients_token_is_refused(world: World) -> None:
    body = await tokens(world)
    resp = await world.http.post(
        "/oauth2/revoke",
        data={"token": body["refresh_token"]},
        headers=Basic("portal-other", OTHER_SECRET).header,
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_grant"
    assert world.store.counts()["revoked_families"] == 0
    assert await api_status(world, body["access_token"]) == 200


async def test_revocation_with_unknown_hint_is_unsupported_token_type(world: World) -> None:
    body = await tokens(world)
    resp = await world.http.post(
        "/oauth2/revoke",
        data={"token": body["access_token"], "token_type_hint": "saml", "client_id": "portal-qh"},
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == "unsupported_token_type"
    assert await api_status(world, body["access_token"]) == 200


async def test_logout_never_redirects_to_an_unregistered_uri(world: World) -> None:
    body = await tokens(world)
    resp = await world.http.get(
        "/oauth2/logout",
        params={
            "id_token_hint": body["id_token"],
            "post_logout_redirect_uri": "https://evil.example/",
        },
        allow_redirects=False,
    )
    assert resp.status == 200
    assert "Location" not in resp.headers
    # a registered URI without an id_token_hint is not followed either (§3)
    resp = await world.http.get(
        "/oauth2/logout",
        params={
            "client_id": "portal-qh",
            "post_logout_redirect_uri": "https://portal-qh.example/bye",
        },
        allow_redirects=False,
    )
    assert resp.status == 200
    assert "Location" not in resp.headers


async def test_logout_refuses_an_access_token_as_id_token_hint(world: World) -> None:
    body = await tokens(world)
    resp = await world.http.get(
        "/oauth2/logout",
        params={
            "id_token_hint": body["access_token"],
            "post_logout_redirect_uri": "https://portal-qh.example/bye",
        },
        allow_redirects=False,
    )
    assert resp.status == 400
    assert "Location" not in resp.headers
    assert world.authenticator.signed_out == []


async def test_a_tampered_person_claim_is_refused_at_userinfo_and_introspection(
    world: World,
) -> None:
    body = await tokens(world)
    claims = unverified_claims(body["access_token"])
    sealed = claims[PERSON_CLAIM]
    # Signed with the provider's own key: only the sealed person key differs.
    flipped = ("A" if sealed[10] != "A" else "B").join((sealed[:10], sealed[11:]))
    forged = world.provider.keys.sign(
        {**claims, PERSON_CLAIM: flipped},
        algorithm=unverified_header(body["access_token"])["alg"],
        typ="at+jwt",
    )
    assert await api_status(world, forged) == 401
    resp = await world.http.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert await introspect(world, forged) == {"active": False}
    # The untouched token still answers.
    resp = await world.http.get(
        "/oauth2/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert resp.status == 200


async def test_userinfo_refusals(world: World) -> None:
    resp = await world.http.get("/oauth2/userinfo")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    _status, body, _ = await post_token(
        world,
        {"grant_type": "client_credentials"},
        auth=Basic("system-61", SYSTEM_SECRET),
    )
    resp = await world.http.get(
        "/oauth2/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert resp.status == 403
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]


async def test_no_code_token_or_secret_reaches_the_logs(world: World) -> None:
    with structlog.testing.capture_logs() as events:
        code, verifier, _ = await get_code(world)
        status, body, _ = await exchange(world, code, verifier)
        assert status == 200
        await refresh(world, body["refresh_token"])
        await refresh(world, body["refresh_token"])  # reuse: logged as an event, no token
        await exchange(world, code, verifier)  # replay: likewise
    text = repr(events)
    assert {"token_issued", "refresh_token_reused", "authorization_code_replayed"} <= {
        e["event"] for e in events
    }
    for secret in (code, verifier, body["access_token"], body["refresh_token"], body["id_token"]):
        assert secret not in text
    assert not logging.getLogger("authlib").isEnabledFor(logging.DEBUG)
