"""A licence of someone else's used under the holder's counted grant (授权用证) at 免证办: the use
goes back when nothing came of it.

The materials hook spends the grant's use before it asks the issuer. When the verification then
fails before anything was asked of the issuer (the connection refused on the only attempt, the
circuit open) or is refused (not the holder's, not found), the use is given back to the book.
When the issuer may have handled a request and did not answer (a timeout), the use stays spent,
as for a routed call (gateway/unsent.py). A verification that passed hands its use to the case
service, which gives it back only if the case is then not written.
"""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import cast

import pytest
from pydantic import SecretStr

from gateway.adapter import Call, Reply
from gateway.breaker import BreakerState, CircuitBreaker
from gateway.cases.model import CaseStatus, Mode, NewCase
from gateway.catalog import Catalog
from gateway.demo.residents import HAN_XUEMEI
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError
from gateway.identity.subject_keys import SubjectKeys
from gateway.licences.access import HolderCheck, Spent
from gateway.licences.config import LicenceUse
from gateway.licences.issuers import StackIssuerCall
from gateway.licences.materials import LicenceMaterials
from gateway.licences.verify import IssuerContact, LicenceVerifier
from gateway.pipeline import SystemRuntime
from gateway.principal import Principal
from gateway.settings import Material, load_settings
from tests.consent_books import MemoryConsentBook, TestGrant
from tests.unit.licences.test_issuer_mappings import CONFIG, CONTEXT, SoapLikeIssuer, catalogue

SERVICE = "real-estate-transfer"
PURPOSE = "不动产转移登记"
NAMES = SubjectKeys(pairwise_secret=SecretStr("p" * 40), link_secret=SecretStr("k" * 40))
HOLDER = NAMES.person(HAN_XUEMEI.id_number, "111")
# Signed in at the portal: someone else than the holder (a relative applying for her).
CALLER = Principal(subject="ps-caller", level="L3", client_id="portal-63", person="pk-relative")


class Issuer(SoapLikeIssuer):
    """The Qinghai licence system, failing a step when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: dict[str, GatewayError] = {}

    async def call(self, call: Call) -> Reply:
        failure = self.fail.get(call.operation)
        if failure is not None:
            self.calls.append(call)
            raise failure
        return await super().call(call)


@dataclasses.dataclass
class Rig:
    issuer: Issuer
    runtime: SystemRuntime
    verifier: LicenceVerifier
    book: MemoryConsentBook
    materials: LicenceMaterials

    @property
    def uses(self) -> int | None:
        return self.book.grants["g-han"].uses


@pytest.fixture
def rig() -> Rig:
    system = load_settings(CONFIG, resolve_secrets=False, check_contracts=False).systems[
        "qinghai-licence"
    ]
    # One attempt a call: what the call's trace then proves is what a routed call's proves.
    system = system.model_copy(
        update={"retry": system.retry.model_copy(update={"max_attempts": 1})}
    )
    issuer = Issuer()
    runtime = SystemRuntime(
        "qinghai-licence",
        system,
        issuer,
        CircuitBreaker("qinghai-licence", failure_threshold=5, reset_timeout=30.0),
        asyncio.Semaphore(4),
    )
    calls = StackIssuerCall(catalogue(), {"qinghai-licence": runtime}, auditor=None)
    verifier = LicenceVerifier(catalogue(), calls, NAMES)
    book = MemoryConsentBook()
    book.grants["g-han"] = TestGrant(HOLDER, "portal-63", SERVICE, purpose=PURPOSE, uses=1)
    deed = Material.model_validate(
        {
            "code": "title-deed",
            "name": {"zh": "不动产权证书", "en": "Title deed"},
            "source": "e-licence",
            "licence": LicenceUse(
                type="real-estate-certificate", holder_id="seller.id_number", issuing_province="63"
            ),
        }
    )
    catalog = SimpleNamespace(service=lambda code: SimpleNamespace(materials=[deed]))
    materials = LicenceMaterials(
        verifier,
        lambda: cast(Catalog, catalog),
        record=None,
        holders=HolderCheck(lambda: book),
    )
    return Rig(issuer, runtime, verifier, book, materials)


def application(key: str = "k-0001") -> NewCase:
    return NewCase(
        case_id=f"case-{key}",
        service=SERVICE,
        mode=Mode.ONLINE,
        subject=CALLER.subject,
        owner="pk-relative",
        actor=None,
        actor_role=None,
        client_id="portal-63",
        level="L3",
        receiving_province="63",
        purpose=PURPOSE,
        authorisation_ref="g-han",
        idempotency_key=key,
        body_digest="sha256:" + "0" * 64,
        data={"seller": {"id_number": HAN_XUEMEI.id_number}},
        materials=(),
        parts=(),
    )


async def bind(rig: Rig) -> list[Spent]:
    _new, _drafts, spent = await rig.materials.bind(application(), {}, CaseStatus.RECEIVED, CALLER)
    return list(spent)


async def test_a_verification_that_passed_hands_its_use_over(rig: Rig) -> None:
    spent = await bind(rig)
    assert rig.uses == 0
    assert [(a.grant_id, a.subject) for a, _u in spent] == [("g-han", HOLDER)]
    assert rig.book.given_back == []
    # The case was then not written: the case service gives it back through the hook.
    await rig.materials.give_back(spent)
    assert rig.uses == 1


async def test_the_issuer_refusing_the_connection_gives_the_use_back(rig: Rig) -> None:
    rig.issuer.fail["QueryZz"] = BackendUnavailable("connection refused", reached_backend=False)
    with pytest.raises(GatewayError) as raised:
        await bind(rig)
    assert raised.value.code == "backend.licence_issuer_unavailable"
    assert rig.uses == 1, "nothing was asked of the issuer: the use is back"
    assert [a.grant_id for a in rig.book.given_back] == ["g-han"]
    del rig.issuer.fail["QueryZz"]  # the issuer is back: the grant opens one application
    assert len(await bind(rig)) == 1
    assert rig.uses == 0
    with pytest.raises(GatewayError, match="used up"):
        await bind(rig)


async def test_the_issuer_circuit_open_gives_the_use_back(rig: Rig) -> None:
    breaker = rig.runtime.breaker
    while breaker.state is not BreakerState.OPEN:
        breaker.record_failure("backend.unavailable: down for the test")
    with pytest.raises(GatewayError) as raised:
        await bind(rig)
    assert raised.value.code == "backend.licence_issuer_unavailable"
    assert rig.issuer.calls == []
    assert rig.uses == 1
    assert [a.grant_id for a in rig.book.given_back] == ["g-han"]


async def test_a_refused_verification_gives_the_use_back(rig: Rig) -> None:
    other = NAMES.person("630102199001010011", "111")
    rig.book.grants["g-other"] = TestGrant(other, "portal-63", SERVICE, purpose=PURPOSE, uses=1)
    new = dataclasses.replace(
        application(),
        authorisation_ref="g-other",
        data={"seller": {"id_number": "630102199001010011"}},
    )
    # The issuer finds her licence under that number: it is not the named holder's.
    with pytest.raises(GatewayError) as raised:
        await rig.materials.bind(new, {}, CaseStatus.RECEIVED, CALLER)
    assert raised.value.code == "client.licence_not_subjects"
    assert rig.issuer.calls, "the issuer was asked, and the answer refused the licence"
    assert rig.book.grants["g-other"].uses == 1
    assert [a.grant_id for a in rig.book.given_back] == ["g-other"]


async def test_an_issuer_that_timed_out_keeps_the_use_spent(rig: Rig) -> None:
    rig.issuer.fail["QueryZz"] = BackendTimeout("read timeout", reached_backend=True)
    with pytest.raises(GatewayError) as raised:
        await bind(rig)
    assert raised.value.code == "backend.licence_issuer_unavailable"
    assert rig.uses == 0, "the issuer may have handled the search: the use stays spent"
    assert rig.book.given_back == []


async def test_a_later_step_failing_after_the_issuer_answered_keeps_the_use_spent(
    rig: Rig,
) -> None:
    # The search was answered; the download's connection is refused: the issuer was asked.
    rig.issuer.fail["GetZz"] = BackendUnavailable("connection refused", reached_backend=False)
    with pytest.raises(GatewayError):
        await bind(rig)
    assert rig.uses == 0


async def test_the_contact_tells_a_call_that_never_left(rig: Rig) -> None:
    holder = rig.verifier.holder("person", "111", HAN_XUEMEI.id_number)
    for failure, asked in [
        (BackendUnavailable("connection refused", reached_backend=False), False),
        (BackendTimeout("read timeout", reached_backend=True), True),
    ]:
        rig.issuer.fail["QueryZz"] = failure
        contact = IssuerContact()
        with pytest.raises(GatewayError):
            await rig.verifier.find(
                "real-estate-certificate", "63", holder, CONTEXT, contact=contact
            )
        assert contact.asked is asked, failure
    del rig.issuer.fail["QueryZz"]
    contact = IssuerContact()
    await rig.verifier.find("real-estate-certificate", "63", holder, CONTEXT, contact=contact)
    assert contact.asked
