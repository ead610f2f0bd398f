"""What each adapter's ``check`` and ``open`` refuse, and the field they name."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.adapter import AdapterConfigError, load_adapter_factory
from tests.adapters.loopback_backends import FACTORIES, Kind, make_spec

ADDRESS = "http://127.0.0.1:1"


@pytest.mark.parametrize("kind", ["rest", "soap", "shaanxi_degree"])
def test_a_valid_spec_passes(kind: Kind) -> None:
    FACTORIES[kind].check(make_spec(kind, ADDRESS))


@pytest.mark.parametrize(
    ("kind", "change", "field"),
    [
        ("rest", {"operations": {}}, "operations"),
        ("rest", {"operations": {"x": {"method": "DELETE", "path": "/a"}}}, "operations.x.method"),
        ("rest", {"operations": {"x": {"method": "GET", "path": "a"}}}, "operations.x.path"),
        ("rest", {"operations": {"x": {"method": "GET", "path": "/a/{b c}"}}}, "operations.x.path"),
        ("rest", {"operations": {"x": {"method": "GET", "path": "/a", "z": 1}}}, "operations.x.z"),
        ("rest", {"auth": {"type": "kerberos"}}, "auth.type"),
        ("rest", {"auth": {"type": "oauth2_client_credentials"}}, "auth.token_url"),
        ("rest", {"options": {"colour": "red"}}, "options.colour"),
        ("rest", {"options": {"headers": {"X-Region": "陕西"}}}, "options.headers"),
        ("shaanxi_degree", {"auth": {"type": "hmac"}}, "auth.key_id"),
        ("soap", {"wsdl": None}, "wsdl"),
        ("soap", {"operations": {"VerifyDegree": {"method": "GET"}}}, "operations.VerifyDegree.method"),
        ("soap", {"options": {"binding": "DegreeBinding"}}, "options.binding"),
        ("soap", {"auth": {"type": "api_key"}}, "auth.type"),
    ],
)  # fmt: skip
def test_check_names_the_bad_field(kind: Kind, change: dict[str, Any], field: str) -> None:
    spec = dataclasses.replace(make_spec(kind, ADDRESS), **change)
    with pytest.raises(AdapterConfigError) as caught:
        FACTORIES[kind].check(spec)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"operations": {"Missing": {}}}, "operations.Missing"),
        ({"options": {"binding": "{urn:example:degree:v1}Other"}}, "options.binding"),
        ({"wsdl": "absent.wsdl"}, "wsdl"),
    ],
)
async def test_soap_open_checks_the_wsdl(change: dict[str, Any], field: str) -> None:
    spec = dataclasses.replace(make_spec("soap", ADDRESS), **change)
    with pytest.raises(AdapterConfigError) as caught:
        await FACTORIES["soap"].open(spec)
    assert caught.value.field == field


async def test_soap_open_with_the_named_binding() -> None:
    spec = make_spec("soap", ADDRESS)
    spec = dataclasses.replace(spec, options={"binding": "{urn:example:degree:v1}DegreeBinding"})
    adapter = await FACTORIES["soap"].open(spec)
    await adapter.aclose()


@pytest.mark.parametrize("kind", ["rest", "soap", "shaanxi_degree"])
def test_the_entry_point_names_the_factory(kind: Kind) -> None:
    assert load_adapter_factory(kind) is FACTORIES[kind]
