"""Who a request is for and who makes it: the one shape every handler and audit record uses.

``subject`` is the person or enterprise the request is for (a pairwise identifier, never an ID
number); ``actor`` is who acts, when that is someone else: a window clerk or an authorised agent
(授权用证、委托用证). A clerk acting for a citizen is both, never the citizen alone.

``subject`` differs per portal (OIDC Core §8.1); ``person`` is the gateway-internal key that is
the same at every portal (gateway/identity/person_key.py), and ``owner`` is what owns the
things a person keeps at the gateway, such as cases. Neither is ever shown to a client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import InsufficientLevel

# Which gateway levels satisfy a service's minimum (docs/scenarios.md). LP and Counter are not on
# the L1–L3 ladder: an enterprise is LP; a person checked in at a window is at least L3.
_SATISFIES: dict[str, frozenset[str]] = {
    "L1": frozenset({"L1", "L2", "L3", "Counter"}),
    "L2": frozenset({"L2", "L3", "Counter"}),
    "L3": frozenset({"L3", "Counter"}),
    "LP": frozenset({"LP"}),
    "Counter": frozenset({"Counter"}),
}


def level_satisfies(have: str, need: str) -> bool:
    return have in _SATISFIES.get(need, frozenset())


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    """Pairwise identifier of the person or enterprise the request is for."""
    level: str
    """Gateway identity level: L1, L2, L3, LP or Counter."""
    client_id: str
    """The portal, window client or system that presented the token."""
    actor: str | None = None
    """Who acts for the subject, when not the subject: a clerk or an agent."""
    actor_role: str | None = None
    """'clerk' or 'agent' when ``actor`` is set."""
    scopes: frozenset[str] = field(default_factory=frozenset)
    """OAuth scopes granted to the token."""
    roles: frozenset[str] = field(default_factory=frozenset)
    """Staff roles: clerk, operator, auditor."""
    person: str | None = None
    """Gateway-internal person key of the subject (the same at every portal); None for a
    machine client or a token issued without one. Never shown to a client."""
    enterprise: str | None = None
    """Key of the enterprise a legal person's operator acts for (gateway/identity/
    subject_keys.py); None for anyone else. Never shown to a client."""

    @property
    def acting(self) -> str:
        return self.actor or self.subject

    @property
    def owner(self) -> str:
        """Who owns what this principal files: the person when known, else the subject."""
        return self.person or self.subject

    @property
    def owner_keys(self) -> tuple[str, ...]:
        """Every owner a thing of this principal's may carry: ``owner``, then the subject for
        things filed by a token without a person key (before person keys, or a dev token)."""
        if self.person is None or self.person == self.subject:
            return (self.subject,)
        return (self.person, self.subject)

    def require_level(self, need: str) -> None:
        if not level_satisfies(self.level, need):
            raise InsufficientLevel(required=need, current=self.level)

    def require_levels(self, allowed: frozenset[str], required: str) -> None:
        """The token's level is one of ``allowed`` (an operation's ``levels``); ``required``
        names them in the refusal."""
        if self.level not in allowed:
            raise InsufficientLevel(required=required, current=self.level)


def levels_from_minimum(need: str) -> frozenset[str]:
    """The levels a ``min_level`` admits (the ladder above it, Counter included)."""
    return _SATISFIES.get(need, frozenset())


class TokenVerifier(Protocol):
    """Turns a bearer token into a Principal or raises Unauthenticated."""

    async def verify(self, token: str) -> Principal: ...
