"""Fault scenarios through the real per-route stack (retry → breaker → limit → timeout → adapter).

Each row names the fault, the expected error code, how many attempts the stack made, the
breaker state afterwards and how many requests the loopback back-end actually received.
Sleeps are injected and recorded, so backoff and Retry-After waits cost no time.

Rows of kind "asmx" run against a loopback service answering like a deployed .NET ASMX service
(tests/adapters/dotnet_backend.py): DataSet and bare-scalar results, and hostile answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from gateway.adapter import Call
from gateway.breaker import CircuitBreaker
from gateway.errors import GatewayError
from gateway.pipeline import CallTrace, SystemRuntime, build_stack
from gateway.settings import RetryPolicy, SystemSettings
from tests.adapters.dotnet_backend import (
    BINDING,
    REGISTRATIONS,
    WSDL_NAME,
    DotnetService,
    Mode,
    running_dotnet_service,
)
from tests.adapters.loopback_backends import (
    CONTEXT,
    DEGREE,
    FACTORIES,
    WSDL_DIR,
    Backend,
    Kind,
    Plan,
    blackhole_address,
    make_call,
    refused_address,
    running_backend,
)

SLOW = Plan("slow", delay=1.0)
OK = Plan("ok")
FaultKind = Kind | Literal["asmx"]
ASMX_PASSWORD = "asmx-gateway-password-0001"
OWNER = REGISTRATIONS[0].owner_id
ROWS = [
    {"BDCDYH": r.unit, "BDCQZH": r.certificate, "ZL": r.address, "MJ": r.area, "QLRZJH": OWNER}
    for r in REGISTRATIONS
    if r.owner_id == OWNER
]
ASMX_CALLS: dict[str, tuple[str, dict[str, str]]] = {
    "rows": ("QueryRegistrations", {"userName": "tongban-gw-qh", "password": ASMX_PASSWORD,
                                    "ownerIdNo": OWNER}),
    "scalar": ("CheckCertificate", {"certNo": REGISTRATIONS[0].certificate, "ownerIdNo": OWNER}),
}  # fmt: skip


def status(code: int, **headers: str) -> Plan:
    return Plan("status", status=code, headers=headers)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    kind: FaultKind
    plans: tuple[Plan, ...]
    code: str | None  # expected error code of the last call; None = it succeeded
    attempts: int  # trace.attempts of the last call
    breaker: str  # breaker state after the last call
    received: int  # requests the back-end received over all calls
    policy: RetryPolicy = "safe"
    address: str = "backend"  # or "refused" / "blackhole"
    calls: int = 1  # the same call made this many times; expectations are about the last
    advance_clock: float = 0.0  # seconds the breaker's clock moves between calls
    failure_threshold: int = 5
    idempotency_key: str | None = None
    hold_all_slots: bool = False
    waits: tuple[float, ...] | None = None  # exact recorded waits, when the row cares
    mode: Mode = "ok"  # asmx rows: how the .NET service answers
    asks: str = "rows"  # asmx rows: which call (ASMX_CALLS)
    data: Any = None  # asmx rows: the data of a successful last call
    password: str = ASMX_PASSWORD  # asmx rows: the SOAP header password the gateway sends


TABLE = [
    Row("connection refused", "rest", (OK,), "backend.unavailable", 3, "closed", 0,
        address="refused"),
    Row("connection refused, policy never: never sent, so still retried", "soap", (OK,),
        "backend.unavailable", 3, "closed", 0, policy="never", address="refused"),
    Row("connect timeout", "rest", (OK,), "backend.timeout", 3, "closed", 0,
        address="blackhole"),
    Row("reset mid-body", "rest", (Plan("reset"),), "backend.unavailable", 3, "closed", 3),
    Row("read timeout", "soap", (SLOW,), "backend.timeout", 3, "closed", 3),
    Row("slow drip", "rest", (Plan("drip", delay=0.6),), "backend.timeout", 3, "closed", 3),
    Row("HTTP 500", "rest", (status(500),), "backend.server_error", 3, "closed", 3),
    Row("HTTP 502", "soap", (status(502),), "backend.server_error", 3, "closed", 3),
    Row("HTTP 503", "shaanxi_degree", (status(503),), "backend.server_error", 3, "closed", 3),
    Row("HTTP 504", "rest", (status(504),), "backend.server_error", 3, "closed", 3),
    Row("HTTP 503 then success", "rest", (status(503), OK), None, 2, "closed", 2),
    Row("429 with Retry-After: the wait honours it", "rest",
        (status(429, **{"Retry-After": "4"}), OK), None, 2, "closed", 2, waits=(4.0,)),
    Row("429 with Retry-After longer than allowed: fails at once", "soap",
        (status(429, **{"Retry-After": "60"}),), "backend.rate_limited", 1, "closed", 1),
    Row("HTTP 404: not retried, breaker unaffected", "rest", (status(404),),
        "backend.rejected", 1, "closed", 1),
    Row("malformed JSON", "rest", (Plan("malformed"),), "backend.bad_response", 1, "closed", 1),
    Row("malformed XML", "soap", (Plan("malformed"),), "backend.bad_response", 1, "closed", 1),
    Row("SOAP fault, client side: not retried", "soap", (Plan("fault_client"),),
        "backend.fault", 1, "closed", 1),
    Row("SOAP fault, server side: retried", "soap", (Plan("fault_server"),),
        "backend.fault", 3, "closed", 3),
    Row("wrong content type", "shaanxi_degree", (Plan("wrong_type"),),
        "backend.bad_response", 1, "closed", 1),
    Row("oversize answer", "soap", (Plan("oversize", size=64 * 1024),),
        "backend.response_too_large", 1, "closed", 1),
    Row("Shaanxi holder not found (code 1001)", "shaanxi_degree", (Plan("code_not_found"),),
        "backend.rejected", 1, "closed", 1),
    Row("non-idempotent send + read timeout: exactly one attempt", "rest", (SLOW,),
        "backend.timeout", 1, "closed", 1, policy="never"),
    Row("idempotent-with-key + read timeouts: retried with the same key", "rest",
        (SLOW, SLOW, OK), None, 3, "closed", 3, policy="idempotent-with-key",
        idempotency_key="idem-7c1f"),
    Row("idempotent-with-key over SOAP", "soap", (SLOW, OK), None, 2, "closed", 2,
        policy="idempotent-with-key", idempotency_key="idem-soap-1"),
    Row("breaker opens after 2 failures; the third attempt is refused", "rest",
        (status(500),), "backend.circuit_open", 3, "open", 2, failure_threshold=2),
    Row("open breaker: CircuitOpen without contacting the server", "rest", (status(500),),
        "backend.circuit_open", 1, "open", 2, failure_threshold=2, calls=2),
    Row("half-open probe succeeds and closes the breaker", "rest", (status(500), OK), None,
        1, "closed", 2, policy="never", failure_threshold=1, calls=2, advance_clock=31.0),
    Row("half-open probe fails and opens it again", "soap", (status(500),),
        "backend.server_error", 1, "open", 2, policy="never", failure_threshold=1, calls=2,
        advance_clock=31.0),
    Row("concurrency limit reached: SystemBusy", "rest", (OK,), "gateway.system_busy", 1,
        "closed", 0, hold_all_slots=True),
    Row("DataSet answer: its rows as an array of objects", "asmx", (), None, 1, "closed", 1,
        data={"QueryRegistrationsResult": {"Table": ROWS}}),
    Row("DataSet answer without its inline schema: the same rows", "asmx", (), None, 1,
        "closed", 1, mode="no_schema", data={"QueryRegistrationsResult": {"Table": ROWS}}),
    Row("bare xs:boolean answer: a named field", "asmx", (), None, 1, "closed", 1,
        asks="scalar", data={"CheckCertificateResult": True}),
    Row("SoapException for a wrong SOAP-header password: retried as a server fault", "asmx",
        (), "backend.fault", 3, "closed", 3, asks="scalar", password="not-the-password"),
    Row("hostile: DataSet nested far deeper than any real one", "asmx", (),
        "backend.bad_response", 1, "closed", 1, mode="deep"),
    Row("hostile: DataSet column its own inline schema does not declare", "asmx", (),
        "backend.bad_response", 1, "closed", 1, mode="undeclared_column"),
    Row("hostile: the answer element of another operation", "asmx", (),
        "backend.bad_response", 1, "closed", 1, mode="wrong_element", asks="scalar"),
    Row("hostile: an empty SOAP Body", "asmx", (), "backend.bad_response", 1, "closed", 1,
        mode="empty_body", asks="scalar"),
    Row("hostile: a DOCTYPE in the answer", "asmx", (), "backend.bad_response", 1, "closed", 1,
        mode="doctype", asks="scalar"),
    Row("hostile: entities declared in the answer", "asmx", (), "backend.bad_response", 1,
        "closed", 1, mode="entities", asks="scalar"),
    Row("hostile DOCTYPE answers count for the breaker: the third call is refused", "asmx", (),
        "backend.circuit_open", 1, "open", 2, mode="doctype", asks="scalar",
        failure_threshold=2, calls=3),
]  # fmt: skip


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def system_settings(row: Row, address: str) -> SystemSettings:
    block: dict[str, Any] = {
        "name": {"zh": "陕西学位核验", "en": "Shaanxi degree verification"},
        "province": "61",
        "protocol": "soap" if row.kind == "soap" else "rest",
        "adapter": row.kind,
        "address": address,
        "timeouts": {"connect": 0.3, "read": 0.3, "attempt": 2.0, "deadline": 30.0},
        "breaker": {"failure_threshold": row.failure_threshold, "reset_timeout": 30.0},
        "retry": {
            "max_attempts": 3,
            "initial_backoff": 0.05,
            "max_backoff": 1.0,
            "jitter": 0.0,
            "max_retry_after": 10.0,
        },
        "concurrency_limit": 1,
        "queue_timeout": 0.05,
        "max_response_bytes": 16 * 1024,
    }
    if row.kind == "asmx":
        block |= {
            "wsdl": WSDL_NAME,
            "options": {"binding": BINDING},
            "auth": {
                "type": "soap_header",
                "element": "AuthHeader",
                "fields": {"UserName": "tongban-gw-qh", "Password": {"env": "TB_FAULT_ASMX_PW"}},
            },
            "operations": {
                "CheckCertificate": {},
                "QueryRegistrations": {"rows": "QueryRegistrationsResult.Table"},
            },
        }
    elif row.kind == "soap":
        block |= {"wsdl": "degree.wsdl", "operations": {"VerifyDegree": {}}}
    else:
        block["operations"] = {
            "verify": {"method": "POST", "path": "/api/degrees/{certificate_no}/verify"}
        }
    return SystemSettings.model_validate(block)


@contextlib.asynccontextmanager
async def target(row: Row, backend: Backend | DotnetService) -> AsyncIterator[str]:
    if row.address == "refused":
        yield refused_address()
    elif row.address == "blackhole":
        with blackhole_address() as address:
            yield address
    else:
        yield backend.address


@contextlib.asynccontextmanager
async def backend_of(row: Row) -> AsyncIterator[Backend | DotnetService]:
    if row.kind == "asmx":
        async with running_dotnet_service(
            DotnetService(mode=row.mode, password=ASMX_PASSWORD)
        ) as service:
            yield service
    else:
        async with running_backend(row.kind) as backend:
            backend.script(*row.plans)
            yield backend


def received(backend: Backend | DotnetService) -> int:
    return len(backend.seen)


@pytest.mark.parametrize("row", TABLE, ids=[row.name for row in TABLE])
async def test_fault_row(row: Row, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setenv("TB_FAULT_ASMX_PW", row.password)

    async def recorded_sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)

    async with backend_of(row) as backend, target(row, backend) as address:
        settings = system_settings(row, address)
        clock = FakeClock()
        runtime = SystemRuntime(
            id="shaanxi-degree",
            settings=settings,
            adapter=await FACTORIES["soap" if row.kind == "asmx" else row.kind].open(
                settings.spec("shaanxi-degree", WSDL_DIR)
            ),
            breaker=CircuitBreaker(
                "shaanxi-degree",
                failure_threshold=settings.breaker.failure_threshold,
                reset_timeout=settings.breaker.reset_timeout,
                clock=clock,
            ),
            slots=asyncio.Semaphore(settings.concurrency_limit),
        )
        stack = build_stack(runtime, policy=row.policy, sleep=recorded_sleep)
        context = dataclasses.replace(CONTEXT, idempotency_key=row.idempotency_key)
        if row.kind == "asmx":
            operation, payload = ASMX_CALLS[row.asks]
            call = Call(operation, payload, context)
        else:
            call = make_call(row.kind, context)
        if row.hold_all_slots:
            await runtime.slots.acquire()
        try:
            for _ in range(row.calls):
                clock.now += row.advance_clock
                trace = CallTrace()
                error: GatewayError | None = None
                try:
                    reply = await stack(call, trace)
                except GatewayError as exc:
                    error = exc
        finally:
            await runtime.adapter.aclose()

    assert (error.code if error else None) == row.code
    if error is None:
        assert reply.data == (row.data if row.kind == "asmx" else DEGREE)
    assert trace.attempts == row.attempts
    assert runtime.breaker.state.value == row.breaker
    assert received(backend) == row.received
    if row.waits is not None:
        assert tuple(waits) == row.waits
    if row.idempotency_key is not None:
        assert isinstance(backend, Backend)
        keys = {seen.headers.get("Idempotency-Key") for seen in backend.seen}
        assert keys == {row.idempotency_key}


def test_the_table_is_wide_enough() -> None:
    assert len(TABLE) >= 30
    assert len({row.name for row in TABLE}) == len(TABLE)
    assert {row.mode for row in TABLE if row.kind == "asmx"} >= {
        "ok",
        "deep",
        "undeclared_column",
        "wrong_element",
        "empty_body",
    }
