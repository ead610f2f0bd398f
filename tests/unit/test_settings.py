"""Configuration loading: the repository's config is valid; every problem names file, entry, field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.settings import ConfigError, load_settings, with_instance_id

CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(CONFIG, target)
    return target


def edit(path: Path, change: object) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)  # type: ignore[operator]
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def problems_of(config: Path, *, resolve_secrets: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(config, resolve_secrets=resolve_secrets)
    return info.value.problems


def test_repository_config_is_valid() -> None:
    settings = load_settings(CONFIG, resolve_secrets=False)
    assert {"pension-transfer", "housing-fund-transfer", "degree-verification"} <= set(
        settings.services
    )
    assert all(r.system in settings.systems for r in settings.routes)


def test_unknown_field_names_file_entry_and_field(config: Path) -> None:
    edit(config / "systems.yaml", lambda d: d["systems"]["shaanxi-si"].update(timout=3))
    assert problems_of(config) == [
        "systems.yaml: system 'shaanxi-si': timout: unknown key; did you mean `timeouts`?"
    ]


def test_bad_retry_policy_in_a_service(config: Path) -> None:
    edit(
        config / "services" / "pension-transfer.yaml",
        lambda d: d["operations"]["transfer-application"].update(retry="always"),
    )
    (problem,) = problems_of(config)
    assert problem.startswith(
        "services/pension-transfer.yaml: service 'pension-transfer': "
        "operations.transfer-application.retry:"
    )


def test_invalid_json_schema_is_refused(config: Path) -> None:
    edit(
        config / "services" / "degree-verification.yaml",
        lambda d: d["operations"]["verify"].update(input_schema={"type": "objekt"}),
    )
    (problem,) = problems_of(config)
    assert "operations.verify.input_schema" in problem
    assert "not a valid JSON Schema" in problem


def test_route_cross_checks(config: Path) -> None:
    def break_routes(d: dict[str, list[dict[str, object]]]) -> None:
        d["routes"][0]["system"] = "qinghai-si"  # in 63, but the route is handled in 61
        d["routes"][1]["service"] = "no-such-service"
        d["routes"].append(dict(d["routes"][2]))  # duplicate agreement
        d["routes"][3]["request"] = {"a": {"const": 1, "from": "x"}}

    edit(config / "routes.yaml", break_routes)
    problems = problems_of(config)
    assert any("route #1" in p and "system: 'qinghai-si' is in province 63" in p for p in problems)
    assert any("route #2" in p and "service: no service 'no-such-service'" in p for p in problems)
    appended = f"route #{len(yaml.safe_load((config / 'routes.yaml').read_text())['routes'])}"
    assert any(appended in p and "receiving: duplicates route #3" in p for p in problems)
    assert any("route #4" in p and "request.a: 'const' stands alone" in p for p in problems)


def test_inline_secret_is_refused_and_never_echoed(config: Path) -> None:
    edit(
        config / "systems.yaml",
        lambda d: d["systems"]["shaanxi-housing"]["auth"].update(key="s3cr3t-value"),
    )
    (problem,) = problems_of(config)
    assert "shaanxi-housing" in problem
    assert "never inline" in problem
    assert "s3cr3t-value" not in problem


def test_missing_secret_environment_variable_is_named(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "TONGBAN_SECRET_QH_SI_PASSWORD",
        "TONGBAN_SECRET_SX_SI_PASSWORD",
        "TONGBAN_SECRET_SX_HOUSING_API_KEY",
        "TONGBAN_SECRET_SX_DEGREE_HMAC_SECRET",
        "TONGBAN_SECRET_SX_DRIVING_CLIENT_SECRET",
        "TONGBAN_SECRET_QH_IDP_CLIENT_SECRET",
        "TONGBAN_SECRET_PORTAL_QINGHAI",
        "TONGBAN_SECRET_PORTAL_SHAANXI",
        "TONGBAN_SECRET_QH_GOV_API_KEY",
        "TONGBAN_SECRET_GS_GOV_API_KEY",
        "TONGBAN_SECRET_JS_PROOF_API_KEY",
        "TONGBAN_SECRET_XN_PROPERTY_API_KEY",
        "TONGBAN_SECRET_SX_CIVIL_API_KEY",
        "TONGBAN_SECRET_SX_LICENCE_API_KEY",
        "TONGBAN_SECRET_QH_LICENCE_API_KEY",
        "TONGBAN_SECRET_SX_LICENCE_NOTICE_KEY",
        "TONGBAN_SECRET_SX_IDP_APP_SECRET",
        "TONGBAN_SECRET_GS_IDP_APP_SECRET",
        "TONGBAN_SECRET_NX_IDP_APP_SECRET",
        "TONGBAN_SECRET_GD_IDP_CLIENT_SECRET",
        "TONGBAN_SECRET_GD_IDP_AES_KEY",
        "TONGBAN_SECRET_LEGACY_SX_BDC",
        "TONGBAN_SECRET_LEGACY_SX_GJJ",
        "TONGBAN_SECRET_SX_STAFF_IDP_CLIENT_SECRET",
        "TONGBAN_SECRET_WINDOW_SHAANXI",
        "TONGBAN_SECRET_WINDOW_QINGHAI",
        "TONGBAN_SECRET_QH_CREDIT_API_KEY",
        "TONGBAN_SECRET_BANK_SHAANXI",
    ):
        monkeypatch.setenv(name, "x" * 16)
    monkeypatch.setenv("TONGBAN_PAIRWISE_SECRET", "p" * 40)
    monkeypatch.setenv("TONGBAN_LINK_SECRET", "k" * 40)
    monkeypatch.delenv("TONGBAN_SECRET_SX_HOUSING_API_KEY")
    monkeypatch.delenv("TONGBAN_SECRET_GS_IDP_APP_SECRET")
    edit(config / "systems.yaml", lambda d: d["systems"]["shaanxi-si"].update(timout=3))
    problems = problems_of(config, resolve_secrets=True)
    # One line for every unset secret, at the top; everything else is still checked.
    assert problems == [
        "secrets: environment variables not set: TONGBAN_SECRET_GS_IDP_APP_SECRET,"
        " TONGBAN_SECRET_SX_HOUSING_API_KEY (set them, or run `tongban config check"
        " --no-secrets` to check everything else)",
        "systems.yaml: system 'shaanxi-si': timout: unknown key; did you mean `timeouts`?",
    ]


def test_unreadable_secret_file_is_named_in_the_same_line(config: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    edit(
        config / "systems.yaml",
        lambda d: d["systems"]["shaanxi-housing"]["auth"].update(key={"file": str(missing)}),
    )
    problems = [p for p in problems_of(config, resolve_secrets=True) if "not readable" in p]
    assert len(problems) == 1
    assert str(missing) in problems[0]


def test_yaml_syntax_error_names_the_line_and_nothing_else(config: Path) -> None:
    (config / "routes.yaml").write_text("routes:\n  - service: [unclosed\n", encoding="utf-8")
    problems = problems_of(config)
    assert len(problems) == 1
    assert problems[0].startswith("routes.yaml: not valid YAML at line 3, column 1: ")


def test_yaml_indentation_error_is_one_message(config: Path) -> None:
    text = (config / "systems.yaml").read_text(encoding="utf-8")
    broken = text.replace('    province: "63"', '   province: "63"', 1)
    assert broken != text
    (config / "systems.yaml").write_text(broken, encoding="utf-8")
    problems = problems_of(config)
    assert [p.split(":")[0] for p in problems] == ["systems.yaml"], problems
    assert "not valid YAML at line" in problems[0]


def test_config_check_command(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(CONFIG), "--no-secrets"]) == 0
    assert "ok" in capsys.readouterr().out
    edit(config / "systems.yaml", lambda d: d["systems"]["shaanxi-si"].update(province="99"))
    assert main(["config", "check", "--config", str(config), "--no-secrets"]) == 1
    err = capsys.readouterr().err
    assert "systems.yaml: system 'shaanxi-si': province:" in err
    assert "not a GB/T 2260 province code" in err


def test_instance_id_override_is_validated_like_the_file() -> None:
    settings = load_settings(CONFIG, resolve_secrets=False)
    assert with_instance_id(settings, "gw-2").gateway.instance_id == "gw-2"
    assert with_instance_id(settings, "gw-2").gateway.audit == settings.gateway.audit
    with pytest.raises(ConfigError) as info:
        with_instance_id(settings, "two words")
    assert info.value.problems[0].startswith("--instance-id:")
