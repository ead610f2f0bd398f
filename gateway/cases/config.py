"""Case options, validated by the settings loader: store, worker schedule, callbacks, events.

Imports nothing of the gateway but ``gateway.secrets`` and ``gateway.subject_config``:
``gateway.settings`` imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.secrets import SecretRef
from gateway.subject_config import SubjectField

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
    compensate_with: str | None = None
    """Submit operation of the same service that undoes this one (a linked case whose required
    part failed unwinds what was accepted); sent once per part under its own key. Its retry
    policy must allow a resend (``safe`` or ``idempotent-with-key``)."""
    compensate_input: dict[str, str] = Field(default_factory=dict)
    """Canonical input of ``compensate_with``: field → dotted path in this part's answer."""


class PartTitle(_Model):
    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class LinkedPart(_Model):
    """One part of a linked case (联动办理): its operation, province, dependencies and input."""

    title: PartTitle | None = None
    """How the part is named to people (three parts may share one operation: electricity,
    water and gas transfers); default: its operation's name."""
    operation: str
    """Operation of the service this part submits (or queries, for a check)."""
    handling: str | None = None
    """GB/T 2260 code of the province that handles this part."""
    handling_from: str | None = None
    """Or: dotted path in the application data that holds the province code."""
    after: list[str] = Field(default_factory=list)
    """Parts that must be done before this one is sent; their results feed ``input``."""
    input: dict[str, Any] | None = None
    """Mapping (gateway.mapping syntax) from ``data.<path>`` (the application) and
    ``parts.<name>.<path>`` (the answer of a part it waits for) to this part's input; absent:
    the application data as it is."""
    required: bool = True
    """A required part that fails stops the case and unwinds the parts already accepted; an
    optional one only cancels the parts that wait for it."""

    @model_validator(mode="after")
    def _one_province_source(self) -> Self:
        if (self.handling is None) == (self.handling_from is None):
            raise ValueError("give exactly one of 'handling' and 'handling_from'")
        return self


class LinkedCase(_Model):
    """A service whose cases are several linked parts (一件事: 联动办理), declared once."""

    input_schema: dict[str, Any]
    """JSON Schema (2020-12) of the application's ``data`` (every part's input comes from it
    and from the answers of the parts it waits for)."""
    parts: dict[str, LinkedPart] = Field(min_length=2, max_length=20)
    """Parts by name, in the order they are numbered and shown."""
    subject: Literal["caller", "public"] | tuple[SubjectField, ...] | None = None
    """Whose data the application is about (gateway/subjects.py): fields of ``input_schema``
    naming the applicants (seller and buyer, say), ``caller`` or ``public``."""


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
        problems += _compensation_problems(name, case, operations)
    return problems


def _compensation_problems(name: str, case: Any, operations: Mapping[str, Any]) -> list[str]:
    ref = case.compensate_with
    if ref is None:
        return []
    where = f"operations.{name}.case.compensate_with"
    target = operations.get(ref)
    if target is None:
        return [f"{where}: no operation {ref!r}"]
    if getattr(target, "kind", None) != "submit" or ref == name:
        return [f"{where}: {ref!r} is not another submit operation"]
    if getattr(target, "retry", None) == "never":
        return [f"{where}: {ref!r} has retry 'never': an undo must be safe to send again"]
    if getattr(target, "case", None) is not None:
        return [f"{where}: {ref!r} has a case block of its own"]
    return []


def carrier_operations(operations: Mapping[str, Any]) -> frozenset[str]:
    """The operations that only carry another operation's supplements (补齐补正) or undos
    (``compensate_with``): never a case, or a part, of their own."""
    return frozenset(
        ref
        for operation in operations.values()
        if (case := getattr(operation, "case", None)) is not None
        for ref in (case.supplement_with, case.compensate_with)
        if ref is not None
    )
