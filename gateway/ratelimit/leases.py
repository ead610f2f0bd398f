"""Local leases on a shared store: a process that draws often on one budget draws a block.

On a shared store (SQLite for one host's workers, Redis across hosts) every call costs a store
step: a transaction or a round trip. A portal's client budget is drawn by every call of the
portal; a process that sees, say, 500 of those a second takes a block of ``k`` units from the
shared counter in one store step (the same step as the call's other budgets) and spends them
locally, one per call, until the block is spent or its lease (``LEASE_TIME``) is over. Then the
next call asks the store again.

The invariant: the processes together never admit more than the store granted, since a block is
drawn before its calls are admitted. Units left when a lease runs out are lost: the budget may
refuse a few calls early (at most a block per process per lease), never admit one too many.

``k`` follows the rate this process sees on the budget: the calls since its last store draw
over the time since, smoothed, times ``LEASE_TIME``: so a block lasts about one lease. A person
calling now and then has ``k = 1``: each call is one unit drawn from the store, as without
leases. ``k`` is at most ``SHARE`` of the budget, so N processes hold at most N of those shares
at a time, and a budget with fewer than ``1 / SHARE`` units is never leased. The store grants
``min(k, room)``: near the end of a window the last units go to whoever asks first.

One block is asked for at a time per budget, so a burst of concurrent calls cannot each take a
block. A call that comes while it is on its way waits for it when that budget is all it would
ask the store for (it then spends a unit of the block, or draws one if none is left); when it
asks the store for another budget anyway (a person's), it draws one unit of this one in the
same step.
"""

from __future__ import annotations

import asyncio

LEASE_TIME = 0.25
"""Seconds a block may be spent after it was drawn."""

SHARE = 0.01
"""The largest block, as a share of the budget's units per window."""

SMOOTHING = 0.5
"""Weight of the previous rate estimate against the latest one."""


class Lease:
    """A process's view of one budget: its key in the store, its block and its rate."""

    __slots__ = ("cap", "key", "names", "rate", "refilling", "seen", "since", "units", "until")

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

    @property
    def hot(self) -> bool:
        """Drawn in blocks at the current rate."""
        return self.cap > 1 and self.rate * LEASE_TIME >= 2

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

    def block(self, now: float) -> int:
        """The units the next store draw asks for (1: as without leases), the rate sampled
        anew; more than 1 marks a block on its way (``refilling``) until ``done``."""
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
        wanted = max(1, min(int(self.rate * LEASE_TIME), self.cap))
        if wanted > 1:
            self.refilling = asyncio.get_running_loop().create_future()
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
            self.until = now + LEASE_TIME

    def give_back(self, now: float) -> None:
        """A unit taken for a call that a budget before this one refused."""
        if now < self.until:
            self.units += 1
