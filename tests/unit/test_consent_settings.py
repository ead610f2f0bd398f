"""``consent:`` in gateway.yaml: where the consent book keeps its grants."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.consent.factory import open_consent_store
from gateway.settings import GatewaySettings, load_settings
from gateway.stores.postgres_consent import PostgresConsentStore
from gateway.stores.sqlite_consent import SqliteConsentStore

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def test_defaults_to_sqlite_in_the_data_directory() -> None:
    settings = GatewaySettings.model_validate({})
    assert (settings.consent.store, settings.consent.path) == ("sqlite", Path("consent.db"))


def test_postgres_needs_a_dsn_and_a_plain_schema_name() -> None:
    with pytest.raises(ValidationError, match="postgres consent store needs a 'dsn'"):
        GatewaySettings.model_validate({"consent": {"store": "postgres"}})
    with pytest.raises(ValidationError):
        GatewaySettings.model_validate(
            {"consent": {"store": "postgres", "dsn": "postgresql://x/y", "schema": "Bad-Name"}}
        )
    with pytest.raises(ValidationError):
        GatewaySettings.model_validate({"consent": {"stores": "sqlite"}})


def test_the_factory_builds_the_configured_store() -> None:
    settings = load_settings(CONFIG_DIR, resolve_secrets=False)
    store = open_consent_store(settings)
    assert isinstance(store, SqliteConsentStore)
    assert store.path == settings.data_dir() / "consent.db"
    consent = settings.gateway.consent.model_copy(
        update={"store": "postgres", "dsn": "postgresql://gw@db/tongban", "schema_name": "consent"}
    )
    shared = dataclasses.replace(
        settings, gateway=settings.gateway.model_copy(update={"consent": consent})
    )
    assert isinstance(open_consent_store(shared), PostgresConsentStore)
