"""A linked service (联动办理) and a scriptable provincial system, for the linked-case tests.

Each part's behaviour is scripted by part number: accept, refuse, fail for a while, stay down,
or process and lose the answer. The system stores submissions and undos by idempotency key, so
a resend is never a second submission, and it records what it processed, in order.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.adapter import Call, FakeAdapter, Reply
from gateway.breaker import CircuitBreaker
from gateway.catalog import Catalog
from gateway.errors import BackendRejected, BackendTimeout, BackendUnavailable
from gateway.pipeline import SystemRuntime, build_stack
from gateway.settings import (
    GatewaySettings,
    RouteSettings,
    ServiceSettings,
    Settings,
    SystemSettings,
)

UNDOABLE = "file"
"""A submission its system can undo (``compensate_with: undo``)."""
FINAL = "file-final"
"""A submission nobody can undo."""
CHECK = "check"
"""A query used as a part: its answer is its result."""


def _op(kind: str, retry: str, case: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "name": {"zh": kind, "en": kind},
        "kind": kind,
        "retry": retry,
        "input_schema": {"type": "object"},
    }
    if case is not None:
        op["case"] = case
    return op


_SUBMIT_CASE = {
    "status_field": "status",
    "status_values": {"DONE": "done", "REJ": "not_accepted"},
    "reconcile_with": "lookup",
}


@dataclass(frozen=True)
class PartSpec:
    name: str
    operation: str = UNDOABLE
    after: tuple[str, ...] = ()
    required: bool = True


def linked_service(parts: Sequence[PartSpec]) -> dict[str, Any]:
    return {
        "name": {"zh": "联动测试", "en": "Linked test"},
        "modes": ["online", "joint"],
        "min_level": "L2",
        "operations": {
            UNDOABLE: _op(
                "submit",
                "never",
                {**_SUBMIT_CASE, "compensate_with": "undo", "compensate_input": {"ref": "ref"}},
            ),
            FINAL: _op("submit", "never", dict(_SUBMIT_CASE)),
            CHECK: _op("query", "safe"),
            "lookup": _op("query", "safe"),
            "undo": _op("submit", "idempotent-with-key"),
        },
        "linked": {
            "input_schema": {"type": "object"},
            "parts": {
                p.name: {
                    "operation": p.operation,
                    "handling": "61",
                    "after": list(p.after),
                    "required": p.required,
                    # Each part receives the reference of every part it waits for.
                    "input": {
                        "applicant": "data.applicant",
                        **{f"refs.{d}": f"parts.{d}.ref" for d in p.after},
                    },
                }
                for p in parts
            },
        },
    }


@dataclass
class ScriptedSystem:
    """The handling province's systems, answering by the part a call is for."""

    script: Mapping[int, Any] = field(default_factory=dict)
    """part number → "accept" | "refuse" | "down" | "lost" | ("flaky", n)."""
    undo_flaky: int = 0
    """The first n undos fail before reaching the system."""
    processed: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Submissions taken, by idempotency key."""
    undone: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Undos taken, by idempotency key."""
    log: list[tuple[str, int]] = field(default_factory=list)
    """(operation, part) of everything processed, in order."""
    calls: Counter[tuple[str, int]] = field(default_factory=Counter)
    inputs: dict[int, Any] = field(default_factory=dict)
    """The payload each part was last sent with."""
    _tries: Counter[int] = field(default_factory=Counter)

    @staticmethod
    def _part(key: str) -> int:
        return int(key.split(".")[1])

    def handle(self, call: Call) -> Reply:
        key = call.context.idempotency_key or ""
        if call.operation == "lookup":
            found = self.processed.get(call.payload["idempotency_key"])
            return Reply({"found": found is not None, **(found or {})})
        if call.operation == "undo":
            part = self._part(key)
            self.calls["undo", part] += 1
            if self.undo_flaky:
                self.undo_flaky -= 1
                raise BackendUnavailable("down", reached_backend=False)
            if key not in self.undone:
                self.undone[key] = {"undone": call.payload.get("ref")}
                self.log.append(("undo", part))
            return Reply(dict(self.undone[key]))
        return self._submit(call, key, self._part(key))

    def _submit(self, call: Call, key: str, part: int) -> Reply:
        self.calls[call.operation, part] += 1
        self.inputs[part] = call.payload
        behaviour = self.script.get(part, "accept")
        self._tries[part] += 1
        if behaviour == "refuse":
            raise BackendRejected("refused", reached_backend=True)
        if behaviour == "down":
            raise BackendUnavailable("down", reached_backend=False)
        if isinstance(behaviour, tuple) and self._tries[part] <= behaviour[1]:
            raise BackendUnavailable("flaky", reached_backend=False)
        if call.operation == CHECK:
            self.log.append((CHECK, part))
            return Reply({"ref": f"C{part}", "ok": True})
        if key not in self.processed:
            self.processed[key] = {"ref": f"R{part}", "status": "DONE"}
            self.log.append(("submit", part))
        if behaviour == "lost" and self._tries[part] == 1:
            raise BackendTimeout("no answer", reached_backend=True)
        return Reply(dict(self.processed[key]))


def linked_settings(tmp_path: Path, parts: Sequence[PartSpec]) -> Settings:
    system = SystemSettings.model_validate(
        {
            "name": {"zh": "61", "en": "61"},
            "province": "61",
            "protocol": "rest",
            "address": "http://127.0.0.1:9",
            "retry": {"max_attempts": 1, "initial_backoff": 0, "jitter": 0},
            "breaker": {"failure_threshold": 100_000},
        }
    )
    routes = tuple(
        RouteSettings.model_validate(
            {
                "service": "linked",
                "operation": op,
                "receiving": ["63"],
                "handling": "61",
                "system": "sys-61",
                "system_operation": op,
            }
        )
        for op in (UNDOABLE, FINAL, CHECK, "lookup", "undo")
    )
    return Settings(
        tmp_path,
        GatewaySettings.model_validate({"data_dir": str(tmp_path)}),
        {"sys-61": system},
        {"linked": ServiceSettings.model_validate(linked_service(parts))},
        routes,
    )


def linked_catalog(tmp_path: Path, parts: Sequence[PartSpec], system: ScriptedSystem) -> Catalog:
    settings = linked_settings(tmp_path, parts)
    runtime = SystemRuntime(
        "sys-61",
        settings.systems["sys-61"],
        FakeAdapter(system.handle),
        CircuitBreaker("sys-61", failure_threshold=100_000, reset_timeout=1.0),
        asyncio.Semaphore(64),
    )

    async def no_sleep(_: float) -> None:
        await asyncio.sleep(0)

    return Catalog.build(
        settings,
        lambda route, operation: build_stack(runtime, policy=operation.retry, sleep=no_sleep),
    )
