"""A spy on ``asyncio.get_running_loop``: on Python 3.11 every call is a ``getpid`` system
call, so the objects a routed call touches on every step keep their loop (``KeptLoop``), and
tests count what they still ask for."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import pytest

from gateway import event_loop as event_loop_module


class CountingAsyncio:
    """``asyncio`` as the spied modules see it, counting ``get_running_loop`` calls."""

    def __init__(self) -> None:
        self.lookups = 0

    def get_running_loop(self) -> asyncio.AbstractEventLoop:
        self.lookups += 1
        return asyncio.get_running_loop()

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


def count_loop_lookups(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> CountingAsyncio:
    """Spy on ``module``'s and the loop keeper's (gateway/event_loop.py) asyncio."""
    spy = CountingAsyncio()
    monkeypatch.setattr(module, "asyncio", spy)
    monkeypatch.setattr(event_loop_module, "asyncio", spy)
    return spy
