"""Whether a failed call through the call stack certainly never reached its system.

A counted grant use (``max_uses``) is spent only by a request that may have been handled: a
routed call (gateway/http/handlers.py) and a licence verification at its issuer
(gateway/licences/verify.py) both go through the stack gateway/pipeline.py builds, and both ask
this one rule whether a use spent for a call that failed can be given back.

Must not: import aiohttp.
"""

from __future__ import annotations

import asyncio

from gateway.errors import AuditUnavailable, BackendError, SystemBusy
from gateway.pipeline import CallTrace

__all__ = ["never_sent"]


def never_sent(error: BaseException, trace: CallTrace) -> bool:
    """Whether a call that failed with ``error`` certainly never reached the back-end, so that a
    counted grant use spent for it can be given back. Only what the error and the trace prove:
    no attempt may have reached the back-end (``trace.reached``: every attempt failed before
    its request left, e.g. connection refused, or never got to the adapter: the circuit open,
    no free slot to the system), or a required request record that could not be written
    before any attempt (AuditUnavailable). Anything else (a timeout, an answer, an error of
    unknown extent) keeps the use spent.

    A call cancelled on the way (its handler cancelled: the client gone with handler
    cancellation on, the server stopping) is decided by the trace alone: cancelled before any
    attempt handed its request to the adapter (waiting for its request record, a free slot, a
    retry's backoff after attempts that sent nothing), it was never sent; cancelled while an
    attempt was on the wire, it may have been handled."""
    if trace.reached:
        return False
    if isinstance(error, asyncio.CancelledError):
        return True
    if isinstance(error, BackendError):
        return not error.reached_backend
    if isinstance(error, SystemBusy):
        return True
    if isinstance(error, AuditUnavailable):
        return trace.attempts == 0
    return False
