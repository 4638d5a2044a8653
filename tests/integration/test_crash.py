"""Crash safety: the server killed with SIGKILL in the middle of pushes.

Acceptance: after a restart no blob or manifest is corrupt or half-visible, and the same
pushes succeed when retried.

Each round starts six concurrent image pushes (a small config, one large layer of
8-32 MiB, or 1-2 MiB for two of the images, and one of 1-3 MiB, sent as chunked
PATCHes, as POST-then-PUT or as one monolithic POST, then the manifest) and SIGKILLs
the server's process group once a given share of all bytes has been sent. A new server
then starts on the same data directory and database, and the test checks:

* every blob that is visible has exactly its bytes, and only blobs whose bytes were all
  sent (and, for chunked uploads, whose finishing PUT was sent) are visible at all;
  every blob or manifest the server acknowledged before the kill is visible;
* every visible manifest is exactly what was pushed and every blob it names is there;
* every file in storage/blobs holds exactly the bytes of its digest;
* a chunked upload interrupted before its finish reports a Range between what the
  server acknowledged and what was sent, and can be resumed from there to the exact blob;
* all pushes, retried from scratch, succeed and read back exactly, and what earlier
  rounds pushed is still intact.

Rounds kill at different moments (15%, 50% and 85% of the bytes) on one data directory,
on SQLite; one round (40%) runs on PostgreSQL. A last test builds by hand the state a
kill leaves between publishing a blob's file and recording it in the database."""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.security.helpers import assert_oci_error, storage_problems
from tests.support.oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, descriptor, sha256
from tests.support.postgres import temporary_database
from tests.support.server import ADMIN_PASSWORD, ADMIN_USER, RegistryProcess

MiB = 1 << 20
PIECE = 256 * 1024  # the granularity at which request bodies are handed to the socket
CHUNK = 4 * MiB  # PATCH size of chunked uploads
MODES = ("chunked", "put", "post")


class Progress:
    """Bytes handed to the server so far, over all threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0

    def stream(self, data: bytes, blob: BlobPush) -> Iterator[bytes]:
        view = memoryview(data)
        for i in range(0, len(data), PIECE):
            piece = bytes(view[i : i + PIECE])
            with self.lock:
                self.sent += len(piece)
            blob.sent += len(piece)
            yield piece
        if not data:
            yield b""


@dataclass
class BlobPush:
    data: bytes
    mode: str
    digest: str = ""
    sent: int = 0  # bytes handed to the connection
    acked: int = 0  # chunked: bytes the server answered 202 for
    location: str | None = None  # chunked: the upload session
    finish_sent: bool = False  # the request that publishes the blob has been started
    acknowledged: bool = False  # the server answered 201

    def __post_init__(self) -> None:
        self.digest = sha256(self.data)

    @property
    def all_sent(self) -> bool:
        return self.sent == len(self.data)


@dataclass
class ImagePush:
    repo: str
    tag: str
    config: BlobPush
    layers: list[BlobPush]
    manifest: bytes = b""
    manifest_sent: bool = False
    manifest_acknowledged: bool = False
    error: BaseException | None = None

    def __post_init__(self) -> None:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, self.config.data),
            "layers": [descriptor(OCI_LAYER, b.data) for b in self.layers],
        }
        self.manifest = json.dumps(doc, indent=2).encode()

    @property
    def blobs(self) -> list[BlobPush]:
        return [self.config, *self.layers]

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


@dataclass
class Kept:
    """What a finished round left behind, for later rounds to check (without the bytes)."""

    blobs: list[tuple[str, str, int]] = field(default_factory=list)  # repo, digest, size
    manifests: list[tuple[str, str, bytes]] = field(default_factory=list)  # repo, ref, body


def make_images(rng: random.Random, round_no: int, count: int = 6) -> list[ImagePush]:
    """`count` images with a large layer of 8-32 MiB and a medium one of 1-3 MiB, except
    that the first two are small (2-4 MiB in all), so that some images are complete
    when the server is killed and others are not."""
    images = []
    for i in range(count):
        config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()})
        big_size = rng.randint(1, 2) * MiB if i < 2 else rng.randint(8, 32) * MiB
        big = BlobPush(os.urandom(big_size + rng.randint(0, 999)), MODES[(i + round_no) % 3])
        medium_size = rng.randint(1, 3) * MiB + rng.randint(0, 999)
        medium = BlobPush(os.urandom(medium_size), rng.choice(MODES))
        images.append(
            ImagePush(
                repo=f"crash/r{i % 3}",
                tag=f"round{round_no}-{i}",
                config=BlobPush(config.encode(), "post"),
                layers=[big, medium],
            )
        )
    return images


def push_blob(client: httpx.Client, repo: str, blob: BlobPush, progress: Progress) -> None:
    octets = {"Content-Type": "application/octet-stream"}
    if blob.mode == "post":
        blob.finish_sent = True
        r = client.post(
            f"/v2/{repo}/blobs/uploads/",
            params={"digest": blob.digest},
            content=progress.stream(blob.data, blob),
            headers={**octets, "Content-Length": str(len(blob.data))},
        )
    elif blob.mode == "put":
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        blob.finish_sent = True
        r = client.put(
            r.headers["location"],
            params={"digest": blob.digest},
            content=progress.stream(blob.data, blob),
            headers={**octets, "Content-Length": str(len(blob.data))},
        )
    else:
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        blob.location = r.headers["location"]
        for start in range(0, len(blob.data), CHUNK):
            piece = blob.data[start : start + CHUNK]
            r = client.patch(
                blob.location,
                content=progress.stream(piece, blob),
                headers={
                    **octets,
                    "Content-Length": str(len(piece)),
                    "Content-Range": f"{start}-{start + len(piece) - 1}",
                },
            )
            assert r.status_code == 202, r.text
            blob.location = r.headers["location"]
            blob.acked = start + len(piece)
        blob.finish_sent = True
        r = client.put(blob.location, params={"digest": blob.digest})
    assert r.status_code == 201, r.text
    blob.acknowledged = True


def push_image(url: str, image: ImagePush, progress: Progress) -> None:
    try:
        with httpx.Client(base_url=url, timeout=60.0, auth=(ADMIN_USER, ADMIN_PASSWORD)) as client:
            for blob in image.blobs:
                push_blob(client, image.repo, blob, progress)
            image.manifest_sent = True
            r = client.put(
                f"/v2/{image.repo}/manifests/{image.tag}",
                content=image.manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert r.status_code == 201, r.text
            image.manifest_acknowledged = True
    except httpx.TransportError:
        pass  # the server was killed under us
    except BaseException as exc:  # an unexpected answer before the kill: fail the test
        image.error = exc


def push_until_killed(server: RegistryProcess, images: list[ImagePush], share: float) -> None:
    progress = Progress()
    total = sum(len(b.data) for image in images for b in image.blobs)
    threads = [
        threading.Thread(target=push_image, args=(server.url, image, progress), daemon=True)
        for image in images
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while progress.sent < share * total and any(t.is_alive() for t in threads):
        assert time.monotonic() < deadline, "pushes made no progress"
        time.sleep(0.002)
    server.kill()  # SIGKILL to the whole process group
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    for image in images:
        if image.error is not None:
            raise image.error
    assert not all(image.manifest_acknowledged for image in images), "killed too late"


def check_after_restart(client: httpx.Client, images: list[ImagePush]) -> None:
    for image in images:
        for blob in image.blobs:
            url = f"/v2/{image.repo}/blobs/{blob.digest}"
            head = client.head(url)
            if head.status_code == 200:
                # visible: every byte was sent and the publishing request was made ...
                assert blob.all_sent and blob.finish_sent, (blob.mode, blob.sent, len(blob.data))
                # ... and it is exactly the blob
                got = client.get(url)
                assert got.status_code == 200
                assert len(got.content) == len(blob.data)
                assert sha256(got.content) == blob.digest
                assert int(head.headers["content-length"]) == len(blob.data)
            else:
                assert_oci_error(head, 404)
                assert not blob.acknowledged, "an acknowledged blob was lost"
        for ref in (image.tag, image.digest):
            got = client.get(f"/v2/{image.repo}/manifests/{ref}")
            if got.status_code == 200:
                assert image.manifest_sent
                assert got.content == image.manifest
                for blob in image.blobs:  # everything it names is there
                    r = client.head(f"/v2/{image.repo}/blobs/{blob.digest}")
                    assert r.status_code == 200, (image.tag, blob.digest)
            else:
                assert_oci_error(got, 404, {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})
                assert not image.manifest_acknowledged, "an acknowledged manifest was lost"


def resume_interrupted_uploads(client: httpx.Client, images: list[ImagePush]) -> int:
    """Chunked uploads cut off before their finish resume from the Range the server
    reports. Returns how many were resumed."""
    resumed = 0
    for image in images:
        for blob in image.blobs:
            if blob.mode != "chunked" or blob.location is None or blob.finish_sent:
                continue
            status = client.get(blob.location)
            assert status.status_code == 204, status.text
            m = re.fullmatch(r"0-(\d+)", status.headers["range"])
            assert m is not None
            have = 0 if status.headers["range"] == "0-0" else int(m.group(1)) + 1
            assert blob.acked <= have <= blob.sent, (blob.acked, have, blob.sent)
            rest = blob.data[have:]
            location = blob.location
            if rest:
                r = client.patch(
                    location,
                    content=rest,
                    headers={"Content-Range": f"{have}-{len(blob.data) - 1}"},
                )
                assert r.status_code == 202, r.text
                location = r.headers["location"]
            r = client.put(location, params={"digest": blob.digest})
            assert r.status_code == 201, r.text
            got = client.get(f"/v2/{image.repo}/blobs/{blob.digest}")
            assert got.content == blob.data
            resumed += 1
    return resumed


def retry_from_scratch(client: httpx.Client, images: list[ImagePush], round_no: int) -> Kept:
    kept = Kept()
    progress = Progress()
    for image in images:
        for blob in image.blobs:
            fresh = BlobPush(blob.data, blob.mode)
            push_blob(client, image.repo, fresh, progress)
            got = client.get(f"/v2/{image.repo}/blobs/{blob.digest}")
            assert got.status_code == 200 and sha256(got.content) == blob.digest
            kept.blobs.append((image.repo, blob.digest, len(blob.data)))
        r = client.put(
            f"/v2/{image.repo}/manifests/{image.tag}",
            content=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 201, r.text
        assert client.get(f"/v2/{image.repo}/manifests/{image.tag}").content == image.manifest
        kept.manifests.append((image.repo, image.tag, image.manifest))
    # and an index per repository over this round's images
    by_repo: dict[str, list[ImagePush]] = {}
    for image in images:
        by_repo.setdefault(image.repo, []).append(image)
    for repo, members in by_repo.items():
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [descriptor(OCI_MANIFEST, m.manifest) for m in members],
            }
        ).encode()
        tag = f"round{round_no}-index"
        r = client.put(
            f"/v2/{repo}/manifests/{tag}", content=index, headers={"Content-Type": OCI_INDEX}
        )
        assert r.status_code == 201, r.text
        kept.manifests.append((repo, tag, index))
    return kept


def check_kept(client: httpx.Client, kept: list[Kept]) -> None:
    for k in kept:
        for repo, digest, size in k.blobs:
            got = client.get(f"/v2/{repo}/blobs/{digest}")
            assert got.status_code == 200 and len(got.content) == size
            assert sha256(got.content) == digest
        for repo, ref, body in k.manifests:
            assert client.get(f"/v2/{repo}/manifests/{ref}").content == body


def crash_rounds(data_dir: Path, shares: list[float], database_url: str | None = None) -> None:
    rng = random.Random(2024)
    server = RegistryProcess(data_dir, database_url=database_url).start()
    kept: list[Kept] = []
    resumed = 0
    try:
        for round_no, share in enumerate(shares):
            images = make_images(rng, round_no)
            push_until_killed(server, images, share)

            server = RegistryProcess(data_dir, database_url=database_url).start()
            with server.client() as client:
                check_after_restart(client, images)
                assert storage_problems(data_dir) == []
                resumed += resume_interrupted_uploads(client, images)
                kept.append(retry_from_scratch(client, images, round_no))
                check_kept(client, kept)
        assert storage_problems(data_dir) == []
    finally:
        server.stop()
    if len(shares) > 1:
        assert resumed > 0, "no round interrupted a chunked upload before its finish"


def test_sigkill_during_pushes_on_sqlite(tmp_path: Path) -> None:
    crash_rounds(tmp_path / "data", [0.15, 0.5, 0.85])


def test_sigkill_during_pushes_on_postgres(tmp_path: Path) -> None:
    with temporary_database() as url:
        crash_rounds(tmp_path / "data", [0.4], database_url=url)


def test_a_kill_between_publishing_and_recording_a_blob(tmp_path: Path) -> None:
    """The narrowest window: the finished upload's object was already renamed to its
    digest's key when the server died, but the database never recorded the blob. The
    state is built by hand (the rename is exactly what publishing does), because no
    timing hits that window reliably."""
    data_dir = tmp_path / "data"
    repo = "crash/window"
    blob = os.urandom(3 * MiB)
    digest = sha256(blob)
    server = RegistryProcess(data_dir).start()
    try:
        with server.client() as c:
            r = c.post(f"/v2/{repo}/blobs/uploads/")
            upload_id = r.headers["docker-upload-uuid"]
            r = c.patch(
                r.headers["location"], content=blob, headers={"Content-Range": f"0-{len(blob) - 1}"}
            )
            assert r.status_code == 202, r.text
            location = r.headers["location"]
        server.kill()
        target = data_dir / "storage/blobs/sha256" / digest[7:9] / digest[7:]
        target.parent.mkdir(parents=True, exist_ok=True)
        (data_dir / "storage/uploads" / upload_id).rename(target)

        server = RegistryProcess(data_dir).start()
        with server.client() as c:
            blob_url = f"/v2/{repo}/blobs/{digest}"
            assert_oci_error(c.head(blob_url), 404)  # never recorded: not visible
            status = c.get(location)
            assert status.status_code == 204 and status.headers["range"] == f"0-{len(blob) - 1}"
            # retrying the finish cannot verify bytes it no longer has: refused, not a 500
            r = c.put(location, params={"digest": digest})
            assert_oci_error(r, 400, {"BLOB_UPLOAD_INVALID"})
            assert_oci_error(c.get(location), 404, {"BLOB_UPLOAD_UNKNOWN"})
            assert_oci_error(c.head(blob_url), 404)
            # the stray file does not stand in for bytes a client does not have
            other = os.urandom(len(blob))
            r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=other)
            assert_oci_error(r, 400, {"DIGEST_INVALID"})
            assert_oci_error(c.head(blob_url), 404)
            # pushing the real bytes again works
            r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=blob)
            assert r.status_code == 201, r.text
            assert c.get(blob_url).content == blob
        assert storage_problems(data_dir) == []
    finally:
        server.stop()
