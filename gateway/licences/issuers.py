"""Calls to the issuers' licence systems through the gateway's own call stack.

An issuer whose messages differ from the gateway's shapes (docs/licences.md) declares a step
as ``{operation, request, response}`` with mappings, as a route does; they are applied here.

Each (licence type, issuing province, step) gets the stack a routed call gets (audit records
before and after, retries of what is safe, the system's breaker, concurrency limit and
timeouts), built once at start-up over the system's open adapter. Search, fetch and verify only
read, so their retry policy is ``safe``.

Must not: import aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from gateway.adapter import Call, CallContext
from gateway.audit.calls import CallAuditor, RouteAudit
from gateway.licences.config import OPERATIONS, LicenceCatalogue, step_of
from gateway.licences.verify import IssuerStep
from gateway.mapping import FieldMapping, compile_mapping
from gateway.pipeline import CallTrace, Next, Sleep, SystemRuntime, build_stack


class StackIssuerCall:
    """``IssuerCall`` over the open systems (``GatewayState.systems``)."""

    def __init__(
        self,
        catalogue: LicenceCatalogue,
        systems: Mapping[str, SystemRuntime],
        *,
        auditor: CallAuditor | None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._stacks: dict[tuple[str, str, str], tuple[str, FieldMapping, FieldMapping, Next]] = {}
        for code, licence in catalogue.licence_types.items():
            for province in licence.issued_in:
                sid, operations = catalogue.system_for(code, province)
                runtime = systems[sid]
                for step in OPERATIONS:
                    settings = step_of(getattr(operations, step))
                    operation = settings.operation
                    route = RouteAudit(
                        service=f"licence:{code}",
                        operation=step,
                        system=sid,
                        system_operation=operation,
                        mode="required",
                    )
                    stack = build_stack(
                        runtime,
                        policy="safe",
                        sleep=sleep,
                        audit=(auditor, route) if auditor is not None else None,
                    )
                    self._stacks[(province, code, step)] = (
                        operation,
                        compile_mapping(settings.request),
                        compile_mapping(settings.response),
                        stack,
                    )

    async def __call__(
        self,
        province: str,
        licence_type: str,
        step: IssuerStep,
        payload: Mapping[str, Any],
        context: CallContext,
        trace: CallTrace | None = None,
    ) -> Any:
        operation, request, response, stack = self._stacks[(province, licence_type, step)]
        call = Call(operation, request.apply(payload), context)
        reply = await stack(call, trace if trace is not None else CallTrace())
        return response.apply(reply.data)
