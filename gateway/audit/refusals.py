"""Anonymous refusals in the audit trail: recorded one by one up to a budget, then summarised.

The trail is append-only: every record stays. A request nobody authenticated that is refused
(a callback with a bad signature, /admin without a valid token, a forged login callback) still
matters to an auditor, but if each wrote its own record anyone could fill the chain at the rate
they can send requests. So while a request is handled, the anonymous refusal records it makes
are held (``hold``: a context variable the HTTP layer opens per request); when the request is
done the HTTP layer asks the shared rate-limit store whether its source may still write records
one by one (``rate_limits.endpoints.refusal_records_per_source`` and ``..._total``). If so, they
go to the chain as they were; if not (or the store cannot say), they are only counted here, and
every ``refusal_summary_interval`` one summary record per kind goes to the chain:
``outcome: denied``, ``extra.summary: true``, ``extra.count``, ``extra.sources`` (how many
distinct sources), ``extra.window_s``. The trail keeps showing that refusals happened, how many
and of what kind, at a bounded number of records per minute whatever the traffic.

"Anonymous" is an event with ``outcome == "denied"`` and neither ``principal`` nor ``actor``:
a refusal of someone the gateway identified is recorded in full (they are accountable, and
their /api calls are rate-limited per person already).

Must not: import aiohttp; keep source addresses (only a count of distinct digests, per interval).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Final

from gateway.audit.record import AuditEvent, EventType


class _Held(list[AuditEvent]):
    """The refusals one request holds; closed when the request is done, so a task it started
    (which inherits the context) records its own refusals as usual afterwards."""

    open = True


_HELD: ContextVar[_Held | None] = ContextVar("tongban_held_refusals", default=None)
SUMMARY_OPERATION: Final = "refusals_summarised"


def is_anonymous_refusal(event: AuditEvent) -> bool:
    return event.outcome == "denied" and event.principal is None and event.actor is None


def hold(event: AuditEvent) -> bool:
    """Keep ``event`` for its request's decision instead of writing it now; False when it is not
    an anonymous refusal or no request is collecting (then it is written as usual)."""
    held = _HELD.get()
    if held is None or not held.open or not is_anonymous_refusal(event):
        return False
    held.append(event)
    return True


class collecting:  # lower case: used as the function it was, ``with collecting() as held``
    """Collect the anonymous refusal records made inside the block (one request). A class
    rather than a generator context manager: every request enters one, and a generator's
    wrapper costs several Python calls more on the way in and out."""

    __slots__ = ("_held", "_token")
    _held: _Held
    _token: Token[_Held | None]

    def __enter__(self) -> list[AuditEvent]:
        held = self._held = _Held()
        self._token = _HELD.set(held)
        return held

    def __exit__(self, *exc_info: object) -> None:
        self._held.open = False
        _HELD.reset(self._token)


_Kind = tuple[str, str | None, str | None, str | None, str | None]


@dataclass
class RefusalSummary:
    """Refusals counted instead of recorded since the last summary."""

    counts: Counter[_Kind] = field(default_factory=Counter)
    sources: dict[_Kind, set[str]] = field(default_factory=dict)

    def count(self, events: list[AuditEvent], source: str) -> None:
        digest = hashlib.blake2b(source.encode(), digest_size=8).hexdigest()
        for event in events:
            kind: _Kind = (
                event.type.value,
                event.operation,
                event.system,
                event.client,
                event.error_code,
            )
            self.counts[kind] += 1
            self.sources.setdefault(kind, set()).add(digest)

    @property
    def pending(self) -> int:
        return sum(self.counts.values())

    def drain(self, window_s: float) -> list[AuditEvent]:
        """One summary record per kind counted since the last drain; the counts start again."""
        events = [
            AuditEvent(
                type=EventType(kind[0]),
                operation=SUMMARY_OPERATION if kind[1] is None else kind[1],
                system=kind[2],
                client=kind[3],
                error_code=kind[4],
                outcome="denied",
                extra={
                    "summary": True,
                    "count": count,
                    "sources": len(self.sources.get(kind, ())),
                    "window_s": int(window_s),
                },
            )
            for kind, count in sorted(self.counts.items(), key=lambda kv: str(kv[0]))
        ]
        self.counts.clear()
        self.sources.clear()
        return events
