"""Checkpoint signing keys: a small key-store protocol and a JWK-set file implementation.

The file holds private keys; it is created with mode 0600 and replaced atomically. Old keys stay
in the set after a rotation so older checkpoints still verify. Key material is never logged.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Final, Protocol

from joserfc.jwk import ECKey, KeySet

from gateway.stores.sqlite import private_dir

SIGNING_ALG: Final = "ES256"
KEY_FILE_NAME: Final = "audit-signing-keys.jwks"


class SigningKeyStore(Protocol):
    def signing_key(self) -> ECKey:
        """The private key new checkpoints are signed with; its ``kid`` goes in the header."""

    def public_keys(self) -> KeySet:
        """Every key whose checkpoints must still verify, public parts only."""


def new_signing_key() -> ECKey:
    key = ECKey.generate_key("P-256", parameters={"alg": SIGNING_ALG, "use": "sig"})
    key.ensure_kid()  # RFC 7638 thumbprint
    return key


def public_key_set(keys: list[ECKey]) -> KeySet:
    return KeySet.import_key_set({"keys": [key.as_dict(private=False) for key in keys]})


class FileKeyStore:
    """JWK set in ``<data_dir>/audit-signing-keys.jwks``; the last key is the active one."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / KEY_FILE_NAME
        self._keys: list[ECKey] = []

    @classmethod
    def load(cls, data_dir: Path) -> FileKeyStore:
        """Existing keys only (for verifying); FileNotFoundError when there are none."""
        store = cls(data_dir)
        if not store.path.exists():
            raise FileNotFoundError(f"no audit signing keys at {store.path}")
        store._load()
        return store

    @classmethod
    def load_or_create(cls, data_dir: Path) -> FileKeyStore:
        """Blocking file I/O: call at start-up (or through ``asyncio.to_thread``)."""
        store = cls(data_dir)
        if store.path.exists():
            store._load()
        else:
            store._keys = [new_signing_key()]
            store._save()
        return store

    def signing_key(self) -> ECKey:
        return self._keys[-1]

    def public_keys(self) -> KeySet:
        return public_key_set(self._keys)

    def rotate(self) -> ECKey:
        """Add a new active key; earlier keys stay for verification."""
        key = new_signing_key()
        self._keys.append(key)
        self._save()
        return key

    def _load(self) -> None:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        keys: list[ECKey] = []
        for item in data.get("keys", []):
            key = ECKey.import_key(item)
            if not key.is_private:
                raise ValueError(f"{self.path}: key {key.kid} has no private part")
            key.ensure_kid()
            keys.append(key)
        if not keys:
            raise ValueError(f"{self.path}: no keys")
        self._keys = keys

    def _save(self) -> None:
        private_dir(self.path.parent)
        body = json.dumps({"keys": [k.as_dict(private=True) for k in self._keys]}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".audit-keys-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class StaticKeyStore:
    """Keys held in memory, for tests and for the verifier given a public JWK set."""

    def __init__(self, keys: list[ECKey]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._keys = keys

    def signing_key(self) -> ECKey:
        return self._keys[-1]

    def public_keys(self) -> KeySet:
        return public_key_set(self._keys)
