"""亮证: the holder asks for a presentation code; a verifier checks it once, sees only what its
service needs; a forged, expired, skewed, reused code or another holder's request is refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.demo.backends import QINGHAI_LICENCE, SHAANXI_LICENCE
from gateway.demo.licence_system import BIRTH_CERTIFICATE, DRIVING_LICENCE, PROPERTY_CERTIFICATE
from gateway.demo.presentations import presentation_lines, presentation_tokens
from gateway.demo.residents import HAN_XUEMEI, MA_WENHUA, ZHAO_YIMING
from gateway.http.keys import SETTINGS
from gateway.http.licences import LICENCES
from gateway.identity.citizen import natural_person_id
from gateway.identity.identifiers import link_keyer
from gateway.identity.person_key import PersonKeys
from tests.flows.conftest import Journey

PRESENT = "/api/v1/licences/presentations"
CHECK = "/api/v1/licences/presentations/check"


def holder_token(journey: Journey, id_number: str, subject: str) -> dict[str, str]:
    identity = journey.client.app[SETTINGS].gateway.identity
    assert identity is not None
    assert identity.link_secret is not None
    link = link_keyer(identity.link_secret.get_secret_value(), identity.link_algorithm)
    person = PersonKeys(identity.pairwise_secret).person_key(
        natural_person_id(link("111", id_number))
    )
    token = journey.issuer.issue(subject, "L3", client_id="demo-portal-shaanxi", person=person)
    return {"Authorization": f"Bearer {token}"}


def clerk(journey: Journey) -> dict[str, str]:
    token = journey.issuer.issue(
        "demo-clerk-63", "L3", client_id="demo-window-qinghai", roles=["clerk"]
    )
    return {"Authorization": f"Bearer {token}"}


async def present(
    journey: Journey, headers: dict[str, str], **body: Any
) -> tuple[int, dict[str, Any]]:
    payload = {"type": "birth-medical-certificate", "holder_id": MA_WENHUA.id_number, **body}
    response = await journey.client.post(PRESENT, json=payload, headers=headers)
    return response.status, await response.json(content_type=None)


async def check(
    journey: Journey, code: str, service: str = "newborn-bundle"
) -> tuple[int, dict[str, Any]]:
    response = await journey.client.post(
        CHECK, json={"code": code, "service": service}, headers=clerk(journey)
    )
    return response.status, await response.json(content_type=None)


async def test_the_holder_shows_the_clerk_checks_once_and_sees_what_the_service_needs(
    journey: Journey,
) -> None:
    holder = holder_token(journey, MA_WENHUA.id_number, "demo-ma")
    status, shown = await present(journey, holder)
    assert status == 201, shown
    assert shown["code"].startswith("LP1.")
    assert shown["qr_svg"].startswith("data:image/svg+xml")
    assert shown["licence"]["number"] == BIRTH_CERTIFICATE
    assert shown["expires_in"] == 180
    # Nothing personal in the code in clear.
    assert MA_WENHUA.id_number not in shown["code"]
    issuer = journey.backends.licence_systems[SHAANXI_LICENCE]
    asked = len(issuer.recorder.for_operation("verify_licence"))
    status, seen = await check(journey, shown["code"])
    assert status == 200, seen
    assert seen["licence"]["status"] == "valid"
    # Live: the issuer was asked again at the check, not a cached answer.
    assert len(issuer.recorder.for_operation("verify_licence")) == asked + 1
    fields = seen["fields"]
    assert seen["labels"]["newborn_name"]["zh"] == "新生儿姓名"
    assert fields["newborn_name"] == "马小禾"  # the service needs it
    assert fields["birth_date"] == "2026-11-20"
    assert fields["mother_name"] == "韩**"  # it does not: masked
    assert fields["father_name"] == "马**"
    # Shown once only.
    status, problem = await check(journey, shown["code"])
    assert (status, problem["code"]) == (409, "client.presentation_used")
    # The holder's access log names the check (the subject at the portal that made the code).
    response = await journey.client.get("/api/v1/me/access-log", headers=holder)
    log = await response.json()
    kinds = [(e["kind"], e["outcome"]) for e in log["entries"]]
    assert ("licence_check", "checked") in kinds
    assert ("licence_check", "presented") in kinds


async def test_forged_expired_skewed_and_foreign_codes_are_refused(journey: Journey) -> None:
    holder = holder_token(journey, MA_WENHUA.id_number, "demo-ma")
    _status, shown = await present(journey, holder)
    code: str = shown["code"]
    tampered = code[:-3] + ("AAA" if not code.endswith("AAA") else "BBB")
    for bad in (tampered, "LP1.not-a-code", "DL61.abc.def", code + "x"):
        status, problem = await check(journey, bad)
        assert (status, problem["code"]) == (422, "client.presentation_invalid"), bad
    # Another service that verifies no licence, and one whose licence is another type.
    status, problem = await check(journey, code, service="degree-verification")
    assert (status, problem["code"]) == (422, "client.validation_failed")
    status, problem = await check(journey, code, service="branch-registration")
    assert (status, problem["code"]) == (422, "client.presentation_invalid")
    # Time moves on: past its expiry the code is refused; a code from the future too.
    codes = journey.client.app[LICENCES].presentations
    assert codes is not None
    real_clock = codes._clock
    codes._clock = lambda: real_clock() + 600
    status, problem = await check(journey, code)
    assert (status, problem["code"]) == (422, "client.presentation_expired")
    codes._clock = lambda: real_clock() + 600
    _status, future = await present(journey, holder)
    codes._clock = real_clock
    status, problem = await check(journey, future["code"])
    assert (status, problem["code"]) == (422, "client.presentation_invalid")
    assert "clock" in problem["detail"]


async def test_only_the_signed_in_holder_gets_a_code_and_a_revoked_licence_none(
    journey: Journey,
) -> None:
    someone = holder_token(journey, ZHAO_YIMING.id_number, "demo-zhao")
    status, problem = await present(journey, someone)
    assert (status, problem["code"]) == (403, "client.licence_not_subjects")
    nobody = journey.issuer.issue("demo-no-person", "L3", client_id="demo-portal-qinghai")
    no_person = {"Authorization": f"Bearer {nobody}"}
    status, problem = await present(journey, no_person)
    assert (status, problem["code"]) == (403, "client.licence_not_subjects")
    holder = holder_token(journey, MA_WENHUA.id_number, "demo-ma")
    _status, shown = await present(journey, holder)
    # Revoked after the code was made: the live check refuses it.
    journey.backends.licence_systems[SHAANXI_LICENCE].set_status(
        "birth-medical-certificate", BIRTH_CERTIFICATE, "revoked"
    )
    status, problem = await check(journey, shown["code"])
    assert (status, problem["code"]) == (422, "client.licence_revoked")
    # The problem's status is the HTTP status; how the licence stands is an extension member.
    assert (problem["status"], problem["licence_status"]) == (422, "revoked")
    status, problem = await present(journey, holder, number=BIRTH_CERTIFICATE)
    assert (status, problem["code"]) == (422, "client.licence_revoked")
    status, problem = await present(journey, holder, type="degree-certificate")
    assert (status, problem["code"]) == (422, "client.licence_issuer_unknown")
    status, problem = await present(journey, holder, issuing_province="62")
    assert (status, problem["code"]) == (422, "client.licence_issuer_unknown")
    status, problem = await present(journey, holder, type="no-such-licence")
    assert (status, problem["code"]) == (422, "client.unknown_licence_type")


async def test_qinghai_seals_its_real_estate_certificates_and_they_verify(journey: Journey) -> None:
    holder = holder_token(journey, HAN_XUEMEI.id_number, "demo-han")
    status, shown = await present(
        journey, holder, type="real-estate-certificate", holder_id=HAN_XUEMEI.id_number
    )
    assert status == 201, shown
    assert shown["licence"] == {
        "type": "real-estate-certificate",
        "issuing_province": "63",
        "number": PROPERTY_CERTIFICATE,
        "status": "valid",
    }
    issuer = journey.backends.licence_systems[QINGHAI_LICENCE]
    assert [r.operation for r in issuer.recorder.requests] == [
        "search_licences",
        "get_licence",
        "verify_licence",
    ]


async def test_s7_the_e_driving_licence_shown_from_qinghai_is_checked_in_shaanxi(
    journey: Journey,
) -> None:
    holder = holder_token(journey, MA_WENHUA.id_number, "demo-ma")
    status, shown = await present(journey, holder, type="driving-licence")
    assert status == 201, shown
    status, seen = await check(journey, shown["code"], service="driving-licence-verification")
    assert status == 200, seen
    assert seen["licence"]["number"] == DRIVING_LICENCE
    assert seen["fields"]["driving_class"] == "A2"
    assert seen["fields"]["valid_until"] == "2028-04-18"
    assert seen["fields"]["address"].startswith("陕*")  # not what the check needs
    # A birth certificate's code is not what a driving-licence check takes.
    _status, birth = await present(journey, holder)
    status, problem = await check(journey, birth["code"], service="driving-licence-verification")
    assert (status, problem["code"]) == (422, "client.presentation_invalid")


async def test_the_demos_printed_presentation_lines_do_what_they_say(journey: Journey) -> None:
    settings = journey.client.app[SETTINGS]
    tokens = presentation_tokens(journey.issuer, settings)
    assert tokens is not None
    base = str(journey.client.make_url("")).rstrip("/")
    script = "\n".join(presentation_lines(base, tokens))
    done = await asyncio.create_subprocess_exec(
        "bash", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(done.communicate(), timeout=60)
    assert done.returncode == 0, err.decode()
    first, second = (json.loads(line) for line in out.decode().splitlines() if line.strip())
    assert first["licence"]["status"] == "valid"
    assert first["fields"]["mother_name"] == "韩**"
    assert second["code"] == "client.presentation_used"
