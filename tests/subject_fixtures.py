"""Subject keys for tests whose configuration has no identity block (no link secret)."""

from __future__ import annotations

from pydantic import SecretStr

from gateway.identity.subject_keys import SubjectKeys

TEST_SUBJECT_KEYS = SubjectKeys(
    pairwise_secret=SecretStr("test-pairwise-secret-0123456789abcdef"),
    link_secret=SecretStr("test-link-secret-0123456789abcdefghij"),
)
"""As a deployment derives them from identity.pairwise_secret and identity.link_secret."""


def person_key(id_number: str) -> str:
    """The person key a token for the holder of ``id_number`` carries."""
    return TEST_SUBJECT_KEYS.person(id_number).key
