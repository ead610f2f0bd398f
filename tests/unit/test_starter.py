"""`tongban init DIR`: the starter configuration passes `config check`, names what to fill in and
every secret to export, and never overwrites anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.settings import load_settings
from gateway.starter import StarterError, write_starter


def _env_refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {str(node["env"])}
        return set().union(*(_env_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_env_refs(v) for v in node)) if node else set()
    return set()


def test_init_writes_a_configuration_config_check_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "deployment"
    assert main(["init", str(target)]) == 0
    report = capsys.readouterr().out
    assert main(["config", "check", "--config", str(target), "--no-secrets"]) == 0
    settings = load_settings(target, resolve_secrets=False)
    # One of each: province, system, service, route, portal, identity platform.
    assert len(settings.systems) == len(settings.services) == len(settings.routes) == 1
    assert len(settings.clients) == len(settings.idps) == 1
    assert {s.province for s in settings.systems.values()} == {
        i.province for i in settings.idps.values()
    }
    assert settings.gateway.identity is not None
    assert settings.gateway.identity.issuer.startswith("https://")
    # Every secret is an environment reference, and the report names each one to export.
    referenced: set[str] = set()
    for path in target.rglob("*.yaml"):
        referenced |= _env_refs(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert referenced >= {"TONGBAN_PAIRWISE_SECRET", "TONGBAN_LINK_SECRET"}
    exported = {
        line.split()[1].removesuffix("=...")
        for line in report.splitlines()
        if line.strip().startswith("export ")
    }
    assert exported == referenced
    assert "--no-secrets" in report


def test_with_its_secrets_exported_the_whole_check_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starter = write_starter(tmp_path / "deployment")
    assert main(["config", "check", "--config", str(starter.directory)]) == 1  # nothing exported
    for name in starter.env:
        monkeypatch.setenv(name, f"{name.lower()}-{'s' * 32}")
    assert main(["config", "check", "--config", str(starter.directory)]) == 0


def test_every_fill_in_line_is_listed_with_its_file_and_line(tmp_path: Path) -> None:
    starter = write_starter(tmp_path / "deployment")
    assert len(starter.fill_in) >= 10
    for path, number, text in starter.fill_in:
        assert path.read_text(encoding="utf-8").splitlines()[number - 1].strip() == text
        assert "FILL IN" in text
    listed = {path.name for path, _, _ in starter.fill_in}
    assert {"gateway.yaml", "systems.yaml", "clients.yaml", "idps.yaml", "routes.yaml"} <= listed


def test_init_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "existing"
    target.mkdir()
    (target / "gateway.yaml").write_text("server: {port: 9000}\n")
    assert main(["init", str(target)]) == 1
    assert "nothing written" in capsys.readouterr().err
    assert (target / "gateway.yaml").read_text() == "server: {port: 9000}\n"
    assert sorted(p.name for p in target.iterdir()) == ["gateway.yaml"]
    with pytest.raises(StarterError):
        write_starter(target / "gateway.yaml")
    # An empty directory is fine.
    (tmp_path / "empty").mkdir()
    assert write_starter(tmp_path / "empty").files
