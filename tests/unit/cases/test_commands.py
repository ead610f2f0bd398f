"""`tongban cases list | show | replay` on an embedded data directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from gateway.cases.lifecycle import plan_step
from gateway.cases.model import PartStatus
from gateway.cases.store import EntryKind, FinishEntry, PartChange
from gateway.cli import main
from gateway.stores.sqlite_cases import SqliteCaseStore
from tests.unit.cases.test_store_contract import AT, create, new_case


async def _dead_lettered_case(data_dir: Path) -> str:
    store = SqliteCaseStore(data_dir / "cases.db")
    await store.open()
    try:
        case = (await create(store, new_case())).case
        claimed = await store.claim("w", now=100.0, lease=10, limit=10)
        deliver = next(e for e in claimed if e.kind == EntryKind.DELIVER)
        await store.commit(
            plan_step(
                case,
                [PartChange(0, PartStatus.DEAD_LETTERED, error_code="backend.timeout")],
                at=AT,
                now=101.0,
                finish=FinishEntry(deliver.entry_id, "w", "dead", "backend.timeout"),
            )
        )
        return case.case_id
    finally:
        await store.aclose()


def test_list_show_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case_id = asyncio.run(_dead_lettered_case(tmp_path))
    where = ["--data-dir", str(tmp_path)]
    assert main(["cases", "list", *where]) == 0
    out = capsys.readouterr().out
    assert case_id in out
    assert "dead_lettered" in out
    assert main(["cases", "list", "--dead-letters", *where]) == 0
    assert "backend.timeout" in capsys.readouterr().out
    assert main(["cases", "show", case_id, *where]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["status"] == "dead_lettered"
    assert "data" not in shown, "the CLI never prints a case's data"
    assert main(["cases", "replay", case_id, *where]) == 0
    assert "replayed (1 entries) → received" in capsys.readouterr().out
    assert main(["cases", "replay", "--all", *where]) == 0
    assert main(["cases", "list", "--json", "--status", "received", *where]) == 0
    assert [c["case_id"] for c in orjson.loads(capsys.readouterr().out)] == [case_id]
    assert main(["cases", "show", "NOPE", *where]) == 1


def test_every_cases_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["cases"], ["cases", "list"], ["cases", "show"], ["cases", "replay"]):
        with pytest.raises(SystemExit) as done:
            main([*argv, "--help"])
        assert done.value.code == 0
        assert "usage: tongban cases" in capsys.readouterr().out
