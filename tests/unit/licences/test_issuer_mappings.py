"""An issuer whose messages differ from the gateway's shapes (a SOAP system's, say) is reached by
configuration: each step's request and response mappings, applied around the call stack."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.adapter import Call, CallContext, Reply
from gateway.breaker import CircuitBreaker
from gateway.demo.licence_system import demo_seal_key
from gateway.demo.residents import HAN_XUEMEI
from gateway.identity.subject_keys import SubjectKeys
from gateway.licences import verify as verify_module
from gateway.licences.config import LicenceCatalogue
from gateway.licences.errors import LicenceSealInvalid
from gateway.licences.issuers import StackIssuerCall
from gateway.licences.seal import public_pem, seal_licence
from gateway.licences.verify import LicenceVerifier
from gateway.pipeline import SystemRuntime
from gateway.settings import load_settings
from tests.unit.test_settings import config, edit, problems_of

__all__ = ["config"]

CONFIG = Path(__file__).resolve().parents[3] / "config"
KEY = demo_seal_key("qh-seal-2026")
LICENCE = {
    "type": "real-estate-certificate",
    "number": "QH-0001",
    "issuer": "63",
    "holder": {"idType": "111", "idNumber": HAN_XUEMEI.id_number, "name": HAN_XUEMEI.name},
    "fields": {"location": "西宁市城西区", "area_m2": 96},
    "issuedAt": "2026-03-02",
    "validUntil": None,
}


class SoapLikeIssuer:
    """Answers in its own names (ZzList, Zzxx, Yz, Zt), as a provincial SOAP service might."""

    def __init__(self, seal_value: str | None = None) -> None:
        self.calls: list[Call] = []
        sealed = seal_licence(LICENCE, KEY, "qh-seal-2026")
        self.seal = {"kid": sealed.kid, "alg": sealed.alg, "value": seal_value or sealed.value}

    async def call(self, call: Call) -> Reply:
        self.calls.append(call)
        if call.operation == "QueryZz":
            return Reply({"ZzList": {"Zz": [{"Zzbh": "QH-0001", "Zt": "valid"}]}})
        if call.operation == "GetZz":
            return Reply({"Zzxx": LICENCE, "Yz": self.seal})
        return Reply({"Zt": "valid"})

    async def aclose(self) -> None:
        return None


def catalogue() -> LicenceCatalogue:
    step = {
        "search": {
            "operation": "QueryZz",
            "request": {"Zzlx": "licenceType", "Sfzh": "holder.idNumber"},
            "response": {
                "licences": {"from": "ZzList.Zz", "each": {"number": "Zzbh", "status": "Zt"}}
            },
        },
        "fetch": {
            "operation": "GetZz",
            "request": {"Zzlx": "licenceType", "Zzbh": "number"},
            "response": {"licence": "Zzxx", "seal": "Yz"},
        },
        "verify": {
            "operation": "CheckZz",
            "request": {"Zzbh": "number", "Zy": "dataDigest"},
            "response": {"status": "Zt"},
        },
    }
    return LicenceCatalogue.model_validate(
        {
            "issuers": {
                "63": {
                    "name": {"zh": "青海", "en": "Qinghai"},
                    "system": "qinghai-licence",
                    "operations": step,
                    "seal_keys": {"qh-seal-2026": {"public_key": public_pem(KEY)}},
                }
            },
            "licence_types": {
                "real-estate-certificate": {
                    "name": {"zh": "不动产权证书", "en": "Real-estate certificate"},
                    "holder": "person",
                    "issued_in": {"63": {}},
                }
            },
        }
    )


def verifier(issuer: SoapLikeIssuer) -> LicenceVerifier:
    system = load_settings(CONFIG, resolve_secrets=False, check_contracts=False).systems[
        "qinghai-licence"
    ]
    runtime = SystemRuntime(
        "qinghai-licence",
        system,
        issuer,
        CircuitBreaker("qinghai-licence", failure_threshold=5, reset_timeout=30.0),
        asyncio.Semaphore(4),
    )
    names = SubjectKeys(pairwise_secret=SecretStr("p" * 40), link_secret=SecretStr("k" * 40))
    calls = StackIssuerCall(catalogue(), {"qinghai-licence": runtime}, auditor=None)
    return LicenceVerifier(catalogue(), calls, names)


CONTEXT = CallContext(
    request_id="r",
    purpose="test",
    service="s",
    receiving_province="63",
    handling_province="63",
    principal="p",
    actor="p",
    level="L3",
)


async def test_the_issuer_is_asked_in_its_own_names_and_answers_map_back() -> None:
    issuer = SoapLikeIssuer()
    check = verifier(issuer)
    holder = check.holder("person", "111", HAN_XUEMEI.id_number)
    found = await check.find("real-estate-certificate", "63", holder, CONTEXT)
    assert (found.number, found.status, found.seal_kid) == ("QH-0001", "valid", "qh-seal-2026")
    sent: list[tuple[str, Any]] = [(c.operation, dict(c.payload)) for c in issuer.calls]
    assert sent[0] == ("QueryZz", {"Zzlx": "real-estate-certificate", "Sfzh": HAN_XUEMEI.id_number})
    assert sent[1] == ("GetZz", {"Zzlx": "real-estate-certificate", "Zzbh": "QH-0001"})
    assert sent[2] == ("CheckZz", {"Zzbh": "QH-0001", "Zy": found.data_digest})


async def test_the_seal_is_still_the_gateways_to_check() -> None:
    sealed = seal_licence({**LICENCE, "number": "QH-0002"}, KEY, "qh-seal-2026")
    check = verifier(SoapLikeIssuer(seal_value=sealed.value))  # another licence's seal
    holder = check.holder("person", "111", HAN_XUEMEI.id_number)
    with pytest.raises(LicenceSealInvalid):
        await check.find("real-estate-certificate", "63", holder, CONTEXT)


def test_a_step_mapping_that_does_not_compile_is_a_configuration_problem(config: Path) -> None:
    def breaks(d: dict[str, Any]) -> None:
        d["issuers"]["63"]["operations"] = {
            "search": "search_licences",
            "fetch": {"operation": "get_licence", "response": {"licence": "Zzxx", "seal": "Yz"}},
            "verify": {
                "operation": "verify_licence",
                "response": {"status": {"const": 1, "from": "x"}},
            },
        }

    edit(config / "licences.yaml", breaks)
    problems = [p for p in problems_of(config) if "licences.yaml" in p]
    assert problems == [
        "licences.yaml: issuers.63: operations.verify: response.status: 'const' stands alone"
    ], problems


async def test_the_verification_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_module, "MAX_CACHED", 3)
    issuer = SoapLikeIssuer()
    check = verifier(issuer)
    holder = check.holder("person", "111", HAN_XUEMEI.id_number)
    found = await check.find("real-estate-certificate", "63", holder, CONTEXT)
    for n in range(10):
        check._remember(found, ("63", "real-estate-certificate", f"h{n}", ""))
    assert len(check._cache) == 3
