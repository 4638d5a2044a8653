"""Random secrets and how they are stored: as sha256 digests, compared in constant time.

Issued tokens carry a public lookup part, so the row is found by an index and only the
secret is compared: `<prefix>_<lookup><secret>`."""

from __future__ import annotations

import hashlib
import hmac
import secrets

LOOKUP_CHARS = 12
PREFIXES = {"app": "cht", "cli": "chc", "oauth": "cho"}
KINDS = {v: k for k, v in PREFIXES.items()}


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def same(expected_digest: str, secret: str) -> bool:
    return hmac.compare_digest(expected_digest, digest(secret))


def issue(kind: str) -> tuple[str, str, str]:
    """A new token of `kind` (app, cli, oauth): (token, lookup, digest of the token)."""
    lookup = secrets.token_hex(LOOKUP_CHARS // 2)
    token = f"{PREFIXES[kind]}_{lookup}{new_secret()}"
    return token, lookup, digest(token)


def parse(token: str) -> tuple[str, str] | None:
    """(kind, lookup) of a token this module issued, or None."""
    prefix, sep, rest = token.partition("_")
    kind = KINDS.get(prefix)
    if not sep or kind is None or len(rest) < LOOKUP_CHARS + 32:
        return None
    return kind, rest[:LOOKUP_CHARS]
