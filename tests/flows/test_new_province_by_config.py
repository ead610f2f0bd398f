"""A new province's .NET web service connected by configuration alone (tests/flows/new_province,
walked through in docs/connecting-a-province.md): config check first, then real calls through
the gateway to a loopback service that answers like a deployed ASMX service.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree  # type: ignore[import-untyped]

from gateway.app import create_app
from gateway.cli import main
from gateway.identity.devtokens import DevTokenIssuer
from gateway.settings import load_settings
from tests.adapters.dotnet_backend import (
    NS,
    REGISTRATIONS,
    SOAP11,
    DotnetService,
    running_dotnet_service,
)
from tests.subject_fixtures import TEST_SUBJECT_KEYS, person_key

EXAMPLE = Path(__file__).parent / "new_province"
WSDL = Path(__file__).resolve().parents[1] / "adapters" / "wsdl" / "real-estate-asmx.wsdl"
PASSWORD = "qh-bdc-gateway-password-7f3a"
OWNER = REGISTRATIONS[0].owner_id


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "config"
    shutil.copytree(EXAMPLE, target)
    systems = target / "systems.yaml"
    systems.write_text(
        systems.read_text(encoding="utf-8").replace(
            "wsdl: ../../adapters/wsdl/real-estate-asmx.wsdl", f"wsdl: {WSDL}"
        ),
        encoding="utf-8",
    )
    monkeypatch.setenv("TONGBAN_SECRET_QH_BDC_PASSWORD", PASSWORD)
    return target


def check(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["config", "check", "--config", str(config), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_example_checks_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = check(EXAMPLE, capsys, "--no-secrets")
    assert (code, output.strip()) == (
        0,
        f"configuration {EXAMPLE}: ok (1 systems, 1 services, 2 routes)",
    )


def test_the_messages_an_integrator_meets_first(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    systems = config / "systems.yaml"
    text = systems.read_text(encoding="utf-8")
    binding = '    options:\n      binding: "{http://bdc.qh.example/ws/}RealEstateServiceSoap"\n'
    unnamed = text.replace(binding, "")
    assert unnamed != text
    systems.write_text(unnamed.replace("    timeouts:", "    timeout:"), encoding="utf-8")
    routes = config / "routes.yaml"
    routes.write_text(
        routes.read_text(encoding="utf-8").replace(
            "valid: CheckCertificateResult", "valid: CheckCertificateResul"
        ),
        encoding="utf-8",
    )
    monkeypatch.delenv("TONGBAN_SECRET_QH_BDC_PASSWORD")
    # 1. Secrets unset and an unknown key: one line each, every other check still made.
    code, output = check(config, capsys)
    assert code == 1
    assert output.splitlines() == [
        f"configuration {config}: 2 problem(s)",
        "  secrets: environment variables not set: TONGBAN_SECRET_QH_BDC_PASSWORD (set them, or"
        " run `tongban config check --no-secrets` to check everything else)",
        "  systems.yaml: system 'qinghai-bdc': timeout: unknown key; did you mean `timeouts`?",
    ]
    # 2. The WSDL is read: an ASMX service publishes two bindings.
    systems.write_text(unnamed, encoding="utf-8")
    code, output = check(config, capsys, "--no-secrets")
    assert output.splitlines() == [
        f"configuration {config}: 1 problem(s)",
        "  systems.yaml: system 'qinghai-bdc': options.binding: the WSDL has 2 SOAP bindings"
        " ({http://bdc.qh.example/ws/}RealEstateServiceSoap,"
        " {http://bdc.qh.example/ws/}RealEstateServiceSoap12): name one as options.binding",
    ]
    # 3. The mappings are checked against the operations' messages.
    systems.write_text(text, encoding="utf-8")
    code, output = check(config, capsys, "--no-secrets")
    assert output.splitlines() == [
        f"configuration {config}: 1 problem(s)",
        "  routes.yaml: route #1 (real-estate/check-certificate → 63): response.valid: from"
        " 'CheckCertificateResul': no field 'CheckCertificateResul' in the answer of"
        " CheckCertificate; did you mean `CheckCertificateResult`?",
    ]


@dataclasses.dataclass
class Gateway:
    client: TestClient[Any, Any]
    service: DotnetService
    token: str
    issuer: DevTokenIssuer

    def as_holder_of(self, id_number: str) -> Gateway:
        """The same gateway, called by the person with ``id_number``."""
        token = self.issuer.issue("person-2", "L2", person=person_key(id_number))
        return dataclasses.replace(self, token=token)

    async def call(self, operation: str, data: dict[str, str]) -> tuple[int, dict[str, Any]]:
        response = await self.client.post(
            "/api/v1/services/real-estate/calls",
            json={
                "operation": operation,
                "receiving_province": "61",
                "handling_province": "63",
                "purpose": "不动产登记信息查询",
                "data": data,
            },
            headers={"Authorization": f"Bearer {self.token}"},
        )
        return response.status, await response.json(content_type=None)


@pytest.fixture
async def gateway(config: Path, log_stream: io.BytesIO) -> AsyncIterator[Gateway]:
    async with running_dotnet_service(DotnetService(password=PASSWORD)) as service:
        settings = load_settings(config)
        system = settings.systems["qinghai-bdc"].model_copy(update={"address": service.address})
        settings = dataclasses.replace(
            settings,
            systems={"qinghai-bdc": system},
            gateway=settings.gateway.model_copy(update={"data_dir": config / "data"}),
        )
        issuer = DevTokenIssuer()
        # No identity block in this configuration: the subject keys a deployment derives from
        # its identity secrets, and a token naming the owner of the registrations.
        app = create_app(settings, verifier=issuer, subjects=TEST_SUBJECT_KEYS)
        token = issuer.issue("person-1", "L2", person=person_key(OWNER))
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield Gateway(client, service, token, issuer)
    assert PASSWORD not in log_stream.getvalue().decode()


async def test_a_bare_boolean_answer_becomes_the_canonical_field(gateway: Gateway) -> None:
    status, body = await gateway.call(
        "check-certificate",
        {"certificate_number": REGISTRATIONS[0].certificate, "id_number": OWNER},
    )
    assert status == 200, body
    assert body["data"] == {"valid": True}
    # The SOAP header carried the gateway's account, from the environment.
    sent = etree.fromstring(gateway.service.seen[-1])
    header = sent.find(f"{{{SOAP11}}}Header/{{{NS}}}AuthHeader")
    assert header.findtext(f"{{{NS}}}Password") == PASSWORD


async def test_dataset_rows_become_the_canonical_array(gateway: Gateway) -> None:
    status, body = await gateway.call("registrations", {"id_number": OWNER})
    assert status == 200, body
    assert body["data"] == {
        "registrations": [
            {"unit_number": r.unit, "certificate_number": r.certificate, "address": r.address,
             "area_m2": float(r.area)}
            for r in REGISTRATIONS
            if r.owner_id == OWNER
        ]
    }  # fmt: skip
    sent = etree.fromstring(gateway.service.seen[-1])
    body_password = sent.findtext(f"{{{SOAP11}}}Body/{{{NS}}}QueryRegistrations/{{{NS}}}password")
    assert body_password == PASSWORD
    assert PASSWORD not in str(body)
    nobody = "630199200001010000"
    status, body = await gateway.call("registrations", {"id_number": nobody})
    assert (status, body["code"]) == (403, "client.not_data_subject")  # not the caller's
    status, body = await gateway.as_holder_of(nobody).call("registrations", {"id_number": nobody})
    assert (status, body["data"]) == (200, {"registrations": []})
