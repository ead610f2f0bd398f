"""The contract every adapter kind passes against a real loopback back-end."""

from __future__ import annotations

import dataclasses
import email.utils
import time
from urllib.parse import unquote

import pytest

from gateway.adapter import (
    BackendBadResponse,
    BackendError,
    BackendFault,
    BackendRateLimited,
    BackendRejected,
    BackendResponseTooLarge,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    digest,
)
from tests.adapters.loopback_backends import (
    CONTEXT,
    DEGREE,
    LEAK_MARKERS,
    Backend,
    Kind,
    Plan,
    blackhole_address,
    make_call,
    opened_adapter,
    refused_address,
)


async def failing_call(
    kind: Kind, address: str, error: type[BackendError], **spec_options: float
) -> BackendError:
    async with opened_adapter(kind, address, **spec_options) as adapter:
        with pytest.raises(error) as caught:
            await adapter.call(make_call(kind))
    found = caught.value
    for marker in LEAK_MARKERS:
        assert marker not in str(found)
        assert marker not in repr(found.extra)
    return found


# --- success ----------------------------------------------------------------------------------


async def test_success_returns_the_data_and_digests_of_the_wire_bytes(
    kind: Kind, backend: Backend
) -> None:
    async with opened_adapter(kind, backend.address) as adapter:
        reply = await adapter.call(make_call(kind))

    assert reply.data == DEGREE
    assert reply.status == 200
    [seen] = backend.seen
    assert reply.request_digest == digest(seen.body)
    assert reply.response_digest == digest(seen.sent)


async def test_the_call_context_reaches_the_backend(kind: Kind, backend: Backend) -> None:
    async with opened_adapter(kind, backend.address) as adapter:
        await adapter.call(make_call(kind))

    [seen] = backend.seen
    assert seen.headers["X-Request-ID"] == "req-0001"
    assert "Idempotency-Key" not in seen.headers
    if kind == "soap":
        assert seen.soap_context == {
            "RequestId": "req-0001",
            "Purpose": "学历核验 hiring check",
            "Service": "degree-verification",
            "CaseId": "case-2024-0042",
            "AuthorisationRef": "auth-5521",
            "Principal": "pw-3f9a1c",
            "Actor": "pw-77b2d0",
            "Level": "L2",
            "SourceProvince": "63",
        }
        return
    headers = seen.headers
    assert all(value.isascii() for value in headers.values())
    assert unquote(headers["x-tongban-purpose"]) == "学历核验 hiring check"
    assert headers["x-tongban-service"] == "degree-verification"
    assert headers["x-tongban-case-id"] == "case-2024-0042"
    assert headers["x-tongban-authorisation"] == "auth-5521"
    assert headers["x-tongban-principal"] == "pw-3f9a1c"
    assert headers["x-tongban-actor"] == "pw-77b2d0"
    assert headers["x-tongban-level"] == "L2"
    assert headers["x-tongban-source-province"] == "63"
    assert "x-tongban-assertion" not in headers
    assert "x-tongban-subjects" not in headers


async def test_idempotency_key_and_assertion_are_forwarded(kind: Kind, backend: Backend) -> None:
    context = dataclasses.replace(
        CONTEXT,
        idempotency_key="idem-9",
        identity_assertion="eyJhbGciOi.x.y",
        subject_hashes="person:" + "ab" * 32,
        client="portal-63",
    )
    async with opened_adapter(kind, backend.address) as adapter:
        await adapter.call(make_call(kind, context))

    [seen] = backend.seen
    assert seen.headers["Idempotency-Key"] == "idem-9"
    if kind == "soap":
        assert seen.soap_context["IdempotencyKey"] == "idem-9"
        assert seen.soap_context["Assertion"] == "eyJhbGciOi.x.y"
        assert seen.soap_context["Subjects"] == "person:" + "ab" * 32
        assert seen.soap_context["Client"] == "portal-63"
    else:
        assert seen.headers["X-Tongban-Assertion"] == "eyJhbGciOi.x.y"
        assert seen.headers["X-Tongban-Subjects"] == "person:" + "ab" * 32
        assert seen.headers["X-Tongban-Client"] == "portal-63"


# --- never reached ----------------------------------------------------------------------------


async def test_connection_refused_never_reached_the_backend(kind: Kind) -> None:
    error = await failing_call(kind, refused_address(), BackendUnavailable)
    assert error.reached_backend is False


async def test_connect_timeout_never_reached_the_backend(kind: Kind) -> None:
    with blackhole_address() as address:
        started = time.monotonic()
        error = await failing_call(kind, address, BackendTimeout, connect_timeout=0.3)
    assert error.reached_backend is False
    assert time.monotonic() - started < 2.0


# --- reached, then failed ---------------------------------------------------------------------


async def test_read_timeout(kind: Kind, backend: Backend) -> None:
    backend.script(Plan("slow", delay=1.0))
    error = await failing_call(kind, backend.address, BackendTimeout, read_timeout=0.3)
    assert error.reached_backend is True


async def test_slow_drip_slower_than_the_read_timeout(kind: Kind, backend: Backend) -> None:
    backend.script(Plan("drip", delay=0.6))
    error = await failing_call(kind, backend.address, BackendTimeout, read_timeout=0.3)
    assert error.reached_backend is True


async def test_reset_mid_body(kind: Kind, backend: Backend) -> None:
    backend.script(Plan("reset"))
    error = await failing_call(kind, backend.address, BackendUnavailable)
    assert error.reached_backend is True


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors(kind: Kind, backend: Backend, status: int) -> None:
    backend.script(Plan("status", status=status))
    error = await failing_call(kind, backend.address, BackendServerError)
    assert error.reached_backend is True
    assert error.retry_after is None
    assert error.detail == f"HTTP {status} from system {_system(kind)}."


async def test_503_with_retry_after_carries_it(kind: Kind, backend: Backend) -> None:
    backend.script(Plan("status", status=503, headers={"Retry-After": "5"}))
    error = await failing_call(kind, backend.address, BackendServerError)
    assert error.retry_after == 5.0


async def test_429_with_retry_after_seconds(kind: Kind, backend: Backend) -> None:
    backend.script(Plan("status", status=429, headers={"Retry-After": "7"}))
    error = await failing_call(kind, backend.address, BackendRateLimited)
    assert error.retry_after == 7.0
    # A 429 is refused before processing: resending it cannot create a second case.
    assert error.reached_backend is False


async def test_429_with_retry_after_http_date(kind: Kind, backend: Backend) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    backend.script(Plan("status", status=429, headers={"Retry-After": when}))
    error = await failing_call(kind, backend.address, BackendRateLimited)
    assert error.retry_after is not None
    assert 100 < error.retry_after <= 120


@pytest.mark.parametrize("status", [400, 403, 404, 422])
async def test_other_4xx_are_rejections(kind: Kind, backend: Backend, status: int) -> None:
    backend.script(Plan("status", status=status))
    error = await failing_call(kind, backend.address, BackendRejected)
    assert error.reached_backend is True


async def test_malformed_body(kind: Kind, backend: Backend) -> None:
    backend.script(Plan("malformed"))
    error = await failing_call(kind, backend.address, BackendBadResponse)
    assert error.reached_backend is True


async def test_wrong_content_type(kind: Kind, backend: Backend) -> None:
    backend.script(Plan("wrong_type"))
    await failing_call(kind, backend.address, BackendBadResponse)


@pytest.mark.parametrize("behaviour", ["oversize", "oversize_chunked"])
async def test_oversize_answer(kind: Kind, backend: Backend, behaviour: str) -> None:
    backend.script(Plan(behaviour, size=64 * 1024))  # type: ignore[arg-type]
    error = await failing_call(kind, backend.address, BackendResponseTooLarge)
    assert error.reached_backend is True


async def test_unknown_operation_is_refused_without_sending(kind: Kind, backend: Backend) -> None:
    async with opened_adapter(kind, backend.address) as adapter:
        with pytest.raises(BackendRejected) as caught:
            await adapter.call(dataclasses.replace(make_call(kind), operation="Nope"))
    assert caught.value.reached_backend is False
    assert backend.received == 0


# --- kind-specific answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "side"), [("fault_client", "client"), ("fault_server", "server")]
)
@pytest.mark.parametrize("kind", ["soap"], indirect=True)
async def test_soap_faults(kind: Kind, backend: Backend, behaviour: str, side: str) -> None:
    backend.script(Plan(behaviour))  # type: ignore[arg-type]
    error = await failing_call(kind, backend.address, BackendFault)
    assert isinstance(error, BackendFault)
    assert error.fault_side == side
    assert error.reached_backend is True


@pytest.mark.parametrize(
    ("behaviour", "error_type"),
    [("code_not_found", BackendRejected), ("code_error", BackendServerError)],
)
@pytest.mark.parametrize("kind", ["shaanxi_degree"], indirect=True)
async def test_shaanxi_error_codes(
    kind: Kind, backend: Backend, behaviour: str, error_type: type[BackendError]
) -> None:
    backend.script(Plan(behaviour))  # type: ignore[arg-type]
    error = await failing_call(kind, backend.address, error_type)
    assert type(error) is error_type
    assert error.reached_backend is True


def _system(kind: Kind) -> str:
    return {"rest": "shaanxi-housing", "soap": "shaanxi-degree-ws"}.get(kind, "shaanxi-degree")
