"""Instructions of four per-call steps of a routed REST call, counted under callgrind.

The steps, each called ``--count`` times as the gateway calls it for one routed call of
``bench/instructions.py`` (the bench's app: ``create_app`` with its settings, development
tokens and subject keys, started but not served; one mocked request of the bench's call):

- ``token``: the bearer token's check as the request middleware makes it (``authenticate``:
  the header, ``DevTokenIssuer.verify`` on the bench's token, the principal kept);
- ``jwt``: the provider's access token instead (``JwtAccessTokenVerifier.verify`` of one ES256
  token, the same token every call as a portal sends it; its revocation asked of an SQLite
  identity store every call);
- ``subjects``: the data-subject rule (``bind_call`` less the schema: the ambiguity check, the
  subject's person key, the comparison with the principal) and the subject parts of the call's
  context (the handling province's hashes, the subject keys);
- ``enterprise``: the same rule on an enterprise's own data (a legal person's operator naming
  its own credit code: ``named``, ``own`` and the province's hashes, as ``bind_call`` and
  ``_call_context`` take them for a route declaring ``enterprise: credit_code``);
- ``attempt``: one attempt of the pipeline on the bench's canned adapter, with its trace
  (``CallTrace``; ``one_attempt``: the breaker, the system's slot, the attempt's deadline);
- ``limit``: the rate limiter's per-call step as the request middleware takes it (``check`` on
  the bench's in-memory budgets, a person's and the portal's, then ``judge`` and
  ``rate_limit_fields`` on the answer);
- ``metrics``: ``backend_call`` and ``http_request``, as the handler and ``close_request``;
- ``log``: the access log's part of a request (``open_request`` and ``close_request`` without
  the metric: the request id, the log context, the access line when info is on);
- ``access``: the access line alone, as ``close_request`` writes it at level info (the
  request's fields of a routed call; ``access_line`` of gateway/logs.py, or on a tree without
  it the structlog call it replaces); nothing is written at ``warning``;
- ``all``: ``token``, ``subjects``, ``metrics`` and ``log`` (not ``jwt``, ``enterprise``,
  ``attempt``, ``limit``, ``access``).

``--log info`` writes the access line as JSON to /dev/null (the bench's second log mode);
``warning`` (the default) is the bench's first.

    .venv/bin/python bench/bench_call_steps.py --callgrind               # every step
    .venv/bin/python bench/bench_call_steps.py --callgrind --step log --log info --tree /tmp/base
    .venv/bin/python bench/bench_call_steps.py --callgrind --step access --log info

``--callgrind`` runs the script under valgrind once: each step is warmed (200 calls), then called
100 and 100 + ``--count`` times, the counters zeroed before and dumped after each
(``callgrind_control``); the difference divided by ``--count`` is the step's instructions per
call. ``--tree DIR`` imports ``gateway`` from another source tree.
"""

# ruff: noqa: PLC0415 - gateway is imported after --tree has put its tree first

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import callgrind_steps

HERE = Path(__file__).resolve().parent
STEPS = (
    "all", "token", "jwt", "subjects", "enterprise", "attempt", "limit", "metrics", "log", "access"
)  # fmt: skip


async def _jwt_verifier(workdir: Path) -> tuple[Any, str]:
    """A provider's verifier on an SQLite identity store, and one access token it issued (its
    record stored, so the revocation check finds it)."""
    from pydantic import SecretStr

    from gateway.identity.authn import FakeAuthenticator
    from gateway.identity.clients import ClientRegistry
    from gateway.identity.config import ProviderSettings
    from gateway.identity.keys import SigningKeys
    from gateway.identity.person_key import PERSON_CLAIM
    from gateway.identity.provider import OpenIDProvider
    from gateway.identity.store import AccessTokenRecord, GrantFamily
    from gateway.identity.store_sqlite import SqliteIdentityStore

    issuer = "https://gw.example"
    settings = ProviderSettings(issuer=issuer, pairwise_secret=SecretStr("p" * 40))
    keys = SigningKeys.generate(("ES256",))
    store = SqliteIdentityStore(workdir / "identity.db")
    provider = OpenIDProvider(settings, ClientRegistry([]), keys, store, FakeAuthenticator())
    now = int(time.time())
    store.put_family(GrantFamily("fam-1", "portal", None, "services:call", now, now + 3600))
    record = AccessTokenRecord("j-1", "fam-1", "portal", "s-1", "services:call", now, now + 3600)
    store.put_tokens(record, None)
    person = provider.person_keys.person_key("u-1")
    claims = {
        "iss": issuer,
        "aud": settings.audience,
        "sub": "s-1",
        "client_id": "portal",
        "iat": now,
        "exp": now + 3600,
        "jti": "j-1",
        "scope": "services:call",
        "acr": "L2",
        PERSON_CLAIM: provider.person_keys.seal(person, subject="s-1", client_id="portal"),
    }
    token = keys.sign(claims, algorithm="ES256", typ="at+jwt")
    verifier = provider.access_token_verifier()
    await verifier.verify(token)  # refused tokens would raise here
    return verifier, token


async def run(steps: list[str], counts: list[int], log_level: str, control: bool) -> None:
    import bench_routing as br
    import orjson
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from gateway.app import create_app
    from gateway.http.handlers import bind_call
    from gateway.http.keys import METRICS, PRINCIPAL, STATE, SUBJECTS
    from gateway.http.middlewares import authenticate, close_request, open_request
    from gateway.http.ratelimit import judge, rate_limit_fields
    from gateway.identity.devtokens import DevTokenIssuer
    from gateway.logs import configure_logging

    devnull = open(os.devnull, "wb")  # noqa: SIM115, ASYNC230 - as the bench's gateway role
    configure_logging(log_level, "json", stream=devnull)
    with tempfile.TemporaryDirectory(prefix="tongban-steps-") as tmp:
        workdir = Path(tmp)
        app = create_app(
            br.gateway_settings(workdir / "config", "http://127.0.0.1:9"),
            verifier=DevTokenIssuer(br.TOKEN_SECRET),
            open_adapter=_canned,
            subjects=br.bench_subject_keys(),
        )
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            jwt_verifier, jwt_token = await _jwt_verifier(workdir)
            headers = br.holder_call_headers()
            path = f"/api/v1/services/{br.REST_SERVICE}/calls"
            request = make_mocked_request("POST", path, headers=headers, app=app)
            match = await app.router.resolve(request)
            match.add_app(app)
            match.freeze()
            request._match_info = match
            raw = br.CALL_BODY
            body = orjson.loads(raw)
            catalog = app[STATE].catalog
            route = catalog.route(
                br.REST_SERVICE, None, body["receiving_province"], body["handling_province"]
            )
            rule = app[SUBJECTS]
            metrics = app[METRICS]
            limiter = app[STATE].rate_limiter
            assert limiter is not None  # the bench's settings have rate limits
            response = web.Response(body=b"{}", content_type="application/json")
            open_request(request)
            await authenticate(request)
            principal = request[PRINCIPAL]
            no_schema: Any = _WithoutSchema(route)  # the schema is the route's, not the rule's
            write_access = _access_writer()
            fields: dict[str, Any] = {"client": principal.client_id, "service": br.REST_SERVICE}
            fields.update(attempts=1, outcome="ok", breaker="closed")
            enterprise = _enterprise_call(rule)
            attempt = _attempt(app, route)

            async def once(step: str) -> None:
                if step in ("all", "token"):
                    await authenticate(request)
                if step == "jwt":
                    await jwt_verifier.verify(jwt_token)
                if step in ("all", "subjects"):
                    binding = await bind_call(request, principal, no_schema, body, raw)
                    if hasattr(binding, "province_subjects"):  # as _call_context makes them
                        binding.province_subjects(rule.keys, route.handling)
                    else:  # a tree before it
                        province = binding.assertion_subjects(rule.keys, route.handling)
                        ",".join([f"{s['type']}:{s['hash']}" for s in province]) or None
                    tuple([s.key for s in binding.subjects])
                if step == "enterprise":
                    await enterprise()
                if step == "attempt":
                    await attempt()
                if step == "limit":
                    judge(request, principal, await limiter.check(principal))
                    rate_limit_fields(request, response)
                if step in ("all", "metrics"):
                    metrics.backend_call(br.REST_SERVICE, route.system, "ok", 0.0021)
                    metrics.http_request(path, "POST", 200, 0.0034)
                if step in ("all", "log"):
                    started = open_request(request)
                    _close_without_metric(close_request, request, response, started)
                if step == "access":
                    write_access(path, fields)

            for step in steps:
                for _ in range(200):  # warm: caches filled, code specialised
                    await once(step)
                for n in counts:
                    if control:
                        _control("-z")
                    for _ in range(n):
                        await once(step)
                    if control:
                        _control("-d")
        finally:
            await runner.cleanup()


_CREDIT_CODE = "91610113MA6TXXXX0Q"


def _enterprise_call(rule: Any) -> Any:
    """The rule on a legal person's operator's call naming its own enterprise."""
    from gateway.principal import Principal
    from gateway.subject_config import SubjectField

    keys = rule.keys
    declaration = (SubjectField(enterprise="credit_code"),)
    data = {"credit_code": _CREDIT_CODE}
    raw = b'{"data":{"credit_code":"' + _CREDIT_CODE.encode() + b'"}}'
    principal = Principal("bench-lp", "LP", "bench", enterprise=keys.enterprise(_CREDIT_CODE).key)

    async def once() -> None:
        named = rule.named(declaration, data, raw)
        binding = rule.own(principal, declaration, named)
        if binding is None:  # a tree before ``own``
            binding = await rule.check(
                principal, declaration, named, consent=(), service="s", operation="o",
                purpose="p",
            )  # fmt: skip
        binding.province_subjects(keys, "61")
        tuple([s.key for s in binding.subjects])

    return once


def _attempt(app: Any, route: Any) -> Any:
    """One attempt at the route's system on the canned adapter, as the stack makes it."""
    from gateway.adapter import Call, CallContext
    from gateway.http.keys import STATE
    from gateway.pipeline import CallTrace, one_attempt

    attempt = one_attempt(app[STATE].systems[route.system])
    context = CallContext("r", "p", "s", "63", "61", "pr", "pr", "L2", client="c")
    call = Call(route.system_operation, {"zjhm": "x"}, context)

    async def once() -> None:
        trace = CallTrace()
        trace.attempts = 1
        await attempt(call, trace)

    return once


class _WithoutSchema:
    """The route, its schema check left out."""

    def __init__(self, route: Any) -> None:
        self._route = route

    def __getattr__(self, name: str) -> Any:
        return getattr(self._route, name)

    def validate(self, data: Any) -> None:
        return None


def _access_writer() -> Any:
    """The access line of a routed call, written as ``close_request`` writes it."""
    import gateway.logs
    from gateway.http.middlewares import log
    from gateway.logs import info_enabled

    one_step = getattr(gateway.logs, "access_line", None)

    def write(route: str, fields: dict[str, Any]) -> None:
        if not info_enabled():
            return
        if one_step is not None:
            one_step(log, "POST", route, 200, 3.41, fields)
        else:  # a tree before it: the call it replaced
            log.info(
                "request_completed", method="POST", route=route, status=200, duration_ms=3.41,
                **fields,
            )  # fmt: skip

    return write


def _close_without_metric(close: Any, request: Any, response: Any, started: float) -> None:
    from gateway.http.keys import METRICS

    metrics = request.app[METRICS]
    kept = metrics.http_request
    metrics.http_request = _nothing
    try:
        close(request, response, started)
    finally:
        metrics.http_request = kept


def _nothing(*_args: Any) -> None:
    return None


async def _canned(system: Any, spec: Any) -> Any:
    import bench_routing as br

    return br.CannedAdapter()


_control = callgrind_steps.control


def counted(args: argparse.Namespace, steps: list[str], out: Path) -> dict[str, float]:
    """Instructions per call of each step, in one process under callgrind
    (``callgrind_steps.counted``)."""
    return callgrind_steps.counted(
        __file__,
        steps,
        small=100,
        count=args.count,
        out=out,
        extra=["--log", args.log],
        tree=args.tree,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    callgrind_steps.add_arguments(parser, STEPS)
    parser.add_argument("--log", choices=("warning", "info"), default="warning")
    args = parser.parse_args()
    steps = args.step or [
        "token",
        "jwt",
        "subjects",
        "limit",
        "metrics",
        "log",
        "all",
    ]  # not access
    if args.callgrind:
        label = f"log {args.log}" + (f", tree {args.tree}" if args.tree else ", this tree")
        for number in range(1, args.repeat + 1):
            with tempfile.TemporaryDirectory(prefix="tongban-steps-cg-") as tmp:
                figures = counted(args, steps, Path(tmp) / "callgrind.out")
            shown = ", ".join(f"{step} {n / 1000:,.1f} k" for step, n in figures.items())
            print(f"{label}: run {number}: instructions per call: {shown}", flush=True)
        return
    sys.path.insert(0, str(HERE))
    import bench_routing as br  # puts this checkout first on the path

    if args.tree:  # and then the other tree before it, as the gateway role of bench_routing
        br._import_from_tree(Path(args.tree).resolve())
    if args.inner:
        counts = [int(n) for n in args.counts.split(",")]
        asyncio.run(run(args.steps.split(","), counts, args.log, control=True))
    else:
        asyncio.run(run(steps, [args.count], args.log, control=False))


if __name__ == "__main__":
    main()
