"""Helpers of the registry security tests (authorization, tokens, secrets, brute force).

They reach under the API where a test needs to: the server's SQLite database is read and
changed directly (repository permissions, visibility, robots, signing keys, audit rows),
and registry tokens are signed with the server's own key, decrypted from the database, to
forge claims that only a broken verifier would accept."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.fernet import Fernet

from cargohold.auth.passwords import hash_password
from cargohold.auth.secrets import issue as issue_secret
from cargohold.services.cache import SharedFileGeneration
from tests.support.identity import Account, unique_name
from tests.support.server import RegistryProcess

SERVICE = "cargohold"  # auth.service of the test servers: the tokens' issuer and audience


def db_path(server: RegistryProcess) -> Path:
    assert server.database_url is None, "these helpers read the SQLite file of a server"
    return server.data_dir / "cargohold.db"


def query(server: RegistryProcess, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the server's database (committed) and return its rows."""
    with contextlib.closing(sqlite3.connect(db_path(server), timeout=30)) as conn, conn:
        return conn.execute(statement, params).fetchall()


def now_text() -> str:
    """A timestamp as cargohold stores them in SQLite."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def permissions_changed(server: RegistryProcess) -> None:
    """What `runtime.permissions.changed()` does: every process of the server drops its
    cached permission and credential answers."""
    SharedFileGeneration(server.data_dir / "run" / "auth-gen").bump()


def new_user(server: RegistryProcess, name: str | None = None) -> Account:
    """A user with a password, written straight into the database as UserService does
    (the CLI, tests.support.identity.create_user, costs a process start per user)."""
    name = name or unique_name()
    password = f"pw-{name}-{secrets.token_hex(8)}"
    stamp = now_text()
    with contextlib.closing(sqlite3.connect(db_path(server), timeout=30)) as conn, conn:
        cursor = conn.execute(
            "INSERT INTO namespace (name, kind, created_at) VALUES (?, 'user', ?)",
            (name, stamp),
        )
        conn.execute(
            "INSERT INTO user_account (namespace_id, username, email, password_hash, "
            "provider, superuser, enabled, created_at) "
            "VALUES (?, ?, NULL, ?, 'database', 0, 1, ?)",
            (cursor.lastrowid, name, hash_password(password), stamp),
        )
    return Account(name, password)


def new_app_token(server: RegistryProcess, account: Account, scopes: str = "") -> str:
    """An app token of `account`, stored as CredentialService.issue stores one (the CLI,
    tests.support.identity.app_token, costs a process start per token)."""
    token, lookup, digest = issue_secret("app")
    query(
        server,
        "INSERT INTO credential (kind, lookup, secret_hash, user_id, title, scopes, created_at) "
        "VALUES ('app', ?, ?, ?, 'test', ?, ?)",
        lookup,
        digest,
        user_id(server, account.name),
        scopes,
        now_text(),
    )
    return token


def user_id(server: RegistryProcess, name: str) -> int:
    rows = query(server, "SELECT id FROM user_account WHERE username = ?", name)
    assert rows, name
    return int(rows[0][0])


def grant(server: RegistryProcess, repository: str, kind: str, grantee_id: int, role: str) -> None:
    """Give a user or robot a role on an existing repository."""
    rows = query(server, "SELECT id FROM repository WHERE name = ?", repository)
    assert rows, repository
    query(
        server,
        "INSERT INTO repository_permission (repository_id, kind, grantee_id, role) "
        "VALUES (?, ?, ?, ?)",
        rows[0][0],
        kind,
        grantee_id,
        role,
    )
    permissions_changed(server)


def grant_user(server: RegistryProcess, repository: str, account: Account, role: str) -> None:
    grant(server, repository, "user", user_id(server, account.name), role)


def make_public(server: RegistryProcess, repository: str) -> None:
    query(server, "UPDATE repository SET public = 1 WHERE name = ?", repository)
    permissions_changed(server)


def create_robot(server: RegistryProcess, namespace: str, shortname: str) -> tuple[str, str]:
    """A robot of `namespace` with a fresh token, as the robots API stores one (its
    SHA-256 digest); returns (name, token)."""
    token = secrets.token_urlsafe(32)
    ns = query(server, "SELECT id FROM namespace WHERE name = ?", namespace)
    assert ns, namespace
    query(
        server,
        "INSERT INTO robot (namespace_id, shortname, description, token_hash, created_at) "
        "VALUES (?, ?, '', ?, ?)",
        ns[0][0],
        shortname,
        hashlib.sha256(token.encode()).hexdigest(),
        now_text(),
    )
    return f"{namespace}+{shortname}", token


# -- the audit log --------------------------------------------------------------------


def last_audit_id(server: RegistryProcess) -> int:
    return int(query(server, "SELECT COALESCE(MAX(id), 0) FROM audit_log")[0][0])


def audit_rows(server: RegistryProcess, after: int = 0) -> list[dict[str, Any]]:
    rows = query(
        server,
        "SELECT id, kind, actor_kind, actor, namespace, repository, ip, user_agent, details "
        "FROM audit_log WHERE id > ? ORDER BY id",
        after,
    )
    names = ("id", "kind", "actor_kind", "actor", "namespace", "repository", "ip", "ua")
    out = []
    for row in rows:
        entry = dict(zip(names, row[:8], strict=True))
        entry["details"] = json.loads(row[8] or "{}")
        out.append(entry)
    return out


def wait_for_audit(
    server: RegistryProcess,
    after: int,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 15.0,
) -> list[dict[str, Any]]:
    """The audit rows after id `after` once `done(rows)` holds (logins and tokens are
    written by a background task within about a second)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = audit_rows(server, after)
        if done(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


# -- registry tokens ------------------------------------------------------------------


def token_for(
    server: RegistryProcess, auth: tuple[str, str] | None, *scopes: str, **params: str
) -> str:
    """A registry token from GET /v2/auth (Basic `auth`, or anonymous)."""
    pairs: list[tuple[str, str | int | float | bool | None]] = [("service", SERVICE)]
    pairs += [("scope", s) for s in scopes]
    pairs += list(params.items())
    with server.client(auth=auth) as c:
        r = c.get("/v2/auth", params=pairs)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a token, unverified."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def access_of(token: str) -> dict[str, set[str]]:
    """`type:name` -> actions of a token's access claim."""
    return {f"{a['type']}:{a['name']}": set(a["actions"]) for a in claims_of(token)["access"]}


def signing_key(server: RegistryProcess) -> tuple[str, bytes, dict[str, Any]]:
    """(kid, private key PEM, public JWK) of the newest ES256 signing key of the server
    (an RSA key a test left behind, as an older version would, never signs)."""
    rows = query(
        server, "SELECT kid, private_key, public_jwk FROM signing_key ORDER BY retire_at DESC"
    )
    rows = [row for row in rows if json.loads(row[2]).get("alg") == "ES256"]
    assert rows, "the server has no signing key yet (ask for a token first)"
    kid, encrypted, public = rows[0]
    return str(kid), fernet_of(server).decrypt(bytes(encrypted)), json.loads(public)


def fernet_of(server: RegistryProcess) -> Fernet:
    """What encrypts the server's signing keys in the database."""
    return Fernet((server.data_dir / "run" / "secret-key").read_bytes().strip())


def valid_claims(sub: str, user_id: int, access: list[dict[str, Any]], /, **changes: Any) -> Any:
    """Claims as the token endpoint writes them for a user; `changes` override (None
    removes a claim)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": SERVICE,
        "sub": sub,
        "aud": SERVICE,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 300,
        "jti": secrets.token_hex(16),
        "access": access,
        "ch": {"kind": "user", "id": user_id, "ns": None, "su": False, "cred": None},
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """header.payload of a JWT, not yet signed."""
    return b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())


def bearer_client(server: RegistryProcess, token: str) -> httpx.Client:
    return server.client(auth=None, headers={"Authorization": f"Bearer {token}"})
