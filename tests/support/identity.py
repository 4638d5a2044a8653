"""Accounts and credentials for tests, made the way an administrator would: with the
`cargohold` CLI against a test server's database (no API needed)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass

from tests.support.server import REPO_ROOT, RegistryProcess


@dataclass(frozen=True)
class Account:
    name: str
    password: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.name, self.password)


def cli(
    server: RegistryProcess, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `cargohold ARGS` on the server's data directory and database; raise on failure."""
    proc = subprocess.run(
        [sys.executable, "-m", "cargohold", *args],
        cwd=REPO_ROOT,
        env=server.environment(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise AssertionError(f"cargohold {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def create_user(
    server: RegistryProcess,
    name: str | None = None,
    password: str | None = None,
    *,
    email: str | None = None,
    superuser: bool = False,
) -> Account:
    name = name or unique_name()
    password = password or f"pw-{name}-secret"
    args = ["user", "create", name, "--password-stdin"]
    if email:
        args += ["--email", email]
    if superuser:
        args.append("--superuser")
    cli(server, *args, stdin=password + "\n")
    return Account(name, password)


def app_token(
    server: RegistryProcess,
    user: str,
    *,
    scopes: tuple[str, ...] = (),
    name: str = "test token",
    expires: str | None = None,
) -> str:
    """A new app-specific token of `user` (a bearer token on /api/v1, a password on /v2)."""
    args = ["token", "create", user, "--name", name]
    for scope in scopes:
        args += ["--scope", scope]
    if expires:
        args += ["--expires", expires]
    return cli(server, *args).stdout.strip().splitlines()[-1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
