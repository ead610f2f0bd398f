"""Rate-limit configuration: rates are checked at load; each problem names file and field."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.ratelimit.config import RateLimitSettings, parse_rate
from gateway.settings import GatewaySettings, load_settings
from tests.unit.test_settings import CONFIG, edit, problems_of


@pytest.fixture
def config(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(CONFIG, target)
    return target


@pytest.mark.parametrize(
    ("text", "amount", "window"),
    [("600/minute", 600, 60), ("10 per second", 10, 1), ("5000/2 hours", 5000, 7200)],
)
def test_rates_in_the_limits_syntax(text: str, amount: int, window: int) -> None:
    rate = parse_rate(text)
    assert (rate.amount, rate.get_expiry()) == (amount, window)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("600/minit", "is not a rate: write a count per period, like '600/minute'"),
        ("lots", "is not a rate"),
        ("10/second;600/minute", "one rate per budget"),
        ("0/minute", "the count must be at least 1"),
    ],
)
def test_a_bad_rate_in_gateway_yaml_is_named(config: Path, text: str, message: str) -> None:
    edit(config / "gateway.yaml", lambda d: d.update(rate_limits={"person": text}))
    (problem,) = problems_of(config)
    assert problem.startswith("gateway.yaml: rate_limits.person: ")
    assert message in problem


def test_a_bad_rate_in_clients_yaml_names_the_client(config: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["clients"]["demo-portal-shaanxi"]["rate_limits"] = {"client": "many/minute"}

    edit(config / "clients.yaml", change)
    (problem,) = problems_of(config)
    assert problem.startswith(
        "clients.yaml: client 'demo-portal-shaanxi': rate_limits.client: 'many/minute' is not"
    )


def test_a_client_override_is_loaded(config: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["clients"]["demo-portal-shaanxi"]["rate_limits"] = {"person": "50/minute"}

    edit(config / "clients.yaml", change)
    settings = load_settings(config, resolve_secrets=False)
    own = settings.clients["demo-portal-shaanxi"].rate_limits
    assert (own.client, own.person) == (None, "50/minute")


def test_defaults_are_on_in_memory() -> None:
    limits = GatewaySettings().rate_limits
    assert limits.store == "memory"
    assert limits.client is not None
    assert limits.person is not None


def test_redis_shares_the_sessions_redis_unless_told_otherwise(config: Path) -> None:
    edit(config / "gateway.yaml", lambda d: d.update(rate_limits={"store": "redis"}))
    settings = load_settings(config, resolve_secrets=False)
    assert settings.gateway.identity is not None
    assert settings.gateway.rate_limit_redis_url == settings.gateway.identity.session.redis_url
    own = "redis://10.0.0.5:6379/2"
    edit(config / "gateway.yaml", lambda d: d["rate_limits"].update(redis_url=own))
    assert load_settings(config, resolve_secrets=False).gateway.rate_limit_redis_url == own


def test_redis_without_a_url_or_an_identity_redis_is_refused() -> None:
    with pytest.raises(ValueError, match="a redis store needs redis_url"):
        GatewaySettings.model_validate({"rate_limits": {"store": "redis"}})
    settings = GatewaySettings.model_validate(
        {"rate_limits": {"store": "redis", "redis_url": "redis://127.0.0.1:6379/0"}}
    )
    assert settings.rate_limit_redis_url == "redis://127.0.0.1:6379/0"


def test_the_redis_prefix_must_not_overlap_the_identity_stores(config: Path) -> None:
    edit(
        config / "gateway.yaml",
        lambda d: d.update(rate_limits={"store": "redis", "redis_prefix": "tongban:"}),
    )
    (problem,) = problems_of(config)
    assert "redis_prefix overlaps identity.session.redis_prefix" in problem


def test_a_redis_url_must_be_one() -> None:
    with pytest.raises(ValueError, match="redis_url"):
        RateLimitSettings.model_validate({"store": "redis", "redis_url": "http://x"})
