"""Start and stop the registries under test.

Each registry gets a fresh data directory and a free port on 127.0.0.1, runs in
its own process group (session), and is stopped by that group's id: SIGTERM,
then SIGKILL for whatever is left. Nothing here kills a process it did not start.

After a server answers ``GET /v2/`` we also check that the listening socket on
its port belongs to a process in the tree we started, so that a port taken by
someone else between our probe and the server's bind cannot be mistaken for
our server. The PID handed to regbench is the root of that tree: regbench sums
CPU and RSS over the root and all its descendants.

cargohold requires authentication: every cargohold started here gets a first superuser
(`admin`, a random password per start, CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD), kept in
`Server.credentials`. Distribution runs open (BASELINE.md) unless it is given an htpasswd
file (Basic auth, bcrypt). A server that answers `GET /v2/` with 401 is ready once the same
request with its credentials answers 200. `token()` does the Docker token flow as docker
and podman do (challenge, then GET <realm>?service=&scope= with Basic) for the scripts
that speak HTTP themselves.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import quote, urlencode, urlsplit

HOST = "127.0.0.1"
PORT_ATTEMPTS = 3
ADMIN_USER = "admin"
# Registry tokens live 300 s by default. The benchmarks keep one token for a whole load
# (wrk and the HEAD load generators cannot fetch a new one in the middle), so they ask for
# an hour; what a request costs does not depend on it. --server-env may override it.
BENCH_AUTH_ENV = {"CARGOHOLD_AUTH__TOKEN_TTL_SECONDS": "3600"}
# bcrypt cost of the htpasswd file for Distribution: that of `htpasswd -B` (apache2-utils)
# and of Distribution's own documentation example.
HTPASSWD_COST = 5

Credentials = tuple[str, str]  # (user, password)


class ServerError(Exception):
    """A registry could not be started, or did not behave like the one we started."""


class SetupError(Exception):
    """A benchmark cannot run (a missing tool, server or option, no disk space)."""


def run_cli(run: Callable[[], int], log: Callable[[str], None]) -> int:
    """Run a benchmark script's main part: SIGTERM and SIGHUP unwind through the finally
    blocks that stop the servers; a setup problem exits 2, Ctrl-C 130."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log(f"got signal {signal.Signals(signum).name}: stopping")
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        return run()
    except (SetupError, ServerError) as exc:
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130


class _PortTaken(ServerError):
    """Another process listens on the port we picked (a race); retried on a new port."""


# --------------------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------------------


def free_port() -> int:
    """A currently unused TCP port on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def process_tree(pid: int) -> list[int]:
    """pid followed by its live descendants (the same walk regbench's monitor does)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(x) for x in f.read().split())
    return [p for p in out if is_running(p)]


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is pgid."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields and fields[0] not in ("Z", "X") and fields[2] == str(pgid):
            members.append(int(entry))
    return members


def listening_inodes(port: int) -> set[int]:
    """Socket inodes in LISTEN state on TCP port `port` (IPv4 and IPv6)."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(cols[9]))
    return inodes


def socket_owners(port: int, pids: Sequence[int]) -> list[int]:
    """Those of `pids` that hold a listening socket on `port`."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    owners = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    owners.append(pid)
                    break
    return owners


def http_status(
    port: int, path: str = "/v2/", timeout: float = 2.0, headers: Mapping[str, str] | None = None
) -> int | None:
    """Status of GET path on 127.0.0.1:port, or None when nothing answers."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# --------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------


def new_password() -> str:
    """A random password (URL-safe characters, so it can go into a URL unquoted)."""
    return secrets.token_urlsafe(24)


def basic_authorization(credentials: Credentials) -> str:
    """The value of an `Authorization: Basic ...` header."""
    user, password = credentials
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def url_with_credentials(url: str, credentials: Credentials | None) -> str:
    """http://user:password@host:port, as regbench takes credentials per target."""
    if credentials is None:
        return url
    scheme, rest = url.split("://", 1)
    user, password = (quote(x, safe="") for x in credentials)
    return f"{scheme}://{user}:{password}@{rest}"


def write_htpasswd(path: Path, credentials: Credentials, cost: int = HTPASSWD_COST) -> None:
    """An htpasswd file with one bcrypt entry, as Distribution's `auth: htpasswd` reads it."""
    try:
        import bcrypt
    except ImportError as exc:
        raise SetupError(
            "the Python package bcrypt is missing (it is in the test extra: "
            "`.venv/bin/pip install -e '.[test]'`)"
        ) from exc
    user, password = credentials
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()
    path.write_text(f"{user}:{hashed}\n")


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="...",service="..."' -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {
        k.lower(): quoted or bare for k, quoted, bare in _CHALLENGE_PARAM.findall(rest)
    }


def token(port: int, credentials: Credentials, scopes: Sequence[str], timeout: float = 30.0) -> str:
    """A registry token for `scopes` through the Docker token flow, as docker gets one:
    the challenge of an anonymous `GET /v2/` names the realm and service, then
    `GET <realm>?service=...&scope=...` with Basic credentials."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/v2/")
        resp = conn.getresponse()
        resp.read()
        header = resp.getheader("WWW-Authenticate") or ""
        scheme, params = parse_challenge(header)
        if resp.status != 401 or scheme != "bearer" or not params.get("realm"):
            raise ServerError(f"GET /v2/ answered {resp.status} {header!r}: no Bearer challenge")
        realm = urlsplit(params["realm"])
        query = [("service", params.get("service", "")), *(("scope", s) for s in scopes)]
        target = f"{realm.path}?{realm.query + '&' if realm.query else ''}{urlencode(query)}"
        conn.request("GET", target, headers={"Authorization": basic_authorization(credentials)})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise ServerError(f"token endpoint answered {resp.status}: {body[:300]!r}")
        doc = json.loads(body)
        value = doc.get("token") or doc.get("access_token")
        if not isinstance(value, str) or not value:
            raise ServerError("the token endpoint returned no token")
        return value
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise ServerError(f"getting a token from 127.0.0.1:{port}: {exc}") from exc
    finally:
        conn.close()


# --------------------------------------------------------------------------------------
# A running server
# --------------------------------------------------------------------------------------


@dataclass
class Server:
    """One registry process tree that this harness started (in its own session)."""

    name: str  # label in the reports, e.g. "cargohold"
    kind: str  # "cargohold" or "distribution"
    port: int
    pid: int  # root of the tree; also its process group id
    data_dir: Path
    log_path: Path
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # set on top of the inherited environment
    popen: subprocess.Popen[bytes] | None = None  # when the root is our own child
    exit_code: int | None = None
    credentials: Credentials | None = None  # None: the server runs without authentication

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def authorization(self) -> dict[str, str]:
        """Headers with the Basic credentials (empty for a server without authentication)."""
        if self.credentials is None:
            return {}
        return {"Authorization": basic_authorization(self.credentials)}

    def bearer(self, scopes: Sequence[str]) -> dict[str, str]:
        """Headers with a registry token for `scopes` (Docker token flow)."""
        if self.credentials is None:
            return {}
        return {"Authorization": "Bearer " + token(self.port, self.credentials, scopes)}

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return is_running(self.pid)

    def tree(self) -> list[tuple[int, str]]:
        return [(p, process_name(p)) for p in process_tree(self.pid)]

    def log_tail(self, lines: int = 20, width: int = 300) -> str:
        """The last lines of the server's log, each cut to `width` characters."""
        try:
            with open(self.log_path, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
            return "\n".join(
                line if len(line) <= width else line[:width] + " [...]" for line in tail
            )
        except OSError:
            return ""

    def reap(self) -> None:
        """Collect the exit code of a root process that is our child."""
        if self.popen is not None and self.popen.poll() is not None:
            self.exit_code = self.popen.returncode

    def _gone(self) -> bool:
        self.reap()
        return not self.alive() and not group_members(self.pid)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._gone():
                return True
            time.sleep(0.05)
        return self._gone()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after `timeout` seconds."""
        if self._gone():
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)  # pgid == pid: started with start_new_session
            if self._wait_gone(wait):
                return
        raise ServerError(f"{self.name} (process group {self.pid}) survived SIGKILL")


def _check_ours(server: Server) -> None:
    """Raise _PortTaken if the port is served by a process outside the server's tree."""
    if listening_inodes(server.port) and not socket_owners(server.port, process_tree(server.pid)):
        raise _PortTaken(f"port {server.port} is held by a process outside {server.name}'s tree")


def _wait_ready(server: Server, timeout: float) -> None:
    """Poll GET /v2/ until it answers 200 (or 401, and 200 with the server's credentials);
    check that the answer comes from our tree."""
    deadline = time.monotonic() + timeout
    status: int | None = None
    while True:
        if not server.alive():
            server.reap()
            if listening_inodes(server.port):
                raise _PortTaken(f"{server.name} exited and port {server.port} is taken")
            raise ServerError(
                f"{server.name} exited (code {server.exit_code}) before answering GET /v2/; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        status = http_status(server.port)
        if status == 200:
            _check_ours(server)
            return
        if status == 401:
            _check_ours(server)
            if server.credentials is None:
                raise ServerError(
                    f"{server.name} answers GET /v2/ with 401, and the benchmark has no "
                    "credentials for it"
                )
            with_auth = http_status(server.port, headers=server.authorization)
            if with_auth == 200:
                return
            raise ServerError(
                f"{server.name} answers GET /v2/ with {with_auth} to the credentials it was "
                f"started with (user {server.credentials[0]!r}); log {server.log_path}:\n"
                f"{server.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise ServerError(
                f"{server.name} did not answer GET /v2/ with 200 within {timeout:.0f}s "
                f"(last status: {status}); log {server.log_path}:\n{server.log_tail()}"
            )
        time.sleep(0.1)


def _with_port_retries(start: Callable[[int], Server]) -> Server:
    last: _PortTaken | None = None
    for _ in range(PORT_ATTEMPTS):
        try:
            return start(free_port())
        except _PortTaken as exc:
            last = exc
    raise ServerError(f"no free port after {PORT_ATTEMPTS} attempts: {last}")


def start_cargohold(
    exe: Path,
    data_dir: Path,
    log_path: Path,
    *,
    name: str = "cargohold",
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    password: str | None = None,
) -> Server:
    """`cargohold serve --host 127.0.0.1 --port PORT` with CARGOHOLD_DATA_DIR=data_dir and a
    first superuser `admin` with `password` (default: a new random one), in
    Server.credentials; the token lifetime of BENCH_AUTH_ENV unless extra_env sets it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    password = password or new_password()
    env = {
        "CARGOHOLD_DATA_DIR": str(data_dir),
        "CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD": password,
        **BENCH_AUTH_ENV,
        **(extra_env or {}),
    }
    credentials = (
        env.get("CARGOHOLD_AUTH__INITIAL_ADMIN_USER", ADMIN_USER),
        env["CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD"],
    )

    def start(port: int) -> Server:
        argv = [str(exe), "serve", "--host", HOST, "--port", str(port)]
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                cwd=data_dir,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(
            name,
            "cargohold",
            port,
            proc.pid,
            data_dir,
            log_path,
            argv,
            env,
            proc,
            None,
            credentials,
        )
        try:
            _wait_ready(server, timeout)
        except BaseException:
            server.stop()
            raise
        return server

    return _with_port_retries(start)


def start_distribution(
    regbench: Path,
    data_dir: Path,
    *,
    name: str = "distribution",
    timeout: float = 60.0,
    credentials: Credentials | None = None,
) -> Server:
    """Debian's docker-registry through `regbench.py distribution` (the config of BASELINE.md).

    regbench starts it in a new session, waits for /v2/ and prints its PID; the
    registry is then no child of ours, so it is watched through /proc. With
    `credentials`, it gets `--htpasswd` (Basic auth; a bcrypt file written next to its
    data: `auth: htpasswd` in its config) and accepts only those.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    htpasswd: list[str] = []
    if credentials is not None:
        path = data_dir.parent / f"{data_dir.name}.htpasswd"
        write_htpasswd(path, credentials)
        htpasswd = ["--htpasswd", str(path)]

    def start(port: int) -> Server:
        argv = [
            sys.executable,
            str(regbench),
            "distribution",
            "--port",
            str(port),
            "--root",
            str(data_dir),
            *htpasswd,
        ]
        log_path = data_dir / "regbench-registry.log"
        try:
            res = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout + 30, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"regbench.py distribution hung for {timeout + 30:.0f}s") from exc
        if res.returncode != 0:
            if listening_inodes(port):
                raise _PortTaken(f"docker-registry could not use port {port}")
            raise ServerError(
                f"regbench.py distribution failed (rc={res.returncode}):\n{res.stderr}"
            )
        words = res.stdout.split()
        if not words or not words[-1].isdigit():
            raise ServerError(f"regbench.py distribution printed no PID: {res.stdout!r}")
        pid = int(words[-1])
        server = Server(
            name, "distribution", port, pid, data_dir, log_path, argv, credentials=credentials
        )
        try:
            if os.getpgid(pid) != pid:
                raise ServerError(f"docker-registry PID {pid} does not lead its own process group")
            _wait_ready(server, timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError, ServerError):
                if os.getpgid(pid) == pid:
                    server.stop()
            raise
        return server

    return _with_port_retries(start)
