"""Which failed routed calls certainly never reached the back-end (a counted grant use spent for
them is given back), from the error and the call's trace alone; anything else keeps it spent."""

from __future__ import annotations

import pytest

from gateway.errors import (
    AuditUnavailable,
    BackendFault,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    CircuitOpen,
    GatewayError,
    InternalError,
    RateLimited,
    SystemBusy,
)
from gateway.pipeline import CallTrace
from gateway.unsent import never_sent

REFUSED = BackendUnavailable("connection refused", reached_backend=False)


def trace(attempts: int) -> CallTrace:
    return CallTrace(attempts=attempts)


@pytest.mark.parametrize(
    ("error", "attempts", "unsent"),
    [
        (REFUSED, 1, True),  # connection refused on the only attempt
        (REFUSED, 2, False),  # an earlier attempt may have reached it
        (CircuitOpen("sx-housing", retry_after=5.0), 1, True),
        (CircuitOpen("sx-housing", retry_after=5.0), 3, False),
        (SystemBusy("no free slot"), 1, True),  # raised in its attempt before the adapter
        (SystemBusy("no free slot"), 2, False),
        (AuditUnavailable("request record not written"), 0, True),  # before any attempt
        (AuditUnavailable("outcome record not written"), 1, False),  # after the call
        (BackendTimeout("no answer", reached_backend=True), 1, False),
        (BackendServerError("HTTP 503", reached_backend=True), 1, False),
        (BackendFault("fault", fault_side="server"), 1, False),
        (InternalError("something else"), 0, False),  # unknown: the safe side
        (RateLimited("slow down", retry_after=1), 0, False),
    ],
)
def test_only_what_the_error_and_trace_prove_was_not_sent(
    error: GatewayError, attempts: int, unsent: bool
) -> None:
    assert never_sent(error, trace(attempts)) is unsent
