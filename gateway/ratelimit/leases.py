"""Local leases on a shared store: a process that draws more than now and then on one budget
draws a block.

On a shared store (SQLite for one host's workers, Redis across hosts) every call costs a store
step: a transaction or a round trip. A portal's client budget is drawn by every call of the
portal; a process that sees, say, 500 of those a second takes a block of ``k`` units from the
shared counter in one store step (the same step as the call's other budgets) and spends them
locally, one per call, until the block is spent or its lease is over. Then the next call asks
the store again. A person calling through a portal every second or so is the same on a
smaller scale: a block of a few units, spent over a few seconds.

The invariant: the processes together never admit more than the store granted, since a block is
drawn before its calls are admitted. Units left when a lease runs out are lost: the budget may
refuse a few calls early (at most a block per process and lease), never admit one too many.
Against a budget's window (``limit`` per ``w`` seconds): a process holds at most one block of a
budget at a time, so whatever the leases' length, in any ``w`` seconds the processes together
admit at most the ``limit`` the store counted in them plus one block per process drawn before
(at most ``SHARE`` of the limit each): with ``N`` processes, at most ``N`` % over the limit
(on top of the sliding-window counter's own estimate), and never more than the store granted
in all.

``k`` follows the rate this process sees on the budget (the calls since its last store draw over
the time since, smoothed), and so does the lease's length. A busy budget's block is the calls of
``LEASE_TIME`` at that rate (at least ``SMALL_BLOCK``). A slower one's is what ``LONGEST_LEASE``
holds at that rate, at most ``SMALL_BLOCK`` units, and may be spent for ``LONGEST_LEASE``: a
person calling every second or so at one worker draws a unit from the store at one call in
two to four. Below ``2 / LONGEST_LEASE`` calls a second (a person calling now and then)
``k = 1``: each call is one unit drawn from the store, as without leases. ``k`` is at most
``SHARE`` of the budget, so N processes hold at most N of those shares at a time, and a budget
with fewer than ``1 / SHARE`` units is never leased (a person's default 300/minute: blocks of
at most 3). The store grants ``min(k, room)``: near the end of a window the last units go to
whoever asks first.

One block is asked for at a time per budget, so a burst of concurrent calls cannot each take a
block. A call that comes while it is on its way waits for it when that budget is all it would
ask the store for (it then spends a unit of the block, or draws one if none is left); when it
asks the store for another budget anyway (a person's), it asks for one unit of this one in the
same step. On SQLite, where the calls of one turn share a transaction, that unit is taken from
the block when the call that asked for it is earlier in the same transaction (the block is then
smaller by one, as if the call had spent it here: ``SqliteStorage.acquire_calls``); otherwise
it is drawn from the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LEASE_TIME = 0.25
"""Seconds a busy budget's block may be spent after it was drawn: the shortest lease."""

LONGEST_LEASE = 5.0
"""Seconds a slower budget's block may be spent after it was drawn, at most."""

SMALL_BLOCK = 4
"""The most units of a slower budget's block (one whose rate fills less in ``LEASE_TIME``)."""

SHARE = 0.01
"""The largest block, as a share of the budget's units per window."""

SMOOTHING = 0.5
"""Weight of the previous rate estimate against the latest one."""


class Lease:
    """A process's view of one budget: its key in the store, its block and its rate."""

    __slots__ = (
        "cap",
        "key",
        "names",
        "rate",
        "refilling",
        "seen",
        "since",
        "term",
        "units",
        "until",
    )

    def __init__(self, key: str, names: list[str], limit: int) -> None:
        self.key = key
        """The budget's key in the store (``limits``' key)."""
        self.names = names
        """On Redis, the names of its two windows."""
        self.cap = max(1, int(limit * SHARE))
        """The largest block (1: never leased)."""
        self.units = 0
        """Units of the block left to spend."""
        self.until = 0.0
        """When the block's lease is over (the limiter's clock)."""
        self.refilling: asyncio.Future[None] | None = None
        """A block on its way from the store: done when it has come (or not)."""
        self.rate = 0.0
        """Calls per second on this budget in this process, smoothed."""
        self.since = 0.0
        """When the current rate sample began (0: not yet)."""
        self.seen = 0
        """Calls on this budget since then."""
        self.term = LEASE_TIME
        """How long the block asked for last may be spent."""

    @property
    def hot(self) -> bool:
        """Drawn in blocks at the current rate."""
        return self.cap > 1 and self.rate * LONGEST_LEASE >= 2

    def take(self, now: float) -> bool:
        """Count a call; spend one unit of the block if one is left and the lease runs."""
        self.seen += 1
        return self.spend(now)

    def spend(self, now: float) -> bool:
        """Spend one unit of the block if one is left and the lease runs."""
        if self.units > 0 and now < self.until:
            self.units -= 1
            return True
        return False

    def block(self, now: float, loop: Callable[[], asyncio.AbstractEventLoop]) -> int:
        """The units the next store draw asks for (1: as without leases), the rate sampled
        anew; more than 1 marks a block on its way (``refilling``, a future of ``loop()``, the
        running loop) until ``done``."""
        if self.cap == 1 or self.refilling is not None:
            return 1
        if self.since:
            elapsed = now - self.since
            if elapsed <= 0:
                return 1  # the clock did not move: no rate to speak of yet
            sample = self.seen / elapsed
            self.rate = (
                sample if not self.rate else SMOOTHING * self.rate + (1 - SMOOTHING) * sample
            )
        self.since = now
        self.seen = 0
        rate = self.rate
        if rate * LEASE_TIME >= SMALL_BLOCK:  # busy: the calls of the shortest lease
            self.term, wanted = LEASE_TIME, int(rate * LEASE_TIME)
        else:  # slower: a small block, what the longest lease holds (1: now and then)
            self.term, wanted = LONGEST_LEASE, min(SMALL_BLOCK, int(rate * LONGEST_LEASE))
        wanted = max(1, min(wanted, self.cap))
        if wanted > 1:
            self.refilling = loop().create_future()
        return wanted

    def done(self) -> None:
        """The block asked for has come, or the draw failed: calls waiting on it go on."""
        if self.refilling is not None:
            self.refilling.set_result(None)
            self.refilling = None

    def granted(self, units: int, now: float) -> None:
        """The store granted ``units`` (one of them this call's): the rest is the block."""
        if units > 1:
            self.units = units - 1
            self.until = now + self.term

    def give_back(self, now: float) -> None:
        """A unit taken for a call that a budget before this one refused."""
        if now < self.until:
            self.units += 1
