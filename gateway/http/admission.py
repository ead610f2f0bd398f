"""Admission: the outermost middleware, a per-worker bound on what is in flight.

A worker takes in at most ``admission.max_in_flight`` requests and
``admission.max_body_bytes_in_flight`` body bytes at a time. A request beyond either bound is
answered at once with 503 problem+json ``gateway.overloaded`` and ``Retry-After``: no body is
read, no token checked, no identity store, audit record or back-end touched, no access line
written (under overload that would be work per refused request; a counter and one warning per
``_WARN_EVERY`` seconds say it instead). Without the bound, an overloaded worker queues calls
until they time out, and the queue becomes memory that stays after the burst.

A request reserves its Content-Length (at most ``server.max_body_bytes``, the most the body
reader accepts), or ``server.max_body_bytes`` when it streams a body of unknown length; the
reservation is released when the handler has returned (the body is read by then).
``/healthz``, ``/readyz`` and ``/metrics`` are neither bounded nor counted: an orchestrator
must still see an overloaded worker alive.

The bound on requests adapts to the queue in front of the handler. A worker is one event loop:
whatever it has to do (a new request to parse, an admitted call to resume after each await, a
refusal to write) waits in the loop's ready queue, so the time a request waits before this
middleware sees it, and the time every admitted call waits at each of its awaits, is the
loop's delay. ``QueueDelay`` measures that delay with a timer while requests are in flight (how
late it fires); over each ``admission.queue_delay_interval_ms`` the mean delay is compared
with ``admission.queue_delay_target_ms`` (CoDel's sojourn time and interval, on the one queue
an asyncio worker has). Above the target the bound drops to what is in flight scaled by
target/delay (by at most a quarter per interval, and never below ``min_in_flight``: the loop's
delay has other causes too, refusals among them, and a bound cut further would only idle the
worker), provided the loop's thread was on the CPU for most of the interval (``_BUSY``; a loop
late while its thread is not busy waits for a core that other processes hold, which no bound
on our calls shortens); otherwise, when the bound was reached, it grows again by an eighth per
interval, up to ``max_in_flight``. In an interval with more refusals than admissions, demand
is at least twice what the worker takes in: the target is then
``admission.refusing_delay_target_ms`` (the lower one) and the cut goes to target/delay at
once (fewer calls in flight cost refusals, not idle time); late but off the CPU, the bound is
held. Idle (nothing in flight) and calm (nothing refused for
``_CALM`` seconds), the worker starts from ``max_in_flight`` again. Refusals beyond the adapted
bound are counted as ``queue_delay``, beyond the fixed ones as ``requests`` / ``body_bytes``.
A slow back-end does not lower the bound (a call waiting for its answer costs the loop
nothing); a saturated loop does, whatever saturates it.

A refusal costs as little as it can: the body is rendered once, and only the request id (a
per-worker prefix and a counter, unique without a system call) is spliced in; and while the
worker is at its bound, a connection refuses the requests it parses before aiohttp builds a
request, a task and the middleware chain for them (``_DoorHandler``, ``refuse_at_the_door``).
A read that repeats, byte for byte in its head and in its length, the last request a
connection had refused at the door (one whole keep-alive request per read since the connection
opened) is refused from its bytes, without aiohttp's parser building headers, URL, message and
body stream again only to drop them (``_refuse_again``); anything else is parsed.

Requests only reach this middleware once the event loop has read them; each open connection
holds memory. So a worker also bounds its connections (``admission.max_connections``,
``limit_connections``). At the bound, connections idle between two requests (a client's pool
keeps them open after a burst) are closed to make room, those idle longest first, as nginx does
with its keep-alive connections (``reclaim_idle``); their clients see them closed as when the
keep-alive time runs out. With none idle, a connection accepted beyond the bound gets one
answer, a 503 refusal (or the health answer), with ``Connection: close``, and is closed after
it; one that sends nothing is aborted after ``_LATE_CONNECTION_GRACE`` seconds. The client
reads a clean refusal instead of a reset. Only while the worker keeps up, though: answering
costs several times what a reset does, so while the loop is late (its delay above the target)
or more than a sixteenth of the bound (``_late_cap``, at least 8) already wait for their
answer, a connection beyond the bound is aborted as soon as it is accepted: in a connection
storm the client sees a reset, and the worker's CPU and memory stay bounded whatever arrives.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import hdrs, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler

from gateway.errors import Overloaded
from gateway.event_loop import KeptLoop
from gateway.http.problem import CONTENT_TYPE, PROBLEM_TYPE_BASE
from gateway.settings import AdmissionSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("tongban.http")

UNBOUNDED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_WARN_EVERY = 10.0
_PROBE_EVERY = 0.005
"""Seconds between two delay probes while requests are in flight (a few µs each)."""
_STRETCH_MOST = 8
"""A probe period after periods the loop spent partly asleep grows to at most this many
``_PROBE_EVERY`` (``QueueDelay``)."""
_BUSY = 0.8
"""The bound is lowered only while the loop's thread is on the CPU this much of the time: a
loop that is late but not busy waits for a core other processes hold, and fewer calls in
flight would not make it sooner (they would leave the worker idle while it gets the core)."""
_CALM = 1.0
"""Seconds without a refusal after which an idle worker's bound is back at its ceiling."""
_LATE_CONNECTION_GRACE = 2.0
"""Seconds a connection accepted beyond the bound has to send its request."""
_REQUEST_ID = "@@request-id@@"
_RAW_HEAD = (
    f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {CONTENT_TYPE}\r\nX-Request-ID: "
).encode()


class QueueDelay:
    """How late this worker's event loop runs what is ready: a timer every ``_PROBE_EVERY``
    seconds while there is work in flight, its lateness averaged over each interval; and how
    busy the loop's thread was in it.

    A period in which the loop's thread was on the CPU less than ``_BUSY`` of the time had the
    loop asleep for a while: nothing waited then, and a tick every ``_PROBE_EVERY`` would
    mostly wake an idle loop (at a moderate rate, where a call is in flight most of the time,
    a wake-up of the loop, its thread's context switch and its turn every few milliseconds for
    nothing). After such a period the next one is twice as long (at most ``_STRETCH_MOST``
    periods, never past the interval's end), and its sample counts as many samples as the
    periods it spans: the mean is still one per ``_PROBE_EVERY`` of probing, as if the
    skipped ticks had seen the same. A busy period brings the period back to
    ``_PROBE_EVERY`` at once; while the loop is busy it is never stretched."""

    __slots__ = (
        "_admission",
        "_cpu_start",
        "_due",
        "_handle",
        "_last_cpu",
        "_last_now",
        "_loop",
        "_samples",
        "_stretch",
        "_sum",
        "_window_end",
        "_window_start",
        "busy",
        "last",
    )

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._handle: asyncio.TimerHandle | None = None
        self._loop = KeptLoop()
        """The loop probed (``KeptLoop``: the probe rings every few milliseconds)."""
        self._due = 0.0
        self._window_end = 0.0
        self._samples = 0
        """Probe periods sampled in this interval (a stretched sample counts its periods)."""
        self._sum = 0.0
        self._window_start = 0.0
        self._cpu_start = 0.0
        self._last_now = 0.0
        self._last_cpu = 0.0
        """The monotonic time and the thread's CPU time at the last sample (or the start)."""
        self._stretch = 1
        """Probe periods until the next sample (1: every ``_PROBE_EVERY``)."""
        self.last = 0.0
        """The mean delay of the last complete interval, in seconds."""
        self.busy = 0.0
        """The share of the last complete interval the loop's thread spent on the CPU."""

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        if self._handle is not None:
            return
        now, cpu = time.monotonic(), time.thread_time()
        self._new_window(now, cpu)
        self._last_now, self._last_cpu = now, cpu
        self._stretch = 1
        self._schedule(now)

    def _new_window(self, now: float, cpu: float) -> None:
        self._window_start, self._cpu_start = now, cpu
        self._window_end = now + self._admission.interval
        self._samples, self._sum = 0, 0.0

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.last = 0.0  # nothing in flight: nothing waits

    def _schedule(self, now: float) -> None:
        after = _PROBE_EVERY * self._stretch
        self._due = now + after
        self._handle = self._loop().call_later(after, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        if self.sample(now, time.thread_time()):
            self._schedule(now)
        else:
            self._handle = None

    def sample(self, now: float, cpu: float) -> bool:
        """The tick due at ``_due`` ran at ``now``, the loop's thread having used ``cpu``
        seconds of CPU by then: count its lateness, end the interval if it is over and set
        ``_stretch`` for the next tick. False: stop probing (nothing in flight)."""
        periods = self._stretch
        self._samples += periods
        self._sum += max(now - self._due, 0.0) * periods
        elapsed = now - self._last_now
        idle = elapsed > 0 and cpu - self._last_cpu < _BUSY * elapsed
        self._last_now, self._last_cpu = now, cpu
        if now >= self._window_end:
            self.last = self._sum / self._samples
            self.busy = (cpu - self._cpu_start) / (now - self._window_start)
            self._new_window(now, cpu)
            if not self._admission.interval_ended(self.last, self.busy):
                self.last = 0.0
                return False
        stretch = min(periods * 2, _STRETCH_MOST) if idle else 1
        # Not past the interval's end: its mean is taken at the first tick after it.
        within = int((self._window_end - now) / _PROBE_EVERY)
        self._stretch = max(1, min(stretch, within))
        return True


class Admission:
    """The counters of one worker (one event loop: no lock needed)."""

    __slots__ = (
        "_admissions",
        "_admissions_seen",
        "_body_head",
        "_body_tail",
        "_last_refusal",
        "_last_warning",
        "_late",
        "_on_refused",
        "_peak",
        "_raw_retry",
        "_refused_since_warning",
        "_rid_prefix",
        "_rids",
        "_rids_seen",
        "body_bytes",
        "delay",
        "held",
        "in_flight",
        "interval",
        "limit",
        "max_body_bytes",
        "refusing_target",
        "settings",
        "target",
    )

    def __init__(
        self,
        settings: AdmissionSettings,
        max_body_bytes: int,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.max_body_bytes = max_body_bytes
        self.in_flight = 0
        self.held = 0
        """Slots held by the door for requests it handed on and the middleware has not yet
        admitted (``_DoorHandler``): they count against the bound like calls in flight."""
        self.body_bytes = 0
        self.limit = settings.max_in_flight
        """The bound on requests now: ``max_in_flight``, lower while the loop is late."""
        self.target = settings.queue_delay_target_ms / 1000
        self.interval = settings.queue_delay_interval_ms / 1000
        self.refusing_target = settings.refusing_delay_target_ms / 1000
        """The delay target while the worker refuses (it refused in the last interval)."""
        self._rids_seen = 0
        self._admissions = 0
        self._admissions_seen = 0
        self._last_refusal = -_CALM
        self.delay = QueueDelay(self)
        self._peak = 0
        self._late: set[Any] = set()
        self._on_refused = on_refused
        self._refused_since_warning = 0
        self._last_warning = -_WARN_EVERY
        self._rid_prefix = os.urandom(6).hex()
        self._rids = 0
        error = Overloaded(settings.retry_after)
        body = orjson.dumps(
            {
                "type": PROBLEM_TYPE_BASE + error.code,
                "title": error.title,
                "status": error.status,
                "detail": error.detail,
                "code": error.code,
                "request_id": _REQUEST_ID,
            }
        )
        self._body_head, self._body_tail = body.split(_REQUEST_ID.encode())
        self._raw_retry = f"\r\nRetry-After: {settings.retry_after}\r\nContent-Length: ".encode()

    def reservation(self, request: web.Request) -> int:
        """Body bytes this request may hold while in flight."""
        length = request.content_length
        if length is None:
            return self.max_body_bytes if request.body_exists else 0
        return min(length, self.max_body_bytes)

    def take(self, request: web.Request) -> web.Response | int:
        """``admission_middleware``'s decision on a request to a bounded path that was not
        accepted beyond the connection bound: the refusal, or the body bytes it reserved (the
        request now counted in flight until ``release``)."""
        protocol = request._protocol
        if isinstance(protocol, _DoorHandler) and protocol.held:
            protocol.held -= 1  # the slot the door held for this request is its own now
            self.held -= 1
        if self.refusing():
            return self.refusal(self.reason_now())
        reserved = self.reservation(request)
        if reserved and self.body_bytes + reserved > self.settings.max_body_bytes_in_flight:
            return self.refusal("body_bytes")
        self.admitted()
        self.body_bytes += reserved
        return reserved

    def release(self, reserved: int) -> None:
        """A request ``take`` admitted has its answer (or failed): out of flight."""
        self.in_flight -= 1
        self.body_bytes -= reserved

    def admitted(self) -> None:
        self.in_flight += 1
        self._admissions += 1
        self._peak = max(self._peak, self.in_flight)
        if self.target > 0 and not self.delay.running:
            self.delay.start()

    def interval_ended(self, delay: float, busy: float) -> bool:
        """Adapt the bound to the last interval's mean delay and the share of it the loop's
        thread was on the CPU; False: stop probing (nothing in flight)."""
        ceiling = self.settings.max_in_flight
        # Refusing: more refused than admitted in the interval (demand at least twice what
        # the worker takes in). A few refusals in a burst at a moderate load must not switch
        # to the tight target: its cut would refuse more and keep it there.
        refusing = self._rids - self._rids_seen > self._admissions - self._admissions_seen
        self._rids_seen = self._rids
        self._admissions_seen = self._admissions
        target = self.target
        if refusing and self.refusing_target > 0:
            target = min(target, self.refusing_target)
        late = delay > target
        if late and busy >= _BUSY:
            base = min(self.limit, self._peak)
            floor = min(self.settings.min_in_flight, ceiling)
            # Refusing, the worker has more to do than it takes in: a deeper cut costs
            # refusals, not idle time, so it falls to target/delay at once.
            scale = target / delay if refusing else max(0.75, target / delay)
            self.limit = max(floor, int(base * scale))
        elif self._peak >= self.limit and self.limit < ceiling and not (refusing and late):
            # (Refusing and late, but off the CPU: held. More calls in flight would not be
            # answered sooner once the core is back, only wait longer.)
            self.limit = min(ceiling, self.limit + max(1, self.limit // 8))
        self._peak = self.in_flight
        if self.in_flight > 0:
            return True
        # Nothing in flight: stop (an idle worker wakes for nothing); the next admitted
        # request starts the probe again. Nothing refused for a while either
        # (``_CALM``): whatever lowered the bound has passed, and it starts from the ceiling
        # again (under overload, in flight falls to nothing now and then).
        if time.monotonic() - self._last_refusal >= _CALM:
            self.limit = ceiling
        return False

    def refusing(self) -> bool:
        """Is a request that arrives now refused for the bound on requests in flight (the
        slots the door holds for requests on their way to the middleware included)?"""
        return self.in_flight + self.held >= self.limit

    def pressed(self) -> bool:
        """Did this worker refuse a request lately (within ``_CALM``)? Then the door holds a
        slot for each request it hands on (``_DoorHandler``); otherwise it stays out of the way."""
        return time.monotonic() - self._last_refusal < _CALM

    def reason_now(self) -> str:
        return "queue_delay" if self.limit < self.settings.max_in_flight else "requests"

    def refusal(self, reason: str, *, counted: bool = False) -> web.Response:
        """The 503 answer; ``counted``: the refusal was counted already (a connection beyond
        the bound is counted when it is accepted)."""
        request_id = self._refused(reason, counted=counted)
        return web.Response(
            body=b"".join((self._body_head, request_id.encode(), self._body_tail)),
            status=503,
            content_type=CONTENT_TYPE,
            headers={"X-Request-ID": request_id, "Retry-After": str(self.settings.retry_after)},
        )

    def raw_refusal(self, reason: str, *, close: bool, counted: bool = False) -> bytes:
        """The same 503 as ``refusal``, as the bytes of a whole HTTP/1.1 answer (the door's)."""
        request_id = self._refused(reason, counted=counted).encode()
        body = b"".join((self._body_head, request_id, self._body_tail))
        return b"".join(
            (
                _RAW_HEAD,
                request_id,
                b"\r\nDate: ",
                rfc822_formatted_time().encode(),
                self._raw_retry,
                str(len(body)).encode(),
                b"\r\nConnection: close\r\n\r\n" if close else b"\r\n\r\n",
                body,
            )
        )

    def _refused(self, reason: str, *, counted: bool) -> str:
        """Count and (now and then) log one refusal; its request id."""
        if self._on_refused is not None and not counted:
            self._on_refused(reason)
        self._refused_since_warning += 1
        now = self._last_refusal = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            log.warning(
                "gateway_overloaded",
                reason=reason,
                refused=self._refused_since_warning,
                in_flight=self.in_flight,
                limit=self.limit,
                queue_delay_ms=round(self.delay.last * 1000, 2),
                body_bytes=self.body_bytes,
            )
            self._last_warning = now
            self._refused_since_warning = 0
        self._rids += 1
        return f"{self._rid_prefix}{self._rids:010x}"

    # connections accepted beyond the bound (``limit_connections``)

    def late(self, protocol: Any) -> None:
        self._late.add(protocol)

    def gone(self, protocol: Any) -> None:
        self._late.discard(protocol)

    @property
    def late_count(self) -> int:
        return len(self._late)

    def can_answer_late(self, limit: int) -> bool:
        """Answer a connection beyond the bound with a 503, or reset it? A 503 costs the
        worker a request's parsing and writing and a connection's set-up, several times what a
        reset costs: only while few such connections wait and the loop is on time. A worker
        already behind resets, or a connection storm would put it further behind."""
        return len(self._late) < _late_cap(limit) and self.delay.last <= self.target

    def is_late(self, protocol: Any) -> bool:
        return bool(self._late) and protocol in self._late


ADMISSION = web.AppKey("admission", Admission)


class _DoorHandler(RequestHandler):
    """aiohttp's connection, which answers refused requests as it parses them.

    Refused in the middleware, a request still costs the worker what aiohttp does before it:
    a wake-up of the connection's task, a Request, a task of its own and the response's
    rendering and writing, about ten times what the refusal itself costs. Under overload the
    refusals then take most of the loop, and the calls it admitted wait behind them at each of
    their awaits. So while the worker is at its bound on requests in flight, a connection
    between two requests (none in progress, none queued) answers each complete request it
    parses with the pre-rendered 503 at once, on the transport, and hands on only what it
    must not refuse here: health, readiness and metrics, a HEAD, an upgrade, a request whose
    body has not fully arrived (the middleware refuses it, and aiohttp reads or drops the
    rest of the body as for any answer) and whatever follows such a request on the
    connection (answers go out in order). A request asking to close the connection is
    answered with ``Connection: close`` and the connection closed; a connection accepted
    beyond the bound likewise after its first answer. While the client does not read its
    answers (the transport's buffer is full) nothing more is answered here either.

    A worker that refused lately stays close to its bound, and a slot that comes free there
    would otherwise let through every request parsed in the same turn of the loop: all of them
    pass the door (the slot is free) and all but one are refused in the middleware, at several
    times the door's cost. So while the worker is pressed (``Admission.pressed``) the door also
    looks at requests it does not refuse: the first complete, refusable request it hands on holds
    a slot (``Admission.held``) until the middleware takes it in, or the connection is lost."""

    __slots__ = ("at_boundary", "heard_at", "held", "refused_head")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held = 0
        """Slots of ``Admission.held`` held for the requests this connection handed on."""
        self.heard_at = 0.0
        """When the client last sent bytes (the loop's clock)."""
        self.at_boundary = True
        """aiohttp's parser stands between two requests: every read so far held exactly one
        whole request (``_whole``). Not known otherwise, for good."""
        self.refused_head: tuple[bytes, int] | None = None
        """The head of the last request the door refused after aiohttp's parser read it (one
        whole, keep-alive request in one read) and that read's length: a read of the same
        length starting with the same head is the same request to that parser, and is refused
        from its bytes (``_refuse_again``)."""

    def idle_since(self) -> float | None:
        """Since when this connection has been idle between two requests (its last answer
        written, nothing received since, nothing in progress or queued), or None.

        aiohttp's keep-alive timer closes such a connection when it has been idle for
        ``keepalive_timeout``; ``reclaim_idle`` closes it sooner, when a new one needs its place."""
        waiter = self._waiter
        if waiter is None or waiter.done() or self._messages or self._force_close:
            return None
        answered_at = self._next_keepalive_close_time - self._keepalive_timeout
        return answered_at if self.heard_at <= answered_at else None

    def data_received(self, data: bytes) -> None:
        self.heard_at = self._loop.time()
        waiter = self._waiter
        door: Admission | None = getattr(self._manager, "admission", None)
        before = self._request_count
        if (
            door is None
            or waiter is None
            or waiter.done()
            or self._messages
            or self._payload_parser is not None
            or self._upgraded
            or self._paused
            or not (door.refusing() or door.is_late(self) or door.pressed())
        ):
            super().data_received(data)
            if self.at_boundary:
                self._whole(data, before)
            return
        again = self.refused_head
        if (
            again is not None
            and self.at_boundary
            and len(data) == again[1]
            and data.startswith(again[0])
            and self._refuse_again(door)
        ):
            return
        # Parse without waking the connection's task; wake it below for what is handed on.
        self._waiter = None
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        head = self._whole(data, before) if self.at_boundary else 0
        if self._answer_at_the_door(door):
            if head and not self._messages and not self._force_close:
                self.refused_head = (data[:head], len(data))  # refused here, kept alive
            if self._messages and not waiter.done():
                waiter.set_result(None)

    def _whole(self, data: bytes, before: int) -> int:
        """After aiohttp's parser read ``data`` from between two requests: the length of the
        head of the one whole request ``data`` held (its body all of the rest), or 0, and the
        parser no longer known to stand between requests."""
        messages = self._messages
        if self._request_count - before == 1 and messages:
            message, payload = messages[-1]
            head = data.find(b"\r\n\r\n") + 4
            if (
                head >= 4
                and isinstance(message, RawRequestMessage)
                and not message.chunked
                and not message.upgrade
                and (payload is EMPTY_PAYLOAD or payload.is_eof())
                and len(data) - head == int(message.headers.get(hdrs.CONTENT_LENGTH, 0))
            ):
                return head
        self.at_boundary = False
        return 0

    def _refuse_again(self, door: Admission) -> bool:
        """Refuse, from its bytes, a request the same as the last one refused here after
        parsing (``refused_head``): aiohttp's parser would build its headers, URL, message and
        body stream only for the door to drop them. False: the worker takes it in now (or the
        connection is closing); the parser then reads it."""
        transport = self.transport
        if not door.refusing() or transport is None or self._force_close or self._close:
            return False
        self._request_count += 1
        transport.write(door.raw_refusal(door.reason_now(), close=False))
        self._idle_again()
        return True

    def _idle_again(self) -> None:
        """Answered at the door, the connection is idle again: its keep-alive timer starts anew."""
        if self._keepalive_timeout > 0:
            close_time = self._loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def _answer_at_the_door(self, door: Admission) -> bool:
        """Refuse the queued requests that may be refused here; False: the connection closed."""
        messages = self._messages
        transport = self.transport
        answered = False
        while messages and transport is not None and not self._paused:
            message, payload = messages[0]
            if not isinstance(message, RawRequestMessage) or not _refusable(message, payload):
                break
            late = door.is_late(self)
            if not late and not door.refusing():
                door.held += 1  # handed on with a slot, which the middleware takes over
                self.held += 1
                break
            messages.popleft()
            if self._parser is not None:
                self._parser.message_consumed()
            close = late or message.should_close
            if late:
                answer = door.raw_refusal("connections", close=True, counted=True)
            else:
                answer = door.raw_refusal(door.reason_now(), close=close)
            transport.write(answer)
            answered = True
            if close:
                self.force_close()  # flushes the answer, then closes
                return False
        if answered:
            if self._buffer_paused and len(messages) <= self._msg_queue_resume_size:
                self._resume_reading_if_drained()
            self._idle_again()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        door: Admission | None = getattr(self._manager, "admission", None)
        if self.held and door is not None:
            door.held -= self.held  # handed on, never taken in: the slots are free again
        self.held = 0
        super().connection_lost(exc)


def _refusable(message: RawRequestMessage, payload: Any) -> bool:
    """May the door refuse this parsed request (its answer needs no handler)?"""
    return (
        message.method != "HEAD"
        and not message.upgrade
        and (payload is EMPTY_PAYLOAD or payload.is_eof())
        and message.path.partition("?")[0] not in UNBOUNDED_PATHS
    )


class _DoorServer(web.Server):
    """aiohttp's server whose connections are ``_DoorHandler``s."""

    admission: Admission

    def __call__(self) -> RequestHandler:
        return _DoorHandler(self, loop=self._loop, **self._kwargs)


def refuse_at_the_door(server: web.Server, admission: Admission) -> None:
    """Have ``server``'s connections refuse, while ``admission`` is at its bound, the requests
    they parse before aiohttp builds anything for them (``_DoorHandler``)."""
    server.__class__ = _DoorServer
    server.admission = admission  # type: ignore[attr-defined]


_RECLAIM_MAX = 32
"""Idle connections closed at most at once to make room (``reclaim_idle``)."""
_RECLAIM_PAUSE = 0.05
"""Seconds without a look for idle connections after a look that found none."""


def reclaim_idle(server: web.Server, closing: set[Any], admission: Admission) -> int:
    """Close the connections of ``server`` idle the longest between two requests: an eighth of
    the idle ones, at least one and at most ``_RECLAIM_MAX``; how many (0: none is idle).

    A worker at its connection bound that still holds idle keep-alive connections (a client's
    pool keeps them open after a burst) makes room by closing them rather than resetting the
    connection that arrives: the client of an idle connection sees it closed, as when its
    keep-alive time runs out, and opens another when it needs one. ``closing`` holds the
    handlers closed here until their connection is gone (they no longer count). Connections
    accepted beyond the bound (``Admission.late``) are not taken: they have their one answer
    and their grace."""
    idle = []
    for handler in server._connections:  # (its public list is a copy made per call)
        if (
            isinstance(handler, _DoorHandler)
            and handler not in closing
            and not admission.is_late(handler)
        ):
            since = handler.idle_since()
            if since is not None:
                idle.append((since, id(handler), handler))
    if not idle:
        return 0
    count = max(1, min(_RECLAIM_MAX, len(idle) // 8))
    for _, _, handler in heapq.nsmallest(count, idle):
        closing.add(handler)
        handler.force_close()
    return count


def _late_cap(limit: int) -> int:
    """Connections beyond the bound answered with a 503 at the same time; more are aborted."""
    return max(8, limit // 16)


def limit_connections(
    server: web.Server,
    limit: int,
    on_refused: Callable[[], None],
    admission: Admission | None = None,
) -> None:
    """Refuse every connection accepted while ``server`` already holds ``limit`` of them:
    with one 503 and ``Connection: close`` when ``admission`` is given (its middleware
    answers it), else by closing it at once. With ``admission``, a connection that arrives at
    the bound while others sit idle between two requests is taken in instead, and the idle
    ones longest idle are closed to make room (``reclaim_idle``)."""
    register = server.connection_made
    unregister = server.connection_lost
    closing: set[Any] = set()
    """Idle connections closed to make room (``reclaim_idle``) whose loss is not yet seen."""
    none_idle_until = 0.0

    def reclaimed() -> bool:
        """Room made by closing idle connections? A look at every connection costs some
        hundreds of microseconds at a thousand: after one that found none idle, the next waits
        ``_RECLAIM_PAUSE`` (in a storm of busy connections, arrivals are reset cheaply)."""
        nonlocal none_idle_until
        if admission is None:
            return False
        now = time.monotonic()
        if now < none_idle_until:
            return False
        if reclaim_idle(server, closing, admission):
            return True
        none_idle_until = now + _RECLAIM_PAUSE
        return False

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        held = len(server._connections) - len(closing)
        if held >= limit and not reclaimed():
            on_refused()
            if admission is None or not admission.can_answer_late(limit):
                # Reset unread, once aiohttp's handler task has started: aborting here, before
                # the handler registers, ran its connection_lost first and failed its start.
                asyncio.get_running_loop().call_soon(transport.abort)
            else:
                admission.late(handler)
                asyncio.get_running_loop().call_later(_LATE_CONNECTION_GRACE, transport.abort)
        register(handler, transport)

    def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
        closing.discard(handler)
        if admission is not None:
            admission.gone(handler)
        unregister(handler, exc)

    server.connection_made = connection_made  # type: ignore[method-assign]
    server.connection_lost = connection_lost  # type: ignore[method-assign]


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse at once what this worker cannot take in now; count what it takes in."""
    admission = request.app[ADMISSION]
    if admission.is_late(request.protocol):
        # Accepted beyond the connection bound: one answer, then the connection closes.
        late = (
            await handler(request)
            if request.path in UNBOUNDED_PATHS
            else admission.refusal("connections", counted=True)
        )
        late.force_close()
        return late
    if request.path in UNBOUNDED_PATHS:
        return await handler(request)
    taken = admission.take(request)
    if not isinstance(taken, int):
        return taken
    try:
        return await handler(request)
    finally:
        admission.release(taken)
