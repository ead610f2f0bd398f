"""Naming data subjects by keyed hash: from an ID document, a credit code, or a signed-in principal.

A person is named by its *person key* (gateway/identity/person_key.py): the keyed hash of the
local user that the link key of its ID type and number makes it, the same for a person who
signs in through any province and for a number typed into a form. An enterprise is named by its
*enterprise key*, a keyed hash of its credit code (or registration number) under a key of its
own. Both keys are derived from the deployment's pairwise secret and never leave the gateway
(gateway/identity/subject_keys.py computes them from identifiers; a signed-in person carries
``Principal.person``, an enterprise's operator ``Principal.enterprise``): what a client is
shown is a further keyed digest (``SubjectDigest``), never the key itself.

Must not: import aiohttp; keep or log an ID number or a credit code.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from pydantic import SecretStr

from gateway.consent.contract import DataSubject
from gateway.principal import Principal

_DISPLAY_LABEL: Final = b"tongban subject display v1"
PERSON_LEVELS: Final = frozenset({"L1", "L2", "L3", "Counter"})


@dataclass(frozen=True, slots=True)
class Me:
    """Whose grants a signed-in principal manages, and who is signing."""

    subject: DataSubject
    """A person's own key, or the enterprise's an operator acts for."""
    person: DataSubject | None
    """The signed-in natural person: the same as ``subject`` for a person; None for an
    operator, whose pairwise id is ``principal.actor``."""
    operator: str | None
    """An enterprise operator's pairwise id (who gave a grant for the enterprise)."""


class SubjectDigest:
    """The short keyed digest that names a subject in what a client is shown (a grant, an
    access-log entry): stable per subject, useless for finding the key or the identifier."""

    __slots__ = ("_key",)

    def __init__(self, pairwise_secret: SecretStr) -> None:
        self._key = hmac.new(
            pairwise_secret.get_secret_value().encode(), _DISPLAY_LABEL, hashlib.sha256
        ).digest()

    def __repr__(self) -> str:
        return "SubjectDigest(<derived key>)"

    def display(self, subject: DataSubject) -> str:
        digest = hmac.new(
            self._key, f"{subject.kind}|{subject.key}".encode(), hashlib.sha256
        ).hexdigest()
        return f"{subject.kind[0]}-{digest[:20]}"


def me(principal: Principal) -> Me | None:
    """The subject a principal manages grants for, or None when it names none: a machine
    client, a window clerk acting for someone, a token without a person key."""
    if principal.level == "LP":
        if principal.enterprise is None or principal.actor is None:
            return None
        return Me(DataSubject("enterprise", principal.enterprise), None, principal.actor)
    if principal.level not in PERSON_LEVELS or principal.person is None:
        return None
    if principal.actor is not None:
        return None  # a clerk or an agent: someone else's own grants are not theirs to manage
    person = DataSubject("person", principal.person)
    return Me(person, person, None)


def requester_person(principal: Principal) -> DataSubject | None:
    """The signed-in natural person behind a request (an agent presenting a delegation)."""
    if principal.level not in PERSON_LEVELS or principal.person is None:
        return None
    if principal.actor is not None:
        return None
    return DataSubject("person", principal.person)
