"""A small catalogue with fake provincial systems, for the intake and worker tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.adapter import Call, FakeAdapter, Reply
from gateway.breaker import CircuitBreaker
from gateway.catalog import Catalog
from gateway.errors import BackendError, BackendRejected, BackendTimeout, BackendUnavailable
from gateway.pipeline import SystemRuntime, build_stack
from gateway.settings import (
    GatewaySettings,
    RouteSettings,
    ServiceSettings,
    Settings,
    SystemSettings,
)

STATUS_VALUES = {
    "DONE": "done",
    "WIP": "processing",
    "REJ": "not_accepted",
    "SUP": "supplement_requested",
}
# 补齐补正: what a "SUP" answer asks for, and the operation that takes the supplement.
SUPPLEMENT_BLOCK = {
    "supplement_field": "supplement",
    "supplement_with": "supplement",
    "supplement_input": {"ref": "ref"},
}
CASE_BLOCK = {
    "status_field": "status",
    "status_values": STATUS_VALUES,
    "poll_with": "status",
    "poll_input": {"ref": "ref"},
    **SUPPLEMENT_BLOCK,
}


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


SERVICE: dict[str, Any] = {
    "name": {"zh": "测试事项", "en": "Test filing"},
    "modes": ["online", "proxy", "joint"],
    "min_level": "L2",
    "subject": "caller",  # the test data names no one
    "materials": [
        {"code": "id-card", "name": {"zh": "身份证", "en": "ID"}, "source": "e-licence"},
        {"code": "photo", "name": {"zh": "照片", "en": "Photo"}, "required": False},
    ],
    "operations": {
        "apply": _op("submit", "idempotent-with-key", CASE_BLOCK),
        "apply-once": _op(
            "submit",
            "never",
            {
                "status_field": "status",
                "status_values": STATUS_VALUES,
                "reconcile_with": "lookup",
                **SUPPLEMENT_BLOCK,
                "supplement_with": "supplement-once",
            },
        ),
        "status": _op("query", "safe"),
        "lookup": _op("query", "safe"),
        "supplement": _op("submit", "idempotent-with-key"),
        "supplement-once": _op("submit", "never"),
    },
}
SUPPLEMENT_OPERATIONS = ("supplement", "supplement-once")


@dataclass
class FakeProvince:
    """A provincial system: stores submissions by idempotency key; trouble is injectable."""

    province: str
    answer: str = "WIP"
    submissions: dict[str, dict[str, Any]] = field(default_factory=dict)
    sends: list[Call] = field(default_factory=list)
    fail_next: list[BackendError] = field(default_factory=list)
    process_then_fail: int = 0
    """The next n submissions are stored, then answered with a timeout (outcome unknown)."""
    asks: dict[str, Any] | None = None
    """补齐补正: what a "SUP" answer asks for (its ``supplement`` field)."""
    supplements: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Supplements taken, by idempotency key (a resend with the key is the same supplement)."""
    supplement_sends: list[Call] = field(default_factory=list)
    after_supplement: str = "WIP"
    """The status an application moves to once a supplement is taken."""

    def handle(self, call: Call) -> Reply:
        if call.operation in ("supplement", "supplement-once"):
            return self._supplement(call)
        if call.operation in ("apply", "apply-once"):
            self.sends.append(call)
            if self.fail_next:
                raise self.fail_next.pop(0)
            key = call.context.idempotency_key or ""
            entry = self.submissions.setdefault(
                key, {"ref": f"R{self.province}-{len(self.submissions) + 1}", "status": self.answer}
            )
            if entry["status"] == "SUP" and self.asks is not None:
                entry["supplement"] = dict(self.asks)
            if self.process_then_fail:
                self.process_then_fail -= 1
                raise BackendTimeout("no answer", reached_backend=True)
            return Reply(dict(entry))
        if call.operation == "lookup":
            key = call.payload["idempotency_key"]
            found = self.submissions.get(key) or self.supplements.get(key)
            return Reply({"found": found is not None, **(found or {})})
        if call.operation == "status":
            for entry in self.submissions.values():
                if entry["ref"] == call.payload["ref"]:
                    return Reply(dict(entry))
            raise BackendRejected("unknown ref", reached_backend=True)
        raise AssertionError(call.operation)

    def _supplement(self, call: Call) -> Reply:
        self.supplement_sends.append(call)
        if self.fail_next:
            raise self.fail_next.pop(0)
        key = call.context.idempotency_key or ""
        if key not in self.supplements:
            entry = next(e for e in self.submissions.values() if e["ref"] == call.payload["ref"])
            entry["status"] = self.after_supplement
            entry.pop("supplement", None)
            self.supplements[key] = entry
        if self.process_then_fail:
            self.process_then_fail -= 1
            raise BackendTimeout("no answer", reached_backend=True)
        return Reply(dict(self.supplements[key]))


def settings(tmp_path: Path, provinces: tuple[str, ...] = ("61", "62")) -> Settings:
    systems = {
        f"sys-{p}": SystemSettings.model_validate(
            {
                "name": {"zh": p, "en": p},
                "province": p,
                "protocol": "rest",
                "address": "http://127.0.0.1:9",
                "retry": {"max_attempts": 1, "initial_backoff": 0, "jitter": 0},
                "breaker": {"failure_threshold": 1000},
            }
        )
        for p in provinces
    }
    routes = tuple(
        RouteSettings.model_validate(
            {
                "service": "filing",
                "operation": op,
                "receiving": ["63", "61"],
                "handling": p,
                "system": f"sys-{p}",
                "system_operation": op,
            }
        )
        for p in provinces
        for op in ("apply", "apply-once", "status", "lookup", *SUPPLEMENT_OPERATIONS)
    )
    return Settings(
        tmp_path,
        GatewaySettings.model_validate({"data_dir": str(tmp_path)}),
        systems,
        {"filing": ServiceSettings.model_validate(SERVICE)},
        routes,
    )


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def build_catalog(
    tmp_path: Path, provinces: tuple[str, ...] = ("61", "62"), *, failure_threshold: int = 1000
) -> tuple[Catalog, dict[str, FakeProvince]]:
    config = settings(tmp_path, provinces)
    fakes = {p: FakeProvince(p) for p in provinces}
    runtimes = {
        sid: SystemRuntime(
            sid,
            system,
            FakeAdapter(fakes[system.province].handle),
            CircuitBreaker(sid, failure_threshold=failure_threshold, reset_timeout=3600.0),
            asyncio.Semaphore(8),
        )
        for sid, system in config.systems.items()
    }
    catalog = Catalog.build(
        config,
        lambda route, operation: build_stack(
            runtimes[route.system], policy=operation.retry, sleep=_no_sleep
        ),
    )
    return catalog, fakes


def unavailable() -> BackendUnavailable:
    return BackendUnavailable("down", reached_backend=False)


Clock = Callable[[], float]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
