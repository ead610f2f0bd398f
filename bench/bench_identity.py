"""Benchmark of identity: token refresh/s, federated logins/s, token validation cost.

    .venv/bin/python bench/bench_identity.py --refreshes 5000 --logins 1000 --concurrency 16 \
        --store sqlite --write docs/performance.md

``--store`` picks the provider's identity store for all three (memory, sqlite: the default
deployment, redis: several instances; a fresh key prefix on ``--redis-url``, deleted after).
With Redis the provider's store work runs in worker threads (``run_with_store``), as it serves.

1. Token refresh: the provider core in-process (authlib grant, rotation, ES256 access token),
   one core: one chain refreshed sequentially, then ``--concurrency`` chains side by side (with
   a blocking store the worker threads overlap their round trips).
2. Full federated login: over real loopback HTTP; by default the gateway runs alone in a child
   process pinned to core 0 while the demo Qinghai OpenID Connect platform and the browser-side
   client share core 1 (``--login-layout one-process``: all three on one loop): portal
   authorization request → gateway (idp_hint) → platform form → platform login → gateway
   callback (token request to the platform, ID token validation, new SSO session) → resumed
   authorization → code → token request at the gateway.
3. Access-token validation: ``JwtAccessTokenVerifier.verify`` per request, uncached (a fresh
   token every time: signature, claims, the sealed person claim, revocation) and cached (the
   same token again).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import platform
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
from aiohttp import web
from aiohttp.test_utils import unused_port
from pydantic import SecretStr
from redis import Redis

from gateway.app import create_app, open_provider
from gateway.demo.backends import DemoSecrets
from gateway.demo.federation import DemoIdentitySecrets, start_demo_identity
from gateway.demo.runner import demo_identity_env, point_at
from gateway.http.login import build_authenticator
from gateway.identity.authn import AuthenticatedUser, FakeAuthenticator
from gateway.identity.clients import ClientRegistration, ClientRegistry
from gateway.identity.config import ProviderSettings
from gateway.identity.keys import SigningKeys
from gateway.identity.person_key import PERSON_CLAIM
from gateway.identity.provider import OpenIDProvider
from gateway.identity.requests import Headers, IdentityRequest
from gateway.identity.store import IdentityStore, MemoryIdentityStore
from gateway.identity.store_redis import RedisIdentityStore, RedisRevocationList
from gateway.identity.store_sqlite import SqliteIdentityStore
from gateway.logs import configure_logging
from gateway.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
REDIRECT = "https://portal.example/cb"
SECRET = "bench-portal-secret-0123456789"


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


@dataclass(frozen=True)
class StoreChoice:
    """The identity store under test, opened afresh for each measurement."""

    kind: str
    redis_url: str
    redis_prefix: str = field(default_factory=lambda: f"tongban-bench:{secrets.token_hex(6)}:")

    @contextmanager
    def open(self) -> Iterator[IdentityStore]:
        with tempfile.TemporaryDirectory() as tmp:
            store: IdentityStore
            if self.kind == "memory":
                store = MemoryIdentityStore()
            elif self.kind == "sqlite":
                store = SqliteIdentityStore.in_data_dir(Path(tmp))
            else:
                store = RedisIdentityStore.from_url(self.redis_url, self.redis_prefix + "oidc:")
            try:
                yield store
            finally:
                store.close()
                self.drop_redis_keys()

    def revocations(self) -> RedisRevocationList | None:
        if self.kind != "redis":
            return None
        return RedisRevocationList.from_url(self.redis_url, self.redis_prefix + "oidc:")

    def settings_update(self) -> dict[str, Any]:
        """``ProviderSettings`` changes selecting this store (the login measurement)."""
        return {"token_store": self.kind, "token_redis_prefix": self.redis_prefix + "oidc:"}

    def drop_redis_keys(self) -> None:
        if self.kind != "redis":
            return
        client = Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=self.redis_prefix + "*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        finally:
            client.close()


def _form(url: str, form: dict[str, str], auth: str) -> IdentityRequest:
    return IdentityRequest(
        "POST", url, headers=Headers({"Authorization": auth}), query={}, form=form
    )


# --- 1. token refresh -------------------------------------------------------------------------


async def bench_refresh(count: int, store: IdentityStore, chains: int = 1) -> dict[str, float]:
    """``count`` refreshes over ``chains`` grant families refreshed side by side (each chain
    sequential: a refresh token is spent before the next is presented)."""
    issuer = "https://gw.example"
    settings = ProviderSettings(issuer=issuer, pairwise_secret=SecretStr("p" * 40))
    user = AuthenticatedUser("u-1", "L3", int(time.time()), session_id="s-1")
    client = ClientRegistration(
        client_id="portal",
        type="confidential",
        client_secret=SecretStr(SECRET),
        redirect_uris=(REDIRECT,),
        scopes=("openid", "services:call"),
    )
    provider = OpenIDProvider(
        settings,
        ClientRegistry([client]),
        SigningKeys.generate(("ES256",)),
        store,
        FakeAuthenticator(user),
    )
    auth = _basic("portal", SECRET)

    async def first_refresh_token() -> str:
        verifier, challenge = _pkce()
        query = {
            "response_type": "code",
            "client_id": "portal",
            "redirect_uri": REDIRECT,
            "scope": "openid services:call",
            "state": "s",
            "nonce": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        response = await provider.authorize(
            IdentityRequest("GET", f"{issuer}/oauth2/authorize?{urlencode(query)}", query=query)
        )
        code = parse_qs(urlsplit(response.location or "").query)["code"][0]
        token = await provider.run_with_store(
            provider.token,
            _form(
                f"{issuer}/oauth2/token",
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": REDIRECT,
                    "code_verifier": verifier,
                },
                auth,
            ),
        )
        refresh: str = json.loads(token.body)["refresh_token"]
        return refresh

    async def chain(refresh: str, rounds: int) -> None:
        for _ in range(rounds):
            answer = await provider.run_with_store(
                provider.token,
                _form(
                    f"{issuer}/oauth2/token",
                    {"grant_type": "refresh_token", "refresh_token": refresh},
                    auth,
                ),
            )
            assert answer.status == 200, answer.body
            refresh = json.loads(answer.body)["refresh_token"]

    starts = [await first_refresh_token() for _ in range(chains)]
    rounds = count // chains
    started = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(chain(refresh, rounds) for refresh in starts))
    wall = time.perf_counter() - started
    done = rounds * chains
    return {"per_s": done / wall, "cpu_ms": (time.process_time() - cpu) / done * 1000}


# --- 2. federated logins ---------------------------------------------------------------------

_REQUEST_ID = re.compile(r"name='request_id' value='([^']+)'")


async def one_login(http: aiohttp.ClientSession, gateway: str, portal: Any) -> None:
    http.cookie_jar.clear()
    verifier, challenge = _pkce()
    query = {
        "response_type": "code",
        "client_id": portal.client_id,
        "redirect_uri": f"{portal.base_url}/callback",
        "scope": "openid profile services:call",
        "state": secrets.token_urlsafe(8),
        "nonce": secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "idp_hint": "63",
    }
    async with http.get(f"{gateway}/oauth2/authorize", params=query, allow_redirects=False) as r:
        upstream = r.headers["Location"]
    async with http.get(upstream) as r:
        request_id = _REQUEST_ID.search(await r.text())
        form_url = str(r.url.with_query({}))
    assert request_id is not None
    async with http.post(
        form_url,
        data={"request_id": request_id.group(1), "user": "qh-100233", "password": "demo"},
        allow_redirects=False,
    ) as r:
        callback = r.headers["Location"]
    async with http.get(callback, allow_redirects=False) as r:
        assert r.status == 302, await r.text()
        resume = r.headers["Location"]
    async with http.get(resume, allow_redirects=False) as r:
        code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
    async with http.post(
        f"{gateway}/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": f"{portal.base_url}/callback",
            "code_verifier": verifier,
        },
        headers={"Authorization": _basic(portal.client_id, portal.client_secret)},
    ) as r:
        assert r.status == 200, await r.text()
        await r.read()


def _pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {core})


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve_gateway(settings: Any, port: int, ready: Any, stop: Any) -> None:
    """The gateway alone in a process of its own (split layout), pinned to core 0. The settings
    come from the parent that spawned this process, through multiprocessing's own channel."""
    _pin(0)
    configure_logging("warning", "json", stream=io.BytesIO())

    async def run() -> None:
        provider = await open_provider(settings, build_authenticator(settings))
        assert provider is not None
        app = create_app(settings, verifier=provider.access_token_verifier(), oidc=provider)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()

    asyncio.run(run())


async def bench_logins(
    count: int, concurrency: int, choice: StoreChoice, *, split: bool
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(demo_identity_env(Path(tmp)))
        identity_secrets = DemoIdentitySecrets.from_env(os.environ)
        os.environ.update(DemoSecrets.generate().env())
        port = unused_port()
        gateway = f"http://127.0.0.1:{port}"
        async with await start_demo_identity(gateway, identity_secrets) as identity:
            settings = identity.configure(
                point_at(load_settings(ROOT / "config"), {}, Path(tmp), port=port)
            )
            assert settings.gateway.identity is not None
            identity_settings = settings.gateway.identity.model_copy(
                update={
                    **choice.settings_update(),
                    "session": settings.gateway.identity.session.model_copy(
                        update={"redis_url": choice.redis_url}
                    ),
                }
            )
            settings = dataclasses.replace(
                settings,
                gateway=settings.gateway.model_copy(update={"identity": identity_settings}),
            )
            async with _gateway(settings, port, split=split) as gateway_pid:
                portal = identity.portal("demo-portal-qinghai")
                connector = aiohttp.TCPConnector(limit=concurrency * 2)
                sessions = [
                    aiohttp.ClientSession(
                        connector=connector,
                        connector_owner=False,
                        cookie_jar=aiohttp.CookieJar(unsafe=True),
                    )
                    for _ in range(concurrency)
                ]
                try:
                    for s in sessions:  # warm-up: metadata, JWKS, connections
                        await one_login(s, gateway, portal)
                    done = 0
                    started = time.perf_counter()
                    cpu = time.process_time()
                    gateway_cpu = _cpu_seconds(gateway_pid) if gateway_pid else 0.0

                    async def worker(s: aiohttp.ClientSession) -> None:
                        nonlocal done
                        while done < count:
                            done += 1
                            await one_login(s, gateway, portal)

                    await asyncio.gather(*(worker(s) for s in sessions))
                    wall = time.perf_counter() - started
                    cpu_used = time.process_time() - cpu
                    if gateway_pid:
                        gateway_cpu = _cpu_seconds(gateway_pid) - gateway_cpu
                finally:
                    for s in sessions:
                        await s.close()
                    await connector.close()
                    choice.drop_redis_keys()
    result = {"logins_per_s": done / wall, "login_cpu_ms": cpu_used / done * 1000}
    if split:
        result["login_gateway_cpu_ms"] = gateway_cpu / done * 1000
    return result


@asynccontextmanager
async def _gateway(settings: Any, port: int, *, split: bool) -> AsyncIterator[int | None]:
    """The gateway in this process (one-process layout; yields None) or in a child pinned to
    core 0 while this process (platform and client) moves to core 1 (split; yields its pid)."""
    if not split:
        provider = await open_provider(settings, build_authenticator(settings))
        assert provider is not None
        app = create_app(settings, verifier=provider.access_token_verifier(), oidc=provider)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield None
        finally:
            await runner.cleanup()
        return
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    child = context.Process(target=_serve_gateway, args=(settings, port, ready, stop), daemon=True)
    child.start()
    _pin(1)
    try:
        if not await asyncio.to_thread(ready.wait, 60):
            raise RuntimeError("the gateway child did not start")
        assert child.pid is not None
        yield child.pid
    finally:
        stop.set()
        await asyncio.to_thread(child.join, 30)
        if child.is_alive():
            child.kill()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


# --- 3. access-token validation --------------------------------------------------------------


async def bench_validation(
    count: int, store: IdentityStore, revocations: RedisRevocationList | None = None
) -> dict[str, float]:
    issuer = "https://gw.example"
    settings = ProviderSettings(issuer=issuer, pairwise_secret=SecretStr("p" * 40))
    keys = SigningKeys.generate(("ES256",))
    provider = OpenIDProvider(
        settings,
        ClientRegistry([]),
        keys,
        store,
        FakeAuthenticator(),
        revocations=revocations,
    )
    now = int(time.time())
    tokens = [
        keys.sign(
            {
                "iss": issuer,
                "aud": settings.audience,
                "sub": f"s-{i}",
                "client_id": "portal",
                "iat": now,
                "exp": now + 300,
                "jti": f"j-{i}",
                "scope": "services:call",
                "acr": "L2",
                # As the provider issues them for a person: the sealed person key to open.
                PERSON_CLAIM: provider.person_keys.seal(
                    provider.person_keys.person_key(f"u-{i}"), subject=f"s-{i}", client_id="portal"
                ),
            },
            algorithm="ES256",
            typ="at+jwt",
        )
        for i in range(count)
    ]
    cold = provider.access_token_verifier(cache_size=0)
    samples = []
    for token in tokens:
        t0 = time.perf_counter()
        await cold.verify(token)
        samples.append(time.perf_counter() - t0)
    warm = provider.access_token_verifier()
    await warm.verify(tokens[0])
    started = time.perf_counter()
    for _ in range(count):
        await warm.verify(tokens[0])
    cached = (time.perf_counter() - started) / count
    return {
        "validate_uncached_ms": statistics.mean(samples) * 1000,
        "validate_uncached_p99_ms": sorted(samples)[int(len(samples) * 0.99) - 1] * 1000,
        "validate_cached_ms": cached * 1000,
    }


# --- report ----------------------------------------------------------------------------------


def report(results: dict[str, float], command: str, store: str) -> str:
    cpu = platform.processor() or platform.machine()
    return "\n".join(
        [
            "## Identity",
            "",
            "Measured by `bench/bench_identity.py` (targets in brackets) on "
            f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"identity store {store}:",
            "",
            "```sh",
            command,
            "```",
            "",
            "| measure | result | target |",
            "| --- | --- | --- |",
            f"| token refresh, one core, sequential | {results['refresh_per_s']:,.0f}/s "
            f"({results['refresh_cpu_ms']:.2f} ms CPU each) | ≥ 1,000/s |",
            f"| token refresh, one core, {results['refresh_chains']:.0f} chains side by side | "
            f"{results['refresh_concurrent_per_s']:,.0f}/s "
            f"({results['refresh_concurrent_cpu_ms']:.2f} ms CPU each) | ≥ 1,000/s |",
            "| full federated login (authorize → upstream → callback → token), "
            + (
                "the gateway alone on one core, platform and client on the other | "
                f"{results['logins_per_s']:,.0f}/s ({results['login_gateway_cpu_ms']:.2f} ms "
                f"gateway CPU each; platform + client {results['login_cpu_ms']:.2f} ms) "
                if "login_gateway_cpu_ms" in results
                else "gateway + platform + client on one core | "
                f"{results['logins_per_s']:,.0f}/s ({results['login_cpu_ms']:.2f} ms CPU each, "
                "all three parties) "
            )
            + "| ≥ 200/s |",
            "| access-token validation per request, uncached (ES256 signature, claims, "
            f"revocation) | {results['validate_uncached_ms']:.3f} ms "
            f"(p99 {results['validate_uncached_p99_ms']:.3f} ms) | ≤ 0.3 ms |",
            f"| access-token validation, cached (same token again) | "
            f"{results['validate_cached_ms']:.4f} ms | ≤ 0.3 ms |",
            "",
            "The login figure comes from the split layout by default (`--login-layout split`): "
            "the gateway in a process of its own pinned to core 0, the demo platform and the "
            "simulated browsers on core 1, as they are other machines in a deployment; "
            "`--login-layout one-process` puts all three on one loop. Validation is "
            "dominated by the ES256 signature check (~160 µs); the bounded cache of "
            "verified tokens removes it for repeat callers while the revocation check still "
            "runs on every request.",
            "",
        ]
    )


def append_section(path: Path, section: str) -> None:
    """Append our section (another engineer writes the rest of the file: never rewrite it);
    on a re-run, only our own section's text is replaced."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start = text.find("\n## Identity\n")
    if start < 0:
        with path.open("a", encoding="utf-8") as out:
            out.write(("\n" if text.endswith("\n") else "\n\n") + section)
        return
    end = text.find("\n## ", start + 1)
    old = text[start + 1 : end + 1] if end >= 0 else text[start + 1 :]
    path.write_text(text.replace(old, section, 1), encoding="utf-8")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=5000)
    parser.add_argument("--logins", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--validations", type=int, default=5000)
    parser.add_argument(
        "--store",
        choices=("memory", "sqlite", "redis"),
        default="sqlite",
        help="the provider's identity store (default: sqlite, as deployed on one instance)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--login-layout",
        choices=("split", "one-process"),
        default="split",
        help="split: the gateway alone on core 0, the platform and the browser-side client on "
        "core 1 (as deployed: they are other machines); one-process: all three on one loop",
    )
    parser.add_argument("--write", type=Path, help="add/replace the Identity section of this file")
    args = parser.parse_args()
    configure_logging("warning", "json", stream=io.BytesIO())
    choice = StoreChoice(args.store, args.redis_url)
    print(f"identity store: {choice.kind}", flush=True)
    results: dict[str, float] = {}
    with choice.open() as store:
        sequential = await bench_refresh(args.refreshes, store)
    with choice.open() as store:
        side_by_side = await bench_refresh(args.refreshes, store, chains=args.concurrency)
    results["refresh_per_s"], results["refresh_cpu_ms"] = sequential["per_s"], sequential["cpu_ms"]
    results["refresh_concurrent_per_s"] = side_by_side["per_s"]
    results["refresh_concurrent_cpu_ms"] = side_by_side["cpu_ms"]
    results["refresh_chains"] = args.concurrency
    print(
        f"token refresh: {results['refresh_per_s']:,.0f}/s sequential, "
        f"{results['refresh_concurrent_per_s']:,.0f}/s with {args.concurrency} chains",
        flush=True,
    )
    split = args.login_layout == "split"
    results.update(await bench_logins(args.logins, args.concurrency, choice, split=split))
    print(
        f"federated logins ({args.login_layout}): {results['logins_per_s']:,.0f}/s, CPU per "
        f"login {results['login_cpu_ms']:.2f} ms platform + client"
        + (f", {results['login_gateway_cpu_ms']:.2f} ms gateway" if split else " + gateway"),
        flush=True,
    )
    with choice.open() as store:
        # As from_config wires it: with Redis, the verifier's check uses the asyncio client.
        revocations = choice.revocations()
        try:
            results.update(await bench_validation(args.validations, store, revocations))
        finally:
            if revocations is not None:
                await revocations.aclose()
    print(
        f"validation: uncached {results['validate_uncached_ms']:.3f} ms, "
        f"cached {results['validate_cached_ms']:.4f} ms",
        flush=True,
    )
    command = ".venv/bin/python bench/bench_identity.py " + " ".join(sys.argv[1:])
    if args.write:
        append_section(args.write, report(results, command, choice.kind))
        print(f"wrote the Identity section of {args.write}")


if __name__ == "__main__":
    asyncio.run(main())
