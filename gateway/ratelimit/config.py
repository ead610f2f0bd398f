"""Rate-limit settings: gateway-wide budgets (gateway.yaml) and a client's overrides (clients.yaml).

A rate is written in the ``limits`` library's string syntax, one rate per budget: ``600/minute``,
``10 per second``, ``5000/2 hours``. It is parsed once here, at load, so a typo is a
configuration error that names the file and the field, never a surprise at request time.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from limits import RateLimitItem, parse_many
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def parse_rate(value: str) -> RateLimitItem:
    """The one rate ``value`` names; ValueError says how to write it otherwise."""
    try:
        items = parse_many(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a rate: write a count per period, like '600/minute',"
            " '10 per second' or '5000/2 hours'"
        ) from None
    if len(items) != 1:
        raise ValueError(f"{value!r}: one rate per budget, like '600/minute'")
    if items[0].amount < 1:
        raise ValueError(f"{value!r}: the count must be at least 1")
    return items[0]


def _check_rate(value: str) -> str:
    parse_rate(value)
    return value


Rate = Annotated[str, AfterValidator(_check_rate)]
"""A rate in the ``limits`` string syntax, checked when the configuration is loaded."""


class EndpointRateLimits(BaseModel):
    """Rate limits in front of the OpenID endpoints and the login pages, and on the audit
    records of anonymous refused requests (gateway.yaml ``rate_limits.endpoints:``). Counted in
    the same store as the /api budgets: with ``store: redis`` every instance shares them.

    A source is the peer's IP address (an IPv6 address by its /64), or, when the peer is one
    of ``trusted_proxies``, the last address in X-Forwarded-For that is not one of them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    token_per_source: Rate | None = "1200/minute"
    """Requests to /oauth2/token, /introspect and /revoke from one source, all clients."""
    token_per_client: Rate | None = "3000/minute"
    """Requests to those endpoints naming one registered client (Basic or client_id)."""
    client_auth_failures: Rate | None = "10/minute"
    """Failed client authentications (401 invalid_client) from one source; once spent, that
    source's requests to the three endpoints are refused until the window moves on."""
    login_per_source: Rate | None = "300/minute"
    """Requests to the login pages and the platforms' login callbacks from one source."""
    refusal_records_per_source: Rate | None = "20/minute"
    """Anonymous refused requests (refused callbacks, /admin without a valid token, refused
    logins) recorded one by one in the audit trail per source; beyond it they are counted and
    written as one summary record per kind and ``refusal_summary_interval``."""
    refusal_records_total: Rate | None = "600/minute"
    """The same, all sources together."""
    refusal_summary_interval: float = Field(60.0, gt=0, le=3600)
    """Seconds between the summary records of refusals that were counted, not recorded."""
    trusted_proxies: tuple[str, ...] = ()
    """Networks (CIDR) of reverse proxies whose X-Forwarded-For names the real source."""

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad entry
        return value


class RateLimitSettings(BaseModel):
    """Rate limits of /api/* (gateway.yaml ``rate_limits:``), checked after authentication.

    Two budgets apply to a call, each counted over a sliding window: the OAuth client's (all the
    portal's users together) and the person's (``Principal.owner``: the same person at every
    portal). A machine client (client credentials: no person) draws on its client budget only.
    A client may override either rate in clients.yaml (``rate_limits:``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    client: Rate | None = "6000/minute"
    """Calls per OAuth client, unless the client overrides it; null: no client budget."""
    person: Rate | None = "300/minute"
    """Calls per person across every portal, unless the calling client overrides it; null: no
    person budget."""
    store: Literal["memory", "sqlite", "redis"] = "memory"
    """'memory' counts in this process (one instance: N instances would allow N times the
    rate); 'sqlite' in ``ratelimits.sqlite`` in the data directory, shared by the processes of
    one host ('memory' becomes this under ``serve --workers N``); 'redis' when several
    instances on several hosts share one budget."""
    redis_url: str | None = Field(None, pattern=r"^rediss?://")
    """Redis server when ``store`` is 'redis'; defaults to ``identity.session.redis_url``."""
    redis_prefix: str = Field("tongban:ratelimit:", min_length=1, max_length=64)
    """Key prefix in Redis (one per deployment; not the sessions' or tokens' prefix)."""
    store_timeout: float = Field(0.25, gt=0, le=5)
    """Seconds a check may wait on Redis before the call goes through unchecked."""
    leases: bool = True
    """On a shared store ('sqlite', 'redis'): a process that draws often on one budget (a
    portal's client budget) takes a block of units from the shared counter in one store step
    and spends them itself for up to a quarter of a second, so most of its calls cost no store
    step. A block is at most 1 % of the budget and follows the rate the process sees (a person
    calling now and then draws one unit per call, as without leases); the processes together
    never admit more than the budget, but units of a block left when its lease runs out are
    lost, so a budget may refuse a few calls early. false: every call draws from the store."""
    retry_interval: float = Field(5.0, gt=0, le=300)
    """After Redis failed, seconds during which calls go through unchecked without asking it
    (then one call probes it again)."""
    endpoints: EndpointRateLimits = Field(default_factory=EndpointRateLimits)
    """Budgets of the unauthenticated endpoints: token, introspection, revocation, logins,
    and how many anonymous refusals each source may write into the audit trail."""


class ClientRateLimits(BaseModel):
    """A client's own rates (clients.yaml ``rate_limits:``); an omitted one is the gateway's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client: Rate | None = None
    """Calls by this client, all its users together."""
    person: Rate | None = None
    """Calls by one person through this client. A person's budget is counted per person and
    rate: every client on the gateway's person rate shares one budget per person, and a client
    with a rate of its own gives its users a budget of their own through it."""
