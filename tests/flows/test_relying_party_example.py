"""docs/relying-parties.md's worked example, run as written against a real gateway on loopback.

The registration block of the document goes into a copy of the demo configuration (its
redirect host replaced by the test application's loopback address), its secret is exported
before the gateway loads the configuration, and the client block is imported as a module and
driven like a portal would: authlib's OAuth2Session in a worker thread, the person's browser an
aiohttp session that signs in at the demo's Qinghai platform.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from authlib.integrations.base_client import OAuthError

from gateway.demo.examples import DEMO_CALLS
from gateway.demo.federation import DemoIdentity
from gateway.settings import load_settings
from tests.flows.conftest import CONFIG_DIR
from tests.flows.portal_stack import portal_stack
from tests.flows.test_federated_sso import browser, idp_login

DOC = Path(__file__).resolve().parents[2] / "docs" / "relying-parties.md"
PLACEHOLDER = "https://app.example.gov.cn"
SECRET_ENV = "TONGBAN_SECRET_EXAMPLE_APP"
S6 = next(c for c in DEMO_CALLS if c.service == "degree-verification")


def example_block(name: str) -> str:
    """The fenced block after ``<!-- example: name -->`` in the document."""
    match = re.search(
        rf"<!-- example: {name} -->\n```\w+\n(.*?)\n```", DOC.read_text(encoding="utf-8"), re.S
    )
    assert match, f"docs/relying-parties.md has no example block {name!r}"
    return match.group(1)


def client_module(tmp_path: Path) -> ModuleType:
    path = tmp_path / "gateway_login_example.py"
    path.write_text(example_block("client"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("gateway_login_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Setup:
    gateway: str
    app_url: str
    secret: str
    client_id: str
    registration: dict[str, Any]
    callbacks: list[str]
    identity: DemoIdentity


@pytest.fixture
async def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Setup]:
    app_url = f"http://127.0.0.1:{unused_port()}"
    registration = yaml.safe_load(example_block("registration").replace(PLACEHOLDER, app_url))
    (client_id, entry), *_ = registration["clients"].items()
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    clients = yaml.safe_load((config / "clients.yaml").read_text(encoding="utf-8"))
    clients["clients"][client_id] = entry
    (config / "clients.yaml").write_text(yaml.safe_dump(clients, allow_unicode=True))

    secret = "example-app-secret-0123456789"
    # The application's own server: its redirect URI and its post-logout page.
    callbacks: list[str] = []

    async def callback(request: web.Request) -> web.Response:
        callbacks.append(str(request.url))
        return web.Response(text="callback")

    app = web.Application()
    app.router.add_get("/callback", callback)
    app.router.add_get("/", signed_out)
    server = TestServer(app, host="127.0.0.1", port=int(app_url.rsplit(":", 1)[1]))
    await server.start_server()
    try:
        # The secret is exported before the gateway reads its configuration.
        async with portal_stack(
            tmp_path, monkeypatch, config_dir=config, env={SECRET_ENV: secret}
        ) as stack:
            yield Setup(
                stack.sso.gateway, app_url, secret, client_id, entry, callbacks, stack.sso.identity
            )
    finally:
        await server.close()


async def signed_out(_request: web.Request) -> web.Response:
    return web.Response(text="signed out")


async def test_the_documented_client_signs_in_calls_refreshes_and_signs_out(
    setup: Setup, tmp_path: Path
) -> None:
    example = client_module(tmp_path)
    redirect_uri = setup.registration["redirect_uris"][0]
    login = await asyncio.to_thread(
        example.GatewayLogin, setup.gateway, setup.client_id, setup.secret, redirect_uri
    )
    url, pending = await asyncio.to_thread(login.start)
    async with browser() as b:
        # The person's browser: the gateway's chooser → Qinghai's form → back to the app.
        chooser = await b.get(url)
        assert chooser.status == 200
        page = await chooser.text()
        assert "value='qinghai'" in page, "the gateway offers the Qinghai platform"
        hidden = dict(re.findall(r"name='(tx|csrf)' value='([^']*)'", page))
        form = await b.post(f"{setup.gateway}/login", data={**hidden, "idp": "qinghai"})
        assert str(form.url).startswith(setup.identity.idp.issuer)
        landed = await idp_login(b, form, "qh-100233")  # 苏兰心, real name checked (L2)
        assert landed.status == 200
        assert str(landed.url).startswith(redirect_uri)

        claims = await asyncio.to_thread(login.finish, setup.callbacks[-1], pending)
        assert claims["aud"] == setup.client_id
        assert claims["acr"] == "L2"
        assert claims["iss"] == setup.gateway

        status, answer = await asyncio.to_thread(login.call, "degree-verification", S6.body)
        assert status == 200, answer
        assert answer["data"]["valid"] is True

        # The access token expires: the session refreshes it before the next call.
        first = dict(login.http.token)
        login.http.token["expires_at"] = int(time.time()) - 60
        status, answer = await asyncio.to_thread(login.call, "degree-verification", S6.body)
        assert status == 200, answer
        assert login.http.token["access_token"] != first["access_token"]
        assert login.http.token["refresh_token"] != first["refresh_token"]

        # A spent refresh token presented again ends the whole session: sign in again.
        with pytest.raises(OAuthError) as refused:
            await asyncio.to_thread(login.http.refresh_token, refresh_token=first["refresh_token"])
        assert refused.value.error == "invalid_grant"
        status, _ = await asyncio.to_thread(login.call, "degree-verification", S6.body)
        assert status == 401

        # Exact redirect matching: one character off is an error page, never a redirect.
        off = url.replace("%2Fcallback", "%2Fcallback%2F")
        assert off != url
        refused_page = await b.get(off, allow_redirects=False)
        assert refused_page.status == 400
        assert "Location" not in refused_page.headers

        # Sign-out returns to the registered page.
        bye = await b.get(login.logout_url(setup.registration["post_logout_redirect_uris"][0]))
        assert bye.status == 200
        assert str(bye.url) == setup.registration["post_logout_redirect_uris"][0]


async def test_the_registration_needs_its_secret_exported(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gateway.settings import ConfigError  # noqa: PLC0415

    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(ConfigError) as failed:
        load_settings(tmp_path / "config")
    assert any(SECRET_ENV in problem for problem in failed.value.problems)
    monkeypatch.setenv(SECRET_ENV, "too-short")
    with pytest.raises(ConfigError) as failed:
        load_settings(tmp_path / "config")
    assert any("16+" in problem for problem in failed.value.problems)
