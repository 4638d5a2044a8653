"""`make run` serves /v2/ on 127.0.0.1:5000, as the README promises."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.server import REPO_ROOT


def test_make_run_serves_on_port_5000(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env["CARGOHOLD_DATA_DIR"] = str(tmp_path / "var")
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "-s", "run"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get("http://127.0.0.1:5000/v2/", timeout=1.0)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert answer is not None, log.read_text()
        # Clients learn where to log in from the challenge of an anonymous /v2/.
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="http://127.0.0.1:5000')
        assert answer.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        printed = log.read_text()
        assert "http://127.0.0.1:5000/v2/" in printed
        password_file = tmp_path / "var" / "initial-admin-password"
        assert f"Created the superuser 'admin'; its password is in {password_file}" in printed
        assert "docker login 127.0.0.1:5000" in printed
        assert password_file.stat().st_mode & 0o077 == 0  # readable by its owner only
        password = password_file.read_text().strip()
        signed_in = httpx.get("http://127.0.0.1:5000/v2/", auth=("admin", password), timeout=10)
        assert signed_in.status_code == 200
        assert (tmp_path / "var" / "cargohold.db").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)  # the server stops on SIGTERM (workers killed after 10 s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            raise
