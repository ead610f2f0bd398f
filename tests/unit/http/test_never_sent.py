"""Which failed routed calls certainly never reached the back-end (a counted grant use spent for
them is given back), from the error and the call's trace alone; anything else keeps it spent."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import (
    AuditUnavailable,
    BackendFault,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    CircuitOpen,
    InternalError,
    RateLimited,
    SystemBusy,
)
from gateway.pipeline import CallTrace
from gateway.unsent import never_sent

REFUSED = BackendUnavailable("connection refused", reached_backend=False)


def trace(attempts: int, *, reached: bool = False) -> CallTrace:
    return CallTrace(attempts=attempts, reached=reached)


@pytest.mark.parametrize(
    ("error", "attempts", "reached", "unsent"),
    [
        (REFUSED, 1, False, True),  # connection refused on the only attempt
        (REFUSED, 3, False, True),  # refused on every attempt: none left
        (REFUSED, 2, True, False),  # an earlier attempt may have reached it
        (CircuitOpen("sx-housing", retry_after=5.0), 1, False, True),
        (CircuitOpen("sx-housing", retry_after=5.0), 3, True, False),
        (SystemBusy("no free slot"), 1, False, True),  # raised in its attempt before the adapter
        (SystemBusy("no free slot"), 2, True, False),
        (AuditUnavailable("request record not written"), 0, False, True),  # before any attempt
        (AuditUnavailable("outcome record not written"), 1, True, False),  # after the call
        (BackendTimeout("no answer", reached_backend=True), 1, True, False),
        (BackendServerError("HTTP 503", reached_backend=True), 1, True, False),
        (BackendFault("fault", fault_side="server"), 1, True, False),
        (InternalError("something else"), 0, False, False),  # unknown: the safe side
        (RateLimited("slow down", retry_after=1), 0, False, False),
        # Its handler cancelled (the client gone, the server stopping): the trace alone.
        (asyncio.CancelledError(), 0, False, True),  # at its request record
        (asyncio.CancelledError(), 1, False, True),  # waiting for a slot
        (asyncio.CancelledError(), 2, False, True),  # backing off after a refused attempt
        (asyncio.CancelledError(), 1, True, False),  # an attempt on the wire
        (asyncio.CancelledError(), 3, True, False),  # an earlier attempt may have reached it
    ],
)
def test_only_what_the_error_and_trace_prove_was_not_sent(
    error: BaseException, attempts: int, reached: bool, unsent: bool
) -> None:
    assert never_sent(error, trace(attempts, reached=reached)) is unsent
