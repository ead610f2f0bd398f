"""A route carries what the call handler used to work out from the service's settings on every
call (the admitted identity levels, how a refusal names them, the declared data subject): the
same answers, built with the catalogue, so a configuration reload (a new catalogue) rebuilds them.
"""

from __future__ import annotations

import copy
from pathlib import Path

from gateway.catalog import Catalog
from gateway.pipeline import Next
from gateway.settings import Operation, RouteSettings, ServiceSettings, Settings
from tests.unit.cases import catalog_fixtures


def _stack(route: RouteSettings, operation: Operation) -> Next:
    async def never(call: object, trace: object) -> object:
        raise AssertionError("not called")

    return never  # type: ignore[return-value]


def _settings(tmp_path: Path, *, status_levels: list[str] | None) -> Settings:
    config = catalog_fixtures.settings(tmp_path)
    raw = copy.deepcopy(catalog_fixtures.SERVICE)
    if status_levels is not None:
        raw["operations"]["status"]["levels"] = status_levels
    services = {"filing": ServiceSettings.model_validate(raw)}
    return Settings(config.config_dir, config.gateway, config.systems, services, config.routes)


def test_each_route_answers_as_its_service_settings_do(tmp_path: Path) -> None:
    config = _settings(tmp_path, status_levels=["L3", "LP"])
    catalog = Catalog.build(config, _stack)
    service = config.services["filing"]
    for route in catalog.routes:
        name = route.operation_name
        assert route.levels == service.levels_for(name)
        assert route.level_requirement == service.level_requirement(name)
        assert route.subject == service.subject_of(name)
    status = catalog.route("filing", "status", "63", "61")
    assert (status.levels, status.level_requirement) == (frozenset({"L3", "LP"}), "L3, LP")
    assert catalog.route("filing", "lookup", "63", "61").level_requirement == "L2"


def test_a_new_catalogue_carries_the_new_settings(tmp_path: Path) -> None:
    before = Catalog.build(_settings(tmp_path, status_levels=None), _stack)
    after = Catalog.build(_settings(tmp_path, status_levels=["LP"]), _stack)
    assert "L2" in before.route("filing", "status", "63", "61").levels
    assert after.route("filing", "status", "63", "61").levels == frozenset({"LP"})
