"""What a demo province does with the data subjects the gateway verified for a call.

The gateway names each verified subject to the handling province by a hash keyed with that
province's own subject key ``K_p`` (gateway/identity/subject_keys.py): in the signed identity
assertion (``data_subjects``) and, for systems that read headers only, in
``X-Tongban-Subjects`` / the SOAP ``CallContext/Subjects`` element (``type:hash`` joined by
commas). A province holding ``K_p`` hashes the ID number it is asked about and refuses the
call unless that hash is among them: an account number or any identifier the gateway cannot
resolve itself is then answered only for the person the gateway checked.

A demo back-end without a key (a configuration without a link secret) does not check.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from gateway.identity.identifiers import RESIDENT_ID_CARD
from gateway.identity.subject_keys import province_key, province_person_hash

SUBJECTS_HEADER = "X-Tongban-Subjects"
LINK_SECRET_ENV = "TONGBAN_LINK_SECRET"


def demo_province_keys(provinces: list[str]) -> Mapping[str, bytes]:
    """Each demo province's ``K_p``, as the operator hands them out (from the demo's link
    secret); empty when the demo runs without one."""
    secret = os.environ.get(LINK_SECRET_ENV)
    if not secret:
        return {}
    return {p: province_key(secret, p) for p in provinces}


def person_named(key: bytes | None, subjects: str | None, id_number: str) -> bool:
    """Is the person with ``id_number`` among the verified subjects? (True without a key.)"""
    if key is None:
        return True
    if not subjects:
        return False
    wanted = "person:" + province_person_hash(key, RESIDENT_ID_CARD, id_number)
    return any(hmac.compare_digest(wanted, given.strip()) for given in subjects.split(","))
