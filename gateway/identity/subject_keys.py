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
import secrets
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
"""Persons remembered (``SubjectKeys.known_person``) before the memory starts over; enterprises
(``SubjectKeys.known_enterprise``) likewise, in a memory of their own."""
_SEEN_BYTES: Final = 16
"""Length of the keyed BLAKE2b digest a remembered person is found by (128 bits: two numbers
of one digest are not to be met by chance, and the key is unknown outside the process)."""


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


class KnownPerson:
    """What the rule keeps of a person it has named (``SubjectKeys.known_person``): the person
    as a data subject, and the hash of their ID type and number under each province's key met
    so far (``province_person_hash``), so that neither keyed hash is made again for the same
    person. Holds keyed hashes only; found by a keyed digest, never by the number."""

    __slots__ = ("hashes", "subject")

    def __init__(self, subject: DataSubject) -> None:
        self.subject = subject
        self.hashes: dict[KeyedSha256, str] = {}
        """Province hash by the province's keyed MAC (``SubjectKeys.province_mac``: one object
        per province and set of keys, compared by identity)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.subject.key[:6]}…)"

    def province_hash(self, mac: KeyedSha256, id_type: str, number: str) -> str:
        """``province_person_hash(mac, id_type, number)``: made once per province, then kept.
        ``id_type`` and ``number`` must be the ones this person was found by."""
        found = self.hashes.get(mac)
        if found is None:
            found = self.hashes[mac] = province_person_hash(mac, id_type, number)
        return found


class KnownEnterprise(KnownPerson):
    """What the rule keeps of an enterprise it has named (``SubjectKeys.known_enterprise``):
    the enterprise as a data subject, and its ``province_enterprise_hash`` under each province's
    key met so far. Holds keyed hashes only; found by a keyed digest of its org id (in a memory
    of its own, apart from the persons'), never by the identifier."""

    __slots__ = ()

    def province_hash(self, mac: KeyedSha256, id_type: str, number: str) -> str:
        """``province_enterprise_hash(mac, number)`` (``id_type`` is not read): made once per
        province, then kept. ``number`` must be the identifier this enterprise was found by."""
        found = self.hashes.get(mac)
        if found is None:
            found = self.hashes[mac] = province_enterprise_hash(mac, number)
        return found


class SubjectKeys:
    """Everything the subject rule computes from identifiers, built once at start-up.

    Persons it has named are remembered (``known_person``, at most ``_PERSONS_KEPT``, then the
    memory starts over), found by a keyed BLAKE2b digest of their ID type and number under a
    random key of this object's own: the number is never kept, nor a digest anyone outside the
    process could compute. Enterprises likewise (``known_enterprise``, by their org id, in a
    memory of their own). What is remembered is made with this object's secrets and dies with
    it; new secrets are a new ``SubjectKeys`` (the app is built again), so nothing remembered
    outlives a key change."""

    __slots__ = (
        "_enterprises",
        "_idempotency",
        "_known",
        "_known_enterprises",
        "_link",
        "_link_secret",
        "_macs",
        "_persons",
        "_provinces",
        "_seen",
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
        # Keyed digest of "type|NUMBER" → the person: the link key, the person key and the
        # province hashes made once per person, not on every call naming them (a keyed BLAKE2b
        # state copied costs less than one HMAC-SHA256, of which a call made two). Bounded.
        self._seen = hashlib.blake2b(key=secrets.token_bytes(32), digest_size=_SEEN_BYTES)
        self._known: dict[bytes, KnownPerson] = {}
        # Enterprises likewise, by the same keyed digest of their org id, in a memory of their
        # own: a person's "type|NUMBER" (the type comes with the request) is never looked up
        # among enterprises, nor an org id among persons.
        self._known_enterprises: dict[bytes, KnownEnterprise] = {}
        self._idempotency = _derive(pairwise_secret.get_secret_value().encode(), _IDEMPOTENCY_LABEL)

    def __repr__(self) -> str:
        return "SubjectKeys(<derived keys>)"

    def person(self, number: str, id_type: str = RESIDENT_ID_CARD) -> DataSubject:
        """The person with this ID type and number, as the rule and the consent book name them."""
        return self.known_person(number, id_type).subject

    def known_person(self, number: str, id_type: str = RESIDENT_ID_CARD) -> KnownPerson:
        """The person with this ID type and number, remembered: ``subject`` is the person key
        of their link key (``person``), ``province_hash`` what ``province_person_hash`` gives."""
        seen = self._seen.copy()
        seen.update(f"{id_type}|{number.strip().upper()}".encode())
        digest = seen.digest()
        known = self._known.get(digest)
        if known is None:
            link = self._link(id_type, number)
            known = KnownPerson(
                DataSubject("person", self._persons.person_key(natural_person_id(link)))
            )
            if len(self._known) >= _PERSONS_KEPT:
                self._known.clear()
            self._known[digest] = known
        return known

    def enterprise(self, identifier: str) -> DataSubject:
        """The enterprise with this credit code or registration number."""
        return self.known_enterprise(identifier).subject

    def known_enterprise(self, identifier: str) -> KnownEnterprise:
        """The enterprise with this credit code or registration number, remembered as persons
        are (``known_person``): ``subject`` is its enterprise key (``enterprise``),
        ``province_hash`` what ``province_enterprise_hash`` gives. Found by the keyed digest of
        its org id, so every spelling ``org_id`` makes one (case, surrounding blanks) finds the
        same entry."""
        org = org_id(identifier)
        seen = self._seen.copy()
        seen.update(org.encode())
        digest = seen.digest()
        known = self._known_enterprises.get(digest)
        if known is None:
            known = KnownEnterprise(
                DataSubject("enterprise", self._enterprises.enterprise_key(org))
            )
            if len(self._known_enterprises) >= _PERSONS_KEPT:
                self._known_enterprises.clear()
            self._known_enterprises[digest] = known
        return known

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
