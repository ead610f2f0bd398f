"""`tongban config check` on licences.yaml and the services' licence materials: every problem
named by file, entry and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.settings import load_settings
from tests.unit.test_settings import config, edit, problems_of

__all__ = ["config"]


def test_the_demo_catalogue_loads_with_its_issuers_and_keys() -> None:
    settings = load_settings(Path(__file__).resolve().parents[3] / "config", resolve_secrets=False)
    catalogue = settings.licences
    assert catalogue.issuers["61"].key_ring().kids == ["sx-seal-2025", "sx-seal-2026"]
    assert catalogue.system_for("birth-medical-certificate", "61")[0] == "shaanxi-licence"
    assert catalogue.system_for("real-estate-certificate", "63")[0] == "qinghai-licence"
    assert catalogue.licence_types["business-licence"].holder == "enterprise"
    assert catalogue.licence_types["birth-medical-certificate"].fields["mother_name"].sensitive


def test_licence_catalogue_problems_are_named(config: Path) -> None:
    def breaks(d: dict[str, Any]) -> None:
        d["issuers"]["61"]["system"] = "shaanxi-housing"  # a system without these operations
        d["issuers"]["63"]["seal_keys"]["qh-seal-2026"]["public_key"] = "not a key"
        d["issuers"]["63"]["seal_keys"]["qh-seal-2026"]["algorithim"] = "SM2"
        d["licence_types"]["degree-certificate"]["issued_in"] = {"62": {}}
        d["licence_types"]["driving-licence"]["holder"] = "robot"

    edit(config / "licences.yaml", breaks)
    problems = problems_of(config)
    assert any(
        "licences.yaml: issuers.61: operations.search: system 'shaanxi-housing' has no operation"
        " 'search_licences'" in p
        for p in problems
    ), problems
    assert any(
        "licences.yaml: issuers.63: seal_keys.qh-seal-2026.public_key: not a PEM public key" in p
        for p in problems
    )
    assert any(
        "issuers.63: seal_keys.qh-seal-2026.algorithim: unknown key; did you mean `algorithm`?" in p
        for p in problems
    )
    assert any("licence_types.driving-licence: holder" in p for p in problems), problems
    # One broken issuer entry leaves the rest of the file unchecked only as far as it must.
    assert all("public_key" not in p or "not a key" not in p for p in problems)  # never echoed


def test_an_issuer_in_another_province_and_a_missing_issuer(config: Path) -> None:
    def breaks(d: dict[str, Any]) -> None:
        d["issuers"]["63"]["system"] = "shaanxi-licence"
        d["licence_types"]["degree-certificate"]["issued_in"] = {"62": {}}

    edit(config / "licences.yaml", breaks)
    problems = problems_of(config)
    assert (
        "licences.yaml: issuers.63: system: 'shaanxi-licence' is in province 61, not 63" in problems
    )
    assert (
        "licences.yaml: licence_types.degree-certificate.issued_in.62: no issuer for province 62"
        " under issuers"
    ) in problems


def test_a_service_material_naming_an_unknown_licence_or_no_carrier(config: Path) -> None:
    def breaks(d: dict[str, Any]) -> None:
        licence = d["materials"][0]["licence"]
        licence["type"] = "birth-certificate"

    edit(config / "services" / "newborn-bundle.yaml", breaks)
    problems = problems_of(config)
    assert any(
        "services/newborn-bundle.yaml: materials.birth-medical-certificate.licence.type: no licence"
        " type 'birth-certificate'" in p
        for p in problems
    ), problems

    def no_carrier(d: dict[str, Any]) -> None:
        d["materials"][0]["licence"]["type"] = "birth-medical-certificate"
        d["materials"][0]["licence"]["deliver_as"] = "verified"
        d["materials"][0]["source"] = "upload"

    edit(config / "services" / "newborn-bundle.yaml", no_carrier)
    problems = problems_of(config)
    assert any("a material found as a licence has source: e-licence" in p for p in problems), (
        problems
    )


def test_bulk_limits_and_top_level_keys_are_checked(config: Path) -> None:
    def breaks(d: dict[str, Any]) -> None:
        d["bulk_limit"] = "lots"
        d["bulk_approved"] = {"demo-portal-qinghai": {"birth-medical-certificate": "0/day"}}
        d["cache_secnds"] = 5

    edit(config / "licences.yaml", breaks)
    problems = problems_of(config)
    assert any("licences.yaml: bulk_limit: 'lots' is not a rate" in p for p in problems), problems
    assert any("the count must be at least 1" in p for p in problems), problems
    assert any(
        "licences.yaml: cache_secnds: unknown key; did you mean `cache_seconds`?" in p
        for p in problems
    ), problems
