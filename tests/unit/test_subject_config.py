"""`config check` and the data subject of every operation; levels as a set; clients' provinces.

Every operation (and a linked application) declares whose data it is; a ``public`` or
``caller`` one may not name anyone by an ID number or a credit code; the fields named must be
required strings of the schema. Each problem names the file, the service and the operation.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.principal import Principal
from gateway.settings import ConfigError, load_settings

CONFIG = Path(__file__).resolve().parents[2] / "config"
FUND = "services/housing-fund-transfer.yaml: service 'housing-fund-transfer'"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(CONFIG, target)
    return target


def edit(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def problems_of(config: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(config, resolve_secrets=False)
    return info.value.problems


def test_an_operation_without_a_declared_subject_is_refused(config: Path) -> None:
    edit(config / "services" / "housing-fund-transfer.yaml", lambda d: d.pop("subject"))
    assert problems_of(config) == [
        f"{FUND}: operations.{op}.subject: required, missing: declare whose data this is"
        " (caller, public, or the fields naming the person or enterprise)"
        for op in ("account-query", "transfer")
    ]


def test_public_or_caller_naming_someone_by_an_identifier_is_refused(config: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data["operations"]["account-query"]["subject"] = "public"
        data["operations"]["transfer"]["subject"] = "caller"

    edit(config / "services" / "housing-fund-transfer.yaml", change)
    assert problems_of(config) == [
        f"{FUND}: operations.account-query.subject: 'public', but the input schema names someone"
        " by 'id_number': declare those fields as the subject",
        f"{FUND}: operations.transfer.subject: 'caller', but the input schema names someone by"
        " 'id_number': declare those fields as the subject",
    ]


def test_named_fields_must_be_required_strings_of_the_schema(config: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data["subject"] = "everyone"
        data["operations"]["account-query"]["subject"] = [{"person": "id_numbr"}]
        data["operations"]["transfer"]["subject"] = [
            {"person": "in_account_no"},
            {"person": "id_number", "enterprise": "id_number"},
        ]

    edit(config / "services" / "housing-fund-transfer.yaml", change)
    # The shape first, in the words of the file (no pydantic type names).
    assert problems_of(config) == [
        f"{FUND}: subject: Input should be 'caller' or 'public'",
        f"{FUND}: operations.transfer.subject.1: name exactly one of 'person' (an ID number) or"
        " 'enterprise'",
    ]
    # Then the fields against the schema.
    edit(
        config / "services" / "housing-fund-transfer.yaml",
        lambda d: (
            d.update(subject=[{"person": "id_number"}]),
            d["operations"]["transfer"].update(subject=[{"person": "in_account_no"}]),
        ),
    )
    assert problems_of(config) == [
        f"{FUND}: operations.account-query.subject[0]: 'id_numbr' is not a field of the input"
        " schema",
        f"{FUND}: operations.transfer.subject[0]: 'in_account_no' must be required by the input"
        " schema (a request could leave it out)",
    ]


def test_a_linked_application_declares_its_co_applicants(config: Path) -> None:
    edit(
        config / "services" / "second-hand-home-transfer.yaml",
        lambda d: d["linked"].update(subject=[{"person": "seller.id_number"}, {"person": "x.y"}]),
    )
    assert problems_of(config) == [
        "services/second-hand-home-transfer.yaml: service 'second-hand-home-transfer':"
        " linked.subject[1]: 'x.y' is not a field of the input schema"
    ]


def test_levels_as_a_set_admit_persons_and_enterprises_alike(config: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data.pop("min_level")
        data["levels"] = ["L1", "L2", "L3", "LP"]
        data["operations"]["transfer"]["levels"] = ["L3"]

    edit(config / "services" / "housing-fund-transfer.yaml", change)
    service = load_settings(config, resolve_secrets=False).services["housing-fund-transfer"]
    assert service.levels_for("account-query") == {"L1", "L2", "L3", "LP"}
    assert service.levels_for("transfer") == {"L3"}
    assert service.levels_for(None) == {"L1", "L2", "L3", "LP"}
    enterprise = Principal(subject="e", level="LP", client_id="p")
    enterprise.require_levels(service.levels_for("account-query"), "L1, L2, L3, LP")
    counter = Principal(subject="c", level="Counter", client_id="w")
    with pytest.raises(Exception, match="identity level L3"):
        counter.require_levels(
            service.levels_for("transfer"), service.level_requirement("transfer")
        )
    # min_level keeps its ladder: L2 admits L2, L3 and Counter, never LP.
    pension = load_settings(config, resolve_secrets=False).services["degree-verification"]
    assert pension.levels_for("verify") == {"L2", "L3", "Counter"}


def test_levels_and_min_level_are_one_or_the_other(config: Path) -> None:
    edit(
        config / "services" / "housing-fund-transfer.yaml",
        lambda d: d.update(levels=["L2"]),
    )
    assert problems_of(config) == [
        f"{FUND}: (entry): levels: give min_level or levels, not both",
    ]
    edit(
        config / "services" / "housing-fund-transfer.yaml",
        lambda d: (d.pop("levels"), d.pop("min_level")),
    )
    assert problems_of(config) == [
        f"{FUND}: (entry): min_level: required, missing (or give levels)"
    ]


def test_a_clients_provinces_are_province_codes(config: Path) -> None:
    edit(
        config / "clients.yaml",
        lambda d: d["clients"]["demo-portal-qinghai"].update(provinces=["63", "99"]),
    )
    assert problems_of(config) == [
        "clients.yaml: client 'demo-portal-qinghai': provinces: ['99'] are not GB/T 2260 province"
        " codes"
    ]
