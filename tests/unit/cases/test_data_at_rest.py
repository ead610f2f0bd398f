"""Personal data at rest: the data directory is 0700 and every store file 0600 from creation
(the -wal and -shm files too), and a closed case's payload leaves the database file and its WAL
(secure_delete, then a truncating checkpoint), not only the table."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from gateway.adapter import Adapter, FakeAdapter, SystemSpec
from gateway.app import create_app
from gateway.cases.config import CallbackSystem, CaseSettings, DeliverySettings
from gateway.http.cases import CASES
from gateway.settings import SystemSettings
from gateway.stores.sqlite_cases import SqliteCaseStore
from tests.unit.cases.catalog_fixtures import FakeProvince, settings
from tests.unit.cases.test_http_cases import ISSUER, KEY, Api, application

ID_NUMBER = "630104198001011234"


@dataclasses.dataclass
class AtRest:
    api: Api
    data_dir: Path


@pytest.fixture
async def at_rest(tmp_path: Path) -> AsyncIterator[AtRest]:
    old_umask = os.umask(0o022)  # the usual default: files 0644 and directories 0755
    data_dir = tmp_path / "var" / "tongban"
    config = settings(tmp_path)
    cases = CaseSettings(
        callbacks={"sys-61": CallbackSystem(secret=SecretStr(KEY.decode()))},
        delivery=DeliverySettings(
            max_attempts=2, initial_backoff=0.01, jitter=0, poll_interval=0.02
        ),
    )
    config = dataclasses.replace(
        config,
        gateway=config.gateway.model_copy(update={"cases": cases, "data_dir": data_dir}),
    )
    fakes = {p: FakeProvince(p) for p in ("61", "62")}

    async def opener(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return FakeAdapter(fakes[system.province].handle)

    try:
        app = create_app(config, verifier=ISSUER, open_adapter=opener)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield AtRest(Api(client, fakes), data_dir)
    finally:
        os.umask(old_umask)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def on_disk(data_dir: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in sorted(data_dir.glob("cases.db*")) if not p.name.endswith("-shm")
    )


async def test_store_files_are_private_and_a_closed_case_leaves_no_payload(
    at_rest: AtRest,
) -> None:
    api, data_dir = at_rest.api, at_rest.data_dir
    assert mode(data_dir) == 0o700
    status, receipt = await api.post(
        "/api/v1/cases",
        application(data={"id_number": ID_NUMBER, "name": "马文华"}),
        **{"Idempotency-Key": "rest-000001"},
    )
    assert status == 202, receipt
    case_id = receipt["case_id"]
    await api.until(case_id, "processing")

    files = sorted(p for p in data_dir.iterdir() if p.is_file())
    names = {p.name for p in files}
    assert {"cases.db", "cases.db-wal", "cases.db-shm"} <= names, names
    assert {p.name: oct(mode(p)) for p in files if mode(p) & 0o077} == {}
    assert ID_NUMBER.encode() in on_disk(data_dir), "the open case's payload is stored"

    status, answer = await api.callback({"sequence": 1, "case_id": case_id, "status": "done"})
    assert (status, answer["status"]) == (200, "applied")
    await api.until(case_id, "closed")
    store = api.client.app[CASES].store
    assert isinstance(store, SqliteCaseStore)
    # The store's own checkpoint after an erasure, not one the test makes.
    for _ in range(200):
        if ID_NUMBER.encode() not in on_disk(data_dir):
            break
        await asyncio.sleep(0.05)
    assert ID_NUMBER.encode() not in on_disk(data_dir)
    assert "马文华".encode() not in on_disk(data_dir)
    assert (data_dir / "cases.db-wal").stat().st_size == 0
