"""Case options, validated by the settings loader: store, worker schedule, callbacks, events.

Imports nothing of the gateway but ``gateway.secrets``: ``gateway.settings`` imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.secrets import SecretRef

PartOutcome = Literal[
    "forwarded", "processing", "done", "supplement_requested", "not_accepted", "returned"
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CaseStoreSettings(_Model):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    """sqlite: one file in the data directory, one dispatcher; postgres: shared by instances."""
    path: Path = Path("cases.db")
    """SQLite file, relative to the data directory."""
    dsn: str | None = None
    """PostgreSQL DSN without a password: the password comes from PGPASSWORD or a .pgpass
    file (asyncpg reads both), never from configuration."""
    schema_name: str = Field("public", alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """PostgreSQL schema holding the case tables."""
    pool_size: int = Field(10, ge=1, le=100)
    """PostgreSQL connections per instance."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> Self:
        if self.backend == "postgres" and not self.dsn:
            raise ValueError("a postgres case store needs a 'dsn'")
        return self


class DeliverySettings(_Model):
    max_attempts: int = Field(8, ge=1, le=100)
    """Deliveries tried (each one a full pass through the route's stack) before dead-letter."""
    initial_backoff: float = Field(2.0, ge=0)
    """Seconds before the second delivery; doubled after each failure."""
    max_backoff: float = Field(600.0, ge=0)
    """Longest wait between two deliveries."""
    jitter: float = Field(0.5, ge=0)
    """Random extra wait, up to this many seconds, so instances do not retry in lockstep."""
    lease: float = Field(60.0, gt=0)
    """Seconds a worker owns a claimed entry; when it dies, another takes over after this.
    Keep it above the slowest system's deadline."""
    batch: int = Field(32, ge=1, le=1000)
    """Entries claimed at once."""
    poll_interval: float = Field(0.5, gt=0)
    """Seconds between claims when the outbox is idle."""
    status_poll_interval: float = Field(60.0, gt=0)
    """Seconds between status queries to systems that do not call back."""
    max_status_polls: int = Field(1000, ge=1)
    """Status queries per part before the part is left to callbacks and operators."""


class CallbackSystem(_Model):
    secret: SecretRef
    """HMAC-SHA256 key the system signs its callbacks with ({env: NAME} or {file: PATH})."""


class EventSinkSettings(_Model):
    kind: Literal["none", "jsonl", "webhook"] = "jsonl"
    """jsonl: append to a file in the data directory (demo); webhook: POST each event."""
    path: Path = Path("case-events.jsonl")
    """JSON Lines file, relative to the data directory."""
    url: str | None = Field(None, pattern=r"^https?://")
    """Webhook address."""
    secret: SecretRef | None = None
    """HMAC-SHA256 key to sign webhook bodies with (header X-Tongban-Signature)."""
    timeout: float = Field(5.0, gt=0)
    """Seconds one webhook delivery may take."""

    @model_validator(mode="after")
    def _url_for_webhook(self) -> Self:
        if self.kind == "webhook" and not self.url:
            raise ValueError("a webhook event sink needs a 'url'")
        return self


class CaseSettings(_Model):
    enabled: bool = True
    """Serve the case API and run a delivery worker in this instance."""
    store: CaseStoreSettings = CaseStoreSettings()
    """Where cases and their outbox live."""
    delivery: DeliverySettings = DeliverySettings()
    """Persisted retry schedule of the delivery worker."""
    callbacks: dict[str, CallbackSystem] = Field(default_factory=dict)
    """system id → the key it signs ``POST /api/v1/callbacks/{system}`` with."""
    events: EventSinkSettings = EventSinkSettings()
    """Where status-change and closure (好差评) events go."""
    worker: bool = True
    """Run the delivery worker here (off: this instance only takes cases in)."""


class CaseOperation(_Model):
    """How a submit operation's answers move a case on (block ``case:`` of an operation)."""

    status_field: str | None = None
    """Field of the canonical answer holding the back-end's status."""
    status_values: dict[str, PartOutcome] = Field(default_factory=dict)
    """Back-end status value → case step; unlisted values mean 'forwarded'."""
    poll_with: str | None = None
    """Query operation of the same service that answers the status later (polled on a
    schedule when the system does not call back)."""
    poll_input: dict[str, str] = Field(default_factory=dict)
    """Canonical input of ``poll_with``: field → dotted path in the submission's answer."""
    reconcile_with: str | None = None
    """Query operation that looks a submission up by idempotency key: input
    ``{"idempotency_key": ...}``, answer ``{"found": bool, ...}``. Required for a case to leave
    ``outcome_unknown`` when a non-idempotent submission may have been processed."""
    supplement_field: str | None = None
    """Field of the canonical answer (dotted path) holding what a 补齐补正 request asks for:
    ``{"materials": [code, ...], "message": str, "deadline": str}``, all optional."""
    supplement_with: str | None = None
    """Submit operation of the same service that takes the applicant's supplement to the
    back-end; never a case of its own. Input: ``supplement_input`` plus ``sequence``,
    ``materials`` ([{code, ref, digest}]) and ``note``; answered like this operation."""
    supplement_input: dict[str, str] = Field(default_factory=dict)
    """Fields of ``supplement_with``'s input taken from the part's answer: field → dotted path
    (the back-end's application number, say)."""


def case_reference_problems(operations: Mapping[str, Any]) -> list[str]:
    """Problems with the ``case`` blocks of one service's operations: every operation they name
    must exist and be a query (the settings loader reports them with the file and entry)."""
    problems: list[str] = []
    for name, operation in operations.items():
        case = getattr(operation, "case", None)
        if case is None:
            continue
        if getattr(operation, "kind", None) != "submit":
            problems.append(f"operations.{name}.case: only a submit operation becomes a case")
        for field_name in ("poll_with", "reconcile_with"):
            ref = getattr(case, field_name)
            if ref is None:
                continue
            target = operations.get(ref)
            if target is None:
                problems.append(f"operations.{name}.case.{field_name}: no operation {ref!r}")
            elif getattr(target, "kind", None) == "submit":
                problems.append(f"operations.{name}.case.{field_name}: {ref!r} is not a query")
        ref = case.supplement_with
        if ref is not None:
            target = operations.get(ref)
            where = f"operations.{name}.case.supplement_with"
            if target is None:
                problems.append(f"{where}: no operation {ref!r}")
            elif getattr(target, "kind", None) != "submit" or ref == name:
                problems.append(f"{where}: {ref!r} is not another submit operation")
            elif getattr(target, "case", None) is not None:
                problems.append(f"{where}: {ref!r} has a case block of its own")
    return problems


def supplement_operations(operations: Mapping[str, Any]) -> frozenset[str]:
    """The operations that only carry supplements (补齐补正) of another operation's cases."""
    return frozenset(
        ref
        for operation in operations.values()
        if (case := getattr(operation, "case", None)) is not None
        and (ref := case.supplement_with) is not None
    )
