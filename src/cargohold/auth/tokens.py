"""Registry bearer tokens (the Docker token flow): signed JWTs whose `access` claim lists
what the holder may do, signed with ES256. Verification trusts only our own keys by `kid`,
each with the one algorithm of its key record (ES256, or RS256 for an RSA key of an older
version until it expires): a token's header cannot bring its own key (jwk, jku, x5c, x5u)
or choose the algorithm."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt

from cargohold.auth.keys import KeyRing
from cargohold.auth.principal import Method, Principal, PrincipalKind

_FORBIDDEN_HEADERS = ("jwk", "jku", "x5c", "x5u", "crit")


class InvalidToken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Scope:
    """One `scope` parameter: repository:<name>:<actions> or registry:catalog:*."""

    type: str
    name: str
    actions: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        # The name may contain ':' only as a port in a hostname prefix; ours never does,
        # so split at the first and last colon.
        first, last = text.find(":"), text.rfind(":")
        if first <= 0 or last == first:
            return None
        kind, name, actions = text[:first], text[first + 1 : last], text[last + 1 :]
        if kind not in ("repository", "registry") or not name:
            return None
        return cls(kind, name, frozenset(a for a in actions.split(",") if a))


class RegistryTokens:
    def __init__(self, keys: KeyRing, issuer: str, service: str, ttl: timedelta) -> None:
        self.keys = keys
        self.issuer = issuer
        self.service = service
        self.ttl = ttl
        # Verified tokens: token -> (expiry, principal, kid). A hit still needs its key in
        # the key ring, so that removing a key ends its tokens at the ring's next refresh.
        self._verified: dict[str, tuple[float, Principal, str]] = {}

    async def issue(
        self, principal: Principal, access: Iterable[tuple[str, str, Iterable[str]]]
    ) -> tuple[str, int]:
        """A token for `principal` granting `access` ((type, name, actions) triples);
        returns the token and its lifetime in seconds."""
        key = await self.keys.current()
        now = int(time.time())
        ttl = int(self.ttl.total_seconds())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": principal.name or "",
            "aud": self.service,
            "iat": now,
            "nbf": now - 5,
            "exp": now + ttl,
            "jti": secrets.token_hex(16),
            "access": [{"type": t, "name": n, "actions": sorted(set(a))} for t, n, a in access],
            # Who, in our terms, so that the token can be turned back into a Principal.
            "ch": {
                "kind": principal.kind.value,
                "id": principal.id,
                "ns": principal.namespace_id,
                "su": principal.superuser,
                "cred": principal.credential_id,
            },
        }
        token = jwt.encode(
            claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid}
        )
        # The client comes back with it at once, most often to this same process: a token
        # we just signed needs no signature check (Docker clients get one per repository).
        self._remember(token, claims, key.kid)
        return token, ttl

    def _remember(self, token: str, claims: Mapping[str, Any], kid: str) -> Principal:
        principal = _principal(claims)
        if len(self._verified) > 50_000:
            self._verified.clear()
        self._verified[token] = (float(claims["exp"]), principal, kid)
        return principal

    async def verify(self, token: str) -> Principal:
        hit = self._verified.get(token)
        if hit is not None:
            if hit[0] > time.time() and await self.keys.verifying_key(hit[2]) is not None:
                return hit[1]
            self._verified.pop(token, None)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        if any(h in header for h in _FORBIDDEN_HEADERS):
            raise InvalidToken("token header not accepted")
        kid = header.get("kid")
        key = await self.keys.verifying_key(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("unknown signing key")
        # The algorithm is the one of our key record, never the token's choice.
        if header.get("alg") != key.algorithm:
            raise InvalidToken("token algorithm not accepted")
        try:
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.algorithm],
                audience=self.service,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "nbf", "aud", "iss", "sub"]},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            # ValueError/TypeError: a key and a signature that do not fit each other.
            raise InvalidToken(str(exc)) from exc
        return self._remember(token, claims, key.kid)


def _principal(claims: Mapping[str, Any]) -> Principal:
    who = claims.get("ch") or {}
    grants: dict[str, frozenset[str]] = {}
    for entry in claims.get("access") or []:
        if not isinstance(entry, dict):
            continue
        actions = frozenset(str(a) for a in entry.get("actions") or [])
        if entry.get("type") == "repository":
            grants[str(entry.get("name"))] = actions
        elif entry.get("type") == "registry" and entry.get("name") == "catalog":
            grants[""] = actions
    try:
        kind = PrincipalKind(who.get("kind", "anonymous"))
    except ValueError as exc:
        raise InvalidToken("unknown principal kind") from exc
    return Principal(
        kind=kind,
        name=claims.get("sub") or None,
        id=who.get("id"),
        namespace_id=who.get("ns"),
        superuser=bool(who.get("su")),
        method=Method.REGISTRY_TOKEN,
        credential_id=who.get("cred"),
        grants=grants,
    )
