"""Operations logs: structlog set-up, and the masking processor that runs on every line.

Personal data never appears unmasked: resident ID numbers and mobile numbers are masked
wherever they occur in a value; values under name-like keys are masked; secrets, signatures,
tickets and tokens are dropped entirely. Every secret the configuration resolved
(``register_secret``, called by gateway/secrets.py) is replaced wherever it occurs in a value,
under any key. Event names are snake_case past tense with a fixed key
vocabulary (request_id, case_id, service, province, system, attempt, duration_ms, error_code).
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import re
import sys
import time
import uuid
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

import orjson
import structlog
import structlog.contextvars

_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])([1-9]\d{5})(\d{8})(\d{3}[0-9Xx])(?![0-9A-Za-z])")
_MOBILE = re.compile(r"(?<!\d)(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
_SECRET_KEYS = frozenset(
    {
        "password",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "authorization",
        "sign",
        "signature",
        "ticket",
        "cookie",
        "api_key",
        "code_verifier",
    }
)
_NAME_KEYS = frozenset({"name", "xm", "holder_name", "full_name", "applicant_name", "aac003"})


_MIN_SECRET = 6
"""Shorter values are not searched for: they would mask ordinary words."""
_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None
_pattern_stale = False
_CLEAN_MAX = 1024
"""Most values kept in ``_clean`` before it starts over."""
_CLEAN_LONGEST = 128
"""Longer values are masked every time, never kept."""
_clean: set[str] = set()
"""Values seen to have nothing to mask (no registered secret, ID number or mobile): the route,
service, province, outcome, ... that every access line repeats. Replaced by an empty set
whenever the set of secrets changes (after the pattern is marked stale), since a new secret
may occur in one of them: a line being masked meanwhile on another thread adds to the old set."""


def register_secret(value: str) -> str:
    """Mask ``value`` in every log line from now on; returns it unchanged."""
    global _pattern_stale  # noqa: PLW0603 - one process-wide set, read on every line
    if len(value) >= _MIN_SECRET and value not in _secrets:
        if _could_be_in_a_stamp(value):
            _set_stamp_clean(False)  # before the secret is added: see ``_stamp_clean``
        _secrets.add(value)
        _pattern_stale = True  # compiled at the next line: a start registers tens at once
        _forget_clean()
    return value


def registered_secrets() -> frozenset[str]:
    return frozenset(_secrets)


def forget_secrets_except(keep: frozenset[str]) -> None:
    """Stop masking every secret not in ``keep`` (the test suite: each test's configuration
    registers secrets of its own, and one process runs hundreds of tests)."""
    global _pattern_stale  # noqa: PLW0603
    _secrets.intersection_update(keep)
    _pattern_stale = True
    _forget_clean()
    _set_stamp_clean(not any(_could_be_in_a_stamp(s) for s in tuple(_secrets)))


_STAMP_CHARACTERS = frozenset("0123456789-:.TZ")
_stamp_clean = True
"""Whether no registered secret could occur in a line's time stamp (each has a character no
stamp has): then the stamp, ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``, has nothing to mask (nor an
ID number or a mobile: at most six digits in a row) and is not searched. Set to False before
a secret that could is registered."""


def _could_be_in_a_stamp(secret: str) -> bool:
    return set(secret) <= _STAMP_CHARACTERS


def _set_stamp_clean(clean: bool) -> None:
    global _stamp_clean  # noqa: PLW0603 - one process-wide flag, read on every access line
    _stamp_clean = clean


def _forget_clean() -> None:
    global _clean  # noqa: PLW0603 - swapped, never emptied in place: see its docstring
    _clean = set()


def _pattern() -> re.Pattern[str] | None:
    global _secret_pattern, _pattern_stale  # noqa: PLW0603
    if _pattern_stale:
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None
        _pattern_stale = False
    return _secret_pattern


def mask_secrets(text: str) -> str:
    """``text`` with every registered secret replaced."""
    pattern = _pattern() if _pattern_stale else _secret_pattern
    return pattern.sub("[redacted]", text) if pattern is not None else text


def mask_text(text: str) -> str:
    """Mask ID numbers (keep the first and last character) and mobiles (keep 3 + 4)."""
    text = _ID_NUMBER.sub(lambda m: m.group(0)[0] + "*" * 16 + m.group(0)[-1], text)
    return _MOBILE.sub(lambda m: m.group(1) + "****" + m.group(3), text)


def mask_name(name: str) -> str:
    """张三丰 → 张**; the surname alone does not identify."""
    return name[:1] + "*" * max(len(name) - 1, 1) if name else name


def _masked_text(text: str) -> str:
    """``mask_text(mask_secrets(text))``; a short value found to have nothing to mask is
    remembered (``_clean``), so that the values every line repeats are not searched again."""
    clean = _clean  # before the pattern is read: see ``_clean``
    if text in clean:
        return text
    masked = mask_text(mask_secrets(text))
    if masked == text and len(text) <= _CLEAN_LONGEST:
        if len(clean) >= _CLEAN_MAX:
            clean.clear()
        clean.add(text)
    return masked


def _mask(key: str, value: Any) -> Any:
    lowered = key.lower()
    if lowered in _SECRET_KEYS:
        return "[redacted]"
    if isinstance(value, str):
        if lowered in _NAME_KEYS:
            return mask_name(mask_secrets(value))
        return _masked_text(value)
    if isinstance(value, Mapping):
        return {k: _mask(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(key, v) for v in value]
    if value is None or isinstance(value, bool | int | float | datetime.date | uuid.UUID):
        return value
    # Any other object is rendered by its repr (the JSON renderer's fallback) or field by field
    # (a dataclass): the text it would show is masked like any other.
    return _masked_text(repr(value))


def mask_personal_data(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: runs last before rendering, on every line."""
    for key in list(event_dict):
        event_dict[key] = _mask(key, event_dict[key])
    return event_dict


_info_enabled = True

_REQUEST_ID_KEY = "request_id"
_CONTEXT_VARS: dict[str, contextvars.ContextVar[Any]] | None = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)
"""structlog's own variables, one per key ever bound (``bind_contextvars`` adds to it, nothing
removes from it). Without it (another version of structlog), ``bind_request_id`` clears and
binds through structlog's public functions."""
_request_id_var: contextvars.ContextVar[Any] | None = None
_others: tuple[contextvars.ContextVar[Any], ...] = ()
_others_seen = -1
"""structlog's variables other than the request id's, as of when ``_CONTEXT_VARS`` held
``_others_seen`` of them."""


_Variable = contextvars.ContextVar[Any]


def _context_variables() -> tuple[_Variable, tuple[_Variable, ...]]:
    """The request id's variable (structlog's, made as ``bind_contextvars`` makes it) and the
    others structlog has made so far."""
    global _request_id_var, _others, _others_seen  # noqa: PLW0603 - follows structlog's dict
    assert _CONTEXT_VARS is not None
    if _request_id_var is None:  # structlog's variable, made as bind_contextvars makes it
        token = structlog.contextvars.bind_contextvars(**{_REQUEST_ID_KEY: ...})[_REQUEST_ID_KEY]
        token.var.reset(token)  # and left as it was
        _request_id_var = token.var
    if len(_CONTEXT_VARS) != _others_seen:
        variables = tuple(_CONTEXT_VARS.values())  # one step: another thread may add meanwhile
        _others = tuple(v for v in variables if v is not _request_id_var)
        _others_seen = len(variables)
    return _request_id_var, _others


def bind_request_id(request_id: str) -> None:
    """A request begins: ``request_id`` bound to every log line it writes, and nothing else a
    previous request bound in this context (``clear_contextvars`` then ``bind_contextvars``,
    without going through every context variable of the task to find structlog's)."""
    if _CONTEXT_VARS is None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**{_REQUEST_ID_KEY: request_id})
        return
    variable, others = _context_variables()
    for other in others:
        if other.get() is not ...:
            other.set(...)  # what clear_contextvars sets: "not bound"
    variable.set(request_id)


_ACCESS_EVENT = "request_completed"
_ACCESS_KEYS = frozenset(
    {"method", "route", "status", "duration_ms", "event", "level", "timestamp", "exc_info",
     _REQUEST_ID_KEY}
)  # fmt: skip
"""Keys the access line sets itself, or that structlog's processors would treat apart."""


class _JsonLines:
    """What ``configure_logging`` set up for JSON lines, to write the access line in one step
    while structlog is still configured that way (not, say, inside ``capture_logs``)."""

    __slots__ = ("factory", "out", "processors", "render", "snapshot", "wrapper")

    def __init__(self, processors: list[Any], factory: Any, wrapper: Any, stream: Any) -> None:
        self.processors = processors
        self.snapshot = tuple(processors)
        self.render = processors[-1]  # the JSONRenderer: orjson, and structlog's fallback
        self.factory = factory
        self.wrapper = wrapper
        self.out = structlog.BytesLogger(stream)  # the lock of every line written to ``stream``

    def current(self) -> bool:
        config = structlog.get_config()
        processors = config["processors"]
        return (
            processors is self.processors
            and tuple(processors) == self.snapshot
            and config["logger_factory"] is self.factory
            and config["wrapper_class"] is self.wrapper
        )


_json_lines: _JsonLines | None = None


_second_stamped: tuple[int, str] = (-1, "")
"""The last second stamped and its ``YYYY-MM-DDTHH:MM:SS`` (one tuple: read in one step)."""


def _utc_now_iso() -> str:
    """``TimeStamper(fmt="iso", utc=True)``'s stamp: ``datetime.now(tz=UTC)`` (the system
    clock, microseconds rounded down) ``.isoformat()``, ``+00:00`` as ``Z``."""
    return _stamp(time.time_ns())


def _stamp(nanoseconds: int) -> str:
    """The stamp of the moment ``nanoseconds`` after the epoch; the date and time of day made
    once per second, and the microseconds shown as ``isoformat`` shows them (not when 0)."""
    global _second_stamped  # noqa: PLW0603 - a cache of one entry
    microseconds = nanoseconds // 1000
    second, fraction = divmod(microseconds, 1_000_000)
    stamped, text = _second_stamped
    if stamped != second:
        text = datetime.datetime.fromtimestamp(second, datetime.UTC).isoformat()[:-6]
        _second_stamped = (second, text)
    return f"{text}.{fraction:06d}Z" if fraction else f"{text}Z"


def access_line(
    logger: Any, method: str, route: str, status: int, duration_ms: float, fields: dict[str, Any]
) -> None:
    """The access line of a request at level info, as ``logger.info("request_completed",
    method=..., route=..., status=..., duration_ms=..., **fields)`` writes it through the
    processors ``configure_logging`` set for JSON: the same keys in the same order, the same
    values, masked alike, written to the same stream under the same lock. Built in one step:
    structlog's chain (a logger made anew, the context merged from a copy of every context
    variable, the stamp, the masking, the rendering) costs several times the line itself.
    Anything else (console lines, another configuration, a field the chain would treat apart,
    context bound besides the request id) goes through ``logger``."""
    lines = _json_lines
    variable = _one_step_request_id(fields) if lines is not None else None
    if lines is None or variable is None:
        logger.info(
            _ACCESS_EVENT,
            method=method,
            route=route,
            status=status,
            duration_ms=duration_ms,
            **fields,
        )
        return
    event: dict[str, Any] = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": duration_ms,
        **fields,
        "event": _ACCESS_EVENT,
    }
    request_id = variable.get()
    if request_id is not ...:
        event[_REQUEST_ID_KEY] = request_id
    event["level"] = "info"
    for key, value in event.items():
        kind = type(value)
        if kind is str:
            if _key_is_plain(key):
                if value not in _clean:  # read each time: see ``_clean``
                    event[key] = _masked_text(value)
                continue
        elif kind in _UNMASKED_TYPES and _key_is_plain(key):
            continue
        event[key] = _mask(key, value)
    stamp = _utc_now_iso()
    event["timestamp"] = stamp if _stamp_clean else _mask("timestamp", stamp)
    lines.out.msg(lines.render(lines.out, "info", event))


def _one_step_request_id(fields: dict[str, Any]) -> _Variable | None:
    """The request id's variable, when the access line with ``fields`` can be built in one
    step (JSON lines as configured, info on, no field the chain treats apart, no other context
    bound); None: it goes through structlog's chain."""
    lines = _json_lines
    if (
        lines is None
        or _CONTEXT_VARS is None
        or not _info_enabled
        or not fields.keys().isdisjoint(_ACCESS_KEYS)
        or not lines.current()
    ):
        return None
    variable, others = _context_variables()
    if any(other.get() is not ... for other in others):
        return None
    return variable


_UNMASKED_TYPES = frozenset({int, float, bool, type(None)})
"""Values ``_mask`` returns as they are under a key that is neither a secret's nor a name's."""
_plain_keys: set[str] = set()


def _key_is_plain(key: str) -> bool:
    """Whether ``_mask`` treats values under ``key`` as text to search (not a secret's key,
    whose value is dropped, nor a name's); the answer kept for the few keys lines use."""
    if key in _plain_keys:
        return True
    lowered = key.lower()
    if lowered in _SECRET_KEYS or lowered in _NAME_KEYS:
        return False
    if len(_plain_keys) < _CLEAN_MAX:
        _plain_keys.add(key)
    return True


def info_enabled() -> bool:
    """Whether ``configure_logging`` lets info lines through (so before it runs, too): a line
    written on every request is not built when its level is off. (A structlog logger made
    anew for each line, as this configuration does so that it can change, costs about as much
    as the filtered line itself.)"""
    return _info_enabled


def configure_logging(
    level: str = "info", fmt: Literal["json", "console"] = "json", stream: Any = None
) -> None:
    """Configure structlog once per process; JSON via orjson for machines, console for people."""
    global _info_enabled, _json_lines  # noqa: PLW0603 - what this function sets, kept beside it
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        mask_personal_data,
    ]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    _info_enabled = numeric <= logging.INFO
    _json_lines = None
    if fmt == "json":
        processors = [*shared, structlog.processors.JSONRenderer(serializer=orjson.dumps)]
        wrapper = structlog.make_filtering_bound_logger(numeric)
        out = stream or sys.stdout.buffer
        factory = structlog.BytesLoggerFactory(file=out)
        structlog.configure(
            processors=processors,
            wrapper_class=wrapper,
            logger_factory=factory,
            cache_logger_on_first_use=False,
        )
        _json_lines = _JsonLines(processors, factory, wrapper, out)
    else:
        structlog.configure(
            processors=[*shared, structlog.dev.ConsoleRenderer(colors=False)],
            wrapper_class=structlog.make_filtering_bound_logger(numeric),
            logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
            cache_logger_on_first_use=False,
        )
