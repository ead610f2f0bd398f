"""The call context of the call-stack tests: one routed call, its principal acting for
itself, between two demo provinces."""

from __future__ import annotations

from gateway.adapter import CallContext

CONTEXT = CallContext(
    request_id="r1",
    purpose="test",
    service="svc",
    receiving_province="63",
    handling_province="61",
    principal="p",
    actor="p",
    level="L3",
)
