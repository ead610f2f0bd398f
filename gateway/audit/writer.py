"""The single batching writer of one audit chain: group commit, signed checkpoints, fail-closed.

One writer per chain and one chain per gateway instance (chain id = instance id). A required
append returns only once the batch holding its record is committed durably; a buffered append
returns at once and its record waits, in order, in a bounded buffer while the store is down.
Records are sealed (sequence, prev_hash, hash) only when their batch is written, so an append
that failed leaves no gap and no record behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, overload

import orjson
import structlog

from gateway.audit.canonical import GENESIS_HASH, HashAlg, chain_hash, hash_constructor
from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.record import (
    AuditEvent,
    format_time,
    record_encoder,
    utc_now,
    utc_now_text,
)
from gateway.audit.refusals import hold as hold_refusal
from gateway.audit.store import (
    AuditStore,
    AuditStoreError,
    ChainConflict,
    ChainHead,
    StoredCheckpoint,
    StoredRecord,
    iter_records,
)
from gateway.deadlines import Deadlines
from gateway.errors import AuditUnavailable
from gateway.event_loop import Bell, KeptLoop

log = structlog.get_logger("gateway.audit")

AppendMode = Literal["required", "buffered"]
WriterState = Literal["starting", "ready", "degraded", "closed", "failed"]

_RINGS_FOR_REQUIRED: Final = frozenset(("work", "gather"))
"""What a sleeping writer is woken from by a required record (not a linger for company)."""

_new_record: Final = object.__new__
_set_fields: Final = object.__setattr__

# Store calls fail with our own errors, but a hung socket shows up as a timeout and a bug in a
# driver translation as anything; the loop must survive all of them.
_STORE_FAILURES: Final = (AuditStoreError, TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class WriterSettings:
    batch_size: int = 1000
    """Most records per transaction."""
    linger: float = 0.001
    """How long an idle writer waits for company once a first record is queued (seconds),
    when company is expected: while required records come closer together than this (a
    moving average of their spacing). Further apart, none would come within it, and the
    record is written at once. Records that queued up during a commit are written as soon as
    it ends."""
    buffered_linger: float = 0.02
    """How long an idle writer gathers records nobody waits for (buffered ones, while no
    required append, ``settle`` or ``flush`` is pending) before committing them: at a moderate
    rate one commit, one fsync and one thread wake-up for many calls instead of one each. A
    required append, a ``settle`` or a full batch ends the wait at once. Buffered records may
    be lost if the process dies before they are written; this bounds that window in normal
    operation."""
    buffer_limit: int = 50_000
    """Records queued at most (both modes); beyond it appends raise AuditUnavailable."""
    checkpoint_every: int = 10_000
    """Sign the head after this many records..."""
    checkpoint_interval: float = 30.0
    """...or after this many seconds, whichever comes first (only if the head moved)."""
    commit_timeout: float = 2.0
    """A store call taking longer counts as a failure. A required append waits at most about
    twice this (the batch in flight, then its own); callers wanting less wrap it in
    ``asyncio.timeout``: a cancelled append is dropped unless its batch is already in flight."""
    retry_initial: float = 0.05
    retry_max: float = 2.0
    witness: bool = True
    """Checkpoints carry the heads of the other chains in the store."""


@dataclass(frozen=True, slots=True)
class AuditReadiness:
    state: WriterState
    chain: str
    head_sequence: int
    queued: int
    buffer_limit: int
    last_error: str | None
    """Exception class of the last store failure; never a message (it may carry data)."""

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def buffer_fill(self) -> float:
        return self.queued / self.buffer_limit


@dataclass(slots=True)
class WriterStats:
    records: int = 0
    batches: int = 0
    checkpoints: int = 0
    store_failures: int = 0
    conflicts: int = 0
    rejected: int = 0


@dataclass(slots=True, eq=False)
class _Entry:
    event: AuditEvent
    time: str
    future: asyncio.Future[int] | None
    """Set for required appends; None for buffered ones."""
    tag: int = 0
    """Order of queueing (``settle`` waits for a tag to be committed)."""


@dataclass(slots=True)
class _Uncertain:
    """A batch whose commit failed in a way that may still have committed it."""

    last_sequence: int
    last_hash: str
    entries: list[_Entry] = field(default_factory=list)


def _no_future() -> asyncio.Future[int]:
    raise RuntimeError("the audit writer has not started")


class ChainTailMismatch(RuntimeError):
    """At start-up the records after the last checkpoint do not chain onto it."""


class AuditWriter:
    def __init__(
        self,
        store: AuditStore,
        *,
        chain: str,
        signer: CheckpointSigner,
        alg: HashAlg = "sha256",
        settings: WriterSettings | None = None,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = _time.monotonic,
    ) -> None:
        if not chain or len(chain) > 128:
            raise ValueError("chain id must be 1-128 characters")
        self._store = store
        self._chain = chain
        self._signer = signer
        self._alg: HashAlg = alg
        self._encode = record_encoder(chain, alg)
        """The records' canonical text on this chain (one body dict, reused: the loop's only)."""
        self._settings = settings or WriterSettings()
        self._deadline = Deadlines(self._settings.commit_timeout)
        """Caps every store call at ``commit_timeout``, one loop timer for them all."""
        self._clock = clock
        self._now_text: Callable[[], str] = (
            utc_now_text if clock is utc_now else lambda: format_time(clock())
        )
        """The time text of a record stamped now: with the real clock, without a datetime."""
        self._monotonic = monotonic
        self._queue: collections.deque[_Entry] = collections.deque()
        self._running_loop = KeptLoop()
        self._loop_time: Callable[[], float] = _time.monotonic
        """``loop.time`` of the writer's loop once started (``start``)."""
        self._new_future: Callable[[], asyncio.Future[int]] = _no_future
        """The loop the writer runs on, asked for at ``start`` and kept (``KeptLoop``)."""
        self._bell = Bell(self._running_loop)
        """Rung when what the writer sleeps for may have come (see ``_asleep``); it then looks
        at its queue again. Appends ring it only when the writer sleeps for them, so a batch
        that gathers does not wake the writer once per record."""
        self._asleep: Literal["", "work", "gather", "company"] = ""
        """What the sleeping writer waits for: any record ("work"), somebody waiting for a
        commit ("gather": only buffered records are queued), a full batch ("company": a
        required record lingers for others)."""
        self._urgent = False
        """Somebody waits for the records queued (required, settle, flush, close)."""
        self._first_queued = 0.0
        """Loop time at which the oldest record of the queue was queued."""
        self._linger_timer: asyncio.TimerHandle | None = None
        """Ends a linger or a gathering; cancelled when the wait ends otherwise."""
        self._cp_timer: asyncio.TimerHandle | None = None
        """Rings when the head is due to be signed although no record came; armed once per
        checkpoint, not once per idle moment."""
        self._cp_timer_for = -1.0
        """The checkpoint time (``_cp_at``) the timer was armed for."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._state: WriterState = "starting"
        self._last_error: str | None = None
        self._head_sequence = 0
        self._head_hash = GENESIS_HASH
        self._acked_sequence = 0
        self._cp_sequence = 0
        self._cp_at = 0.0
        self._uncertain: _Uncertain | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_tag = 0
        """Tag of the last entry queued."""
        self._settled_tag = 0
        """Every entry with a tag up to this one is committed (or was given up by its caller)."""
        self._settlers: list[tuple[int, asyncio.Future[bool]]] = []
        self._taken_tag = 0
        """Tag of the last entry taken off the queue for a batch (sealed or skipped)."""
        self.stats = WriterStats()
        self._last_required = -1.0
        """Loop time of the last required append (-1: none yet)."""
        self._required_gap = 0.0
        """Moving average of the time between required appends; 0 until measured, so the
        first records of a burst linger."""

    # --- life cycle ---------------------------------------------------------------------------

    @property
    def chain(self) -> str:
        return self._chain

    @property
    def head(self) -> ChainHead:
        return ChainHead(self._chain, self._head_sequence, self._head_hash)

    async def start(self) -> None:
        """Resume the chain from the store; refuse to start if its unsigned tail does not link."""
        await self._store.register_chain(self._chain, format_time(self._clock()))
        await self._load_head(check_tail=True)
        self._acked_sequence = self._head_sequence
        self._cp_at = self._monotonic()
        self._state = "ready"
        loop = self._running_loop()
        self._loop_time = loop.time
        self._new_future = loop.create_future
        """The writer's loop's clock and futures, bound once: a required append takes both
        (the loop is the one its task runs on, for as long as it runs)."""
        self._task = loop.create_task(self._run(), name=f"audit-writer-{self._chain}")
        log.info("audit_writer_started", chain=self._chain, sequence=self._head_sequence)

    async def aclose(self, *, grace: float = 5.0) -> None:
        """Write what is queued (for up to ``grace`` seconds), sign the head, stop."""
        if self._task is None or self._closing:
            self._state = "closed"
            return
        self._closing = True
        self._bell.set()
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        dropped = self._fail_queue()
        if dropped:
            log.error("audit_buffer_dropped", chain=self._chain, records=dropped)
        self._state = "closed"

    async def __aenter__(self) -> AuditWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def readiness(self) -> AuditReadiness:
        return AuditReadiness(
            state=self._state,
            chain=self._chain,
            head_sequence=self._head_sequence,
            queued=len(self._queue),
            buffer_limit=self._settings.buffer_limit,
            last_error=self._last_error,
        )

    # --- appending ----------------------------------------------------------------------------

    @overload
    async def append(self, event: AuditEvent, *, mode: Literal["required"] = ...) -> int: ...

    @overload
    async def append(self, event: AuditEvent, *, mode: Literal["buffered"]) -> None: ...

    async def append(self, event: AuditEvent, *, mode: AppendMode = "required") -> int | None:
        """Queue a record. ``required``: return its sequence once committed, or raise
        AuditUnavailable (store down, buffer full, commit failed or timed out); the record is
        then either not written at all or, if its batch was in flight when the connection
        failed, written without an acknowledgement. ``buffered``: return None at once; raise
        AuditUnavailable only when the buffer is full or the writer is not running."""
        if mode == "buffered" and hold_refusal(event):
            return None  # an anonymous refusal: its request decides (gateway/audit/refusals.py)
        if self._state in ("starting", "closed", "failed") or self._closing:
            self.stats.rejected += 1
            raise AuditUnavailable("The audit writer is not running.")
        if len(self._queue) >= self._settings.buffer_limit:
            self.stats.rejected += 1
            raise AuditUnavailable("The audit buffer is full.")
        when = self._now_text() if event.time is None else format_time(event.time)
        if mode == "buffered":
            self._enqueue(_Entry(event, when, None))
            return None
        if self._state != "ready":
            # Fail fast: required callers must not wait for a store known to be down.
            self.stats.rejected += 1
            raise AuditUnavailable("The audit store is unavailable.")
        now = self._loop_time()
        if self._last_required >= 0:
            # A pause counts as ten lingers at most, so that a burst after it lingers again
            # after a few records.
            gap = min(now - self._last_required, 10 * self._settings.linger)
            self._required_gap += (gap - self._required_gap) * 0.25
        self._last_required = now
        future: asyncio.Future[int] = self._new_future()
        # ``_enqueue`` and ``_hasten`` for a record somebody waits for, inline: tagged, queued
        # (the queue's time taken when it was empty), and the bell rung when the batch is
        # full or the writer sleeps for work or gathers (somebody now waits for a commit).
        self._last_tag = tag = self._last_tag + 1
        queue = self._queue
        if not queue:
            self._first_queued = now
        queue.append(_Entry(event, when, future, tag))
        self._urgent = True
        if len(queue) >= self._settings.batch_size or self._asleep in _RINGS_FOR_REQUIRED:
            self._bell.set()
        # No timer per append: the loop bounds every store call by commit_timeout and fails
        # the waiting required entries when one fails. A cancelled caller cancels the future,
        # and the loop then skips the entry unless its batch is already in flight.
        return await future

    def append_nowait(self, event: AuditEvent) -> None:
        """Queue a record in buffered mode without awaiting anything, for synchronous callers
        on the event loop (authlib's callbacks). Raises AuditUnavailable when the writer is not
        running or the buffer is full; the record is then not queued."""
        if hold_refusal(event):
            return  # an anonymous refusal: its request decides (gateway/audit/refusals.py)
        if self._state in ("starting", "closed", "failed") or self._closing:
            self.stats.rejected += 1
            raise AuditUnavailable("The audit writer is not running.")
        if len(self._queue) >= self._settings.buffer_limit:
            self.stats.rejected += 1
            raise AuditUnavailable("The audit buffer is full.")
        when = self._now_text() if event.time is None else format_time(event.time)
        self._enqueue(_Entry(event, when, None))

    async def flush(self) -> None:
        """Wait until every record queued so far is committed; raise if the store is down."""
        self._hasten()
        while self._queue or not self._idle.is_set():
            if self._state != "ready":
                raise AuditUnavailable("The audit store is unavailable.")
            await self._idle.wait()
            if self._queue:
                await asyncio.sleep(0.001)

    async def settle(self) -> bool:
        """Wait until every record queued so far, buffered ones included, is committed.

        For callers that hand something out after queueing its record without blocking (the
        identity core, whose hooks are synchronous): awaiting this before the answer leaves
        makes the record durable first whenever the store is healthy. True once committed;
        False at once when the store is not ready, or when a commit fails meanwhile: the
        records then wait in the buffer, in order (the buffered contract), and the caller
        decides whether to go on. Callers bound the wait with ``asyncio.timeout``."""
        target = self._last_tag
        if target <= self._settled_tag:
            return True
        if self._state != "ready" or self._closing:
            return False
        future: asyncio.Future[bool] = self._running_loop().create_future()
        self._settlers.append((target, future))
        self._hasten()
        return await asyncio.shield(future)

    def _settle(self, tag: int | None) -> None:
        """Wake ``settle`` callers: up to ``tag`` committed, or (None) a commit failed."""
        if tag is not None:
            self._settled_tag = max(self._settled_tag, tag)
        waiting: list[tuple[int, asyncio.Future[bool]]] = []
        for target, future in self._settlers:
            if future.done():
                continue
            if tag is None:
                future.set_result(False)
            elif target <= self._settled_tag:
                future.set_result(True)
            else:
                waiting.append((target, future))
        self._settlers = waiting

    def _enqueue(self, entry: _Entry) -> None:
        self._last_tag += 1
        entry.tag = self._last_tag
        queue = self._queue
        if not queue:
            self._first_queued = self._loop_time()
        queue.append(entry)
        if len(queue) >= self._settings.batch_size:
            self._bell.set()
        elif self._asleep == "work":
            if entry.future is None and not self._urgent and not self._closing:
                # Nobody waits for it: the idle writer gathers from here, in its sleep, as it
                # would once woken (``_loop``), without being woken for that. At a moderate
                # rate a call's outcome record would otherwise resume the writer's task once
                # per call only to put it back to sleep: a loop turn and the task's frames.
                self._asleep = "gather"
                self._linger_timer = self._running_loop().call_at(
                    self._first_queued + self._settings.buffered_linger, self._bell.set
                )
            else:
                self._bell.set()

    def _hasten(self) -> None:
        """Somebody now waits for a commit: no more gathering of buffered records."""
        self._urgent = True
        if self._asleep == "gather":
            self._bell.set()

    def _fail_queue(self) -> int:
        self._settle(None)
        dropped = 0
        while self._queue:
            entry = self._queue.popleft()
            if entry.future is None:
                dropped += 1
            elif not entry.future.done():
                entry.future.set_exception(AuditUnavailable("The audit writer stopped."))
        return dropped

    # --- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: fail closed rather than hang callers
            self._state = "failed"
            self._last_error = type(exc).__name__
            log.exception("audit_writer_crashed", chain=self._chain)
            self._fail_queue()
        finally:
            self._deadline.close()
            if self._cp_timer is not None:
                self._cp_timer.cancel()
                self._cp_timer = None

    async def _loop(self) -> None:
        backoff = self._settings.retry_initial
        idle = True
        settings = self._settings
        while True:
            if self._state == "failed":
                self._fail_queue()
                return
            if self._state == "degraded":
                if self._closing and not self._queue:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, settings.retry_max)
                if await self._recover():
                    backoff = settings.retry_initial
                elif self._closing:
                    return
                continue
            if not self._queue:
                if self._closing:
                    await self._checkpoint_if_moved()
                    return
                # A gathering begun in that sleep (``_enqueue``) has waited as one begun here.
                idle = not await self._wait_for_work()
                continue
            # Group commit. Records nobody waits for yet (buffered ones) gather until their
            # oldest has waited ``buffered_linger``, somebody waits for a commit or the batch
            # is full, also right after a commit: one commit, one fsync and one wake-up for
            # many calls. Records somebody waits for go at once if they queued up while the
            # previous batch was being committed (they have waited long enough); only a
            # writer that was idle lingers, so that the first record of a burst does not
            # travel alone.
            full = len(self._queue) >= settings.batch_size
            if not full and not self._closing:
                if not self._urgent:
                    due = self._first_queued + settings.buffered_linger
                    if due > self._loop_time():
                        await self._sleep("gather", due)
                        idle = False  # what gathered has waited long enough
                        continue  # look again: gathered, hastened, full or closing
                elif idle and self._required_gap < settings.linger:
                    await self._sleep("company", self._loop_time() + settings.linger)
            self._urgent = False
            idle = False
            await self._write_batch()

    async def _sleep(
        self, what: Literal["work", "gather", "company"], until: float | None
    ) -> Literal["", "work", "gather", "company"]:
        """Sleep until the bell rings (see ``_asleep``) or, for a linger, the loop time
        ``until``; what the writer slept for when it woke (a sleep for work becomes a gathering
        when a record nobody waits for comes, ``_enqueue``)."""
        self._bell.clear()
        if until is not None:
            self._linger_timer = self._running_loop().call_at(until, self._bell.set)
        self._asleep = what
        try:
            await self._bell.wait()
            return self._asleep
        finally:
            self._asleep = ""
            if self._linger_timer is not None:
                self._linger_timer.cancel()
                self._linger_timer = None

    def _checkpoint_rings(self) -> None:
        self._cp_timer = None
        self._bell.set()

    async def _wait_for_work(self) -> bool:
        """Sleep until there is work (or sign the head when due); True: the sleep became a
        gathering of records nobody waits for (``_enqueue``)."""
        due = self._checkpoint_due_in()
        if due is not None and due <= 0:
            await self._checkpoint_if_moved()
            return False
        if due is not None and (self._cp_timer is None or self._cp_timer_for != self._cp_at):
            if self._cp_timer is not None:
                self._cp_timer.cancel()
            self._cp_timer = self._running_loop().call_later(due, self._checkpoint_rings)
            self._cp_timer_for = self._cp_at
        return await self._sleep("work", None) == "gather"

    def _checkpoint_due_in(self) -> float | None:
        if self._head_sequence <= self._cp_sequence:
            return None
        return self._cp_at + self._settings.checkpoint_interval - self._monotonic()

    def _take_batch(self) -> list[_Entry]:
        batch: list[_Entry] = []
        while self._queue and len(batch) < self._settings.batch_size:
            entry = self._queue.popleft()
            self._taken_tag = entry.tag
            if entry.future is not None and entry.future.done():
                continue  # the caller gave up before the record was sealed
            batch.append(entry)
        if not self._queue:
            # Every entry queued so far is taken now or was failed with its caller in an
            # outage (never written): a settle for the latest tag waits for this batch only.
            self._taken_tag = self._last_tag
        if not batch:
            self._settle(self._taken_tag)  # only given-up entries: nothing left to wait for
        return batch

    def _seal(self, batch: list[_Entry]) -> list[StoredRecord]:
        """Number, encode and chain the batch; an entry that cannot be encoded (a string with
        a lone surrogate) is refused on its own and taken out of ``batch``."""
        rows: list[StoredRecord] = []
        prev = self._head_hash
        prev_raw = bytes.fromhex(prev)
        sequence = self._head_sequence
        chain, encode, new = self._chain, self._encode, hash_constructor(self._alg)
        refused: list[_Entry] = []
        for entry in batch:
            e = entry.event
            time = entry.time
            try:
                text = encode(e, sequence + 1, time, prev)
            except orjson.JSONEncodeError:
                refused.append(entry)
                continue
            sequence += 1
            prev_raw = new(prev_raw + new(text).digest()).digest()  # the chain rule
            prev = prev_raw.hex()
            # The lookup row, as ``event_lookup_row`` makes it (LOOKUP_FIELDS order; a test
            # holds the two equal), without a call and the ``value`` property's frames.
            lookup = (chain, sequence, time, e.type._value_, e.principal, e.actor, e.case_id,
                      e.service, e.receiving_province, e.handling_province, e.system)  # fmt: skip
            # ``StoredRecord(chain, sequence, time, text, prev, lookup, e.subjects)`` as its
            # one-step ``__init__`` makes it (gateway/frozen.py: the attribute dictionary, the
            # fields in order, handed over at once), without that Python frame: two records a
            # routed call (tests/unit/audit/test_audit_call_outcome.py holds the two equal).
            row = _new_record(StoredRecord)
            _set_fields(row, "__dict__", {
                "chain": chain, "sequence": sequence, "time": time, "text": text.decode(),
                "hash": prev, "lookup": lookup, "subjects": e.subjects,
            })  # fmt: skip
            rows.append(row)
        for entry in refused:
            batch.remove(entry)
            self.stats.rejected += 1
            log.error("audit_event_unencodable", chain=self._chain, type=entry.event.type.value)
            if entry.future is not None and not entry.future.done():
                entry.future.set_exception(AuditUnavailable("The audit record cannot be encoded."))
        return rows

    async def _write_batch(self) -> None:
        batch = self._take_batch()
        if not batch:
            return
        self._idle.clear()
        try:
            await self._commit(batch)
        finally:
            self._idle.set()

    async def _commit(self, batch: list[_Entry]) -> None:
        while True:
            rows = self._seal(batch)
            if not rows:
                self._settle(self._taken_tag)
                return
            last = rows[-1]
            checkpoint: StoredCheckpoint | None = None
            try:
                with self._deadline.start():
                    if self._checkpoint_needed(last.sequence):
                        checkpoint = await self._sign(last.sequence, last.hash)
                    await self._store.append(rows, checkpoint)
            except ChainConflict:
                # Another writer appended to this chain: the primary key refused a fork. Resume
                # from the store's head and seal the same entries again.
                self.stats.conflicts += 1
                log.warning("audit_chain_conflict", chain=self._chain)
                try:
                    with self._deadline.start():
                        await self._load_head(check_tail=False)
                except _STORE_FAILURES as exc:
                    self._on_failure(exc, batch, None)
                    return
                continue
            except _STORE_FAILURES as exc:
                self._on_failure(exc, batch, _Uncertain(last.sequence, last.hash))
                return
            break
        self._advance(last.sequence, last.hash, checkpoint)
        self.stats.records += len(rows)
        self.stats.batches += 1
        for entry, row in zip(batch, rows, strict=True):
            if entry.future is not None and not entry.future.done():
                entry.future.set_result(row.sequence)
        # The queue is in tag order: everything taken so far is written or was given up.
        self._settle(self._taken_tag)

    def _advance(self, sequence: int, hash: str, checkpoint: StoredCheckpoint | None) -> None:
        self._head_sequence = sequence
        self._head_hash = hash
        self._acked_sequence = sequence
        if checkpoint is not None:
            self._cp_sequence = checkpoint.sequence
            self._cp_at = self._monotonic()
            self.stats.checkpoints += 1

    def _checkpoint_needed(self, sequence: int) -> bool:
        if sequence - self._cp_sequence >= self._settings.checkpoint_every:
            return True
        due = self._checkpoint_due_in()
        return due is not None and due <= 0

    async def _sign(self, sequence: int, hash: str) -> StoredCheckpoint:
        witness: list[ChainHead] = []
        if self._settings.witness:
            witness = [h for h in (await self._store.heads()).values() if h.chain != self._chain]
        return self._signer.sign(
            chain=self._chain,
            sequence=sequence,
            hash=hash,
            time=format_time(self._clock()),
            alg=self._alg,
            witness=witness,
        )

    async def _checkpoint_if_moved(self) -> None:
        if self._head_sequence <= self._cp_sequence:
            self._cp_at = self._monotonic()
            return
        try:
            with self._deadline.start():
                checkpoint = await self._sign(self._head_sequence, self._head_hash)
                await self._store.append_checkpoint(checkpoint)
        except _STORE_FAILURES as exc:
            self._on_failure(exc, [], None)
            return
        self._advance(self._head_sequence, self._head_hash, checkpoint)

    def _on_failure(
        self, exc: BaseException, batch: list[_Entry], uncertain: _Uncertain | None
    ) -> None:
        self.stats.store_failures += 1
        self._state = "degraded"
        self._settle(None)
        self._last_error = type(exc).__name__
        log.warning("audit_store_failed", chain=self._chain, error=self._last_error)
        kept: list[_Entry] = []
        for entry in batch:
            if entry.future is None:
                kept.append(entry)
            elif not entry.future.done():
                entry.future.set_exception(AuditUnavailable("The audit store is unavailable."))
        # Buffered records go back to the front, in order, to be sealed again later; required
        # ones still queued are refused now rather than after the outage.
        waiting = self._queue
        self._queue = collections.deque(kept)
        for entry in waiting:
            if entry.future is None:
                self._queue.append(entry)
            elif not entry.future.done():
                entry.future.set_exception(AuditUnavailable("The audit store is unavailable."))
        if uncertain is not None:
            uncertain.entries = kept
        self._uncertain = uncertain

    async def _recover(self) -> bool:
        try:
            with self._deadline.start():
                await self._store.ping()
                head = await self._store.head(self._chain)
        except _STORE_FAILURES as exc:
            self._last_error = type(exc).__name__
            return False
        uncertain, self._uncertain = self._uncertain, None
        if (
            uncertain is not None
            and head is not None
            and (head.sequence, head.hash) == (uncertain.last_sequence, uncertain.last_hash)
        ):
            # The "failed" commit went through after all: do not write its records twice.
            for entry in uncertain.entries:
                with contextlib.suppress(ValueError):
                    self._queue.remove(entry)
            log.info("audit_commit_confirmed", chain=self._chain, sequence=head.sequence)
        if not self._set_head(head):
            return False
        self._state = "ready"
        self._last_error = None
        log.info("audit_store_recovered", chain=self._chain, sequence=self._head_sequence)
        return True

    def _set_head(self, head: ChainHead | None) -> bool:
        sequence = head.sequence if head else 0
        if sequence < self._acked_sequence:
            # Acknowledged records vanished: continuing would fork the chain. Fail closed.
            self._state = "failed"
            self._last_error = "ChainRegressed"
            log.critical(
                "audit_chain_regressed",
                chain=self._chain,
                sequence=sequence,
                acknowledged=self._acked_sequence,
            )
            return False
        self._head_sequence = sequence
        self._head_hash = head.hash if head else GENESIS_HASH
        self._acked_sequence = max(self._acked_sequence, sequence)
        return True

    async def _load_head(self, *, check_tail: bool) -> None:
        head = await self._store.head(self._chain)
        last_cp = await self._store.last_checkpoint(self._chain)
        if check_tail:
            await self._check_tail(head, last_cp)
        if not self._set_head(head):
            raise AuditUnavailable("The audit chain lost acknowledged records.")
        if last_cp is not None:
            self._cp_sequence = last_cp.sequence

    async def _check_tail(self, head: ChainHead | None, last_cp: StoredCheckpoint | None) -> None:
        """Recompute the records after the last checkpoint before building on them."""
        if head is None:
            if last_cp is not None:
                raise ChainTailMismatch(f"chain {self._chain} is empty but has checkpoints")
            return
        if last_cp is not None and last_cp.sequence > head.sequence:
            raise ChainTailMismatch(
                f"chain {self._chain} ends at {head.sequence}, before its checkpoint "
                f"{last_cp.sequence}; run the verifier"
            )
        # Start at the checkpointed record itself: it must still hash to the signed value.
        prev, expected = GENESIS_HASH, 1
        if last_cp is not None:
            expected = last_cp.sequence
        async for row in iter_records(self._store, self._chain, expected):
            if row.sequence != expected:
                raise ChainTailMismatch(f"chain {self._chain}: record {expected} missing")
            text = row.text.encode("utf-8")
            body = orjson.loads(text)
            alg = body.get("alg", self._alg)  # the chain may have changed algorithm
            if last_cp is not None and row.sequence == last_cp.sequence:
                prev = str(body.get("prev_hash"))
                if row.hash != last_cp.hash:
                    prev = ""  # forces the mismatch below
            prev_check = chain_hash(alg, prev, text) if prev else ""
            if prev_check != row.hash:
                raise ChainTailMismatch(
                    f"chain {self._chain}: record {row.sequence} does not chain; run the verifier"
                )
            prev = row.hash
            expected += 1
