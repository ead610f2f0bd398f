"""Staff directories: roles read only from them, window clients, their config checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from gateway.demo.residents import SU_LANXIN
from gateway.identity.citizen import ClaimMapping, LevelRule, MappingError, map_claims
from gateway.identity.clients import TOKEN_EXCHANGE, ClientRegistration
from gateway.identity.identifiers import link_keyer
from gateway.identity.staff import StaffDirectory, as_staff, staff_roles
from gateway.identity.token_exchange import ExchangeRefused, parse_id_document
from gateway.identity.upstreams import staff_directories
from gateway.settings import ConfigError, load_settings
from tests.unit.identity.test_citizen import CONFIG_DIR

DIRECTORY = StaffDirectory(roles_claim="org.roles", role_map={"窗口受理": "clerk"})
MAPPING = ClaimMapping(
    user_id="sub",
    name="name",
    id_number="id_card",
    level=LevelRule(claim="authn", scale="staff", map={"pwd": "L2", "cert": "L3"}),
)


@pytest.mark.parametrize(
    ("raw", "roles"),
    [
        (["窗口受理"], {"clerk"}),
        ("窗口受理 见习", {"clerk"}),
        ("clerk,operator", {"clerk"}),  # operator is not allowed for this directory
        (["见习"], set()),
        ("", set()),
        (None, set()),
        ({"clerk": True}, set()),
        ([1, None, "clerk"], {"clerk"}),
    ],
)
def test_roles_are_mapped_and_only_allowed_ones_kept(raw: Any, roles: set[str]) -> None:
    claims = {"sub": "clerk-1", "org": {"roles": raw}}
    assert staff_roles(DIRECTORY, claims) == roles


def test_a_staff_login_is_its_own_local_user_never_the_linked_person() -> None:
    claims = {
        "sub": "clerk-61-0007",
        "authn": "cert",
        "name": "王静",
        "id_card": SU_LANXIN.id_number,
        "org": {"roles": ["窗口受理"]},
    }
    linker = link_keyer("k" * 40)
    citizen = map_claims("shaanxi-staff", MAPPING, claims, linker=linker)
    assert citizen.local_id.startswith("person:")
    staff = as_staff(citizen, DIRECTORY, claims)
    assert staff.local_id == "staff:shaanxi-staff:clerk-61-0007"
    assert (staff.staff, staff.roles, staff.link_key, staff.level) == (
        True,
        frozenset({"clerk"}),
        None,
        "L3",
    )
    assert staff.userinfo_claims()["preferred_username"] == "clerk-61-0007"
    assert "preferred_username" not in citizen.userinfo_claims()


def test_a_staff_login_without_an_allowed_role_is_refused() -> None:
    claims = {"sub": "trainee-1", "authn": "pwd", "org": {"roles": ["见习"]}}
    identity = map_claims("shaanxi-staff", MAPPING, claims)
    with pytest.raises(MappingError, match="no allowed staff role"):
        as_staff(identity, DIRECTORY, claims)


def test_a_citizen_platforms_roles_are_never_read() -> None:
    claims = {"sub": "qh-1", "authn": "pwd", "roles": ["clerk"], "org": {"roles": ["窗口受理"]}}
    identity = map_claims("qinghai", MAPPING, claims)
    assert identity.roles == frozenset()
    assert not identity.staff


def test_role_map_may_only_map_to_allowed_roles() -> None:
    with pytest.raises(ValidationError, match="not in allowed_roles"):
        StaffDirectory(role_map={"值班长": "operator"}, allowed_roles=("clerk",))


def _window(**extra: Any) -> ClientRegistration:
    fields: dict[str, Any] = {
        "client_id": "window-1",
        "type": "confidential",
        "client_secret": SecretStr("w" * 20),
        "window": True,
        "redirect_uris": ("https://window.example/cb",),
        "grant_types": ("authorization_code", TOKEN_EXCHANGE),
        **extra,
    }
    return ClientRegistration(**fields)


def test_token_exchange_is_for_confidential_window_clients_only() -> None:
    assert _window().window
    with pytest.raises(ValidationError, match="confidential window clients only"):
        _window(window=False)
    with pytest.raises(ValidationError, match="confidential window clients only"):
        _window(type="public", client_secret=None)


def test_the_shipped_config_has_a_staff_directory_and_a_window_client() -> None:
    settings = load_settings(CONFIG_DIR, resolve_secrets=False)
    assert staff_directories(settings.idps) == frozenset({"shaanxi-staff"})
    window = settings.clients["demo-window-shaanxi"]
    assert window.window
    assert TOKEN_EXCHANGE in window.grant_types
    assert not settings.clients["demo-portal-shaanxi"].window


def _copy_config(tmp_path: Path) -> Path:
    for source in CONFIG_DIR.rglob("*"):
        target = tmp_path / source.relative_to(CONFIG_DIR)
        if source.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(source.read_bytes())
    return tmp_path


def _edit(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def test_window_clients_need_a_staff_directory(tmp_path: Path) -> None:
    config = _copy_config(tmp_path)
    _edit(config / "idps.yaml", lambda d: d["idps"]["shaanxi-staff"].pop("staff"))
    with pytest.raises(ConfigError) as caught:
        load_settings(config, resolve_secrets=False)
    assert any("need a staff directory" in p for p in caught.value.problems)


def test_token_exchange_needs_the_link_secret(tmp_path: Path) -> None:
    config = _copy_config(tmp_path)
    _edit(config / "gateway.yaml", lambda d: d["identity"].pop("link_secret"))
    with pytest.raises(ConfigError) as caught:
        load_settings(config, resolve_secrets=False)
    assert any("token exchange needs" in p for p in caught.value.problems)


@pytest.mark.parametrize(
    ("value", "id_type"),
    [
        (f"111:{SU_LANXIN.id_number}", "111"),
        (f"111:{SU_LANXIN.id_number.lower()}", "111"),
        ("414:E12345678", "414"),
    ],
)
def test_id_documents_are_parsed(value: str, id_type: str) -> None:
    document = parse_id_document(value)
    assert document.id_type == id_type
    assert document.number not in repr(document)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (f"111:{SU_LANXIN.id_number[:17]}0", "id_document_check_failed"),
        ("999:123456", "id_document_type_unknown"),
        ("990:123456", "id_document_type_unknown"),
        (SU_LANXIN.id_number, "id_document_type_unknown"),
        ("516:H1", "id_document_malformed"),
    ],
)
def test_bad_id_documents_are_refused(value: str, reason: str) -> None:
    if value.endswith("0") and SU_LANXIN.id_number.endswith("0"):
        value = value[:-1] + "1"
    with pytest.raises(ExchangeRefused) as caught:
        parse_id_document(value)
    assert caught.value.reason == reason
