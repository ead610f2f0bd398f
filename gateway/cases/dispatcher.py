"""One delivery dispatcher per SQLite case store, however many processes serve it.

An SQLite case store lives in one data directory and is served by the workers of one host
(``serve --workers N``), sometimes by a second instance started on the same directory. The
outbox's leases already keep two dispatchers from sending one entry twice, but on SQLite every
claim is a write transaction on the one file, so N dispatchers polling it would only contend.
So exactly one process runs it: the one holding an exclusive ``flock`` on
``<case database>.dispatcher.lock``. The others keep trying, every ``RETRY`` seconds; the kernel
releases the lock when its holder exits or dies (kill -9 included), so a stand-in takes over
within that time. Cases taken in by a process that does not dispatch are claimed at the
dispatcher's next poll (``cases.delivery.poll_interval``) instead of at once.

On PostgreSQL every process runs a dispatcher: claims use ``FOR UPDATE SKIP LOCKED`` and do not
contend.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path

import structlog

from gateway.cases.worker import DeliveryWorker

log = structlog.get_logger("tongban.cases")

RETRY = 1.0
"""Seconds between two attempts to become the dispatcher."""


class DispatcherLock:
    """An exclusive, non-blocking ``flock`` on a file next to the case database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @classmethod
    def beside(cls, database: Path) -> DispatcherLock:
        return cls(database.with_name(database.name + ".dispatcher.lock"))

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class ElectedDispatcher:
    """Runs ``worker`` only while this process holds ``lock``."""

    def __init__(self, worker: DeliveryWorker, lock: DispatcherLock, retry: float = RETRY) -> None:
        self.worker = worker
        self.lock = lock
        self._retry = retry
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._elect(), name="case-dispatcher-election")

    async def _elect(self) -> None:
        said = False
        while True:
            acquired = await asyncio.to_thread(self.lock.try_acquire)
            if acquired:
                log.info("case_dispatcher_elected", lock=self.lock.path.name, pid=os.getpid())
                self.worker.start()
                return
            if not said:
                log.info("case_dispatcher_standby", lock=self.lock.path.name, pid=os.getpid())
                said = True
            await asyncio.sleep(self._retry)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.worker.aclose()
        self.lock.release()
