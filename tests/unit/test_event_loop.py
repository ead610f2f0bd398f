"""server.event_loop: which loop a server process runs on, read before the loop exists."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway import event_loop
from gateway.event_loop import EventLoopUnavailable, configured_choice
from gateway.settings import ServerSettings


def test_auto_takes_uvloop_when_installed_and_asyncio_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("uvloop")
    assert event_loop.resolve("auto") == "uvloop"
    assert event_loop.resolve("asyncio") == "asyncio"
    monkeypatch.setattr(event_loop, "uvloop_installed", lambda: False)
    assert event_loop.resolve("auto") == "asyncio"
    with pytest.raises(EventLoopUnavailable, match="uvloop is not installed"):
        event_loop.resolve("uvloop")


def test_run_runs_the_coroutine_on_the_chosen_loop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def kind() -> type[asyncio.AbstractEventLoop]:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop())

    assert event_loop.run(kind(), "uvloop") is uvloop.Loop
    assert not issubclass(event_loop.run(kind(), "asyncio"), uvloop.Loop)


def test_a_missing_uvloop_fails_before_the_coroutine_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_loop, "uvloop_installed", lambda: False)
    started = []

    async def serve() -> int:
        started.append(True)
        return 0

    with pytest.raises(EventLoopUnavailable):
        event_loop.run(serve(), "uvloop")
    assert started == []


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("server:\n  event_loop: auto\n", "auto"),
        ("server:\n  event_loop: uvloop\n  port: 8080\n", "uvloop"),
        ("server:\n  port: 8080\n", "asyncio"),
        ("logging:\n  level: info\n", "asyncio"),
        ("server:\n  event_loop: trio\n", "asyncio"),  # the full load reports the bad value
        ("server: [1, 2\n", "asyncio"),  # unreadable: the full load reports it
        ("", "asyncio"),
    ],
)
def test_the_choice_is_read_from_gateway_yaml(tmp_path: Path, text: str, choice: str) -> None:
    (tmp_path / "gateway.yaml").write_text(text, "utf-8")
    assert configured_choice(tmp_path) == choice


def test_no_gateway_yaml_means_the_default(tmp_path: Path) -> None:
    assert configured_choice(tmp_path) == "asyncio" == event_loop.DEFAULT


def test_the_setting_is_validated_with_the_configuration() -> None:
    assert ServerSettings().event_loop == event_loop.DEFAULT
    assert ServerSettings.model_validate({"event_loop": "auto"}).event_loop == "auto"
    with pytest.raises(ValidationError):
        ServerSettings.model_validate({"event_loop": "trio"})
