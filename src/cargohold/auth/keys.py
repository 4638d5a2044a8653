"""Keys that sign registry tokens: ECDSA P-256 (ES256), kept in the database so that every
replica signs and verifies with the same set, encrypted at rest with the configured secret
key, and rotated: a key signs for `rotation` and verifies until the last token it signed
expired. RSA keys (RS256) written by older versions still verify until they expire, but
never sign again."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cargohold.db.base import utcnow
from cargohold.db.session import Database, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_datetime

log = logging.getLogger(__name__)

LIVE_KEYS = sql(
    "SELECT kid, private_key, public_jwk, retire_at FROM signing_key WHERE expires_at > :now"
)
INSERT_KEY = sql(
    """INSERT INTO signing_key (kid, private_key, public_jwk, created_at, retire_at, expires_at)
       VALUES (:kid, :private_key, :public_jwk, :now, :retire_at, :expires_at)"""
)
DELETE_EXPIRED = sql("DELETE FROM signing_key WHERE expires_at <= :now")

REFRESH_SECONDS = 60.0

# The algorithm new tokens are signed with.
SIGNING_ALGORITHM = "ES256"
# A stored JWK without "alg" is an RSA key of an older version.
LEGACY_ALGORITHM = "RS256"
# The algorithms a stored key may have, and how its public JWK is read.
_JWK_READERS: dict[str, Any] = {"ES256": ECAlgorithm, "RS256": RSAAlgorithm}


def load_or_create_secret_key(configured: str, data_dir: str) -> bytes:
    """The Fernet key that encrypts signing keys: derived from the configured secret, or
    generated once into <data_dir>/run/secret-key (mode 0600) for the embedded default."""
    if configured:
        raw = hashlib.sha256(configured.encode()).digest()
        return base64.urlsafe_b64encode(raw)
    path = Path(data_dir) / "run" / "secret-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    # Written whole under a temporary name, then linked into place: a process starting
    # at the same time never reads a file that exists but is still empty.
    key = Fernet.generate_key()
    temporary = path.with_name(f".secret-key.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_bytes().strip()  # another process won the race
        return key
    finally:
        temporary.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key parsed once: loading an RSA key costs ~200 ms of checks, far more than a
    signature. `algorithm` comes from our own record (the stored JWK's "alg"), and is the
    only one its tokens are signed and verified with."""

    kid: str
    algorithm: str
    private_key: Any
    public_key: Any
    public_jwk: dict[str, Any]
    retire_at: datetime

    @classmethod
    def load(cls, kid: str, pem: bytes, jwk: dict[str, Any], retire_at: datetime) -> SigningKey:
        algorithm = jwk.get("alg", LEGACY_ALGORITHM)
        reader = _JWK_READERS.get(algorithm)
        if reader is None:
            raise ValueError(f"signing key {kid}: unsupported algorithm {algorithm!r}")
        private = serialization.load_pem_private_key(pem, password=None)
        return cls(kid, algorithm, private, reader.from_jwk(jwk), jwk, retire_at)


class KeyRing:
    def __init__(
        self,
        db: Database,
        secret_key: bytes,
        rotation: timedelta,
        ttl: timedelta,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
    ):
        self.db = db
        self.fernet = Fernet(secret_key)
        self.rotation = rotation
        self.ttl = ttl
        # How long the keys read from the database are trusted: a key removed there stops
        # verifying (and signing) within this time.
        self.refresh_seconds = refresh_seconds
        self._keys: dict[str, SigningKey] = {}
        self._undecryptable: set[str] = set()
        self._loaded_at = 0.0

    async def _load(self) -> None:
        async with self.db.read() as session:
            rows = await session.all(LIVE_KEYS, now=utcnow())
        keys: dict[str, SigningKey] = {}
        for kid, private, jwk, retire_at in rows:
            known = self._keys.get(kid)
            if known is not None:
                keys[kid] = known
                continue
            public_jwk = json.loads(jwk)
            if public_jwk.get("alg", LEGACY_ALGORITHM) not in _JWK_READERS:
                continue  # a newer version's kind of key: this one can't use it
            try:
                pem = self.fernet.decrypt(bytes(private))
            except InvalidToken:
                # Encrypted under another secret key (auth.secret_key changed, or another
                # installation's database): unusable here. Tokens it signed fail to verify
                # and a new key is made to sign; it expires from the table in its time.
                if kid not in self._undecryptable:
                    self._undecryptable.add(kid)
                    log.warning("signing key %s cannot be decrypted with this secret key", kid)
                continue
            keys[kid] = SigningKey.load(kid, pem, public_jwk, as_datetime(retire_at) or utcnow())
        self._keys = keys
        self._loaded_at = time.monotonic()

    async def _fresh(self, force: bool = False) -> None:
        if force or time.monotonic() - self._loaded_at > self.refresh_seconds:
            await self._load()

    async def current(self) -> SigningKey:
        """The newest key still signing with SIGNING_ALGORITHM; a new one when none is (an
        RSA key of an older version is never chosen: it only verifies until it expires)."""
        await self._fresh()
        now = utcnow()
        signing = self._signing(now)
        if not signing:
            await self._create()
            await self._fresh(force=True)
            signing = self._signing(now)
        return max(signing, key=lambda k: k.retire_at)

    def _signing(self, now: datetime) -> list[SigningKey]:
        return [
            k for k in self._keys.values() if k.retire_at > now and k.algorithm == SIGNING_ALGORITHM
        ]

    async def verifying_key(self, kid: str) -> SigningKey | None:
        await self._fresh()
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._loaded_at > 1.0:
            # Another replica may have created it since we loaded.
            await self._fresh(force=True)
            key = self._keys.get(kid)
        return key

    async def jwks(self) -> dict[str, Any]:
        await self.current()
        return {"keys": [k.public_jwk for k in self._keys.values()]}

    async def _create(self) -> None:
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        kid = secrets.token_hex(8)
        jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(private.public_key()))
        jwk.update(kid=kid, use="sig", alg=SIGNING_ALGORITHM)
        now = utcnow()
        retire_at = now + self.rotation
        expires_at = retire_at + self.ttl + timedelta(minutes=5)

        async def work(session: Any) -> None:
            await session.run(DELETE_EXPIRED, now=now)
            await session.run(
                INSERT_KEY,
                kid=kid,
                private_key=self.fernet.encrypt(pem),
                public_jwk=json.dumps(jwk),
                now=now,
                retire_at=retire_at,
                expires_at=expires_at,
            )

        await run_write(self.db, work)
