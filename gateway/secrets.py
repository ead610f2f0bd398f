"""Secret references in configuration: ``{env: NAME}`` or ``{file: PATH}``, never inline values.

Models declare a secret field as ``SecretRef``; the loader validates with the context
``{"resolve_secrets": False}`` to check a reference's shape without reading it (config check on
a machine without the secrets), which yields a placeholder long enough for length rules.

Inside ``collecting_unset()`` a reference that cannot be read (an unset variable, an unreadable
file) yields the placeholder too and is noted instead of raising: the loader checks everything
else and names every missing secret in one line. Every value read is registered with the log
masking (gateway/logs.py), so it never appears in a log line, whatever field it travels in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr, ValidationInfo

from gateway.logs import register_secret

PLACEHOLDER = "unresolved-secret-placeholder-0123456789abcdef"


@dataclass(slots=True)
class UnsetSecrets:
    """References seen while loading whose value could not be read."""

    env: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.env or self.files)

    def summary(self) -> str:
        """One line naming them all, and what to do."""
        parts = []
        if self.env:
            parts.append(f"environment variables not set: {', '.join(sorted(self.env))}")
        if self.files:
            parts.append(f"secret files not readable: {', '.join(sorted(self.files))}")
        return (
            f"secrets: {'; '.join(parts)} (set them, or run `tongban config check --no-secrets`"
            " to check everything else)"
        )


_UNSET: ContextVar[UnsetSecrets | None] = ContextVar("tongban_unset_secrets", default=None)


@contextlib.contextmanager
def collecting_unset() -> Iterator[UnsetSecrets]:
    """Note unreadable references instead of raising, for the duration of the block."""
    seen = UnsetSecrets()
    token = _UNSET.set(seen)
    try:
        yield seen
    finally:
        _UNSET.reset(token)


def is_secret_ref(value: Any) -> bool:
    """Is ``value`` shaped like ``{env: NAME}`` or ``{file: PATH}``?"""
    return isinstance(value, Mapping) and set(value) in ({"env"}, {"file"})


def read_secret_ref(value: Any, *, resolve: bool = True) -> str:
    """The secret a reference points at; ValueError names what is wrong, never the value."""
    if isinstance(value, Mapping) and set(value) == {"env"}:
        if not resolve:
            return PLACEHOLDER
        name = str(value["env"])
        if name not in os.environ:
            unset = _UNSET.get()
            if unset is not None:
                unset.env.add(name)
                return PLACEHOLDER
            raise ValueError(f"environment variable {name} is not set")
        return register_secret(os.environ[name])
    if isinstance(value, Mapping) and set(value) == {"file"}:
        if not resolve:
            return PLACEHOLDER
        path = Path(str(value["file"]))
        try:
            return register_secret(path.read_text(encoding="utf-8").strip())
        except OSError as exc:
            unset = _UNSET.get()
            if unset is not None:
                unset.files.add(str(path))
                return PLACEHOLDER
            raise ValueError(f"secret file {path} cannot be read ({exc.strerror})") from None
    raise ValueError("a secret must be given as {env: NAME} or {file: PATH}, never inline")


def _to_secret(value: Any, info: ValidationInfo) -> Any:
    if value is None or isinstance(value, SecretStr):
        return value
    resolve = (info.context or {}).get("resolve_secrets") is not False
    return SecretStr(read_secret_ref(value, resolve=resolve))


SecretRef = Annotated[SecretStr, BeforeValidator(_to_secret)]
"""A pydantic field type: accepts an {env}/{file} reference (or an already resolved SecretStr)."""
