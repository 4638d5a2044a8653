"""Start and stop real cargohold servers for tests: a subprocess on a free loopback port."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every test server starts with this superuser (auth.initial_admin_password).
ADMIN_USER = "admin"
ADMIN_PASSWORD = "test-admin-password"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SignedInAsAdmin:
    """The superuser's credentials and clients of anything serving the registry at `url`
    (one test server, or a deployment behind a balancer)."""

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def admin_auth(self) -> tuple[str, str]:
        """Basic credentials of the superuser every test server starts with."""
        return (ADMIN_USER, ADMIN_PASSWORD)

    @property
    def authorization(self) -> str:
        """The superuser's Authorization header value, for hand-written requests."""
        raw = f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client signed in as the superuser (HTTP Basic on every request)."""
        kwargs.setdefault("timeout", 60.0)
        kwargs.setdefault("auth", self.admin_auth)
        # verify=False: plain HTTP on loopback; building a TLS context costs ~100 ms.
        return httpx.Client(base_url=self.url, verify=False, **kwargs)


class RegistryProcess(SignedInAsAdmin):
    """One `cargohold serve` process with its own data directory and database."""

    def __init__(
        self, data_dir: Path, *, database_url: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.extra_env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"
        # Answers of the start-up probe (GET /v2/ as the superuser) that mean "up": add 401
        # for servers that refuse passwords on the registry protocol.
        self.ready_statuses = frozenset({200})

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
        env["CARGOHOLD_DATA_DIR"] = str(self.data_dir)
        env["CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD"] = ADMIN_PASSWORD
        # Shared test servers see many deliberate login failures, all from 127.0.0.1: no
        # lockout or delay unless a test asks for them (tests/security covers lockout).
        env["CARGOHOLD_AUTH__LOCKOUT__MAX_FAILURES"] = "100000"
        env["CARGOHOLD_AUTH__LOCKOUT__MAX_FAILURES_PER_ADDRESS"] = "100000"
        env["CARGOHOLD_AUTH__LOCKOUT__DELAY_AFTER"] = "100000"
        if self.database_url:
            env["CARGOHOLD_DATABASE__URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> RegistryProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cargohold",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=REPO_ROOT,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cargohold exited early:\n{self.log_tail()}")
            try:
                answer = httpx.get(f"{self.url}/v2/", timeout=1.0, auth=self.admin_auth)
                if answer.status_code in self.ready_statuses:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"cargohold did not answer within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the whole process group and wait for it to end."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
