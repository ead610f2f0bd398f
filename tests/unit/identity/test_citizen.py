"""Declarative claim mapping into the one internal identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.demo.residents import MA_WENHUA
from gateway.identity.citizen import ClaimMapping, LevelRule, MappingError, ValueRule, map_claims
from gateway.settings import ConfigError, load_settings

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"

MAPPING = ClaimMapping(
    user_id="sub",
    person_type=ValueRule(claim="user_type", map={"1": "natural", "2": "legal"}, default="natural"),
    name="name",
    id_number="id_card",
    phone="mobile",
    credit_code="org.uniscid",
    operator="org.operator",
    level=LevelRule(claim="auth_level", scale="qh", map={"1": "L1", "2": "L2", "3": "L3"}),
)


def test_natural_person_with_the_raw_level_beside_the_gateway_level() -> None:
    claims = {
        "sub": "u1",
        "auth_level": "3",
        "name": MA_WENHUA.name,
        "id_card": MA_WENHUA.id_number,
    }
    identity = map_claims("qinghai", MAPPING, claims)
    assert (identity.level, identity.level_raw, identity.level_scale) == ("L3", "3", "qh")
    assert identity.local_id == "qinghai:u1"
    assert identity.person_type == "natural"
    # Masked unless the platform is configured to keep it; never in repr.
    assert identity.id_number is not None
    assert identity.id_number != MA_WENHUA.id_number
    assert MA_WENHUA.id_number not in repr(identity)
    assert MA_WENHUA.name not in repr(identity)
    kept = map_claims("qinghai", MAPPING, claims, keep_id_number=True)
    assert kept.id_number == MA_WENHUA.id_number
    assert "id_number" not in str(identity.userinfo_claims())


def test_legal_person_keeps_credit_code_and_operator_and_is_level_lp() -> None:
    claims = {
        "sub": "agent-7",
        "user_type": "2",
        "auth_level": "3",
        "org": {"uniscid": "91630100MA7XXXXX0B", "operator": "韩雪梅"},
    }
    identity = map_claims("qinghai", MAPPING, claims)
    assert identity.person_type == "legal"
    assert identity.level == "LP"
    assert identity.credit_code == "91630100MA7XXXXX0B"
    assert identity.operator == "韩雪梅"


@pytest.mark.parametrize(
    "claims", [{"auth_level": "2"}, {"sub": "u1"}, {"sub": "u1", "auth_level": "9"}]
)
def test_missing_user_id_or_unknown_level_is_refused(claims: dict[str, str]) -> None:
    with pytest.raises(MappingError):
        map_claims("qinghai", MAPPING, claims)


def test_idps_yaml_errors_name_file_entry_and_field(tmp_path: Path) -> None:
    for name in ("gateway.yaml", "systems.yaml", "routes.yaml", "clients.yaml"):
        (tmp_path / name).write_text((CONFIG_DIR / name).read_text())
    (tmp_path / "wsdl").symlink_to(CONFIG_DIR / "wsdl")
    (tmp_path / "services").symlink_to(CONFIG_DIR / "services")
    (tmp_path / "idps.yaml").write_text(
        "idps:\n"
        "  qinghai:\n"
        "    kind: oidc\n"
        "    province: '99'\n"
        "    name: {zh: 青海, en: Qinghai}\n"
        "    issuer: http://idp.example\n"
        "    client_id: gw\n"
        "    client_secret: inline-secret\n"
        "    algorithms: [HS256]\n"
        "    claims: {level: {scale: x, map: {'1': L9}}}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_settings(tmp_path, resolve_secrets=False)
    text = "\n".join(error.value.problems)
    assert "idps.yaml: idp 'qinghai': issuer:" in text
    assert "idps.yaml: idp 'qinghai': client_secret:" in text
    assert "idps.yaml: idp 'qinghai': algorithms:" in text
    assert "idps.yaml: idp 'qinghai': claims.level.map.1:" in text
