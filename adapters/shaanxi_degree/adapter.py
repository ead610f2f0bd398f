"""Shaanxi degree verification: the shared REST adapter plus the system's own answer envelope.

The system answers HTTP 200 even when it fails, as ``{"code", "msg", "result"}`` where ``code``
"0000" means success and ``result`` is a JSON document inside a JSON string. A declarative
mapping cannot raise on a code or parse a string twice, so this adapter wraps ``RestAdapter``
and post-processes its reply; transport, auth, limits and error translation stay in
``adapters.rest``. ``msg`` is never copied into an error: it may name the holder.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from adapters.rest import RestAdapter, build_rest_adapter
from gateway.adapter import (
    BackendBadResponse,
    BackendRejected,
    BackendServerError,
    Call,
    Reply,
    SystemSpec,
)

SUCCESS = "0000"
HOLDER_NOT_FOUND = "1001"


def unwrap_answer(data: Any, system: str) -> Any:
    """The ``result`` of a successful answer, parsed; an error for any other ``code``."""
    code = data.get("code") if isinstance(data, dict) else None
    if not isinstance(code, str):
        raise BackendBadResponse(
            f"System {system} sent an answer without a status code.", reached_backend=True
        )
    if code == HOLDER_NOT_FOUND:
        raise BackendRejected(
            f"System {system} has no record of this degree holder.",
            reached_backend=True,
            system_code=code,
        )
    if code != SUCCESS:
        raise BackendServerError(
            f"System {system} reported error code {code[:16]}.",
            reached_backend=True,
            system_code=code[:16],
        )
    result = data.get("result")
    if result is None or result == "":
        return None
    if not isinstance(result, str):
        raise BackendBadResponse(
            f"System {system} sent a result that is not a JSON string.", reached_backend=True
        )
    try:
        return json.loads(result)
    except ValueError:
        raise BackendBadResponse(
            f"System {system} sent a result that is not valid JSON.", reached_backend=True
        ) from None


class ShaanxiDegreeAdapter:
    """REST underneath; only the answer envelope is handled here."""

    def __init__(self, rest: RestAdapter, system: str) -> None:
        self._rest = rest
        self._system = system

    async def call(self, call: Call) -> Reply:
        reply = await self._rest.call(call)
        # The digests stay those of the wire bytes; only the data is unwrapped.
        return dataclasses.replace(reply, data=unwrap_answer(reply.data, self._system))

    async def aclose(self) -> None:
        await self._rest.aclose()


class ShaanxiDegreeAdapterFactory:
    """Entry point ``shaanxi_degree``: the REST adapter's configuration, checked the same way."""

    def check(self, spec: SystemSpec) -> None:
        build_rest_adapter.check(spec)

    async def open(self, spec: SystemSpec) -> ShaanxiDegreeAdapter:
        return ShaanxiDegreeAdapter(await build_rest_adapter.open(spec), spec.id)


build_shaanxi_degree_adapter = ShaanxiDegreeAdapterFactory()
