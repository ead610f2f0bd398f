"""A licence's data goes with a case only where every route's agreement says so (免证办
``with_data`` and ``licence_data`` on the routes); otherwise only the reference and the
verification travel."""

from __future__ import annotations

import copy
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.demo.cases import S12_CASE
from gateway.http.cases import CASES
from tests.flows.conftest import CONFIG_DIR, Journey, demo_journey


def variant(tmp_path: Path, agreed: int) -> Path:
    """The demo's configuration with S12's certificate sent with its data, and the first
    ``agreed`` of its three routes agreeing to it."""
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config, symlinks=False)
    service = config / "services" / "newborn-bundle.yaml"
    data = yaml.safe_load(service.read_text(encoding="utf-8"))
    data["materials"][0]["licence"]["with_data"] = True
    service.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    routes = yaml.safe_load((config / "routes.yaml").read_text(encoding="utf-8"))
    mine = [r for r in routes["routes"] if r["service"] == "newborn-bundle"]
    for route in mine[:agreed]:
        route["licence_data"] = True
    (config / "routes.yaml").write_text(yaml.safe_dump(routes, allow_unicode=True), "utf-8")
    return config


@pytest.fixture(params=[3, 2])
async def journey(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    log_stream: io.BytesIO,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Journey]:
    config = variant(tmp_path, request.param)
    (tmp_path / "run").mkdir()
    async with demo_journey(tmp_path / "run", monkeypatch, config_dir=config) as journey:
        journey.tokens["agreed"] = {"count": str(request.param)}
        yield journey


async def test_licence_data_travels_only_where_every_route_agrees(journey: Journey) -> None:
    body: dict[str, Any] = copy.deepcopy(S12_CASE[3])
    response = await journey.client.post(
        "/api/v1/cases", json=body, headers={**journey.auth(), "Idempotency-Key": "s12-data-01"}
    )
    receipt = await response.json()
    assert response.status == 202, receipt
    stored = await journey.client.app[CASES].store.get(receipt["case_id"])
    assert stored is not None
    (sent,) = stored.data["licences"]
    assert sent["type"] == "birth-medical-certificate"
    assert sent["seal_digest"].startswith("sha256:")
    if journey.tokens["agreed"]["count"] == "3":
        assert sent["data"]["newborn_name"] == "马小禾"
    else:
        assert "data" not in sent
