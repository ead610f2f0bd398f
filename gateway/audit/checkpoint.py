"""Signed checkpoints of a chain head: canonical payload, JWS compact ES256, key id in the header.

A checkpoint may also witness other chains' heads as seen in the shared store, so removing the
tail of one instance's chain is caught by another instance's signed checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from joserfc import jws

from gateway.audit.canonical import canonical_bytes
from gateway.audit.keys import SIGNING_ALG, SigningKeyStore
from gateway.audit.store import ChainHead, StoredCheckpoint

CHECKPOINT_VERSION: Final = 1
CHECKPOINT_TYP: Final = "tongban-audit-checkpoint+jws"


def checkpoint_payload(
    *,
    chain: str,
    sequence: int,
    hash: str,
    time: str,
    alg: str,
    witness: Sequence[ChainHead] = (),
) -> bytes:
    body: dict[str, Any] = {
        "v": CHECKPOINT_VERSION,
        "chain": chain,
        "sequence": sequence,
        "hash": hash,
        "time": time,
        "alg": alg,
        "witness": [
            {"chain": head.chain, "sequence": head.sequence, "hash": head.hash}
            for head in sorted(witness, key=lambda h: h.chain)
            if head.chain != chain
        ],
    }
    return canonical_bytes(body)


class CheckpointSigner:
    def __init__(self, keys: SigningKeyStore) -> None:
        self._keys = keys

    def sign(
        self,
        *,
        chain: str,
        sequence: int,
        hash: str,
        time: str,
        alg: str,
        witness: Sequence[ChainHead] = (),
    ) -> StoredCheckpoint:
        key = self._keys.signing_key()
        kid = key.kid
        assert kid is not None
        payload = checkpoint_payload(
            chain=chain, sequence=sequence, hash=hash, time=time, alg=alg, witness=witness
        )
        token = jws.serialize_compact(
            {"alg": SIGNING_ALG, "kid": kid, "typ": CHECKPOINT_TYP},
            payload,
            key,
            algorithms=[SIGNING_ALG],
        )
        return StoredCheckpoint(
            chain=chain, sequence=sequence, hash=hash, time=time, kid=kid, jws=token
        )
