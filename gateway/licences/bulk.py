"""Bulk use of licences (批量用证) only with the issuer's consent: a volume limit per requester
(the client that asks) and licence type, raised for a requester the issuer approved.

Counted with the ``limits`` library's sliding-window counter, in this instance's memory (several
instances count apart: docs/licences.md). Over the limit the verification is refused before the
issuer is asked, and the refusal is audited by the caller.

Must not: import aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from gateway.licences.errors import LicenceVolumeExceeded
from gateway.ratelimit.config import parse_rate


class BulkLimits:
    def __init__(self, default: str | None, approved: Mapping[str, Mapping[str, str]]) -> None:
        self._default = parse_rate(default) if default is not None else None
        self._approved = {
            client: {code: parse_rate(rate) for code, rate in types.items()}
            for client, types in approved.items()
        }
        self._storage = MemoryStorage()
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)

    async def hit(self, requester: str, licence_type: str) -> None:
        """Count one use; LicenceVolumeExceeded when the requester is over its volume."""
        rate = self._approved.get(requester, {}).get(licence_type, self._default)
        if rate is None:
            return
        if not await self._limiter.hit(rate, "licence", requester, licence_type):
            raise LicenceVolumeExceeded(
                f"This requester has reached its volume of {licence_type!r} licences ({rate}):"
                " more needs the issuer's approval (批量用证).",
                limit=str(rate),
            )

    async def aclose(self) -> None:
        # MemoryStorage runs its expiry pass as a task it never cancels by itself.
        timer = self._storage.timer
        if timer is not None and not timer.done():
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)
