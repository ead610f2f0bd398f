"""The read timeout ("no byte for ``timeouts.read`` seconds") against the attempt's cap.

A system's adapter sets aiohttp's read timer only when it can fire before the gateway's cap on
the attempt (``timeouts.attempt``); the outcome of a stalled back-end is the same either way:
``backend.timeout`` from the read rule when ``read`` is shorter than ``attempt``, from the cap
otherwise. Which rule ended the call shows in the error's detail. Every back-end here is a real
one on 127.0.0.1 that stalls: before its headers (``slow``) or after the first byte of its
body (``drip``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from adapters.rest import open_session, read_timer
from gateway.adapter import BackendTimeout, SystemSpec
from gateway.breaker import CircuitBreaker
from gateway.errors import GatewayError
from gateway.pipeline import CallTrace, SystemRuntime, build_stack
from gateway.settings import SystemSettings
from tests.adapters.loopback_backends import (
    FACTORIES,
    REST_OPERATIONS,
    WSDL_DIR,
    Backend,
    Kind,
    Plan,
    make_call,
    make_spec,
)

STALL = 600.0  # far longer than any test: the back-end does not answer on its own
STALLS = [Plan("slow", delay=STALL), Plan("drip", delay=STALL)]
SYSTEM_ID = "stalling-system"
READ_RULE = f"System {SYSTEM_ID} did not answer in time."  # the read rule's detail


def system_settings(kind: Kind, address: str, *, read: float, attempt: float) -> SystemSettings:
    block: dict[str, Any] = {
        "name": {"zh": "停顿系统", "en": "Stalling system"},
        "province": "61",
        "protocol": "soap" if kind == "soap" else "rest",
        "adapter": kind,
        "address": address,
        "timeouts": {"connect": 5.0, "read": read, "attempt": attempt, "deadline": 60.0},
        "retry": {"max_attempts": 1},
    }
    if kind == "soap":
        block |= {"wsdl": "degree.wsdl", "operations": {"VerifyDegree": {}}}
    else:
        block["operations"] = REST_OPERATIONS
    return SystemSettings.model_validate(block)


async def routed_timeout(kind: Kind, backend: Backend, *, read: float, attempt: float) -> str:
    """One call through the route's stack (retry, breaker, slot, the attempt's cap, the
    adapter opened on the system's spec) against the stalling back-end: the error's detail."""
    settings = system_settings(kind, backend.address, read=read, attempt=attempt)
    adapter = await FACTORIES[kind].open(settings.spec(SYSTEM_ID, WSDL_DIR))
    runtime = SystemRuntime(
        SYSTEM_ID,
        settings,
        adapter,
        CircuitBreaker(SYSTEM_ID, failure_threshold=5, reset_timeout=30.0),
        asyncio.Semaphore(1),
    )
    stack = build_stack(runtime, policy="never")
    try:
        with pytest.raises(GatewayError) as caught:
            await stack(make_call(kind), CallTrace())
    finally:
        await adapter.aclose()
    error = caught.value
    assert isinstance(error, BackendTimeout)
    assert error.code == "backend.timeout"
    assert error.reached_backend is True
    assert len(backend.seen) == 1
    return error.detail


@pytest.mark.parametrize("stall", STALLS, ids=["before-headers", "inside-body"])
async def test_read_shorter_than_attempt_times_out_by_the_read_rule(
    kind: Kind, backend: Backend, stall: Plan
) -> None:
    backend.script(stall)
    detail = await routed_timeout(kind, backend, read=0.3, attempt=30.0)
    assert detail == READ_RULE


@pytest.mark.parametrize("read", [0.3, 300.0], ids=["read-equal", "read-longer"])
@pytest.mark.parametrize("stall", STALLS, ids=["before-headers", "inside-body"])
async def test_read_not_shorter_than_attempt_times_out_at_the_attempt_cap(
    kind: Kind, backend: Backend, stall: Plan, read: float
) -> None:
    backend.script(stall)
    detail = await routed_timeout(kind, backend, read=read, attempt=0.3)
    assert detail == "No answer within 0.3 s."


@pytest.mark.parametrize("stall", STALLS, ids=["before-headers", "inside-body"])
async def test_an_adapter_without_a_cap_keeps_the_read_timeout(
    kind: Kind, backend: Backend, stall: Plan
) -> None:
    backend.script(stall)
    spec = dataclasses.replace(make_spec(kind, backend.address, read_timeout=0.3), id=SYSTEM_ID)
    assert spec.attempt_timeout is None
    adapter = await FACTORIES[kind].open(spec)
    try:
        with pytest.raises(BackendTimeout) as caught:
            await adapter.call(make_call(kind))
    finally:
        await adapter.aclose()
    assert caught.value.detail == READ_RULE
    assert caught.value.reached_backend is True


def spec_with(*, read: float, attempt: float | None) -> SystemSpec:
    return dataclasses.replace(
        make_spec("rest", "http://127.0.0.1:1"), read_timeout=read, attempt_timeout=attempt
    )


@pytest.mark.parametrize(
    ("read", "attempt", "armed"),
    [
        (10.0, None, 10.0),  # nothing caps the calls: the read rule is the only one
        (5.0, 10.0, 5.0),  # shorter than the cap: it can fire first
        (10.0, 10.0, None),  # the defaults: armed after the cap started, it never comes first
        (30.0, 10.0, None),
    ],
)
async def test_the_session_arms_the_read_timer_only_when_it_can_fire_first(
    read: float, attempt: float | None, armed: float | None
) -> None:
    spec = spec_with(read=read, attempt=attempt)
    assert read_timer(spec) == armed
    async with open_session(spec, headers={}) as session:
        assert session.timeout.sock_read == armed
        # The wait for a pooled connection and the connect cap are unchanged.
        assert session.timeout.connect == spec.connect_timeout + read
        assert session.timeout.sock_connect == spec.connect_timeout


def test_a_system_spec_carries_its_attempt_cap() -> None:
    settings = system_settings("rest", "http://127.0.0.1:1", read=4.0, attempt=7.5)
    spec = settings.spec(SYSTEM_ID, WSDL_DIR)
    assert spec.read_timeout == 4.0
    assert spec.attempt_timeout == 7.5
