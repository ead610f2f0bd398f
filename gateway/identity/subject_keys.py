"""Keys naming a data subject: the same keyed hash at the gateway, per province in assertions.

A request names whose data it touches by an ID number (with its national ID type) or an
enterprise identifier (a GB 32100 credit code, or the 15-digit registration number of an
enterprise registered before 2015). The gateway never keeps those; it compares keyed hashes:

- a **person** is named by the person key of the local id ``person:<link key>``
  (citizen.py, person_key.py): the key a signed-in natural person, or a Counter token for the
  document a clerk checked, already carries as ``Principal.person``. Computing it needs the
  link secret (identity.link_secret) and the pairwise secret;
- an **enterprise** is named by ``base64url(HMAC-SHA256(K_enterprise, org id))`` where the org
  id is the credit code, or ``reg:`` and the registration number (citizen.py ``org_id``), and
  ``K_enterprise`` is derived from the pairwise secret by HKDF (RFC 5869) under its own label.
  A legal person's operator carries it sealed in the access token (``tb_ek``).

The handling province never sees those keys. Its identity assertion names each verified
subject by a hash *agreed with that province*: ``hex(HMAC-SHA256(K_p, type "|" NUMBER))`` for a
person and ``hex(HMAC-SHA256(K_p, "org|" ORG_ID))`` for an enterprise, with
``K_p = HKDF-SHA256(link secret, info = "tongban subject assertion v1|" + province code)``.
The operator hands each province its own ``K_p`` (``tongban keys subject --province 61``); a
province can then compute the hash of the ID number it is asked about and compare, and one
province's key says nothing about another province's hashes.

Must not: log, store or return an ID number or a credit code; import aiohttp.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from gateway.consent.contract import DataSubject
from gateway.identity.citizen import natural_person_id
from gateway.identity.identifiers import RESIDENT_ID_CARD, KeyedSha256, LinkAlgorithm, link_keyer
from gateway.identity.person_key import PersonKeys

ENTERPRISE_CLAIM: Final = "tb_ek"
"""Private claim of the sealed enterprise key in a legal person's access tokens."""

_ENTERPRISE_LABEL: Final = b"tongban enterprise subject key v1"
_PROVINCE_LABEL: Final = "tongban subject assertion v1|"
_IDEMPOTENCY_LABEL: Final = b"tongban idempotency scope v1"
_PERSONS_KEPT: Final = 4096
"""Person keys remembered by their link key (``SubjectKeys.person``) before the memory starts
over."""


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def org_id(identifier: str) -> str:
    """The enterprise's org id from a credit code (18 characters) or a registration number
    (15 digits): ``reg:`` marks the second kind, as a legal person's login does."""
    value = identifier.strip().upper()
    if len(value) == 15 and value.isdigit():
        return f"reg:{value}"
    return value


def province_key(link_secret: str, province: str) -> bytes:
    """``K_p``: the key a province uses to check the subject hashes of its assertions."""
    return _derive(link_secret.encode(), (_PROVINCE_LABEL + province).encode())


def province_person_hash(key: bytes | KeyedSha256, id_type: str, number: str) -> str:
    """What a province computes from an ID number it holds, to compare with an assertion."""
    message = f"{id_type}|{number.strip().upper()}".encode()
    return (key if type(key) is KeyedSha256 else _keyed(key)).digest(message).hex()


def province_enterprise_hash(key: bytes | KeyedSha256, identifier: str) -> str:
    """What a province computes from a credit code or registration number it holds."""
    return _keyed(key).digest(f"org|{org_id(identifier)}".encode()).hex()


def _keyed(key: bytes | KeyedSha256) -> KeyedSha256:
    return key if isinstance(key, KeyedSha256) else KeyedSha256(key)


class EnterpriseKeys:
    """Enterprise keys from the pairwise secret alone (the provider mints them into tokens)."""

    __slots__ = ("_key",)

    def __init__(self, pairwise_secret: SecretStr) -> None:
        self._key = KeyedSha256(
            _derive(pairwise_secret.get_secret_value().encode(), _ENTERPRISE_LABEL)
        )

    def __repr__(self) -> str:
        return "EnterpriseKeys(<derived key>)"

    def enterprise_key(self, org: str) -> str:
        """The key of the enterprise with this org id (``org_id`` of its identifier)."""
        return _b64(self._key.digest(org.encode()))


def enterprise_of_local_id(local_id: str) -> str | None:
    """The org id of a legal person's account (``legal:<org id>:<operator link key>``)."""
    if not local_id.startswith("legal:"):
        return None
    org, _, _link = local_id.removeprefix("legal:").rpartition(":")
    return org or None


class SubjectKeys:
    """Everything the subject rule computes from identifiers, built once at start-up."""

    __slots__ = (
        "_enterprises",
        "_idempotency",
        "_link",
        "_link_secret",
        "_macs",
        "_person_subjects",
        "_persons",
        "_provinces",
    )

    def __init__(
        self,
        *,
        pairwise_secret: SecretStr,
        link_secret: SecretStr,
        link_algorithm: LinkAlgorithm = "hmac-sha256",
    ) -> None:
        self._persons = PersonKeys(pairwise_secret)
        self._enterprises = EnterpriseKeys(pairwise_secret)
        self._link_secret = link_secret.get_secret_value()
        self._link = link_keyer(self._link_secret, link_algorithm)
        self._provinces: dict[str, bytes] = {}
        self._macs: dict[str, KeyedSha256] = {}
        # Link key → the person as a data subject: the second keyed hash (and its base64) is
        # made once per person, not on every call naming them. Keyed by the link key, a keyed
        # hash already (the number itself is never kept); bounded.
        self._person_subjects: dict[str, DataSubject] = {}
        self._idempotency = _derive(pairwise_secret.get_secret_value().encode(), _IDEMPOTENCY_LABEL)

    def __repr__(self) -> str:
        return "SubjectKeys(<derived keys>)"

    def person(self, number: str, id_type: str = RESIDENT_ID_CARD) -> DataSubject:
        """The person with this ID type and number, as the rule and the consent book name them."""
        link = self._link(id_type, number)
        subject = self._person_subjects.get(link)
        if subject is None:
            subject = DataSubject("person", self._persons.person_key(natural_person_id(link)))
            if len(self._person_subjects) >= _PERSONS_KEPT:
                self._person_subjects.clear()
            self._person_subjects[link] = subject
        return subject

    def enterprise(self, identifier: str) -> DataSubject:
        """The enterprise with this credit code or registration number."""
        return DataSubject("enterprise", self._enterprises.enterprise_key(org_id(identifier)))

    def province_key(self, province: str) -> bytes:
        key = self._provinces.get(province)
        if key is None:
            key = self._provinces[province] = province_key(self._link_secret, province)
        return key

    def province_mac(self, province: str) -> KeyedSha256:
        """``province_key`` keyed once, for the subject hashes of many assertions."""
        mac = self._macs.get(province)
        if mac is None:
            mac = self._macs[province] = KeyedSha256(self.province_key(province))
        return mac

    def scoped_idempotency_key(self, client_id: str, owner: str, key: str) -> str:
        """The key forwarded to a back-end for a caller's ``Idempotency-Key``: bound to the
        client and the principal, so another caller's same key is another key."""
        message = "\x1f".join((client_id, owner, key)).encode()
        return "tb1-" + _b64(hmac.digest(self._idempotency, message, "sha256"))


def unkeyed_idempotency_key(client_id: str, owner: str, key: str) -> str:
    """The scoped key of a deployment without identity secrets (tests, bare apps)."""
    message = "\x1f".join((client_id, owner, key)).encode()
    return "tb0-" + _b64(hashlib.sha256(message).digest())
