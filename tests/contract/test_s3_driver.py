"""What the S3 driver does beyond the shared contract, against SeaweedFS (which checks SigV4):
credentials refused, presigned URLs, uploads continued by another replica, locks across
drivers, stale work cleaned up, bounded memory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tracemalloc
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from cargohold.settings import load_settings
from cargohold.storage.driver import ObjectNotFound, StorageError
from cargohold.storage.registry import build_driver
from cargohold.storage.s3 import MIN_PART, Piece, S3Driver, S3Error, plan_parts
from tests.contract.conftest import BUCKET, make_s3_driver
from tests.support.s3 import SeaweedS3

MIB = 1 << 20


async def collect(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in it])


def bucket_keys(seaweed: SeaweedS3, driver: S3Driver) -> list[str]:
    """Every object under the driver's prefix, as S3 names them."""
    s3 = seaweed.client()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=driver.root)
    return sorted(
        item["Key"][len(driver.root) :] for page in pages for item in page.get("Contents", [])
    )


async def append(driver: S3Driver, key: str, offset: int, data: bytes, piece: int = MIB) -> None:
    """One PATCH as the upload service does it: a writer at the recorded size, closed."""
    writer = await driver.writer(key, offset=offset)
    for i in range(0, len(data), piece):
        await writer.write(data[i : i + piece])
    await writer.close()
    assert writer.size == offset + len(data)


# -- configuration and errors ------------------------------------------------------------


def test_settings_build_an_s3_driver(seaweed: SeaweedS3) -> None:
    settings = load_settings(
        storage={
            "driver": "s3",
            "s3": {**seaweed.driver_kwargs(), "bucket": BUCKET, "multipart_part_bytes": 6 * MIB},
        }
    )
    driver = build_driver(settings)
    assert isinstance(driver, S3Driver)
    assert driver.part_bytes == 6 * MIB and driver.bucket == BUCKET
    assert "secret_key" in settings.masked()["storage"]["s3"]
    assert seaweed.secret_key not in json.dumps(settings.masked())
    driver.close()


def test_settings_refuse_an_s3_driver_without_bucket_or_with_small_parts() -> None:
    from cargohold.settings import SettingsError

    with pytest.raises(SettingsError, match=r"storage\.s3\.bucket"):
        load_settings(storage={"driver": "s3"})
    with pytest.raises(SettingsError, match="multipart_part_bytes"):
        load_settings(storage={"driver": "s3", "s3": {"bucket": "b", "multipart_part_bytes": 1}})


async def test_a_wrong_secret_is_a_clear_storage_error(seaweed: SeaweedS3) -> None:
    driver = make_s3_driver(seaweed, secret_key="not-the-secret", max_attempts=1)
    try:
        with pytest.raises(S3Error, match="refused") as refused:
            await driver.put_bytes("blobs/x", b"data")
        assert "secret_key" in str(refused.value)
        assert isinstance(refused.value, StorageError)
        with pytest.raises(StorageError, match="refused"):
            await collect(driver.read("blobs/x"))
    finally:
        driver.close()


async def test_a_missing_bucket_and_an_unreachable_endpoint_are_storage_errors(
    seaweed: SeaweedS3,
) -> None:
    driver = make_s3_driver(seaweed, bucket="no-such-bucket-here", max_attempts=1)
    try:
        with pytest.raises(S3Error, match="does not exist"):
            [info async for info in driver.walk("uploads")]
    finally:
        driver.close()
    from tests.support.server import free_port

    driver = make_s3_driver(seaweed, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1)
    try:
        with pytest.raises(S3Error, match="cannot reach"):
            await driver.stat("blobs/x")
    finally:
        driver.close()


# -- presigned URLs ----------------------------------------------------------------------


async def test_presigned_url_works_and_a_tampered_one_is_refused(s3_driver: S3Driver) -> None:
    data = os.urandom(3000)
    await s3_driver.put_bytes("blobs/sha256/ab/presigned", data)
    url = await s3_driver.presigned_url("blobs/sha256/ab/presigned", 60)
    assert "X-Amz-Signature=" in url
    async with httpx.AsyncClient() as http:
        ok = await http.get(url)
        assert ok.status_code == 200 and ok.content == data
        ranged = await http.get(url, headers={"Range": "bytes=10-19"})
        assert ranged.status_code == 206 and ranged.content == data[10:20]
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        signature = query["X-Amz-Signature"]
        query["X-Amz-Signature"] = ("0" if signature[0] != "0" else "1") + signature[1:]
        tampered = urlunsplit(parts._replace(query=urlencode(query)))
        assert (await http.get(tampered)).status_code == 403
        other_key = url.replace("/presigned?", "/other?")
        assert (await http.get(other_key)).status_code == 403


async def test_redirect_url_only_when_configured(seaweed: SeaweedS3, s3_driver: S3Driver) -> None:
    await s3_driver.put_bytes("blobs/r", b"redirected")
    assert await s3_driver.redirect_url("blobs/r") is None
    redirecting = make_s3_driver(seaweed, prefix=s3_driver.root.rstrip("/"), redirect=True)
    try:
        url = await redirecting.redirect_url("blobs/r")
        assert url is not None
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).content == b"redirected"
    finally:
        redirecting.close()


# -- uploads in pieces -------------------------------------------------------------------


async def test_a_chunked_upload_continues_on_another_replica(seaweed: SeaweedS3) -> None:
    """Consecutive PATCHes land on different replicas (separate driver objects that share
    nothing but the bucket); a cut-off PATCH is cut back; the commit assembles the blob."""
    prefix = f"replicas-{os.urandom(4).hex()}"
    replicas = [make_s3_driver(seaweed, prefix=prefix, part_bytes=MIN_PART) for _ in range(3)]
    a, b, c = replicas
    key = "uploads/0f8c7f0e-8d44-4b7e-9a0e-2f3f4b5c6d7e"
    try:
        first = os.urandom(7 * MIB)  # a full 5 MiB piece and a 2 MiB one
        second = os.urandom(3 * MIB)
        third = os.urandom(6 * MIB + 123)
        await append(a, key, 0, first)
        assert (await b.stat(key)).size == len(first)
        await append(b, key, len(first), second)
        # Replica C reads back what A and B wrote, as the upload service does to rebuild
        # the digest it does not hold.
        assert await collect(c.read(key, 0, 10 * MIB)) == first + second
        # A PATCH cut off on A: its bytes reached storage, but were never recorded...
        await append(a, key, 10 * MIB, os.urandom(2 * MIB + 5))
        # ...so the next PATCH, on C, starts at the recorded size and replaces them.
        await append(c, key, 10 * MIB, third)
        blob = first + second + third
        assert (await a.stat(key)).size == len(blob)
        assert await collect(a.read(key, 4 * MIB, 4 * MIB)) == blob[4 * MIB : 8 * MIB]
        digest = hashlib.sha256(await collect(b.read(key))).hexdigest()
        assert digest == hashlib.sha256(blob).hexdigest()

        await b.commit(key, f"blobs/sha256/{digest[:2]}/{digest}")
        assert await a.get_bytes(f"blobs/sha256/{digest[:2]}/{digest}") == blob
        with pytest.raises(ObjectNotFound):
            await c.stat(key)
        assert bucket_keys(seaweed, a) == [f"blobs/sha256/{digest[:2]}/{digest}"]
    finally:
        for driver in replicas:
            driver.close()


async def test_a_cut_inside_a_piece_keeps_its_head(s3_driver: S3Driver) -> None:
    data = os.urandom(6 * MIB)
    await append(s3_driver, "uploads/cut", 0, data)
    await (await s3_driver.writer("uploads/cut", offset=MIB + 7)).close()
    assert await s3_driver.get_bytes("uploads/cut") == data[: MIB + 7]


async def test_writing_past_what_is_stored_is_refused(s3_driver: S3Driver) -> None:
    await append(s3_driver, "uploads/short", 0, b"abc")
    with pytest.raises(StorageError, match="holds 3 bytes"):
        await s3_driver.writer("uploads/short", offset=10)


async def test_a_whole_object_and_pieces_of_one_key(s3_driver: S3Driver) -> None:
    """put_bytes over pieces replaces them; a writer over a whole object continues it."""
    await append(s3_driver, "uploads/mixed", 0, b"pieces")
    await s3_driver.put_bytes("uploads/mixed", b"whole object")
    assert await s3_driver.get_bytes("uploads/mixed") == b"whole object"
    await append(s3_driver, "uploads/mixed", 5, b"-then-more")
    assert await s3_driver.get_bytes("uploads/mixed") == b"whole-then-more"
    await s3_driver.commit("uploads/mixed", "blobs/mixed")
    assert await s3_driver.get_bytes("blobs/mixed") == b"whole-then-more"


async def test_many_small_pieces_are_merged_into_valid_parts(s3_driver: S3Driver) -> None:
    """Small PATCH chunks (below S3's 5 MiB part minimum) still commit, mixed with large."""
    data = os.urandom(13 * MIB + 17)
    sizes = [MIB // 2] * 6 + [6 * MIB] + [MIB + 17] * 1 + [MIB] * 3
    assert sum(sizes) == len(data)
    at = 0
    for size in sizes:
        await append(s3_driver, "uploads/small", at, data[at : at + size])
        at += size
    await s3_driver.commit("uploads/small", "blobs/small")
    assert await s3_driver.get_bytes("blobs/small") == data


def test_plan_parts_is_always_a_valid_multipart_upload() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)

    def pieces(sizes: list[int]) -> list[Piece]:
        out, at = [], 0
        for i, size in enumerate(sizes):
            out.append(Piece(at, size, f"p{i}", now))
            at += size
        return out

    for sizes in (
        [8 * MIB] * 4 + [MIB],
        [MIB] * 17,
        [MIB, 8 * MIB, MIB, MIB, 6 * MIB, 100],
        [6 * MIB] * 12_000,  # 70 GiB in pieces too many to copy one by one
    ):
        plan = plan_parts(pieces(sizes))
        assert 1 <= len(plan) <= 10_000
        flat = [p for part in plan for p in part]
        assert [p.name for p in flat] == [f"p{i}" for i in range(len(sizes))]
        assert all(sum(p.size for p in part) >= MIN_PART for part in plan[:-1])
    # Pieces of a full part each are copied, never read.
    assert all(len(part) == 1 for part in plan_parts(pieces([8 * MIB] * 4 + [MIB])))


# -- locks -------------------------------------------------------------------------------


async def test_exclusive_keeps_another_replica_out(seaweed: SeaweedS3) -> None:
    prefix = f"locks-{os.urandom(4).hex()}"
    a = make_s3_driver(seaweed, prefix=prefix)
    b = make_s3_driver(seaweed, prefix=prefix)
    events: list[str] = []
    try:
        async with a.exclusive("uploads/locked"):
            events.append("a in")

            async def other() -> None:
                async with b.exclusive("uploads/locked"):
                    events.append("b in")

            waiting = asyncio.create_task(other())
            await asyncio.sleep(0.5)  # room for B to get in, if the lock let it
            events.append("a out")
        await waiting
        assert events == ["a in", "a out", "b in"]
        async with a.exclusive("uploads/other"), b.exclusive("uploads/another"):
            pass  # different keys do not wait for each other
    finally:
        a.close()
        b.close()


async def test_a_live_holder_renews_its_lease(seaweed: SeaweedS3) -> None:
    """Held for longer than a lease: the holder renews it, so the waiter never takes over."""
    prefix = f"renew-{os.urandom(4).hex()}"
    a = make_s3_driver(seaweed, prefix=prefix, lease_seconds=1.0)
    b = make_s3_driver(seaweed, prefix=prefix, lease_seconds=1.0)
    events: list[str] = []
    try:
        async with a.exclusive("uploads/long"):
            events.append("a in")

            async def other() -> None:
                async with b.exclusive("uploads/long"):
                    events.append("b in")

            waiting = asyncio.create_task(other())
            await asyncio.sleep(2.5)  # two and a half leases
            events.append("a out")
        await waiting
        assert events == ["a in", "a out", "b in"]
    finally:
        a.close()
        b.close()


async def test_a_dead_holders_lease_is_taken_over(seaweed: SeaweedS3) -> None:
    driver = make_s3_driver(seaweed, lease_seconds=1.0)
    try:
        # A lease left by a process that died: nobody renews it.
        seaweed.client().put_object(
            Bucket=BUCKET, Key=f"{driver.root}~locks/uploads/dead", Body=b'{"owner": "gone"}'
        )
        async with driver.exclusive("uploads/dead"):
            pass
        assert bucket_keys(seaweed, driver) == []  # released: the lease object is gone
    finally:
        driver.close()


async def test_local_locks_need_no_conditional_writes(seaweed: SeaweedS3) -> None:
    driver = make_s3_driver(seaweed, upload_locks="local")
    try:
        async with driver.exclusive("uploads/local"):
            pass
        assert bucket_keys(seaweed, driver) == []
    finally:
        driver.close()


# -- stale work --------------------------------------------------------------------------


async def test_abort_stale_removes_old_multipart_uploads_and_leases(
    seaweed: SeaweedS3, s3_driver: S3Driver
) -> None:
    s3 = seaweed.client()
    started = s3.create_multipart_upload(Bucket=BUCKET, Key=f"{s3_driver.root}blobs/half")
    elsewhere = s3.create_multipart_upload(Bucket=BUCKET, Key="outside-the-prefix")
    s3.put_object(Bucket=BUCKET, Key=f"{s3_driver.root}~locks/uploads/left", Body=b"{}")

    def open_uploads() -> set[str]:
        listed = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        return {u["UploadId"] for u in listed}

    assert await s3_driver.abort_stale(timedelta(hours=1)) == 0  # young: kept
    assert started["UploadId"] in open_uploads()
    assert await s3_driver.abort_stale(timedelta(0)) == 2
    assert started["UploadId"] not in open_uploads()
    assert elsewhere["UploadId"] in open_uploads()  # another prefix is not ours
    assert bucket_keys(seaweed, s3_driver) == []
    s3.abort_multipart_upload(
        Bucket=BUCKET, Key="outside-the-prefix", UploadId=elsewhere["UploadId"]
    )


async def test_walk_shows_an_upload_in_pieces_as_one_object(
    seaweed: SeaweedS3, s3_driver: S3Driver
) -> None:
    """The upload service's purge walks `uploads` and deletes keys: pieces go with them."""
    await append(s3_driver, "uploads/abandoned", 0, os.urandom(11 * MIB), piece=4 * MIB)
    await s3_driver.put_bytes("uploads/whole", b"12345")
    assert len([k for k in bucket_keys(seaweed, s3_driver) if "abandoned~" in k]) == 1
    listed = {info.key: info.size async for info in s3_driver.walk("uploads")}
    assert listed == {"uploads/abandoned": 11 * MIB, "uploads/whole": 5}
    await s3_driver.delete("uploads/abandoned")
    assert bucket_keys(seaweed, s3_driver) == ["uploads/whole"]


# -- memory ------------------------------------------------------------------------------


async def test_a_256_mib_upload_holds_a_few_parts_of_memory(seaweed: SeaweedS3) -> None:
    """256 MiB pushed in 8 MiB PATCHes of 1 MiB writes, then one monolithic 64 MiB stream,
    each committed and read back: Python's allocations peak at a few parts, never the blob."""
    part = 8 * MIB
    driver = make_s3_driver(seaweed, part_bytes=part)
    block = os.urandom(MIB)  # the blob repeats this block: the test itself holds 1 MiB
    try:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            expected = hashlib.sha256()
            for patch in range(32):
                writer = await driver.writer("uploads/big", offset=patch * 8 * MIB)
                for _ in range(8):
                    await writer.write(block)
                    expected.update(block)
                await writer.close()
            streamed = await driver.writer("uploads/stream")
            for _ in range(64):
                await streamed.write(block)
            await streamed.close()
            await driver.commit("uploads/big", "blobs/big")
            await driver.commit("uploads/stream", "blobs/stream")
            got = hashlib.sha256()
            async for data in driver.read("blobs/big"):
                got.update(data)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert got.hexdigest() == expected.hexdigest()
        assert (await driver.stat("blobs/big")).size == 256 * MIB
        assert (await driver.stat("blobs/stream")).size == 64 * MIB
        assert peak < 4 * part, f"peak {peak / MIB:.1f} MiB"
    finally:
        await driver.delete("blobs")
        driver.close()
