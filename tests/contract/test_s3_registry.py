"""A registry whose blobs live in S3 (SeaweedFS): the bytes are in the bucket, blob GETs can
be redirected to presigned URLs, an upload's PATCHes can alternate between replicas, and a
256 MiB chunked push holds a few parts of memory in the server."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.contract.conftest import BUCKET
from tests.support.oci import push_blob, sha256, unique_repo
from tests.support.postgres import temporary_database
from tests.support.s3 import SeaweedS3
from tests.support.server import RegistryProcess

MIB = 1 << 20


def objects(seaweed: SeaweedS3, prefix: str) -> list[str]:
    s3 = seaweed.client()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return [item["Key"][len(prefix) + 1 :] for page in pages for item in page.get("Contents", [])]


def chunked_push(
    client: httpx.Client,
    repo: str,
    data: bytes,
    size: int,
    clients: list[httpx.Client] | None = None,
) -> str:
    """POST, PATCHes of `size` with Content-Range (each to the next of `clients`), PUT;
    returns the upload's Location (the digest is the data's sha256)."""
    digest = sha256(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = first = r.headers["Location"]
    senders = clients or [client]
    for n, start in enumerate(range(0, len(data), size)):
        chunk = data[start : start + size]
        r = senders[n % len(senders)].patch(
            location,
            content=chunk,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(chunk) - 1}",
            },
        )
        assert r.status_code == 202, r.text
        assert r.headers["Range"] == f"0-{start + len(chunk) - 1}"
        location = r.headers["Location"]
    r = senders[len(senders) - 1].put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    return first


def test_blobs_are_stored_in_the_bucket(any_registry: RegistryProcess, seaweed: SeaweedS3) -> None:
    prefix = any_registry.extra_env["CARGOHOLD_STORAGE__S3__PREFIX"]
    data = os.urandom(6 * MIB + 5)
    with any_registry.client() as client:
        location = chunked_push(client, unique_repo(), data, 2 * MIB)
    upload = location.rstrip("/").rsplit("/", 1)[-1]
    hex_ = hashlib.sha256(data).hexdigest()
    stored = objects(seaweed, prefix)
    assert f"blobs/sha256/{hex_[:2]}/{hex_}" in stored
    s3 = seaweed.client()
    body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/blobs/sha256/{hex_[:2]}/{hex_}")["Body"]
    assert hashlib.sha256(body.read()).hexdigest() == hex_
    assert not [k for k in stored if upload in k]  # the upload's pieces are gone


@pytest.fixture(scope="module")
def redirecting(
    seaweed: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryProcess]:
    env = seaweed.settings_env(BUCKET, prefix=f"redirect-{uuid.uuid4().hex[:8]}")
    env["CARGOHOLD_STORAGE__S3__REDIRECT"] = "true"
    server = RegistryProcess(tmp_path_factory.mktemp("registry-s3-redirect"), env=env).start()
    yield server
    server.stop()


def test_blob_get_redirects_to_a_presigned_url(redirecting: RegistryProcess) -> None:
    data = os.urandom(100_000)
    repo = unique_repo()
    with redirecting.client() as client:
        digest = push_blob(client, repo, data)
        r = client.get(f"/v2/{repo}/blobs/{digest}")
        assert r.status_code == 307
        assert r.headers["Docker-Content-Digest"] == digest
        assert "max-age" not in r.headers.get("Cache-Control", "")  # the URL expires
        location = r.headers["Location"]
        assert "X-Amz-Signature=" in location
        head = client.head(f"/v2/{repo}/blobs/{digest}")
        assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
        missing = client.get(f"/v2/{repo}/blobs/sha256:{'0' * 64}")
        assert missing.status_code == 404
    # The client follows without the registry's credentials: the URL is its own.
    with httpx.Client(follow_redirects=True) as anonymous:
        got = anonymous.get(location)
        assert got.status_code == 200 and got.content == data
        ranged = anonymous.get(location, headers={"Range": "bytes=5-9"})
        assert ranged.status_code == 206 and ranged.content == data[5:10]
    with redirecting.client(follow_redirects=True) as client:
        assert client.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_chunks_alternate_between_two_replicas(seaweed: SeaweedS3, tmp_path: Path) -> None:
    """Two registry processes on one PostgreSQL database and one bucket, as behind a load
    balancer: each PATCH goes to the other replica, the PUT to the last; both serve it."""
    env = seaweed.settings_env(BUCKET, prefix=f"replicas-{uuid.uuid4().hex[:8]}")
    env["CARGOHOLD_AUTH__SECRET_KEY"] = "the-same-on-every-replica-" + uuid.uuid4().hex
    with temporary_database() as url:
        first = RegistryProcess(tmp_path / "one", database_url=url, env=env).start()
        try:
            second = RegistryProcess(tmp_path / "two", database_url=url, env=env).start()
            try:
                data = os.urandom(9 * MIB + 1234)
                repo = unique_repo()
                with first.client() as a, second.client() as b:
                    chunked_push(a, repo, data, 2 * MIB, clients=[a, b])
                    digest = sha256(data)
                    for client in (a, b):
                        r = client.get(f"/v2/{repo}/blobs/{digest}")
                        assert r.status_code == 200 and r.content == data
            finally:
                second.stop()
        finally:
            first.stop()


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _PeakRss:
    """The highest resident memory of a process tree while it runs (sampled every 20 ms)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def now(self) -> int:
        return sum(_rss(pid, "VmRSS") for pid in _tree(self.root))

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(0.02)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_256_mib_chunked_push_holds_a_few_parts_in_the_server(
    seaweed: SeaweedS3, tmp_path: Path
) -> None:
    env = seaweed.settings_env(BUCKET, prefix=f"memory-{uuid.uuid4().hex[:8]}")
    env["CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS"] = "3600"  # argon2 once, before measuring
    part = 16 * MIB  # the default storage.s3.multipart_part_bytes
    server = RegistryProcess(tmp_path / "memory", env=env).start()
    try:
        assert server.proc is not None
        block = os.urandom(MIB)
        chunk = block * 8
        with server.client() as client:
            chunked_push(client, unique_repo(), os.urandom(3 * MIB), MIB)  # warm-up
            data_digest = hashlib.sha256()
            for _ in range(32):
                data_digest.update(chunk)
            digest = "sha256:" + data_digest.hexdigest()
            repo = unique_repo()
            sampler = _PeakRss(server.proc.pid)
            before = sampler.now()
            with sampler:
                r = client.post(f"/v2/{repo}/blobs/uploads/")
                location = r.headers["Location"]
                for n in range(32):
                    start = n * len(chunk)
                    r = client.patch(
                        location,
                        content=chunk,
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{start}-{start + len(chunk) - 1}",
                        },
                    )
                    assert r.status_code == 202, r.text
                    location = r.headers["Location"]
                r = client.put(location, params={"digest": digest})
                assert r.status_code == 201, r.text
            growth = sampler.peak - before
            pulled = hashlib.sha256()
            with client.stream("GET", f"/v2/{repo}/blobs/{digest}") as answer:
                for data in answer.iter_bytes(MIB):
                    pulled.update(data)
            assert "sha256:" + pulled.hexdigest() == digest
        assert growth < 4 * part, f"RSS grew {growth / MIB:.1f} MiB"
    finally:
        server.stop()
