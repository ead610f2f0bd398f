"""THE contract between the gateway and the adapters that speak to provincial systems.

An adapter turns one ``Call`` into one ``Reply`` over its transport, or raises one of the
``BackendError`` types re-exported here; it never retries, never sleeps and never decides policy.
Adapters import this module and nothing else of the gateway. The gateway finds adapter
factories by entry-point name (group ``tongban.adapters``) and never imports ``adapters/``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gateway.config_problems import nearest, suggestion, validation_problems
from gateway.errors import (
    BackendBadResponse,
    BackendError,
    BackendFault,
    BackendRateLimited,
    BackendRejected,
    BackendResponseTooLarge,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
)
from gateway.frozen import made_in_one_step

__all__ = [
    "Adapter",
    "AdapterConfigError",
    "AdapterFactory",
    "BackendBadResponse",
    "BackendError",
    "BackendFault",
    "BackendRateLimited",
    "BackendRejected",
    "BackendResponseTooLarge",
    "BackendServerError",
    "BackendTimeout",
    "BackendUnavailable",
    "Call",
    "CallContext",
    "ContractedFactory",
    "FakeAdapter",
    "OperationContract",
    "Reply",
    "Secret",
    "Shape",
    "SystemContract",
    "SystemSpec",
    "digest",
    "load_adapter_factory",
    "nearest",
    "suggestion",
    "validation_problems",
]


class Secret:
    """A secret value that never shows itself in a repr, a log line or an error."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """What an adapter knows about the one provincial system it talks to.

    ``auth``, ``options`` and ``operations`` are the adapter's own blocks: it validates them
    with its own model in ``AdapterFactory.check``. Secret values inside ``auth`` are already
    resolved from the environment or files into ``Secret`` objects.
    """

    id: str
    province: str
    address: str
    config_dir: Path
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    attempt_timeout: float | None = None
    """The hard cap the gateway puts on every call of the adapter (the system's
    ``timeouts.attempt``), started before the adapter is called; None when nothing caps the
    calls (an adapter used on its own). An adapter may leave out a timer of its own that cannot
    fire before this cap."""
    max_response_bytes: int = 1 << 20
    concurrency_limit: int = 32
    wsdl: str | None = None
    auth: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    operations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@made_in_one_step
@dataclass(frozen=True)
class CallContext:
    """Who asks, for whom, and why: forwarded to the back-end and recorded by the audit layer."""

    request_id: str
    purpose: str
    service: str
    receiving_province: str
    handling_province: str
    principal: str
    actor: str
    level: str
    case_id: str | None = None
    authorisation_ref: str | None = None
    """The id of the consent or delegation grant that covered the call, when one was needed."""
    idempotency_key: str | None = None
    identity_assertion: str | None = None
    client: str | None = None
    subjects: tuple[str, ...] = ()
    """Keys of the verified data subjects (gateway/subjects.py), for the audit record; never
    sent."""
    subject_hashes: str | None = None
    """The verified data subjects as the handling province names them, ``type:hash`` joined by
    commas (gateway/identity/subject_keys.py): sent beside the signed assertion, which carries
    the same, for back-ends that read headers only."""


@made_in_one_step
@dataclass(frozen=True)
class Call:
    """One operation on one system, with the payload already in the system's own shape."""

    operation: str
    payload: Mapping[str, Any]
    context: CallContext


@made_in_one_step
@dataclass(frozen=True)
class Reply:
    """The system's answer as data, plus digests of exactly what went over the wire."""

    data: Any
    status: int = 200
    request_digest: str | None = None
    response_digest: str | None = None


def digest(raw: bytes) -> str:
    """The digest recorded for a request or response body ('用而不存': the digest, not the body)."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class Adapter(Protocol):
    """One provincial system over one transport."""

    async def call(self, call: Call) -> Reply: ...

    async def aclose(self) -> None: ...


class AdapterConfigError(ValueError):
    """A system's adapter-specific block is wrong; ``field`` names where. ``others`` carries
    further problems found in the same check, so that one run reports them all."""

    def __init__(
        self, field_path: str, message: str, *, others: Sequence[AdapterConfigError] = ()
    ) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.message = message
        self.others = tuple(others)

    @classmethod
    def of(cls, problems: Sequence[AdapterConfigError]) -> AdapterConfigError:
        """One error carrying all of ``problems`` (at least one)."""
        first, *rest = problems
        return cls(first.field, first.message, others=[*first.others, *rest])

    def all(self) -> tuple[AdapterConfigError, ...]:
        return (self, *self.others)


@dataclass(frozen=True, slots=True)
class Shape:
    """What a message's data looks like, as far as a system's contract says.

    ``fields`` names an object's fields; None is a value (a string, a number). ``open`` marks
    content the contract leaves free (``xs:any``): any path below it may exist. ``repeated``
    marks an array of such items."""

    fields: Mapping[str, Shape] | None = None
    open: bool = False
    repeated: bool = False


@dataclass(frozen=True, slots=True)
class OperationContract:
    """The shapes of one operation's request payload and of its ``Reply.data``."""

    input: Shape
    output: Shape


@dataclass(frozen=True, slots=True)
class SystemContract:
    """A system's operations as its contract (a WSDL) describes them."""

    operations: Mapping[str, OperationContract]


@runtime_checkable
class ContractedFactory(Protocol):
    """An adapter factory whose systems publish a contract the configuration can be checked
    against (the SOAP adapter: the WSDL)."""

    def contract(self, spec: SystemSpec) -> SystemContract:
        """Load the contract (blocking file and CPU work: call it off the event loop) and check
        the system's blocks against it; raise ``AdapterConfigError`` with every problem."""


class AdapterFactory(Protocol):
    """Entry point object of an adapter plugin."""

    def check(self, spec: SystemSpec) -> None:
        """Validate the adapter's own blocks without any I/O; raise ``AdapterConfigError``."""

    async def open(self, spec: SystemSpec) -> Adapter:
        """Open clients and load contracts (off the event loop where that blocks)."""


@functools.cache
def _adapter_entry_points() -> dict[str, EntryPoint]:
    """The ``tongban.adapters`` group, read once per process: finding it reads the metadata of
    every installed distribution (about 12 ms), and each system's check and open asked again.
    A plugin installed later is found after a restart (a reload keeps the process)."""
    return {ep.name: ep for ep in entry_points(group="tongban.adapters")}


def load_adapter_factory(name: str) -> AdapterFactory:
    """Find the adapter plugin registered under ``name`` in the ``tongban.adapters`` group."""
    found = _adapter_entry_points().get(name)
    if found is None:
        known = sorted(_adapter_entry_points())
        raise AdapterConfigError("adapter", f"no adapter named {name!r}; installed: {known}")
    factory: AdapterFactory = found.load()
    return factory


Handler = Callable[[Call], "Reply | Awaitable[Reply]"]


class FakeAdapter:
    """A test double that answers each call with ``handler``, sync or async (like MockTransport)."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.calls: list[Call] = []
        self.closed = False

    async def call(self, call: Call) -> Reply:
        self.calls.append(call)
        result = self._handler(call)
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, Reply)
        await asyncio.sleep(0)
        return result

    async def aclose(self) -> None:
        self.closed = True
