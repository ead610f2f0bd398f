"""The provider's signing keys: one active key per algorithm, older keys kept for verification.

Implements the key side of RFC 7517 (JWK / JWK Set, served at the JWKS endpoint), RFC 7518
§3.3 (RS256) and §3.4 (ES256), and RFC 7638 thumbprints as ``kid``. The key set lives in one
JSON file in the data directory, created on first start with mode 0600 and rewritten atomically
on rotation. Rotation (``rotate``) adds a key and makes it the signer; the old key stays in the
set, and in the public JWKS, until ``retire`` removes it, so tokens it signed still verify.

Must not: expose private key material anywhere but the key file; use ``authlib.jose``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, cast

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, RSAKey, import_key

from gateway.stores.sqlite import private_dir

Algorithm = Literal["ES256", "RS256"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("ES256", "RS256")
_RSA_BITS: Final = 3072
_FILE_VERSION: Final = 1


class KeyFileError(Exception):
    """The key file exists but cannot be used; the message names the file, never key material."""


def generate_key(algorithm: Algorithm) -> Key:
    """A fresh private key for ``algorithm`` with ``kid`` = its RFC 7638 thumbprint."""
    parameters: dict[str, Any] = {"alg": algorithm, "use": "sig"}
    key: Key
    if algorithm == "ES256":
        key = ECKey.generate_key("P-256", parameters=parameters, auto_kid=True)  # type: ignore[arg-type]
    elif algorithm == "RS256":
        key = RSAKey.generate_key(_RSA_BITS, parameters=parameters, auto_kid=True)  # type: ignore[arg-type]
    else:  # pragma: no cover - Literal narrows this away
        raise ValueError(f"unsupported signing algorithm {algorithm!r}")
    return key


class SigningKeys:
    """The signing key set. ``sign`` uses the active key of an algorithm; any key verifies."""

    def __init__(
        self,
        keys: Iterable[Key],
        active: Mapping[str, str],
        *,
        path: Path | None = None,
        created: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys: dict[str, Key] = {}
        for key in keys:
            if key.kid is None or key.alg not in ALGORITHMS or not key.is_private:
                raise KeyFileError("every signing key needs a kid, an alg of ES256/RS256 and d")
            self._keys[key.kid] = key
        for alg, kid in active.items():
            if kid not in self._keys or self._keys[kid].alg != alg:
                raise KeyFileError(f"the active {alg} key {kid!r} is not in the key set")
        self._active = dict(active)
        self._path = path
        self._created = dict(created or {})
        self._clock = clock
        self._public = self._build_public()

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def generate(cls, algorithms: Iterable[Algorithm] = ("ES256",)) -> SigningKeys:
        """An in-memory key set (tests, and the demo when no data directory is wanted)."""
        keys = [generate_key(alg) for alg in dict.fromkeys(algorithms)]
        return cls(keys, {cast(str, k.alg): cast(str, k.kid) for k in keys})

    @classmethod
    def load_or_create(
        cls, path: Path, algorithms: Iterable[Algorithm] = ("ES256",)
    ) -> SigningKeys:
        """Load the key file, creating it (0600) or adding a key for a newly configured algorithm.

        Blocking file I/O (and, for RS256, key generation): call it at start-up, not per request.
        """
        wanted = list(dict.fromkeys(algorithms))
        keys = cls._read(path) if path.exists() else cls([], {}, path=path)
        changed = False
        for alg in wanted:
            if alg not in keys._active:
                keys._add(generate_key(alg), activate=True)
                changed = True
        if changed or not path.exists():
            keys.save()
        return keys

    @classmethod
    def _read(cls, path: Path) -> SigningKeys:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise KeyFileError(f"{path}: key file must not be readable by others (mode 0600)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = data["keys"]
            keys = [import_key(entry["jwk"]) for entry in entries]
            created = {entry["jwk"]["kid"]: int(entry["created_at"]) for entry in entries}
            active = dict(data["active"])
        except (OSError, ValueError, KeyError, TypeError, JoseError) as exc:
            raise KeyFileError(f"{path}: not a usable key file ({type(exc).__name__})") from None
        return cls(keys, active, path=path, created=created)

    def save(self) -> None:
        """Write the key file atomically with mode 0600 (no-op for an in-memory set)."""
        if self._path is None:
            return
        private_dir(self._path.parent)
        data = {
            "version": _FILE_VERSION,
            "active": self._active,
            "keys": [
                {"created_at": self._created.get(kid, 0), "jwk": key.as_dict(private=True)}
                for kid, key in self._keys.items()
            ],
        }
        fd, tmp = tempfile.mkstemp(prefix=".jwks-", dir=self._path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- rotation ----------------------------------------------------------------------------

    def rotate(self, algorithm: Algorithm = "ES256") -> str:
        """Add a new key for ``algorithm`` and sign with it from now on; returns its kid."""
        key = generate_key(algorithm)
        self._add(key, activate=True)
        self.save()
        return cast(str, key.kid)

    def retire(self, kid: str) -> None:
        """Remove a key that no longer signs; tokens it signed stop verifying."""
        if kid in self._active.values():
            raise ValueError("the active key of an algorithm cannot be retired; rotate first")
        self._keys.pop(kid, None)
        self._created.pop(kid, None)
        self._public = self._build_public()
        self.save()

    def _add(self, key: Key, *, activate: bool) -> None:
        kid = cast(str, key.kid)
        self._keys[kid] = key
        self._created[kid] = int(self._clock())
        if activate:
            self._active[cast(str, key.alg)] = kid
        self._public = self._build_public()

    def _build_public(self) -> dict[str, Key]:
        return {kid: import_key(key.as_dict(private=False)) for kid, key in self._keys.items()}

    # --- use ---------------------------------------------------------------------------------

    @property
    def algorithms(self) -> tuple[str, ...]:
        """Algorithms this set signs with (the first is the provider default)."""
        return tuple(self._active)

    def active_kid(self, algorithm: str) -> str:
        return self._active[algorithm]

    def public_key(self, kid: str) -> Key | None:
        """The public key for ``kid``, or None when the kid is unknown."""
        return self._public.get(kid)

    def public_jwks(self) -> dict[str, Any]:
        """The JWK Set served at the JWKS endpoint: public parameters only."""
        return {"keys": [dict(key.as_dict(private=False)) for key in self._public.values()]}

    def public_key_set(self) -> KeySet:
        return KeySet(list(self._public.values()))

    def sign(self, claims: Mapping[str, Any], *, algorithm: str, typ: str = "JWT") -> str:
        """A compact JWS over ``claims`` with the active key of ``algorithm``."""
        kid = self._active.get(algorithm)
        if kid is None:
            raise ValueError(f"no active key for {algorithm}")
        header = {"alg": algorithm, "kid": kid, "typ": typ}
        return jwt.encode(header, dict(claims), self._keys[kid], algorithms=[algorithm])


def rotate_key_file(path: Path, algorithm: Algorithm = "ES256") -> tuple[str, list[str]]:
    """`tongban keys rotate`: add a new active key for ``algorithm`` to the key file (created
    when missing); every older key stays in the JWKS so the tokens it signed still verify until
    they expire. Returns the new kid and the kids kept for verification."""
    keys = SigningKeys.load_or_create(path, (algorithm,))
    kept = list(keys._keys)
    return keys.rotate(algorithm), kept
