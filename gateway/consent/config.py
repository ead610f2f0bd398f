"""Where the consent book keeps its grants, validated by the settings loader (``consent:`` in
gateway.yaml).

Imports nothing of the gateway: ``gateway.settings`` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ConsentSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    store: Literal["sqlite", "postgres"] = "sqlite"
    """sqlite: one file in the data directory (one instance); postgres: shared by instances."""
    path: Path = Path("consent.db")
    """SQLite file, relative to the data directory (created 0600)."""
    dsn: str | None = None
    """PostgreSQL DSN without a password: the password comes from PGPASSWORD or a .pgpass
    file (asyncpg reads both), never from configuration."""
    schema_name: str = Field("public", alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """PostgreSQL schema holding the consent table."""
    pool_size: int = Field(10, ge=1, le=100)
    """PostgreSQL connections per instance."""

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> Self:
        if self.store == "postgres" and not self.dsn:
            raise ValueError("a postgres consent store needs a 'dsn'")
        return self
