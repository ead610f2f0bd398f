"""The demo's provincial platforms as deployed platforms really behave, through browser-like
redirects on loopback: Gansu returns to its registered address with our return address nested
unencoded and names every SOAP element its own way, one web service per operation; Ningxia
returns with the ticket alone, signs with a reversible cipher and neither consumes nor binds its
tickets, which expire by the day; an enterprise registered before 2015 signs in with its
registration number. The gateway's own controls carry each login, or refuse it.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from pydantic import SecretStr

from gateway.demo.legal_idp import OLD_WORKSHOP
from gateway.demo.ticket_idp import (
    APP_CODE,
    GANSU_NS,
    MA_XIAOYAN,
    TicketPlatformState,
    ningxia_ticket,
    operate,
)
from gateway.identity.signing import format_time, parse_time
from gateway.identity.sqlite_sessions import SqliteSessionStore
from gateway.identity.upstream import UpstreamError, UpstreamLogin
from gateway.identity.upstream_ticket import TicketUpstream
from tests.flows.conftest import CONFIG_DIR
from tests.flows.test_federated_sso import SX, Sso, browser, only_session
from tests.flows.test_federated_sso import sso as sso  # noqa: PLC0414 - the shared fixture
from tests.flows.test_provincial_platforms import (
    choose,
    platforms,
    post_form,
    session_attributes,
    sign_in_at,
)


async def platform_leg(
    sso: Sso, b: aiohttp.ClientSession, idp: str, user: str
) -> tuple[aiohttp.ClientResponse, str]:
    """Sign in at the platform's own form; (the page the browser ends on, the URL of the
    gateway callback the platform sent it to)."""
    form = await choose(sso, b, idp)
    assert form.status == 200, await form.text()
    done = await post_form(b, form, user=user, password="demo")
    callbacks = [
        str(hop.url) for hop in (*done.history, done) if "/login/callback/" in str(hop.url)
    ]
    assert callbacks, [str(h.url) for h in done.history]
    return done, callbacks[0]


def raw_query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


# --- Gansu: back to the registered address, our return address nested unencoded ---------------


async def test_gansu_nests_the_return_address_and_the_login_completes(sso: Sso) -> None:
    async with browser() as b:
        home, callback = await platform_leg(sso, b, "gansu", "gs-300101")
        assert str(home.url) == f"{sso.portal(SX).base_url}/", await home.text()
        assert only_session(sso.portal(SX)).acr == "L3"
    # The registered address, a ticket, and the return address unencoded: its own '?state='
    # is part of the gotoUrl value, never a parameter of the callback itself.
    assert callback.startswith(f"{sso.gateway}/login/callback/gansu?ticket=")
    names = [name for name, _ in raw_query(callback)]
    assert names == ["ticket", "gotoUrl"]
    nested = dict(raw_query(callback))["gotoUrl"]
    assert nested.startswith(f"{sso.gateway}/login/callback/gansu?state=")
    assert f"gotoUrl={sso.gateway}/" in callback  # not encoded


async def test_gansu_gets_its_own_element_names_in_its_own_namespaces(sso: Sso) -> None:
    gansu: TicketPlatformState = platforms(sso).gansu
    async with browser() as b:
        await platform_leg(sso, b, "gansu", "gs-300102")
    validate, userinfo = gansu.received[-2:]
    assert set(validate) == {"appmark", "ticket", "time", "sign"}  # no datatype
    assert set(userinfo) == {"appmark", "token", "time", "sign"}
    assert gansu.calls[-2:] == ["ticketValidate", "getUserInfo"]
    assert set(GANSU_NS.values()) == {
        "http://uc.gansu.example/ws/ticket",
        "http://uc.gansu.example/ws/user",
    }


# --- Ningxia: no state at all; weak tickets; the reversible cipher -----------------------------


def ningxia(sso: Sso) -> TicketPlatformState:
    state: TicketPlatformState = platforms(sso).ningxia
    return state


async def test_ningxia_sends_no_state_and_the_login_cookie_carries_the_login(sso: Sso) -> None:
    nx = ningxia(sso)
    async with browser() as b:
        home, callback = await platform_leg(sso, b, "ningxia", "nx-mxy")
        assert str(home.url) == f"{sso.portal(SX).base_url}/", await home.text()
        assert only_session(sso.portal(SX)).acr == "L3"
    assert [name for name, _ in raw_query(callback)] == ["ticket"]
    attributes = await session_attributes(sso)
    assert (attributes["authlevel"], attributes["authlevelscale"]) == (
        "3",
        "ningxia-realname-level",
    )
    assert "*" in attributes["idnum"]
    assert MA_XIAOYAN.id_number not in str(attributes)
    # The sign the platform received is the reversible cipher of the shared secret.
    call = nx.received[-2]
    digest = hashlib.md5(nx.secret.encode()).hexdigest().upper().encode()
    when = call["timestamp"].encode()
    plain = bytes(b ^ when[i % len(when)] for i, b in enumerate(base64.b64decode(call["sign"])))
    assert plain == digest
    assert set(call) == {"appid", "ticket", "timestamp", "sign"}


async def test_a_ningxia_callback_in_another_browser_is_refused(sso: Sso) -> None:
    async with browser() as b:
        form = await choose(sso, b, "ningxia")
        text = await form.text()
        assert "nx-mxy" in text
    nx = ningxia(sso)
    ticket = ningxia_ticket(nx, APP_CODE, "nx-mxy", time.time())
    nx.tickets[ticket] = {"user": "nx-mxy", "issued": time.time()}
    # Another browser (the attacker's, or a link): no login cookie, so no login to complete.
    async with browser() as other:
        refused = await other.get(
            f"{sso.gateway}/login/callback/ningxia", params={"ticket": ticket}
        )
        assert refused.status == 400
        assert "state_mismatch" in await refused.text()
    assert sso.portal(SX).sessions == {}


async def test_a_used_ticket_in_a_fresh_login_is_refused_though_the_platform_accepts_it(
    sso: Sso,
) -> None:
    async with browser() as b:
        _home, callback = await platform_leg(sso, b, "ningxia", "nx-mxy")
    used = dict(raw_query(callback))["ticket"]
    sso.portal(SX).sessions.clear()
    # An attacker starts a fresh login of their own and puts the used ticket into its callback.
    async with browser() as attacker:
        await choose(sso, attacker, "ningxia")
        replay = await attacker.get(
            f"{sso.gateway}/login/callback/ningxia", params={"ticket": used}
        )
        assert replay.status == 400
        assert "ticket_replayed" in await replay.text()
    assert sso.portal(SX).sessions == {}
    # The platform itself would have signed the attacker in: it never consumes its tickets.
    nx = ningxia(sso)
    assert operate(nx, "validateTicket", {}, used)["success"] is True


async def test_a_day_old_platform_ticket_is_too_old_for_the_gateway(sso: Sso) -> None:
    nx = ningxia(sso)
    issued = time.time() - 600
    # The platform compares days only: on the ticket's own day it still accepts it.
    nx.clock = lambda: issued + 1
    ticket = ningxia_ticket(nx, APP_CODE, "nx-dhr", issued)
    nx.tickets[ticket] = {"user": "nx-dhr", "issued": issued}
    assert operate(nx, "validateTicket", {}, ticket)["success"] is True
    async with browser() as b:
        await choose(sso, b, "ningxia")
        stale = await b.get(f"{sso.gateway}/login/callback/ningxia", params={"ticket": ticket})
        assert stale.status == 400
        assert "ticket_expired" in await stale.text()
    assert sso.portal(SX).sessions == {}


async def test_ningxia_refusals_with_errormsg_alone_are_clear(sso: Sso) -> None:
    async with browser() as b:
        await choose(sso, b, "ningxia")
        forged = await b.get(f"{sso.gateway}/login/callback/ningxia", params={"ticket": "f" * 32})
        assert forged.status == 400
        assert "upstream_error" in await forged.text()


# --- the used-ticket record is the session store's: one record for every instance ------------


async def instances_sharing(store_path: Path, sso: Sso) -> AsyncIterator[TicketUpstream]:
    configured = sso.authenticator.idps["ningxia"]
    assert isinstance(configured, TicketUpstream)
    for _ in range(2):
        store = SqliteSessionStore(store_path)
        try:
            yield TicketUpstream(
                "ningxia",
                configured.settings,
                configured._http,
                config_dir=CONFIG_DIR,
                claim_once=store.claim_once,
            )
        finally:
            await store.aclose()


async def test_a_ticket_used_at_one_instance_is_refused_at_another(
    sso: Sso, tmp_path: Path
) -> None:
    nx = ningxia(sso)
    now = time.time()
    ticket = ningxia_ticket(nx, APP_CODE, "nx-mxy", now)
    nx.tickets[ticket] = {"user": "nx-mxy", "issued": now}
    login = UpstreamLogin("s", "n", "v", "c", None, "http://127.0.0.1/cb", started_at=now)
    outcomes: list[str] = []
    async for instance in instances_sharing(tmp_path / "shared-sessions.sqlite", sso):
        try:
            identity = await instance.complete({"ticket": ticket}, login)
            outcomes.append(identity.level)
        except UpstreamError as exc:
            outcomes.append(exc.reason)
    assert outcomes == ["L3", "ticket_replayed"]


def test_the_used_ticket_record_is_kept_at_least_a_day() -> None:
    from gateway.identity.upstream_kinds import TicketIdpSettings  # noqa: PLC0415

    field = TicketIdpSettings.model_fields["used_ticket_retention"]
    assert field.default >= 86_400
    with pytest.raises(ValueError, match="greater than or equal to 86400"):
        TicketIdpSettings.model_validate(
            {
                "kind": "ticket",
                "province": "64",
                "name": {"zh": "宁夏", "en": "Ningxia"},
                "login_url": "https://nx.example/login",
                "service_url": "https://nx.example/api",
                "app_code": "a",
                "app_secret": SecretStr("s"),
                "used_ticket_retention": 3600,
                "claims": {"level": {"scale": "x", "map": {"1": "L1"}}},
            }
        )


# --- an enterprise registered before 2015 -------------------------------------------------------


async def test_a_pre_2015_enterprise_signs_in_with_its_registration_number(sso: Sso) -> None:
    async with browser() as b:
        home = await sign_in_at(sso, b, "shaanxi-legal", "lp-500104")
        assert str(home.url) == f"{sso.portal(SX).base_url}/", await home.text()
        assert only_session(sso.portal(SX)).acr == "LP"
    attributes = await session_attributes(sso)
    assert attributes["regno"] == OLD_WORKSHOP.credit_code  # the account's only identifier
    assert "uniscid" not in attributes
    assert attributes["local_id"].startswith(f"legal:reg:{OLD_WORKSHOP.credit_code}:")


def test_time_strings_round_trip_for_the_issue_time() -> None:
    now = int(time.time())
    assert parse_time(format_time(now)) == now
