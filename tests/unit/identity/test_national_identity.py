"""Provincial platforms, pure logic: check characters, link keys, signatures, level rows from config,
the quirky OAuth2 body, and the legacy face's release rules."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from gateway.demo.residents import MA_WENHUA, ZHAO_YIMING
from gateway.identity.citizen import MappingError, map_claims
from gateway.identity.identifiers import (
    link_keyer,
    make_credit_code,
    valid_credit_code,
    valid_resident_id,
)
from gateway.identity.legacy_face import FaceError, LegacyAppSettings, LegacyFace
from gateway.identity.sessions import MemorySessionStore, SsoSession
from gateway.identity.signing import (
    NonceCache,
    SignatureError,
    SignatureSettings,
    concat_signature,
    format_time,
    sign_request,
    verify_request,
)
from gateway.identity.ticket_soap import header_signed_fields
from gateway.identity.upstream import UpstreamError
from gateway.identity.upstream_kinds import (
    LegalPersonIdpSettings,
    OAuth2QuirksIdpSettings,
    TicketIdpSettings,
)
from gateway.identity.upstream_oauth2_quirks import (
    OAuth2QuirksUpstream,
    aes_encrypt,
    body_signature,
)
from gateway.identity.upstream_ticket import result_error
from gateway.settings import ConfigError, load_settings

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"


def idps() -> Any:
    return load_settings(CONFIG_DIR, resolve_secrets=False).idps


# --- identifiers -----------------------------------------------------------------------------


def test_resident_id_checksum_gb_11643() -> None:
    assert valid_resident_id(MA_WENHUA.id_number)
    assert valid_resident_id("11010519491231002X")  # the standard's own example
    assert valid_resident_id("11010519491231002x")
    assert not valid_resident_id("110105194912310021")
    assert not valid_resident_id(MA_WENHUA.id_number[:17] + "Y")
    assert not valid_resident_id("12345")


def test_credit_code_checksum_gb_32100() -> None:
    assert valid_credit_code("91350100M000100Y43")
    assert not valid_credit_code("91350100M000100Y44")
    assert not valid_credit_code("91350100M000100I43")  # I is not in the alphabet
    code = make_credit_code("91610131MA6W8Q2X1")
    assert valid_credit_code(code)
    assert valid_credit_code(code.lower())


@pytest.mark.parametrize("algorithm", ["hmac-sha256", "hmac-sm3"])
def test_link_key_is_keyed_stable_and_hides_the_number(algorithm: Any) -> None:
    key = link_keyer("s" * 32, algorithm)
    first = key("111", MA_WENHUA.id_number)
    assert first == key("111", MA_WENHUA.id_number.lower())
    assert first != key("414", MA_WENHUA.id_number)
    assert first != link_keyer("t" * 32, algorithm)("111", MA_WENHUA.id_number)
    assert MA_WENHUA.id_number not in first
    assert len(first) == 64


# --- signatures ----------------------------------------------------------------------------------


def test_md5_signature_is_32_lowercase_hex_of_code_secret_time() -> None:
    sign = concat_signature("md5", "app", "secret", "20260101120000")
    assert len(sign) == 32
    assert sign == sign.lower()
    assert sign == hashlib.md5(b"appsecret20260101120000").hexdigest()
    assert format_time(0) == "19700101080000"  # China Standard Time


@pytest.mark.parametrize("scheme", ["md5", "sm3", "hmac-sha256"])
def test_sign_then_verify_with_window_and_replay(scheme: Any) -> None:
    settings = SignatureSettings(scheme=scheme, code_param="appmark", window=60)
    now = time.time()
    params = {"st": "T1"}
    signed, headers = sign_request(
        settings, "app", "secret", method="POST", path="/x", params=params, now=now
    )
    nonces = NonceCache(120)

    def verify(
        at: float, secret: str = "secret", p: dict[str, str] | None = None, argument: str = "T1"
    ) -> str:
        return verify_request(
            settings,
            lambda code: secret if code == "app" else None,
            method="POST",
            path="/x",
            params={**(p or params), **signed},
            headers=headers,
            now=at,
            nonces=nonces,
            operation="ticketValidation",
            argument=argument,
        )

    with pytest.raises(SignatureError, match="signature_invalid"):
        verify(now, secret="other")
    with pytest.raises(SignatureError, match="timestamp_out_of_window"):
        verify(now + 61)
    assert verify(now) == "app"
    with pytest.raises(SignatureError, match="request_replayed"):
        verify(now)
    if scheme == "hmac-sha256":
        # The header signature covers the parameters: changing one breaks it.
        with pytest.raises(SignatureError, match="signature_invalid"):
            verify(now, p={"st": "T2"}, argument="T2")


def test_result_codes_map_to_clear_reasons() -> None:
    settings = TicketIdpSettings.model_fields["results"].default
    assert result_error({"result": "0"}, settings) is None
    assert result_error({"result": "6001", "errmsg": "x"}, settings) == "ticket_invalid"
    assert result_error({"result": "6502"}, settings) == "token_invalid"
    assert result_error({"result": "7000"}, settings) == "upstream_error"
    assert result_error({"errormsg": "票据已过期"}, settings) == "upstream_error"
    assert result_error({"success": False}, settings) == "upstream_error"
    assert result_error({"success": "false"}, settings) == "upstream_error"
    assert result_error(["not", "an", "object"], settings) == "upstream_answer_malformed"


# --- docs/identity-platforms.md "Levels": one test per row, from config/idps.yaml ------------


def _level(platform: str, claims: dict[str, Any]) -> tuple[str, str, str]:
    identity = map_claims(platform, idps()[platform].claims, claims)
    return identity.level, identity.level_raw, identity.level_scale


@pytest.mark.parametrize(
    ("raw", "level"), [("1", "L1"), ("2", "L2"), ("3", "L3")], ids=["account", "register", "face"]
)
def test_row_zhejiang_personal_authlevel(raw: str, level: str) -> None:
    claims = {"userid": "u", "authlevel": raw, "idnum": MA_WENHUA.id_number, "idtype": "1"}
    assert _level("shaanxi", claims) == (level, raw, "zhejiang-authlevel")


@pytest.mark.parametrize(
    ("raw", "level"),
    [("1", "LP"), ("2", "LP"), ("3", "L2"), ("4", "L1")],
    ids=["certificate-strongest", "in-person", "online", "not-checked"],
)
def test_row_zhejiang_legal_reallevel_runs_backwards(raw: str, level: str) -> None:
    claims = {
        "uniscid": make_credit_code("91610131MA6W8Q2X1"),
        "realLevel": raw,
        "agent": {"userId": "a1", "idType": "1", "idNumber": ZHAO_YIMING.id_number},
    }
    assert _level("shaanxi-legal", claims) == (level, raw, "zhejiang-reallevel")


@pytest.mark.parametrize(("raw", "level"), [("L2", "L1"), ("L3", "L2"), ("L4", "L3"), ("L5", "L3")])
def test_row_guangdong_trust_level(raw: str, level: str) -> None:
    claims = {"userobj": {"uid": "g", "extproperties": {"trustlevel": raw}}}
    assert _level("guangdong", claims) == (level, raw, "guangdong-trust-level")


@pytest.mark.parametrize(
    ("raw", "level"),
    [("0/0", "L1"), ("0/1", "L2"), ("0/2", "L1"), ("1/0", "L1"), ("1/1", "L3"), ("1/2", "L1")],
)
def test_row_gansu_isauth_and_authstate(raw: str, level: str) -> None:
    assert _level("gansu", {"userId": "g", "level": raw}) == (level, raw, "gansu-isauth-authstate")


def test_unknown_raw_level_and_bad_numbers_are_refused() -> None:
    with pytest.raises(MappingError):
        _level("shaanxi", {"userid": "u", "authlevel": "9"})
    with pytest.raises(MappingError, match="GB 11643"):
        _level("shaanxi", {"userid": "u", "authlevel": "2", "idtype": "1", "idnum": "1" * 18})
    # A passport number is not checked as a resident ID.
    assert _level("shaanxi", {"userid": "u", "authlevel": "2", "idtype": "2", "idnum": "E1"})
    with pytest.raises(MappingError, match="GB 32100"):
        _level(
            "shaanxi-legal",
            {"uniscid": "91350100M000100Y44", "realLevel": "1", "agent": {"userId": "a"}},
        )


def test_id_types_normalised_with_the_raw_kept() -> None:
    mapping = idps()["shaanxi"].claims
    identity = map_claims("shaanxi", mapping, {"userid": "u", "authlevel": "2", "idtype": "4"})
    assert (identity.id_type, identity.id_type_raw) == ("516", "4")


def test_config_kinds_are_what_idps_yaml_says() -> None:
    loaded = idps()
    assert isinstance(loaded["shaanxi"], TicketIdpSettings)
    assert loaded["shaanxi-soap"].transport == "soap"
    assert isinstance(loaded["guangdong"], OAuth2QuirksIdpSettings)
    assert isinstance(loaded["shaanxi-legal"], LegalPersonIdpSettings)


# --- the quirky OAuth2 body ----------------------------------------------------------------------


def _quirks(secret: str = "c" * 24, key: str = "k" * 32) -> OAuth2QuirksUpstream:
    settings = idps()["guangdong"].model_copy(
        update={
            "encrypted": idps()["guangdong"].encrypted.model_copy(update={"key": SecretStr(key)}),
            "signed": idps()["guangdong"].signed.model_copy(update={"secret": SecretStr(secret)}),
        }
    )
    return OAuth2QuirksUpstream("guangdong", settings, None)  # type: ignore[arg-type]


def test_quirks_body_signature_then_aes_then_kv_lists() -> None:
    upstream = _quirks()
    user = {"userobj": {"uid": "g1", "cn": "x", "extproperties": ["trustlevel=L4", "a=b=c"]}}
    data = aes_encrypt("k" * 32, orjson.dumps(user), os.urandom(16))
    body = {"data": data, "signdata": body_signature("hmac-sha256", "c" * 24, data)}
    claims = upstream.user_info(body)
    assert claims["userobj"]["extproperties"] == {"trustlevel": "L4", "a": "b=c"}
    with pytest.raises(UpstreamError, match="userinfo_signature_invalid"):
        upstream.user_info({**body, "signdata": "0" * 64})
    bad = aes_encrypt("k" * 32, b"not json", os.urandom(16))
    with pytest.raises(UpstreamError, match="userinfo_malformed"):
        upstream.user_info({"data": bad, "signdata": body_signature("hmac-sha256", "c" * 24, bad)})
    wrong_key = _quirks(key="z" * 32)
    with pytest.raises(UpstreamError, match="userinfo_malformed"):
        wrong_key.user_info(body)


# --- the legacy face ----------------------------------------------------------------------------


def _face() -> tuple[LegacyFace, MemorySessionStore]:
    store = MemorySessionStore()
    common: dict[str, Any] = {
        "face": "ticket",
        "secret": SecretStr("s" * 32),
        "attributes": ("userid", "name", "idnum", "mobile"),
    }
    apps = {
        "A": LegacyAppSettings(name="A", callbacks=("http://127.0.0.1/a",), **common),
        "B": LegacyAppSettings(name="B", callbacks=("http://127.0.0.1/b",), **common),
    }
    ticks = itertools.count()
    face = LegacyFace(apps, store, SecretStr("p" * 32), clock=lambda: 1_800_000_000 + next(ticks))
    return face, store


async def test_cross_app_tickets_and_tokens_are_refused() -> None:
    face, store = _face()
    attributes = {"local_id": "person:x", "name": MA_WENHUA.name, "mobile": "13891001234"}
    await store.put_pending("attrs:sid1", attributes, 600)
    session = SsoSession("sid1", "person:x", "p", "L2", "2", "s", 0, 0.0, 0.0)
    await store.put_session("handle-hash", session, 600)
    ticket = await face.issue_ticket("A", "sid1")
    with pytest.raises(FaceError) as refused:
        await face.ticket_validation("B", ticket)
    assert refused.value.code == "6002"
    with pytest.raises(FaceError):  # spent by the failed attempt
        await face.ticket_validation("A", ticket)
    answer = await face.ticket_validation("A", await face.issue_ticket("A", "sid1"))
    with pytest.raises(FaceError) as other:
        await face.get_user_info("B", answer["token"])
    assert other.value.code == "6502"
    info = await face.get_user_info("A", answer["token"])
    user: Any = info["user"]
    assert user["name"] == "马**"
    assert user["mobile"] == "138****1234"
    assert "idnum" not in user  # entitled, but the session has none
    # Pairwise per app: A and B never see the same user id.
    assert face.release("A", attributes)["userid"] != face.release("B", attributes)["userid"]
    with pytest.raises(FaceError, match="attribute_not_entitled"):
        face.release("A", attributes, ("uniscid",))
    # A logout ends the legacy token too.
    await store.delete_session("handle-hash")
    with pytest.raises(FaceError, match="token_invalid"):
        await face.get_user_info("A", answer["token"])


def test_legacy_app_settings_refuse_unsafe_registrations() -> None:
    with pytest.raises(ValueError, match="secret"):
        LegacyAppSettings(name="x", face="ticket", callbacks=("http://127.0.0.1/a",))
    with pytest.raises(ValueError, match="unmasked"):
        LegacyAppSettings(
            name="x",
            face="cas",
            services=("https://a/",),
            attributes=("userid",),
            unmasked=("name",),
        )
    with pytest.raises(ValueError, match="https"):
        LegacyAppSettings(name="x", face="cas", services=("http://example.org/",))


def test_legacy_face_verifies_hmac_headers_over_soap() -> None:
    hmac_app = LegacyAppSettings(
        name="H",
        face="ticket",
        secret=SecretStr("h" * 32),
        callbacks=("http://127.0.0.1/h",),
        signature=SignatureSettings(scheme="hmac-sha256"),
    )
    face = LegacyFace({"H": hmac_app}, MemorySessionStore(), SecretStr("p" * 32))
    fields = {"app": "H", "time": "", "sign": "", "arg": "tk", "datatype": "json"}

    def headers(secret: str, operation: str = "getUserInfo") -> dict[str, str]:
        _, signed = sign_request(
            hmac_app.signature,
            "H",
            secret,
            method="POST",
            path="/legacy/ticket/soap",
            params=header_signed_fields(operation, fields),
            now=time.time(),
        )
        return signed

    def verify(given: dict[str, str]) -> str:
        return face.verify(
            method="POST",
            path="/legacy/ticket/soap",
            params=fields,
            headers=given,
            operation="getUserInfo",
            argument="tk",
            soap=True,
        )

    assert verify(headers("h" * 32)) == "H"
    with pytest.raises(FaceError, match="signature_invalid"):
        verify(headers("x" * 32))
    with pytest.raises(FaceError, match="signature_invalid"):  # signed for another operation
        verify(headers("h" * 32, "ticketValidation"))


def test_may_proxy_to_names_another_ticket_face_app(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="may_proxy_to"):
        LegacyAppSettings(name="c", face="cas", services=("https://a/",), may_proxy_to=("A",))
    config = tmp_path / "config"
    shutil.copytree(Path(__file__).resolve().parents[3] / "config", config)
    text = (config / "legacy-apps.yaml").read_text(encoding="utf-8")
    (config / "legacy-apps.yaml").write_text(
        text.replace("may_proxy_to: [SX_GJJ_QUERY]", "may_proxy_to: [sx-hrss-cas, NOPE]"),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(config, resolve_secrets=False)
    problems = [p for p in refused.value.problems if "may_proxy_to" in p]
    assert len(problems) == 2
