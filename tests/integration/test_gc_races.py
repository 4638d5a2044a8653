"""The collector against pushes at the worst moments, driven step by step on SQLite and
PostgreSQL: the collector's steps (mark, delete bytes, drop rows) are called one by one,
or a transaction standing for the collector (or for a push) is held open while the other
side runs, so each interleaving happens every time rather than by luck. Whatever the
order, a blob is never left with a row and no bytes, and a push either succeeds with
everything it needs in place or is refused cleanly."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.db import queries
from cargohold.db.base import utcnow
from cargohold.domain.digests import parse_digest
from cargohold.domain.errors import ManifestBlobUnknown
from cargohold.services.gc import (
    LINK_COLLECTABLE,
    LOCK_LINK,
    LOCK_MANIFEST,
    Collector,
    claim_blob,
)
from cargohold.storage import layout
from cargohold.storage.driver import ObjectInfo, StorageDriver
from tests.integration.gc_support import (
    HOUR,
    Registry,
    age,
    make_image,
    repo_name,
    sha256,
    unique,
)
from tests.support.postgres import temporary_database

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(params=["sqlite", "postgres"])
async def reg(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    if request.param == "sqlite":
        registry = Registry(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
        yield registry
        await registry.close()
    else:
        with temporary_database() as url:
            registry = Registry(tmp_path, url)
            yield registry
            await registry.close()


async def _orphan(reg: Registry, data: bytes) -> int:
    """A blob with bytes and a row, linked nowhere and older than the grace period: the
    collector's candidate. Its id."""
    repo = unique("orphan")
    await reg.push_blob(repo, data)
    await reg.rt.blobs.delete(repo_name(repo), parse_digest(sha256(data)))
    await age(reg, data)
    blob_id: int = await reg.value("SELECT id FROM blob WHERE digest = :d", d=sha256(data))
    return blob_id


async def _blocked(task: asyncio.Task[Any]) -> bool:
    """Give `task` every chance to run; whether it is still waiting."""
    await asyncio.sleep(0.3)
    return not task.done()


async def test_a_publish_waits_for_a_deletion_in_progress_then_stores_its_own_bytes(
    reg: Registry,
) -> None:
    data = os.urandom(1000)
    blob_id = await _orphan(reg, data)
    stamp, marked = await reg.gc.mark_blobs([blob_id], utcnow())
    assert [m[0] for m in marked] == [blob_id]

    target = unique("pub")
    publish = asyncio.create_task(reg.push_blob(target, data))
    assert await _blocked(publish)  # it holds off while the collector's lease is valid

    gone = await reg.gc.delete_blob_bytes(stamp, marked)
    assert [g[0] for g in gone] == [blob_id] and not reg.has_bytes(data)
    assert await reg.gc.drop_blob_rows(stamp, gone) == {blob_id: len(data)}

    await publish
    assert await reg.blob_kept(data) and await reg.linked(target, data)


async def test_a_publish_that_touched_first_makes_the_collector_leave_the_blob(
    reg: Registry,
) -> None:
    data = os.urandom(1000)
    blob_id = await _orphan(reg, data)
    claim = await claim_blob(reg.rt.db, sha256(data), len(data), lease_seconds=60)
    assert claim.id == blob_id
    _, marked = await reg.gc.mark_blobs([blob_id], utcnow())
    assert marked == []  # the fresh touch: not collectable under the row lock
    target = unique("pub")
    await reg.push_blob(target, data)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert await reg.blob_kept(data) and await reg.linked(target, data)


async def test_a_publish_takes_back_a_blob_whose_collector_died(tmp_path: Path) -> None:
    reg = Registry(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", deletion_lease_seconds=1)
    try:
        data = os.urandom(1000)
        blob_id = await _orphan(reg, data)
        stamp, marked = await reg.gc.mark_blobs([blob_id], utcnow())
        assert marked  # ... and the collector dies here
        target = unique("pub")
        await reg.push_blob(target, data)  # waits out the lease, then takes the blob back
        assert await reg.value("SELECT deleting_since FROM blob WHERE id = :i", i=blob_id) is None
        # Had the collector only stalled, its lease is no longer its own: it does nothing.
        assert await reg.gc.delete_blob_bytes(stamp, marked) == []
        assert await reg.gc.drop_blob_rows(stamp, marked) == {}
        assert await reg.blob_kept(data) and await reg.linked(target, data)
    finally:
        await reg.close()


class _Interrupting:
    """The registry's storage, running `hook` once around the first stat of `key`."""

    def __init__(self, inner: StorageDriver, key: str, hook: Any, *, after: bool) -> None:
        self._inner, self._key, self._hook, self._after = inner, key, hook, after
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def stat(self, key: str) -> ObjectInfo:
        if key != self._key or self.fired:
            return await self._inner.stat(key)
        self.fired = True
        if self._after:
            try:
                return await self._inner.stat(key)
            finally:
                await self._hook()
        await self._hook()
        return await self._inner.stat(key)


async def _collect_everything(reg: Registry, data: bytes) -> None:
    """The collector, as if the publish in flight had taken longer than the grace period."""
    await age(reg, data)
    blob_id = await reg.value("SELECT id FROM blob WHERE digest = :d", d=sha256(data))
    stamp, marked = await reg.gc.mark_blobs([blob_id], utcnow())
    assert marked
    gone = await reg.gc.delete_blob_bytes(stamp, marked)
    assert await reg.gc.drop_blob_rows(stamp, gone)


@pytest.mark.parametrize("stored_before", [False, True], ids=["new-bytes", "deduplicated"])
async def test_a_collector_taking_the_blob_in_the_middle_of_a_publish_loses_nothing(
    reg: Registry, stored_before: bool
) -> None:
    data = os.urandom(1000)
    if stored_before:
        await _orphan(reg, data)  # the bytes are stored: the publish deduplicates
    key = layout.blob_key(parse_digest(sha256(data)))
    uploads = reg.rt.uploads
    interrupting = _Interrupting(
        uploads.storage, key, lambda: _collect_everything(reg, data), after=stored_before
    )
    uploads.storage = interrupting  # type: ignore[assignment]
    try:
        target = unique("slow")
        await reg.push_blob(target, data)
    finally:
        uploads.storage = interrupting._inner
    assert interrupting.fired
    assert await reg.blob_kept(data) and await reg.linked(target, data)


async def test_a_mount_of_a_blob_being_deleted_is_refused(reg: Registry) -> None:
    data = os.urandom(1000)
    source = unique("src")
    await reg.push_blob(source, data)
    digest = parse_digest(sha256(data))
    marked: list[Any] = []

    async def may_read(_repository: str) -> bool:
        # Between the mount's lookup and its link: the source drops the blob, and the
        # collector marks it.
        await reg.rt.blobs.delete(repo_name(source), digest)
        await age(reg, data)
        blob_id = await reg.value("SELECT id FROM blob WHERE digest = :d", d=str(digest))
        marked.append(await reg.gc.mark_blobs([blob_id], utcnow()))
        return True

    target = unique("dst")
    mounted = await reg.rt.blobs.mount(repo_name(target), digest, None, may_read)
    assert mounted is None  # not mountable: the client uploads the bytes
    assert marked and marked[0][1]
    assert not await reg.linked(target, data)
    stamp, blobs = marked[0]
    assert await reg.gc.drop_blob_rows(stamp, await reg.gc.delete_blob_bytes(stamp, blobs))
    assert not await reg.blob_kept(data)


async def test_a_manifest_push_waits_for_a_link_deletion_and_is_refused(reg: Registry) -> None:
    repo = unique("mfst")
    image = make_image()
    for blob in image.blobs:
        await reg.push_blob(repo, blob)
    await age(reg)
    repo_id = await reg.value("SELECT id FROM repository WHERE name = :n", n=repo)
    layer_id = await reg.value("SELECT id FROM blob WHERE digest = :d", d=sha256(image.layers[0]))
    link = {"repository_id": repo_id, "blob_id": layer_id}
    push: asyncio.Task[str] | None = None
    async with reg.rt.db.write() as session:  # the collector, mid-batch
        assert await session.one(LOCK_LINK, **link)
        assert await session.one(LINK_COLLECTABLE, cutoff=utcnow() - HOUR, **link)
        push = asyncio.create_task(reg.push_manifest(repo, image.manifest, tag="v1"))
        assert await _blocked(push)  # FOR SHARE on the link (or SQLite's one writer)
        await queries.unlink_blob(session, repo_id, layer_id)
    with pytest.raises(ManifestBlobUnknown):
        await push
    assert not await reg.has_manifest(repo, image.digest)


async def test_a_link_deletion_waits_for_a_manifest_push_and_keeps_the_link(
    reg: Registry,
) -> None:
    repo = unique("mfst")
    image = make_image()
    for blob in image.blobs:
        await reg.push_blob(repo, blob)
    await age(reg)
    repo_id = await reg.value("SELECT id FROM repository WHERE name = :n", n=repo)
    collector: asyncio.Task[Any] | None = None
    async with reg.rt.db.write() as session:  # a manifest push, between check and insert
        found = await queries.blobs_in_repository(
            session, repo_id, [sha256(b) for b in image.blobs]
        )
        assert len(found) == 2
        collector = asyncio.create_task(reg.gc.run_once())
        assert await _blocked(collector)
        manifest_id = await queries.insert_manifest(
            session,
            repository_id=repo_id,
            digest=image.digest,
            media_type="application/vnd.oci.image.manifest.v1+json",
            artifact_type=None,
            subject_digest=None,
            size=len(image.manifest),
            payload=image.manifest,
        )
        await queries.add_manifest_references(
            session, manifest_id, [blob_id for blob_id, _ in found.values()], []
        )
        await queries.insert_tag(session, repo_id, "v1", manifest_id)
    run = await collector
    assert run is not None and run.error is None and run.links_deleted == 0
    assert all([await reg.linked(repo, b) and await reg.blob_kept(b) for b in image.blobs])


async def test_a_tag_push_against_a_manifest_deletion_stores_it_again_or_fails_cleanly(
    reg: Registry,
) -> None:
    repo = unique("tagrace")
    image = make_image()
    await reg.push_image(repo, image)  # untagged
    await age(reg)
    manifest_id = await reg.value("SELECT id FROM manifest WHERE digest = :d", d=image.digest)
    push: asyncio.Task[str] | None = None
    async with reg.rt.db.write() as session:  # the collector deleting the manifest
        assert await session.one(LOCK_MANIFEST, id=manifest_id)
        push = asyncio.create_task(reg.push_manifest(repo, image.manifest, tag="v1"))
        assert await _blocked(push)
        await session.run(queries.DELETE_MANIFEST, id=manifest_id)
    await push  # retried against the new state: stored again (its blobs are still linked)
    assert await reg.has_manifest(repo, image.digest)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert all([await reg.linked(repo, b) and await reg.blob_kept(b) for b in image.blobs])


async def test_one_collector_at_a_time_on_a_host(reg: Registry) -> None:
    other = Collector(reg.rt.db, reg.rt.storage, reg.rt.cache, reg.settings)
    assert other.lock_path == reg.gc.lock_path
    # Another worker process is in the middle of a pass: it holds the lock file.
    fd = os.open(reg.gc.lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert await reg.gc.run_once() is None
        assert await other.run_once() is None
    finally:
        os.close(fd)
    assert await other.run_once() is not None  # free again
