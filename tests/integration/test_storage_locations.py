"""Several storage locations (ARCHITECTURE.md, "Storage locations"; docs/configuration.md):
a real server writes every new blob to both `write_to` locations and records a
`blob_placement` row for each, reads prefer `read_preference` and fall back to the other
holder when a copy was deleted by hand, and the garbage collector deletes the bytes from
both before the rows go. The second location is a folder, or an S3 bucket (SeaweedFS).

The collector runs in the test process on the server's database and storage, with its
clock moved past the grace period (the server's own collector is off)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cargohold.app import build_runtime, make_collector
from cargohold.db.base import utcnow
from cargohold.db.migrate import upgrade
from cargohold.db.sql import sql
from cargohold.domain.digests import parse_digest
from cargohold.domain.names import parse_repository
from cargohold.services.runtime import Runtime
from cargohold.settings import Settings, SettingsError, load_settings
from cargohold.storage import layout
from tests.support.oci import make_image, push_blob, push_image, sha256, unique_repo
from tests.support.s3 import SeaweedS3
from tests.support.server import RegistryProcess
from tests.support.services import SUPERUSER

BUCKET = "cargohold-locations"


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        server.create_bucket(BUCKET)
        yield server


class Location:
    """The second location, seen from outside the registry."""

    env: dict[str, str]

    def path(self, key: str) -> Any:
        raise NotImplementedError

    def has(self, key: str) -> bool:
        raise NotImplementedError

    def remove(self, key: str) -> None:
        raise NotImplementedError


class Folder(Location):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            "CARGOHOLD_STORAGE__LOCATIONS__SECOND__DRIVER": "filesystem",
            "CARGOHOLD_STORAGE__LOCATIONS__SECOND__FILESYSTEM__ROOT": str(root),
        }

    def has(self, key: str) -> bool:
        return (self.root / key).is_file()

    def remove(self, key: str) -> None:
        (self.root / key).unlink()


class Bucket(Location):
    def __init__(self, s3: SeaweedS3) -> None:
        self.client = s3.client()
        self.prefix = f"loc-{uuid.uuid4().hex[:10]}"
        self.env = {
            f"CARGOHOLD_STORAGE__LOCATIONS__SECOND__{k.removeprefix('CARGOHOLD_STORAGE__')}": v
            for k, v in s3.settings_env(BUCKET, prefix=self.prefix).items()
        }

    def has(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=BUCKET, Key=f"{self.prefix}/{key}")
        except self.client.exceptions.ClientError:
            return False
        return True

    def remove(self, key: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=f"{self.prefix}/{key}")


@pytest.fixture(params=["filesystem", "s3"])
def second(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "filesystem":
        return Folder(tmp_path / "second")
    return Bucket(request.getfixturevalue("seaweed"))


def server_env(second: Location) -> dict[str, str]:
    return {
        **second.env,
        "CARGOHOLD_STORAGE__WRITE_TO": '["default", "second"]',
        "CARGOHOLD_STORAGE__READ_PREFERENCE": '["second"]',
        "CARGOHOLD_GC__ENABLED": "false",  # the test runs the collector itself
    }


def settings_of(server: RegistryProcess, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The server's settings, as its own processes read them from the environment."""
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("CARGOHOLD_")]:
            m.delenv(name)
        for name, value in server.environment().items():
            if name.startswith("CARGOHOLD_"):
                m.setenv(name, value)
        return load_settings()


def placements(server: RegistryProcess, digest: str) -> set[str]:
    conn = sqlite3.connect(server.data_dir / "cargohold.db")
    try:
        rows = conn.execute(
            "SELECT p.location FROM blob_placement p JOIN blob b ON b.id = p.blob_id "
            "WHERE b.digest = ?",
            (digest,),
        ).fetchall()
    finally:
        conn.close()
    return {str(r[0]) for r in rows}


def key(digest: str) -> str:
    return layout.blob_key(parse_digest(digest))


async def collect_everything(settings: Settings) -> dict[str, Any]:
    """One collector pass on the server's database and storage, a day later."""
    runtime = build_runtime(settings)
    try:
        collector = make_collector(runtime)
        collector.clock = lambda: utcnow() + timedelta(days=1)
        run = await collector.run_once(wait=True)
        assert run is not None
        return run.as_json()
    finally:
        await runtime.close()


def test_two_locations(second: Location, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = RegistryProcess(tmp_path / "server", env=server_env(second)).start()
    default = server.data_dir / "storage"
    repo = unique_repo("locations")
    try:
        with server.client() as c:
            image = make_image(layers=2)
            push_image(c, repo, image, "v1")
            big = os.urandom(6 << 20)  # streamed into the second location in parts
            blobs = [image.config, *image.layers, big, b""]
            push_blob(c, repo, big)
            push_blob(c, repo, b"")
            digests = [sha256(b) for b in blobs]

            # Every blob is in both locations, with a placement row for each.
            for digest in digests:
                assert (default / key(digest)).is_file(), digest
                assert second.has(key(digest)), digest
                assert placements(server, digest) == {"default", "second"}

            def pull(data: bytes) -> None:
                r = c.get(f"/v2/{repo}/blobs/{sha256(data)}")
                assert r.status_code == 200, r.text
                assert r.content == data
                assert c.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 200

            for data in blobs:
                pull(data)

            # The preferred location answers: the default's copy of the first layer,
            # spoiled by hand, is not what a pull gets.
            first = default / key(sha256(image.layers[0]))
            first.write_bytes(bytes(len(image.layers[0])))
            pull(image.layers[0])
            first.write_bytes(image.layers[0])

            # A copy deleted by hand: pulls fall back to the other location, either way.
            second.remove(key(sha256(image.layers[0])))
            pull(image.layers[0])  # from the default location
            (default / key(sha256(image.layers[1]))).unlink()
            pull(image.layers[1])  # from the second
            second.remove(key(sha256(big)))
            pull(big)

            # In neither: the blob is unknown (the link remains; HEAD answers from it).
            second.remove(key(sha256(image.config)))
            (default / key(sha256(image.config))).unlink()
            r = c.get(f"/v2/{repo}/blobs/{sha256(image.config)}")
            assert r.status_code == 404
            assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"

            # Unreferenced: the collector deletes the bytes from both, then the rows.
            r = c.delete(f"/v2/{repo}/manifests/{image.digest}")
            assert r.status_code == 202, r.text
            for digest in digests[3:]:
                assert c.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
        settings = settings_of(server, monkeypatch)
        run = asyncio.run(collect_everything(settings))
        assert run["blobs_deleted"] == len(digests), run
        for digest in digests:
            assert not (default / key(digest)).exists(), digest
            assert not second.has(key(digest)), digest
            assert placements(server, digest) == set()
    finally:
        server.stop()


def test_blobs_stored_before_there_were_placements(tmp_path: Path) -> None:
    """A blob without rows is in the default location: pushed again to another location
    only, it keeps that place (a row is written for it first), so the collector deletes
    both copies."""
    second = tmp_path / "second"

    def settings(**storage: Any) -> Settings:
        return Settings(data_dir=str(tmp_path), storage=storage)

    async def scenario() -> None:
        one = settings()
        upgrade(one.database.url)
        data = os.urandom(1000)
        digest = parse_digest(sha256(data))
        name = parse_repository("admin/old")

        async def push(runtime: Runtime) -> None:
            upload = await runtime.uploads.start(name, principal=SUPERUSER)

            async def body() -> AsyncIterator[bytes]:
                yield data

            await runtime.uploads.finish(
                name, upload.id, digest, body(), content_length=len(data), principal=SUPERUSER
            )

        old = build_runtime(one)
        try:
            await push(old)  # one location: no placement row
        finally:
            await old.close()
        two = settings(
            locations={"second": {"filesystem": {"root": str(second)}}}, write_to=["second"]
        )
        runtime = build_runtime(two)
        try:
            async with runtime.db.read() as session:
                assert await session.value(sql("SELECT COUNT(*) FROM blob_placement")) == 0
            assert await runtime.sources.source(digest) is runtime.locations.drivers["default"]
            await push(runtime)  # deduplicated into the new location
            assert (second / layout.blob_key(digest)).is_file()
            async with runtime.db.read() as session:
                rows = await session.all(sql("SELECT location FROM blob_placement"))
            assert {r[0] for r in rows} == {"default", "second"}
            await runtime.blobs.delete(name, digest)
            collector = make_collector(runtime)
            collector.clock = lambda: utcnow() + timedelta(days=1)
            run = await collector.run_once(wait=True)
            assert run is not None and run.blobs_deleted == 1
            assert not (tmp_path / "storage" / layout.blob_key(digest)).exists()
            assert not (second / layout.blob_key(digest)).exists()
        finally:
            await runtime.close()

    asyncio.run(scenario())


def test_settings_refuse_unknown_locations() -> None:
    for storage, message in (
        ({"write_to": ["elsewhere"]}, "unknown locations: elsewhere"),
        ({"read_preference": ["elsewhere"]}, "unknown locations: elsewhere"),
        ({"locations": {"default": {}}}, "the default location's name"),
        ({"locations": {"Bad Name": {}}}, "storage location name"),
        ({"locations": {"b": {}}, "write_to": ["b", "b"]}, "twice"),
        ({"locations": {"b": {"driver": "s3"}}}, "needs storage.s3.bucket"),
    ):
        with pytest.raises(SettingsError, match=message):
            load_settings(None, storage=storage)
    settings = load_settings(None, data_dir="/srv/x", storage={"locations": {"b": {}}})
    assert settings.storage.locations["b"].filesystem.root == "/srv/x/storage-b"
    assert settings.storage.writes == ["default"]
