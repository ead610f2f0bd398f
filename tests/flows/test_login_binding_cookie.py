"""The login binding cookie lives only as long as its login: set with ``Path=/login`` and
cleared with the same path (RFC 6265 §5.3 step 11: a cookie is replaced only by one of the
same name, domain and path), so a finished login leaves nothing in the browser."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp

from gateway.identity.sso import BINDING_COOKIE
from tests.flows.test_federated_sso import Sso, sign_in
from tests.flows.test_federated_sso import sso as sso  # noqa: PLC0414 - the shared fixture


async def test_a_finished_login_clears_its_binding_cookie(sso: Sso) -> None:
    seen: list[str] = []

    async def on_end(
        _session: aiohttp.ClientSession,
        _context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams | aiohttp.TraceRequestRedirectParams,
    ) -> None:
        cookies = params.response.headers.getall("Set-Cookie", [])
        seen.extend(c for c in cookies if c.startswith(f"{BINDING_COOKIE}="))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    trace.on_request_redirect.append(on_end)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar, trace_configs=[trace]) as b:
        await sign_in(sso, b, "qh-100233")
        assert [c for c in b.cookie_jar if c.key == BINDING_COOKIE] == [], "binding cookie left"
    # Set once, cleared once, both with the login path.
    assert len(seen) >= 2
    paths = {
        part.strip() for c in seen for part in c.split(";") if part.strip().startswith("Path=")
    }
    assert paths == {f"Path={sso.authenticator.login_path}"}
