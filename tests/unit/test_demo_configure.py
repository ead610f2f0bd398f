"""`tongban demo --config DIR` points only the demo's own identity platforms at its servers:
an entry is the demo's by id and kind, and every other entry stays as the user wrote it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from gateway.demo.federation import IdentityAddresses
from gateway.demo.federation_platforms import DemoPlatforms, configure_platforms
from gateway.demo.guangdong_idp import GuangdongIdpState
from gateway.demo.legacy_system import LegacySystemState
from gateway.demo.legal_idp import LegalIdpState
from gateway.demo.ticket_idp import TicketPlatformState
from gateway.identity.upstream_kinds import TicketCall, TicketIdpSettings
from gateway.settings import load_settings

CONFIG = Path(__file__).resolve().parents[2] / "config"


def demo_platforms() -> DemoPlatforms:
    def ticket(style: Any, port: int) -> TicketPlatformState:
        state = TicketPlatformState(style, "s")
        state.base_url = f"http://127.0.0.1:{port}"
        return state

    platforms = DemoPlatforms(
        shaanxi=ticket("shaanxi", 40061),
        gansu=ticket("gansu", 40062),
        ningxia=ticket("ningxia", 40064),
        guangdong=GuangdongIdpState("s", "k" * 16, base_url="http://127.0.0.1:40044"),
        legal=LegalIdpState(issuer="http://127.0.0.1:40065"),
        legacy=LegacySystemState(gateway="http://127.0.0.1:8080", secret="s"),
    )
    platforms.legacy.base_url = "http://127.0.0.1:40066"
    return platforms


def test_only_the_demo_entries_move(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(CONFIG, config)
    data = yaml.safe_load((config / "idps.yaml").read_text(encoding="utf-8"))
    # The user's own Xi'an city platform, a signed-ticket kind in the demo's province 61.
    xian = {**data["idps"]["shaanxi"], "name": {"zh": "西安市统一认证", "en": "Xi'an"}}
    xian |= {
        "login_url": "https://sso.xa.example/login",
        "service_url": "https://sso.xa.example/api",
    }
    data["idps"]["xian-city"] = xian
    (config / "idps.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    settings = load_settings(config, resolve_secrets=False)

    moved = configure_platforms(settings, demo_platforms().urls()).idps
    assert moved["xian-city"] == settings.idps["xian-city"]
    gansu = moved["gansu"]
    assert isinstance(gansu, TicketIdpSettings)
    assert gansu.login_url == "http://127.0.0.1:40062/uc/login"
    assert gansu.service_url == "http://127.0.0.1:40062/uc/ws/ticket"
    userinfo = gansu.operations["userinfo"]
    assert isinstance(userinfo, TicketCall)
    assert userinfo.service_url == "http://127.0.0.1:40062/uc/ws/user"
    ningxia = moved["ningxia"]
    assert isinstance(ningxia, TicketIdpSettings)
    assert ningxia.login_url == "http://127.0.0.1:40064/nx/cas/login"
    shaanxi_soap = moved["shaanxi-soap"]
    assert isinstance(shaanxi_soap, TicketIdpSettings)
    assert shaanxi_soap.service_url == "http://127.0.0.1:40061/sso/soap"
    assert (
        getattr(moved["guangdong"], "token_url", "") == "http://127.0.0.1:40044/oauth2/access_token"
    )
    assert getattr(moved["shaanxi-legal"], "issuer", "") == "http://127.0.0.1:40065"


def test_a_demo_id_reused_for_another_kind_is_left_alone(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(CONFIG, config)
    data = yaml.safe_load((config / "idps.yaml").read_text(encoding="utf-8"))
    # The user replaced the demo's Guangdong entry with their own platform of another kind.
    data["idps"]["guangdong"] = {
        **data["idps"]["shaanxi"],
        "province": "44",
        "login_url": "https://tyrz.gd.example/login",
        "service_url": "https://tyrz.gd.example/api",
    }
    (config / "idps.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    settings = load_settings(config, resolve_secrets=False)
    moved = configure_platforms(settings, demo_platforms().urls()).idps
    assert moved["guangdong"] == settings.idps["guangdong"]


def test_addresses_handed_to_another_process_configure_the_same(tmp_path: Path) -> None:
    """The soak runs the fakes and the gateway apart (gateway/demo/split.py): the addresses go
    through JSON and must point the configuration exactly where the fakes listen."""
    config = tmp_path / "config"
    shutil.copytree(CONFIG, config)
    settings = load_settings(config, resolve_secrets=False)
    addresses = IdentityAddresses(
        qinghai="http://127.0.0.1:40063",
        staff=None,
        portals={"demo-portal-qinghai": "http://127.0.0.1:40070"},
        windows={"demo-window-shaanxi": "http://127.0.0.1:40071"},
        platforms=demo_platforms().urls(),
    )
    handed = IdentityAddresses.from_json(json.loads(json.dumps(addresses.to_json())))
    assert handed == addresses
    moved = handed.configure(settings)
    assert moved.clients["demo-portal-qinghai"].redirect_uris == (
        "http://127.0.0.1:40070/callback",
    )
    assert moved.clients["demo-window-shaanxi"].redirect_uris == (
        "http://127.0.0.1:40071/window/callback",
    )
    gansu = moved.idps["gansu"]
    assert isinstance(gansu, TicketIdpSettings)
    assert gansu.login_url == "http://127.0.0.1:40062/uc/login"
