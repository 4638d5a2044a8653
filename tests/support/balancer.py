"""A load balancer for tests: Debian's nginx in front of several registry replicas.

    with Balancer(tmp_dir, [port_a, port_b, port_c]) as lb:
        httpx.get(f"{lb.url}/v2/")          # round-robin across the three
        r.headers["X-Upstream"]            # "127.0.0.1:PORT": the replica that answered

What it runs: `nginx -p <dir> -c <dir>/nginx.conf -e <dir>/error.log` in the foreground
(`daemon off`, one worker) in its own process group, with a configuration generated into a
fresh directory: its own pid file, logs and temporary paths, nothing read from /etc/nginx.
It listens on a free 127.0.0.1 port and proxies to 127.0.0.1 upstreams the way a
production balancer in front of a registry is set up:

- round-robin, HTTP/1.1 with keep-alive connections to the replicas;
- request and response bodies streamed both ways (`proxy_request_buffering off`,
  `proxy_buffering off`) and no body size limit (`client_max_body_size 0`), so a layer
  push is never spooled to the balancer's disk;
- `proxy_next_upstream error timeout`: a replica that refuses the connection (killed) is
  skipped and marked down for `fail_timeout`, then tried again (a restarted one rejoins);
  a request already sent to a replica that dies mid-way is not replayed (nginx never
  replays a non-idempotent request, nor one whose streamed body it no longer has): the
  client sees a 502 and retries, as it would in production;
- Host passed as the client sent it, plus X-Forwarded-For/-Proto/-Host and X-Real-IP;
- `X-Upstream` on every answer: which replica served it (tests assert on it).

Needs the Debian package `nginx` (scripts/install-system-deps.sh).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from tests.support.server import free_port

UPSTREAM_HEADER = "X-Upstream"
# A line of the access log (`log_format upstreams` below).
_ACCESS = re.compile(
    r'\S+ "(?P<request>[^"]*)" (?P<status>\d{3}) \d+ upstream=(?P<upstream>.*?) upstream_status='
)


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise RuntimeError("nginx is missing: run scripts/install-system-deps.sh")
    return found


class Balancer:
    """One nginx process balancing over `upstream_ports` on 127.0.0.1."""

    def __init__(
        self, base: Path, upstream_ports: Sequence[int], *, fail_timeout_seconds: int = 2
    ) -> None:
        if not upstream_ports:
            raise ValueError("a balancer needs at least one upstream")
        self.base = base
        self.upstream_ports = list(upstream_ports)
        self.fail_timeout_seconds = fail_timeout_seconds
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.error_log = base / "error.log"
        self.access_log = base / "access.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def config(self) -> str:
        base = self.base
        down = f"max_fails=1 fail_timeout={self.fail_timeout_seconds}s"
        servers = "\n".join(
            f"        server 127.0.0.1:{port} {down};" for port in self.upstream_ports
        )
        # As root, nginx would run its worker as `nobody`, which cannot enter pytest's 0700
        # temporary directories (logs and temp paths live there).
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temp = "\n".join(
            f"    {kind}_temp_path {base / 'temp' / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""\
{user}daemon off;
master_process on;
worker_processes 1;
pid {base / "nginx.pid"};
error_log {self.error_log} notice;

events {{
    worker_connections 1024;
}}

http {{
    log_format upstreams '$remote_addr "$request" $status $body_bytes_sent '
                         'upstream=$upstream_addr upstream_status=$upstream_status '
                         'time=$request_time';
    access_log {self.access_log} upstreams;
{temp}

    upstream registry {{
{servers}
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{self.port};
        server_tokens off;
        client_max_body_size 0;

        location / {{
            proxy_pass http://registry;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            proxy_send_timeout 120s;
            proxy_read_timeout 120s;
            add_header {UPSTREAM_HEADER} $upstream_addr always;
        }}
    }}
}}
"""

    def start(self, timeout: float = 20.0) -> Balancer:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "temp").mkdir(exist_ok=True)
        conf = self.base / "nginx.conf"
        conf.write_text(self.config())
        binary = nginx_binary()
        command = [binary, "-p", str(self.base), "-c", str(conf), "-e", str(self.error_log)]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused its configuration:\n{check.stderr}")
        log = open(self.base / "nginx.out", "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.proc = subprocess.Popen(
            command,
            cwd=self.base,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.log_tail()}")
            try:
                # Any answer will do (the replicas may not be up yet): nginx is listening.
                httpx.get(f"{self.url}/v2/", timeout=2.0)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not answer within {timeout}s:\n{self.log_tail()}")

    def access_entries(self) -> list[tuple[str, int, str]]:
        """(request line, status, upstream address) of every request logged so far."""
        entries = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            match = _ACCESS.match(line)
            if match:
                upstream = match["upstream"].split(",")[-1].strip()
                entries.append((match["request"], int(match["status"]), upstream))
        return entries

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        # SIGTERM: nginx's fast stop (throwaway state); its process group holds the worker.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
