"""Pins on library code that the gateway stands in for.

Where the gateway does for its own case what a library function does in general (aiohttp's
dispatch, its client's write and read), a guard test keeps a short digest of each library
function's source relied on: an upgrade of the library that changes one of them fails that
test, naming the function, before anyone relies on code that is no longer there."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any


def source_digest(function: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``function``'s source text."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
