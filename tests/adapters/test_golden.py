"""Requests on the wire compared with stored golden files (volatile WS-Security parts masked).

Set TONGBAN_UPDATE_GOLDEN=1 to rewrite the files after an intended change, then review the diff.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree  # type: ignore[import-untyped]

from gateway.adapter import Secret
from tests.adapters.loopback_backends import (
    WSSE_NS,
    WSU_NS,
    Backend,
    make_call,
    opened_adapter,
    running_backend,
)

GOLDEN = Path(__file__).parent / "golden"
VOLATILE = (f"{{{WSSE_NS}}}Nonce", f"{{{WSU_NS}}}Created", f"{{{WSSE_NS}}}Password")


def check_golden(name: str, actual: bytes) -> None:
    path = GOLDEN / name
    if os.environ.get("TONGBAN_UPDATE_GOLDEN") == "1":
        path.write_bytes(actual)
    assert path.exists(), f"golden file {name} missing: run with TONGBAN_UPDATE_GOLDEN=1"
    assert actual == path.read_bytes()


def normalised_envelope(raw: bytes) -> bytes:
    root = etree.fromstring(raw)
    for tag in VOLATILE:
        for element in root.iter(tag):
            element.text = "VOLATILE"
    etree.indent(root, space="  ")
    result: bytes = etree.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
    return result


@pytest.fixture
async def soap_backend() -> AsyncIterator[Backend]:
    async with running_backend("soap") as server:
        yield server


@pytest.fixture
async def rest_backend() -> AsyncIterator[Backend]:
    async with running_backend("rest") as server:
        yield server


async def test_soap_request_envelope_matches_golden(soap_backend: Backend) -> None:
    auth = {"type": "ws_security", "username": "gateway", "password": Secret("pw"), "digest": True}
    async with opened_adapter("soap", soap_backend.address, auth=auth) as adapter:
        await adapter.call(make_call("soap"))
    check_golden("soap_verify_degree_request.xml", normalised_envelope(soap_backend.seen[0].body))


async def test_rest_request_body_matches_golden(rest_backend: Backend) -> None:
    async with opened_adapter("rest", rest_backend.address) as adapter:
        await adapter.call(make_call("rest"))
    [seen] = rest_backend.seen
    assert seen.raw_path == "/api/degrees/10697-2020%2F0042/verify"
    check_golden("rest_verify_degree_body.json", seen.body)
