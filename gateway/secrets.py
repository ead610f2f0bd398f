"""Secret references in configuration: ``{env: NAME}`` or ``{file: PATH}``, never inline values.

Models declare a secret field as ``SecretRef``; the loader validates with the context
``{"resolve_secrets": False}`` to check a reference's shape without reading it (config check on
a machine without the secrets), which yields a placeholder long enough for length rules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr, ValidationInfo

PLACEHOLDER = "unresolved-secret-placeholder-0123456789abcdef"


def read_secret_ref(value: Any, *, resolve: bool = True) -> str:
    """The secret a reference points at; ValueError names what is wrong, never the value."""
    if isinstance(value, Mapping) and set(value) == {"env"}:
        if not resolve:
            return PLACEHOLDER
        name = str(value["env"])
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    if isinstance(value, Mapping) and set(value) == {"file"}:
        if not resolve:
            return PLACEHOLDER
        path = Path(str(value["file"]))
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"secret file {path} cannot be read ({exc.strerror})") from None
    raise ValueError("a secret must be given as {env: NAME} or {file: PATH}, never inline")


def _to_secret(value: Any, info: ValidationInfo) -> Any:
    if value is None or isinstance(value, SecretStr):
        return value
    resolve = (info.context or {}).get("resolve_secrets") is not False
    return SecretStr(read_secret_ref(value, resolve=resolve))


SecretRef = Annotated[SecretStr, BeforeValidator(_to_secret)]
"""A pydantic field type: accepts an {env}/{file} reference (or an already resolved SecretStr)."""
