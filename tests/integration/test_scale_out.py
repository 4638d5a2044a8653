"""Scale-out (issue 6, acceptance 1): three replicas behind nginx on one PostgreSQL
database, one S3 bucket (SeaweedFS) and Redis, each with a data directory of its own: the
session's `production` deployment (tests/support/production.py), also used by
tests/production and tests/e2e/test_production.py. A test that kills a replica starts it
again; the fixture below makes sure of it.

- an upload whose PATCHes go to different replicas, through the balancer's round-robin
  and straight to each replica's port, is one blob;
- an image pushed through one replica pulls, digests verified, from every replica and
  through the balancer;
- a tag moved through replica A is seen by replica B once Redis carries the invalidation
  (B's caches keep entries until told: without Redis it would answer the old digest);
- one replica SIGKILLed in the middle of concurrent pushes through the balancer: pushers
  that retry (restart the upload on a connection error or a 5xx) lose nothing, every
  image then pulls through the balancer with every digest verified, and the replica,
  started again, is back in the balancer's rotation.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    make_image,
    push_image,
    sha256,
    unique_repo,
)
from tests.support.production import ProductionDeployment, served_by

KIB = 1024
SOON = 10.0  # seconds an invalidation may take to reach another replica (caches: forever)


@pytest.fixture
def deployment(production: ProductionDeployment) -> Iterator[ProductionDeployment]:
    """The session's production deployment, whole again after each test: a replica that a
    test killed (and did not start again) is restarted."""
    yield production
    for index, replica in enumerate(production.replicas):
        if replica.proc is None or replica.proc.poll() is not None:
            production.restart(index)


def wait_for(condition: Callable[[], Any], what: str, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {seconds:g} s")
        time.sleep(0.05)


def client_at(url: str, prod: ProductionDeployment) -> httpx.Client:
    return httpx.Client(base_url=url, auth=prod.admin_auth, timeout=60.0, verify=False)


def patch_chunk(client: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    return client.patch(
        location,
        content=data,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(data) - 1}",
        },
    )


def assert_pulls(client: httpx.Client, repo: str, tag: str, manifest: bytes) -> None:
    """The tag's manifest and every blob it references, digests verified."""
    r = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, (client.base_url, r.status_code, r.text)
    assert r.content == manifest
    assert r.headers["Docker-Content-Digest"] == sha256(r.content)
    doc = json.loads(r.content)
    for desc in [doc["config"], *doc["layers"]]:
        blob = client.get(f"/v2/{repo}/blobs/{desc['digest']}")
        assert blob.status_code == 200, (client.base_url, blob.status_code, blob.text)
        assert sha256(blob.content) == desc["digest"]
        assert len(blob.content) == desc["size"]


# -- an upload across replicas --------------------------------------------------------------


def test_chunks_of_one_upload_alternate_between_replicas(deployment: ProductionDeployment) -> None:
    ports = {r.port for r in deployment.replicas}
    data = os.urandom(600 * KIB + 17)
    chunks = [data[i : i + 100 * KIB] for i in range(0, len(data), 100 * KIB)]
    digest = sha256(data)

    # Through the balancer: round-robin sends consecutive requests to the next replica.
    repo = unique_repo("scale")
    with deployment.client() as lb:
        r = lb.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        assert location.startswith(f"/v2/{repo}/blobs/uploads/")  # relative: any replica
        served: list[int] = []
        for n, chunk in enumerate(chunks):
            r = patch_chunk(lb, location, chunk, n * 100 * KIB)
            assert r.status_code == 202, r.text
            assert r.headers["Range"] == f"0-{n * 100 * KIB + len(chunk) - 1}"
            served.append(served_by(r))
            location = r.headers["Location"]
        assert set(served) == ports, served  # every replica took some of the chunks
        assert all(a != b for a, b in itertools.pairwise(served)), served
        r = lb.put(location, params={"digest": digest})
        assert r.status_code == 201, r.text
        assert r.headers["Docker-Content-Digest"] == digest

    # Straight to each replica's port: POST on one, each PATCH on the next, PUT on another.
    repo = unique_repo("scale")
    replicas = [client_at(r.url, deployment) for r in deployment.replicas]
    try:
        r = replicas[0].post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        for n, chunk in enumerate(chunks):
            r = patch_chunk(replicas[(n + 1) % 3], location, chunk, n * 100 * KIB)
            assert r.status_code == 202, r.text
            location = r.headers["Location"]
        status = replicas[(len(chunks) + 1) % 3].get(location)  # the upload's progress
        assert status.status_code == 204 and status.headers["Range"] == f"0-{len(data) - 1}"
        r = replicas[(len(chunks) + 2) % 3].put(location, params={"digest": digest})
        assert r.status_code == 201, r.text
        for client in replicas:
            got = client.get(f"/v2/{repo}/blobs/{digest}")
            assert got.status_code == 200 and got.content == data
    finally:
        for client in replicas:
            client.close()


# -- pulls from any replica, tags across replicas ------------------------------------------


def test_an_image_pulls_from_every_replica_and_the_balancer(
    deployment: ProductionDeployment,
) -> None:
    repo = unique_repo("scale")
    image = make_image(layers=2)
    with client_at(deployment.replicas[0].url, deployment) as a:
        push_image(a, repo, image, "v1")
    for url in [deployment.url, *(r.url for r in deployment.replicas)]:
        with client_at(url, deployment) as client:
            assert_pulls(client, repo, "v1", image.manifest)


def tag_digest(client: httpx.Client, repo: str, tag: str) -> str | None:
    r = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    return r.headers["Docker-Content-Digest"] if r.status_code == 200 else None


def points_at(client: httpx.Client, repo: str, digest: str | None) -> bool:
    return tag_digest(client, repo, "latest") == digest


def test_a_tag_moved_through_one_replica_is_seen_by_the_others(
    deployment: ProductionDeployment,
) -> None:
    repo = unique_repo("scale")
    first, second = make_image(), make_image()
    a, b, c = (client_at(r.url, deployment) for r in deployment.replicas)
    try:
        push_image(a, repo, first, "latest")
        for other in (b, c):  # read twice: the second answer comes from the cache
            assert tag_digest(other, repo, "latest") == first.digest
            assert tag_digest(other, repo, "latest") == first.digest
        push_image(a, repo, second, "latest")
        # Redis carries the invalidation; without it B and C would answer from their caches
        # (which keep entries until invalidated) for as long as they run.
        for other in (b, c):
            wait_for(partial(points_at, other, repo, second.digest), "moved", SOON)
        assert a.delete(f"/v2/{repo}/manifests/latest").status_code == 202
        for other in (b, c):
            wait_for(partial(points_at, other, repo, None), "deleted", SOON)
    finally:
        for client in (a, b, c):
            client.close()


# -- a replica killed under load ---------------------------------------------------------------


class Retry(Exception):
    """A connection error or a 5xx: the pusher starts that step again."""


@dataclass
class Pushed:
    repo: str
    tag: str
    manifest: bytes


@dataclass
class RetryingPusher:
    """A registry client that retries the way real ones do: an upload that fails with a
    connection error or a 5xx is started again from its POST; a manifest PUT is repeated.

    nginx passes a PUT (an idempotent method) on to the next replica when the one it sent
    it to dies before answering; if that one had finished the upload first, the next
    answers the same 201 (a finished upload remembers its digest). BLOB_UPLOAD_UNKNOWN to
    the finishing PUT also restarts the upload, as a real client would, should the
    upload's row be gone, and so does BLOB_UPLOAD_INVALID (the dead replica was moving
    the upload's bytes into place). Any other unexpected answer fails the test."""

    client: httpx.Client
    attempts: int = 10
    retries: int = 0
    log: list[str] = field(default_factory=list)

    def _checked(self, r: httpx.Response, expected: int) -> httpx.Response:
        if r.status_code >= 500:
            raise Retry(f"{r.request.method} {r.request.url.path}: {r.status_code}")
        assert r.status_code == expected, (r.request.method, r.request.url, r.status_code, r.text)
        return r

    def _again(self, step: Callable[[], None]) -> None:
        for _ in range(self.attempts):
            try:
                step()
                return
            except httpx.TransportError as exc:
                self.log.append(f"{exc.request.method} {exc.request.url.path}: {exc!r}")
            except Retry as exc:
                self.log.append(str(exc))
            self.retries += 1
            time.sleep(0.05)
        raise AssertionError(f"gave up after {self.attempts} attempts: {self.log[-3:]}")

    def upload(self, repo: str, data: bytes, chunk: int) -> None:
        digest = sha256(data)

        def once() -> None:
            c = self.client
            r = self._checked(c.post(f"/v2/{repo}/blobs/uploads/"), 202)
            location = r.headers["Location"]
            for start in range(0, len(data), chunk):
                part = data[start : start + chunk]
                r = self._checked(patch_chunk(c, location, part, start), 202)
                location = r.headers["Location"]
            r = c.put(location, params={"digest": digest})
            if r.status_code == 404 and error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"]:
                raise Retry(f"PUT {r.request.url.path}: 404 BLOB_UPLOAD_UNKNOWN")
            if r.status_code == 400 and error_codes(r) == ["BLOB_UPLOAD_INVALID"]:
                # The killed replica was moving the upload's bytes into place when it died:
                # the upload cannot be finished any more, and says so; start it again.
                raise Retry(f"PUT {r.request.url.path}: 400 BLOB_UPLOAD_INVALID")
            self._checked(r, 201)
            assert r.headers["Docker-Content-Digest"] == digest

        self._again(once)

    def manifest(self, repo: str, tag: str, body: bytes) -> None:
        def once() -> None:
            r = self.client.put(
                f"/v2/{repo}/manifests/{tag}",
                content=body,
                headers={"Content-Type": OCI_MANIFEST},
            )
            self._checked(r, 201)

        self._again(once)


def image_with(base: bytes, own: int) -> tuple[bytes, list[bytes]]:
    """A manifest on the shared `base` layer plus `own` small random layers; its blobs."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()})
    layers = [base, *(os.urandom(48 * KIB + n) for n in range(own))]
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config.encode()),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }
    return json.dumps(doc).encode(), [config.encode(), *layers]


def test_a_replica_killed_under_load_loses_no_push(
    deployment: ProductionDeployment, tmp_path: Path
) -> None:
    victim = 1
    victim_port = deployment.replicas[victim].port
    pushers, images_each = 6, 3
    base = os.urandom(160 * KIB)  # every image shares it: concurrent uploads of one digest
    done = threading.Semaphore(0)  # one release per finished blob upload
    killed = threading.Event()
    pushed: list[Pushed] = []
    lock = threading.Lock()

    def push_images(n: int) -> RetryingPusher:
        with deployment.client(timeout=30.0) as client:
            pusher = RetryingPusher(client)
            repo = unique_repo(f"load{n}")
            for i in range(images_each):
                manifest, blobs = image_with(base, own=2)
                for blob in blobs:
                    pusher.upload(repo, blob, 32 * KIB)
                    done.release()
                tag = f"v{i}"
                pusher.manifest(repo, tag, manifest)
                with lock:
                    pushed.append(Pushed(repo, tag, manifest))
            return pusher

    def interrupted_on_the_victim() -> RetryingPusher:
        """A push whose first upload is in the middle of a PATCH on the victim when it is
        killed (so at least one request certainly dies with it); retried through the
        balancer."""
        repo = unique_repo("cut")
        manifest, blobs = image_with(base, own=1)
        data = blobs[-1]
        with deployment.client(timeout=30.0) as lb:
            pusher = RetryingPusher(lb)
            with client_at(deployment.replicas[victim].url, deployment) as direct:
                r = direct.post(f"/v2/{repo}/blobs/uploads/")
                assert r.status_code == 202, r.text

                def body() -> Iterator[bytes]:
                    yield data[: len(data) // 2]
                    killed.wait(120)
                    time.sleep(0.2)
                    yield data[len(data) // 2 :]

                try:
                    direct.patch(r.headers["Location"], content=body())
                    raise AssertionError("a PATCH on a killed replica was answered")
                except httpx.TransportError as exc:
                    pusher.retries += 1
                    pusher.log.append(repr(exc))
            for blob in blobs:
                pusher.upload(repo, blob, 32 * KIB)
            pusher.manifest(repo, "cut", manifest)
            with lock:
                pushed.append(Pushed(repo, "cut", manifest))
        return pusher

    total_blobs = pushers * images_each * 4
    with ThreadPoolExecutor(max_workers=pushers + 1) as pool:
        cut = pool.submit(interrupted_on_the_victim)
        load = [pool.submit(push_images, n) for n in range(pushers)]
        try:
            # Kill once a third of the blobs are in: the rest of the load runs without it.
            for _ in range(total_blobs // 3):
                assert done.acquire(timeout=120), "the load made no progress"
            deployment.kill(victim)
        finally:
            killed.set()
        results = [f.result(timeout=300) for f in [cut, *load]]

    assert len(pushed) == pushers * images_each + 1
    assert results[0].retries >= 1  # the PATCH in flight on the victim died with it
    # Every image, every blob, through the balancer (the victim is still down).
    with deployment.client() as lb:
        for image in pushed:
            assert_pulls(lb, image.repo, image.tag, image.manifest)
        # The balancer skips the dead replica: every answer came from another one.
        assert all(served_by(lb.get("/v2/")) != victim_port for _ in range(6))

    # Started again on its port, it is back in the rotation and serves what was pushed.
    deployment.restart(victim)
    with deployment.client() as lb:
        wait_for(lambda: served_by(lb.get("/v2/")) == victim_port, "back in rotation", 30)
    with client_at(deployment.replicas[victim].url, deployment) as direct:
        for image in pushed[:3]:
            assert_pulls(direct, image.repo, image.tag, image.manifest)
