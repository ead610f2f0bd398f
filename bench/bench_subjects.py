"""What binding a routed call to its data subject costs: CPU µs per call, with and without.

    .venv/bin/python bench/bench_subjects.py                 # ~1 minute on a shared core
    .venv/bin/python bench/bench_subjects.py --calls 3000 --rounds 7

Two measurements, both in this one process (no wrk, no second process: the difference is what
counts, and everything else is the same on both sides):

- **the rule alone**: what a call with a person subject adds in the handler, timed in a loop:
  the ambiguity check, the person key of the ID number (link key, person key), the comparison
  with the principal, the handling province's hash for the assertion and the scoped key;
- **a routed call end to end**: the real app (``create_app``, a REST route to an in-process
  canned adapter, audit on SQLite in a temporary directory) served on loopback and called
  sequentially by an aiohttp client in the same process; the same service declared ``public``
  (no subject to bind) and ``[{person: holder_id}]`` (the caller's own ID number), rounds
  alternating so drift hits both. Process CPU per call includes the client's share, the same on
  both sides.
"""

# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOLDER_ID = "61010219900101123X"
TOKEN_SECRET = b"bench-subjects-secret-0123456789ab"
SERVICE = "bench-subject"


def subject_keys() -> Any:
    from pydantic import SecretStr

    from gateway.identity.subject_keys import SubjectKeys

    return SubjectKeys(
        pairwise_secret=SecretStr("bench-only-pairwise-secret-0123456789"),
        link_secret=SecretStr("bench-only-link-secret-0123456789abcd"),
    )


def settings(data_dir: Path, subject: Any) -> Any:
    from gateway.ratelimit.config import RateLimitSettings
    from gateway.settings import (
        GatewaySettings,
        RouteSettings,
        ServiceSettings,
        Settings,
        SystemSettings,
    )

    system = SystemSettings.model_validate(
        {
            "name": {"zh": "基准", "en": "Bench"},
            "province": "61",
            "protocol": "rest",
            "address": "http://127.0.0.1:9",
            "operations": {"Echo": {"method": "POST", "path": "/api/echo"}},
        }
    )
    service = ServiceSettings.model_validate(
        {
            "name": {"zh": "基准核验", "en": "Bench"},
            "modes": ["query"],
            "min_level": "L1",
            "audit": "buffered",
            "subject": subject,
            "operations": {
                "verify": {
                    "name": {"zh": "核验", "en": "Verify"},
                    "kind": "verify",
                    "retry": "safe",
                    "input_schema": {
                        "type": "object",
                        "required": ["holder_id"],
                        "properties": {"holder_id": {"type": "string"}},
                    },
                }
            },
        }
    )
    route = RouteSettings.model_validate(
        {
            "service": SERVICE,
            "operation": "verify",
            "receiving": "*",
            "handling": "61",
            "system": "bench-rest",
            "system_operation": "Echo",
            "request": {"zjhm": "holder_id"},
            "response": {"valid": "yxbz"},
        }
    )
    never = RateLimitSettings(client="1000000/second", person="1000000/second")
    gateway = GatewaySettings(data_dir=data_dir, rate_limits=never)
    return Settings(data_dir, gateway, {"bench-rest": system}, {SERVICE: service}, (route,))


def rule_alone(iterations: int) -> float:
    """µs per call of the work a person subject adds in the handler."""
    from gateway.consent.contract import DataSubject
    from gateway.principal import Principal
    from gateway.subject_config import SubjectField
    from gateway.subjects import Binding, RefusingConsentBook, SubjectRule

    keys = subject_keys()
    rule = SubjectRule(keys, RefusingConsentBook())
    declaration = (SubjectField(person="holder_id"),)
    data = {"holder_id": HOLDER_ID}
    raw = b'{"data":{"holder_id":"' + HOLDER_ID.encode() + b'"}}'
    principal = Principal("s", "L2", "bench", person=keys.person(HOLDER_ID).key)

    async def loop() -> float:
        started = time.process_time()
        for _ in range(iterations):
            named = rule.named(declaration, data, raw)
            binding: Binding = await rule.check(
                principal,
                declaration,
                named,
                consent=(),
                service=SERVICE,
                operation="verify",
                purpose="benchmark",
            )
            binding.assertion_subjects(keys, "61")
            keys.scoped_idempotency_key("bench", principal.owner, "key-1")
            assert binding.subjects == (DataSubject("person", principal.person or ""),)
        return time.process_time() - started

    return asyncio.run(loop()) / iterations * 1e6


async def end_to_end(calls: int, rounds: int) -> dict[str, list[float]]:
    import aiohttp
    from aiohttp.test_utils import TestServer

    from gateway.adapter import Adapter, Reply, SystemSpec
    from gateway.app import create_app
    from gateway.identity.devtokens import DevTokenIssuer
    from gateway.logs import configure_logging
    from gateway.settings import SystemSettings

    class Canned:
        async def call(self, call: Any) -> Any:
            return Reply({"yxbz": True})

        async def aclose(self) -> None:
            return None

    async def canned(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return Canned()

    configure_logging("warning", "json", stream=open("/dev/null", "wb"))  # noqa: SIM115, ASYNC230
    keys = subject_keys()
    issuer = DevTokenIssuer(TOKEN_SECRET)
    token = issuer.issue("bench-citizen", "L2", person=keys.person(HOLDER_ID).key)
    body = {
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "benchmark",
        "data": {"holder_id": HOLDER_ID},
    }
    headers = {"Authorization": f"Bearer {token}"}
    variants = {"public": "public", "person": [{"person": "holder_id"}]}
    results: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        for name, subject in variants.items():
            data_dir = Path(tmp) / name
            data_dir.mkdir()
            app = create_app(
                settings(data_dir, subject), verifier=issuer, open_adapter=canned, subjects=keys
            )
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            servers[name] = server
        try:
            async with aiohttp.ClientSession() as http:
                for server in servers.values():  # warm up both
                    for _ in range(200):
                        url = str(server.make_url(f"/api/v1/services/{SERVICE}/calls"))
                        async with http.post(url, json=body, headers=headers) as response:
                            assert response.status == 200, await response.text()
                for index in range(rounds):
                    # Alternate which goes first: whatever drifts within a round hits both.
                    order = list(servers.items())
                    for name, server in order if index % 2 == 0 else order[::-1]:
                        url = str(server.make_url(f"/api/v1/services/{SERVICE}/calls"))
                        started = time.process_time()
                        for _ in range(calls):
                            async with http.post(url, json=body, headers=headers) as response:
                                await response.read()
                        results[name].append((time.process_time() - started) / calls * 1e6)
        finally:
            for server in servers.values():
                await server.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    alone = rule_alone(args.iterations)
    print(f"the rule alone (person subject, hashes, scoped key): {alone:.1f} µs CPU per call")
    results = asyncio.run(end_to_end(args.calls, args.rounds))
    public = statistics.median(results["public"])
    person = statistics.median(results["person"])
    paired = statistics.median(
        p - q for p, q in zip(results["person"], results["public"], strict=True)
    )
    print(f"routed call, subject public:  {public:.1f} µs CPU per call (median of {args.rounds})")
    print(f"routed call, subject person:  {person:.1f} µs CPU per call")
    print(f"added by binding: {paired:+.1f} µs per call, median of paired rounds (target ≤ 30 µs)")
    print(f"lowest round each: {min(results['public']):.1f} / {min(results['person']):.1f} µs")
    print("rounds:", {k: [round(v, 1) for v in vs] for k, vs in results.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
