"""The tag services on SQLite and PostgreSQL, without a server: labels read from the
config blob through the storage driver (only a linked config of its declared size, at
most MAX_CONFIG_BYTES, and not for a manifest already stored), `quay.expires-after` on a
tagged push, live-tag reads that hide expired rows, the expiry job's bounded batches, a
push over an expired row, the metadata cache's respect for a tag's expiry, and the
statements rule and label changes run. Races on PostgreSQL are played step by step: a
transaction standing for the other side is held open until the service waits on its row
lock (pg_stat_activity says so), then committed."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cargohold.db.migrate import upgrade
from cargohold.db.session import Database, DbSession, Row
from cargohold.db.sql import Sql, sql
from cargohold.db.values import as_datetime
from cargohold.domain.digests import parse_digest
from cargohold.domain.errors import Denied, ManifestBlobUnknown, ManifestInvalid, ManifestUnknown
from cargohold.domain.names import parse_repository
from cargohold.services import labels
from cargohold.services.audit import AuditEntry, AuditLog, Origin
from cargohold.services.cache import LocalGeneration, MetadataCache
from cargohold.services.immutability import ImmutabilityRules
from cargohold.services.listings import ListingService
from cargohold.services.manifest_details import ManifestAdmin
from cargohold.services.manifests import ManifestService, Reference
from cargohold.services.records import ManifestRecord
from cargohold.services.repository_search import RepositorySearch
from cargohold.services.tags import DUE, TagService
from cargohold.services.uploads import UploadService
from cargohold.storage import layout
from cargohold.storage.memory import MemoryDriver
from tests.api_v1.tag_helpers import labelled_image
from tests.support.oci import OCI_CONFIG, OCI_MANIFEST, Image, sha256
from tests.support.postgres import temporary_database
from tests.support.services import SUPERUSER, creator

REPO = parse_repository("ns/app")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        upgrade(url)
        yield url
    else:
        with temporary_database() as url:
            upgrade(url)
            yield url


class RecordedSession(DbSession):
    """A real session that notes each statement it runs, and runs a hook once after a
    chosen statement (to play another transaction at that very point)."""

    def __init__(self, inner: DbSession, db: RecordingDatabase) -> None:
        self.inner, self.db, self.dialect = inner, db, inner.dialect

    async def _after(self, statement: Sql) -> None:
        self.db.statements.append(statement.sqlite)
        hook = self.db.hooks.pop(statement, None)
        if hook is not None:
            await hook()

    async def one(self, statement: Sql, **params: Any) -> Row | None:
        row = await self.inner.one(statement, **params)
        await self._after(statement)
        return row

    async def all(self, statement: Sql, **params: Any) -> list[Row]:
        rows = await self.inner.all(statement, **params)
        await self._after(statement)
        return rows

    async def run(self, statement: Sql, **params: Any) -> int:
        count = await self.inner.run(statement, **params)
        await self._after(statement)
        return count

    async def run_many(self, statement: Sql, rows: list[dict[str, Any]]) -> None:
        await self.inner.run_many(statement, rows)
        await self._after(statement)


class RecordingDatabase(Database):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.statements: list[str] = []  # the SQLite text of each, in order
        self.hooks: dict[Sql, Callable[[], Awaitable[None]]] = {}

    def ran(self, fragment: str) -> list[str]:
        return [s for s in self.statements if fragment in s]

    @asynccontextmanager
    async def read(self) -> AsyncIterator[DbSession]:
        async with super().read() as session:
            yield RecordedSession(session, self)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[DbSession]:
        async with super().write() as session:
            yield RecordedSession(session, self)


class ReadCountingDriver(MemoryDriver):
    """The memory driver, noting what the registry reads: (key, offset, length)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, int, int | None]] = []

    async def get_bytes(self, key: str) -> bytes:
        self.reads.append((key, 0, None))
        return await super().get_bytes(key)

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        self.reads.append((key, offset, length))
        async for chunk in super().read(key, offset, length):
            yield chunk


class Services:
    def __init__(self, url: str) -> None:
        self.url = url
        self.db = RecordingDatabase(url)
        self.storage = ReadCountingDriver()
        self.cache = MetadataCache(LocalGeneration())
        self.audit = AuditLog(self.db)
        made = creator(self.db)
        self.uploads = UploadService(self.db, self.storage, made, max_blob_bytes=4 << 20)
        self.manifests = ManifestService(
            self.db, self.cache, self.audit, made, max_manifest_bytes=1 << 20, storage=self.storage
        )
        self.listings = ListingService(self.db, self.cache)
        self.tags = TagService(
            self.db, self.audit, time_machine_seconds=3600, content_changed=self.cache.invalidate
        )
        self.admin = ManifestAdmin(
            self.db, self.audit, time_machine_seconds=3600, content_changed=self.cache.invalidate
        )
        self.rules = ImmutabilityRules(self.db, self.audit, content_changed=self.cache.invalidate)
        self.search = RepositorySearch(self.db, self.audit)

    async def blob(self, data: bytes, repository: str = REPO.value) -> None:
        async def body() -> AsyncIterator[bytes]:
            yield data

        name = parse_repository(repository)
        state = await self.uploads.start(name, principal=SUPERUSER)
        await self.uploads.finish(
            name, state.id, parse_digest(sha256(data)), body(), principal=SUPERUSER
        )

    async def push(self, image: Image, tag: str) -> None:
        await self.blob(image.config)
        for layer in image.layers:
            await self.blob(layer)
        await self.manifests.put(
            REPO, Reference(tag=tag), image.manifest, image.media_type, principal=SUPERUSER
        )

    async def rows(self, text: str, **params: object) -> list[tuple[object, ...]]:
        async with self.db.read() as session:
            return await session.all(sql(text), **params)

    async def run(self, text: str, **params: object) -> None:
        async with self.db.write() as session:
            await session.run(sql(text), **params)

    async def put(self, image: Image, tag: str) -> None:
        """The manifest PUT alone (its blobs pushed before)."""
        await self.manifests.put(
            REPO, Reference(tag=tag), image.manifest, image.media_type, principal=SUPERUSER
        )

    async def value(self, text: str, **params: object) -> Any:
        rows = await self.rows(text, **params)
        return rows[0][0] if rows else None

    async def expire_now(self, tag: str, ago: timedelta = timedelta(seconds=5)) -> datetime:
        """Give the live `tag` an expiry `ago` (negative: in the future), then empty the
        caches as the API does when it changes an expiry."""
        moment = datetime.now(UTC) - ago
        await self.run(
            "UPDATE tag SET expires_at = :at WHERE name = :name AND ended_at IS NULL",
            at=moment,
            name=tag,
        )
        self.cache.invalidate()
        return moment


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[Services]:
    made = Services(database_url)
    try:
        yield made
    finally:
        await made.db.dispose()


async def test_labels_come_from_the_config_blob_and_set_the_expiry(services: Services) -> None:
    image = labelled_image(
        {"quay.expires-after": "1h", "team": "core"}, {"org.example.note": "annotated"}
    )
    before = datetime.now(UTC)
    await services.push(image, "v1")
    labels = await services.rows(
        "SELECT l.key, l.value, l.source FROM manifest_label l JOIN manifest m "
        "ON m.id = l.manifest_id WHERE m.digest = :digest ORDER BY l.key",
        digest=image.digest,
    )
    assert labels == [
        ("org.example.note", "annotated", "manifest"),
        ("quay.expires-after", "1h", "manifest"),
        ("team", "core", "manifest"),
    ]
    page = await services.tags.page(REPO.value, active_only=True)
    (tag,) = page.tags
    assert tag.expires_at is not None
    assert before + timedelta(hours=1) <= tag.expires_at <= datetime.now(UTC) + timedelta(hours=1)
    # Pushing the same manifest again stores no second set of labels.
    await services.push(image, "v2")
    assert len(await services.rows("SELECT id FROM manifest_label")) == 3


async def test_a_config_too_large_to_read_gives_no_labels(services: Services) -> None:
    image = labelled_image({"big": "x" * (1 << 20)})
    await services.push(image, "v1")
    assert await services.rows("SELECT id FROM manifest_label") == []


async def test_expired_tags_leave_reads_and_the_job_ends_them_in_batches(
    services: Services,
) -> None:
    image = labelled_image()
    names = [f"t{i}" for i in range(5)]
    for name in names:
        await services.push(image, name)
    await services.push(image, "stays")
    # An answer cached with the tag's expiry stops being served once the expiry passes.
    await services.expire_now("t0", timedelta(seconds=-0.5))
    assert (await services.manifests.get(REPO, Reference(tag="t0"))).digest == image.digest
    assert services.cache.tag(REPO.value, "t0") is not None
    for _ in range(600):  # poll (up to a minute) for the cached entry to lapse
        if services.cache.tag(REPO.value, "t0") is None:
            break
        await asyncio.sleep(0.1)
    with pytest.raises(ManifestUnknown):
        await services.manifests.get(REPO, Reference(tag="t0"))
    moments = {name: await services.expire_now(name) for name in names}
    for name in names:
        with pytest.raises(ManifestUnknown):
            await services.manifests.get(REPO, Reference(tag=name))
    assert (await services.listings.tags(REPO, 100, None)).items == ["stays"]

    assert await services.tags.end_expired(batch=2) == 5
    assert await services.tags.end_expired(batch=2) == 0
    rows = await services.rows(
        "SELECT name, ended_at, expires_at FROM tag WHERE name LIKE 't%' ORDER BY name"
    )
    assert [r[0] for r in rows] == names
    for _, ended, expires in rows:
        assert ended == expires
    ended_at = {r[0]: r[1] for r in rows}
    for name in names:
        ended = ended_at[name]
        if isinstance(ended, str):  # SQLite: naive UTC text
            ended = datetime.fromisoformat(ended).replace(tzinfo=UTC)
        assert isinstance(ended, datetime)
        assert abs((ended - moments[name]).total_seconds()) < 1e-3
    entries = await services.rows("SELECT details FROM audit_log WHERE kind = 'tag_expired'")
    assert sorted(json.loads(str(r[0]))["tag"] for r in entries) == names


async def test_a_push_ends_an_expired_row_and_starts_anew(services: Services) -> None:
    image = labelled_image()
    await services.push(image, "v1")
    await services.expire_now("v1")
    await services.push(image, "v1")  # the same digest: not "no change" once expired
    assert (await services.manifests.get(REPO, Reference(tag="v1"))).digest == image.digest
    rows = await services.rows("SELECT ended_at, expires_at FROM tag ORDER BY id")
    assert len(rows) == 2
    assert rows[0][0] == rows[0][1]  # ended at its expiry
    assert rows[1] == (None, None)
    kinds = await services.rows("SELECT kind FROM audit_log WHERE kind LIKE '%tag%' ORDER BY id")
    assert [k[0] for k in kinds] == ["create_tag", "tag_expired", "create_tag"]
    assert await services.tags.end_expired() == 0


async def test_an_immutable_tag_refuses_a_move_in_the_service(services: Services) -> None:
    first, second = labelled_image(), labelled_image()
    await services.push(first, "v1")
    await services.run(
        "INSERT INTO tag_immutability_rule (repository_id, pattern, created_at) "
        "SELECT id, 'v*', :now FROM repository WHERE name = :name",
        now=datetime.now(UTC),
        name=REPO.value,
    )
    with pytest.raises(Denied, match=r"v\*"):
        await services.push(second, "v1")
    with pytest.raises(Denied):
        await services.manifests.delete(REPO, Reference(tag="v1"), principal=SUPERUSER)
    with pytest.raises(Denied):
        await services.manifests.delete(
            REPO, Reference(digest=parse_digest(first.digest)), principal=SUPERUSER
        )
    await services.push(first, "v1")  # no change
    assert (await services.manifests.get(REPO, Reference(tag="v1"))).digest == first.digest


def test_the_cache_forgets_a_tag_when_it_expires() -> None:
    cache = MetadataCache(LocalGeneration())
    record = ManifestRecord("sha256:" + "a" * 64, "application/json", b"{}")
    now = datetime.now(UTC)
    cache.remember_manifest(cache.snapshot(), "ns/app", record, "soon", now + timedelta(hours=1))
    cache.remember_manifest(cache.snapshot(), "ns/app", record, "past", now - timedelta(seconds=1))
    cache.remember_manifest(cache.snapshot(), "ns/app", record, "never")
    assert cache.tag("ns/app", "soon") == record
    assert cache.tag("ns/app", "past") is None
    assert cache.tag("ns/app", "never") == record
    assert cache.manifest("ns/app", record.digest) == record  # by digest: still there


# -- what a push reads (review finding 1) -------------------------------------------------


def _manifest(config_digest: str, size: int) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": size},
        "layers": [],
    }
    return json.dumps(doc).encode()


async def test_a_push_reads_only_a_linked_config_of_its_size_and_only_once(
    services: Services,
) -> None:
    """A config descriptor naming a blob that is not linked here, or with a size that is
    not the blob's, makes no read (a tiny declared size once made the registry load any
    large blob); a new manifest's config is read through a bounded range; a manifest
    already stored is not read again, its tags take the expiry from its stored labels."""
    big = os.urandom(2 << 20)
    big_key = layout.blob_key(parse_digest(sha256(big)))
    await services.blob(big, "ns/other")
    payload = _manifest(sha256(big), 2)
    with pytest.raises(ManifestBlobUnknown):  # not linked into ns/app
        await services.manifests.put(
            REPO, Reference(tag="x"), payload, OCI_MANIFEST, principal=SUPERUSER
        )
    await services.blob(big)  # linked here too, with its real size
    with pytest.raises(ManifestInvalid, match="size"):
        await services.manifests.put(
            REPO, Reference(tag="x"), payload, OCI_MANIFEST, principal=SUPERUSER
        )
    assert [r for r in services.storage.reads if r[0] == big_key] == []

    image = labelled_image({"quay.expires-after": "1h", "team": "core"})
    for data in (image.config, *image.layers):
        await services.blob(data)
    mark = len(services.storage.reads)
    await services.put(image, "v1")
    config_key = layout.blob_key(parse_digest(sha256(image.config)))
    assert services.storage.reads[mark:] == [(config_key, 0, labels.MAX_CONFIG_BYTES + 1)]
    mark = len(services.storage.reads)
    await services.put(image, "v2")
    assert services.storage.reads[mark:] == []
    page = await services.tags.page(REPO.value, active_only=True)
    assert [t.name for t in page.tags] == ["v1", "v2"]
    assert all(t.expires_at is not None for t in page.tags)


async def test_a_manifest_deleted_after_the_push_looked_is_stored_with_its_labels(
    services: Services,
) -> None:
    """The push saw the manifest stored (and skipped its config), then it was deleted
    before the push's transaction: the push reads the config after all."""
    image = labelled_image({"quay.expires-after": "1h", "team": "core"})
    await services.push(image, "v1")

    async def delete_it() -> None:
        digest = parse_digest(image.digest)
        await services.manifests.delete(REPO, Reference(digest=digest), principal=SUPERUSER)

    services.db.hooks[labels.PUSH_STATE] = delete_it
    await services.put(image, "v2")
    assert not services.db.hooks  # the hook ran
    rows = await services.rows("SELECT key, value FROM manifest_label ORDER BY key")
    assert rows == [("quay.expires-after", "1h"), ("team", "core")]
    (tag,) = (await services.tags.page(REPO.value, active_only=True)).tags
    assert tag.name == "v2" and tag.expires_at is not None


# -- the expiry job against concurrent changes, PostgreSQL (findings 3 and 5) ----------------


@pytest.fixture
async def pg_services() -> AsyncIterator[Services]:
    with temporary_database() as url:
        upgrade(url)
        made = Services(url)
        try:
            yield made
        finally:
            await made.db.dispose()


async def _once_waiting_on_a_lock(url: str, task: asyncio.Task[Any]) -> None:
    """Return once a session of the database waits on a lock (the task's: nothing else
    runs); fail if the task ends first."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as watcher:
        for _ in range(3000):  # up to a minute on a loaded machine
            if task.done():
                break
            cursor = await watcher.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cursor.fetchone()
            if row is not None and row[0]:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"the task did not wait on a lock (done: {task.done()})")


@pytest.mark.parametrize(
    "new_expiry", ["now() + interval '1 day'", "NULL"], ids=["extended", "cleared"]
)
async def test_the_expiry_job_leaves_a_row_whose_expiry_changed_while_it_waited(
    pg_services: Services, new_expiry: str
) -> None:
    services = pg_services
    image = labelled_image()
    await services.push(image, "v1")
    await services.expire_now("v1")
    tag_id = await services.value("SELECT id FROM tag WHERE name = 'v1'")
    # An API PUT of the expiration (or a new rule clearing it): updated, not committed.
    async with await psycopg.AsyncConnection.connect(services.url) as other:
        await other.execute(f"UPDATE tag SET expires_at = {new_expiry} WHERE id = %s", (tag_id,))
        job = asyncio.create_task(services.tags.end_expired())
        await _once_waiting_on_a_lock(services.url, job)  # it found the row due, and waits
        await other.commit()
        assert await job == 0
    ((ended, expires),) = await services.rows(
        "SELECT ended_at, expires_at FROM tag WHERE id = :id", id=tag_id
    )
    assert ended is None
    assert (expires is None) == (new_expiry == "NULL")
    assert await services.rows("SELECT id FROM audit_log WHERE kind = 'tag_expired'") == []
    services.cache.invalidate()
    assert (await services.manifests.get(REPO, Reference(tag="v1"))).digest == image.digest


async def test_a_push_over_a_row_the_job_ended_meanwhile_does_not_audit_it_again(
    pg_services: Services,
) -> None:
    services = pg_services
    first, second = labelled_image(), labelled_image()
    await services.push(first, "v1")
    for data in (second.config, *second.layers):
        await services.blob(data)
    await services.expire_now("v1")
    tag_id = await services.value("SELECT id FROM tag WHERE name = 'v1'")
    # The expiry job of another process: the row ended (and audited there), not committed.
    async with await psycopg.AsyncConnection.connect(services.url) as job:
        await job.execute("UPDATE tag SET ended_at = expires_at WHERE id = %s", (tag_id,))
        push = asyncio.create_task(services.put(second, "v1"))
        await _once_waiting_on_a_lock(services.url, push)  # the push waits on the row
        await job.commit()
        await push
    kinds = await services.rows("SELECT kind FROM audit_log WHERE kind LIKE '%tag%' ORDER BY id")
    assert [k for (k,) in kinds] == ["create_tag", "create_tag"]
    assert (await services.manifests.get(REPO, Reference(tag="v1"))).digest == second.digest
    ((ended, expires),) = await services.rows(
        "SELECT ended_at, expires_at FROM tag WHERE id = :id", id=tag_id
    )
    assert ended == expires


# -- the statements behind the job, rules, labels, details and lists (6 to 10) ---------------


async def _insert_tags(
    services: Services, manifest_digest: str, names: list[str], expires_at: datetime | None
) -> None:
    """Live tags on a manifest of REPO, straight into the table (thousands in a moment)."""
    manifest_id = await services.value(
        "SELECT id FROM manifest WHERE digest = :digest", digest=manifest_digest
    )
    repo_id = await services.value("SELECT id FROM repository WHERE name = :n", n=REPO.value)
    now = datetime.now(UTC)
    rows = [
        {"r": repo_id, "n": name, "m": manifest_id, "now": now, "e": expires_at} for name in names
    ]
    async with services.db.write() as session:
        await session.run_many(
            sql(
                "INSERT INTO tag (repository_id, name, manifest_id, started_at, expires_at) "
                "VALUES (:r, :n, :m, :now, :e)"
            ),
            rows,
        )


async def test_the_expiry_job_looks_on_the_live_expiry_index(services: Services) -> None:
    """However long the expired history and however many live tags without an expiry,
    the job's query reads the partial index of open rows with an expiry
    (ix_tag_live_expiry), neither every row that ever had one nor every open row."""
    image = labelled_image()
    await services.push(image, "live")
    manifest_id = await services.value("SELECT id FROM manifest")
    repo_id = await services.value("SELECT id FROM repository WHERE name = :n", n=REPO.value)
    past = datetime.now(UTC) - timedelta(days=1)
    history = [{"r": repo_id, "n": f"ci-{i}", "m": manifest_id, "t": past} for i in range(5000)]
    async with services.db.write() as session:
        await session.run_many(
            sql(
                "INSERT INTO tag (repository_id, name, manifest_id, started_at, ended_at, "
                "expires_at) VALUES (:r, :n, :m, :t, :t, :t)"
            ),
            history,
        )
        await session.run_many(  # and many live tags without an expiry
            sql(
                "INSERT INTO tag (repository_id, name, manifest_id, started_at) "
                "VALUES (:r, :n, :m, :t)"
            ),
            [{**row, "n": f"live-{i}"} for i, row in enumerate(history)],
        )
        await session.run(sql("ANALYZE tag"))
    explain = Sql(f"EXPLAIN QUERY PLAN {DUE.sqlite}", f"EXPLAIN {DUE.postgres}")
    async with services.db.read() as session:
        plan = " ".join(str(r) for r in await session.all(explain, now=datetime.now(UTC), limit=1))
    assert "ix_tag_live_expiry" in plan, plan
    assert await services.tags.end_expired() == 0


async def test_a_new_rule_clears_the_expirations_it_matches_in_one_statement(
    services: Services,
) -> None:
    image = labelled_image()
    await services.push(image, "v1")
    soon = datetime.now(UTC) + timedelta(hours=1)
    await _insert_tags(services, image.digest, [f"rc-{i}" for i in range(40)], soon)
    await _insert_tags(services, image.digest, ["dev-1", "dev-2"], soon)
    services.db.statements.clear()
    await services.rules.add(REPO.value, "rc-*", AuditEntry("create_immutability_rule", SUPERUSER))
    assert len(services.db.ran("UPDATE tag SET expires_at = NULL")) == 1
    rows = await services.rows("SELECT name FROM tag WHERE expires_at IS NOT NULL ORDER BY name")
    assert rows == [("dev-1",), ("dev-2",)]
    (details,) = await services.rows(
        "SELECT details FROM audit_log WHERE kind = 'create_immutability_rule'"
    )
    assert len(json.loads(str(details[0]))["cleared_expirations"]) == 40


async def test_manifest_details_leave_the_referrers_payloads_alone(services: Services) -> None:
    image = labelled_image()
    await services.push(image, "v1")
    repo_id = await services.value("SELECT id FROM repository WHERE name = :n", n=REPO.value)
    referrers = sorted(f"sha256:{i:064x}" for i in range(1, 4))
    async with services.db.write() as session:
        await session.run_many(
            sql(
                "INSERT INTO manifest (repository_id, digest, media_type, artifact_type, "
                "subject_digest, size, payload, created_at) "
                "VALUES (:r, :d, :mt, 'application/x-sig', :s, :size, :p, :now)"
            ),
            [
                {
                    "r": repo_id,
                    "d": d,
                    "mt": OCI_MANIFEST,
                    "s": image.digest,
                    "size": 1 << 16,
                    "p": b"x" * (1 << 16),
                    "now": datetime.now(UTC),
                }
                for d in referrers
            ],
        )
    services.db.statements.clear()
    details = await services.admin.details(REPO.value, image.digest)
    assert [r["digest"] for r in details["referrers"]] == referrers
    assert details["referrers"][0]["artifact_type"] == "application/x-sig"
    (referrers_query,) = services.db.ran("subject_digest = :subject")
    assert "payload" not in referrers_query


async def test_a_label_expiry_reaches_every_live_tag_of_the_manifest(services: Services) -> None:
    """Past the 1000 tags the details show: all of them, immutable ones excepted."""
    image = labelled_image()
    await services.push(image, "v1")
    names = [f"t{i:04d}" for i in range(1200)]
    await _insert_tags(services, image.digest, [*names, "keep-1"], None)
    await services.run(
        "INSERT INTO tag_immutability_rule (repository_id, pattern, created_at) "
        "SELECT id, 'keep*', :now FROM repository WHERE name = :name",
        now=datetime.now(UTC),
        name=REPO.value,
    )
    services.db.statements.clear()
    await services.admin.add_label(
        REPO.value,
        image.digest,
        "quay.expires-after",
        "1h",
        principal=SUPERUSER,
        origin=Origin(),
    )
    without = await services.rows("SELECT name FROM tag WHERE expires_at IS NULL")
    assert without == [("keep-1",)]
    changed = await services.value(
        "SELECT COUNT(*) FROM audit_log WHERE kind = 'change_tag_expiration'"
    )
    assert changed == 1 + len(names)
    assert len(services.db.ran("UPDATE tag SET expires_at")) == 3  # chunks of 500


async def test_the_repository_list_shows_the_last_push_or_tag_change(
    services: Services,
) -> None:
    """`last_modified` is repository.changed_at: one UPDATE in each transaction that
    stores a manifest or changes a tag, however many tags the expiry job ends in it."""

    async def shown() -> datetime | None:
        page = await services.search.page(SUPERUSER)
        (listed,) = [r for r in page.repositories if r.name == REPO.value]
        stored = await services.value(
            "SELECT changed_at FROM repository WHERE name = :n", n=REPO.value
        )
        assert listed.last_modified == as_datetime(stored)
        return listed.last_modified

    image = labelled_image()
    await services.push(image, "v1")
    pushed = await shown()
    assert pushed is not None
    touches = len(services.db.ran("UPDATE repository SET changed_at"))
    await services.put(image, "v2")
    await services.put(image, "v3")
    tagged = await shown()
    assert tagged is not None and tagged > pushed
    assert len(services.db.ran("UPDATE repository SET changed_at")) == touches + 2
    # Tags whose expiry passed are hidden at once, but change nothing until the job ends
    # them: then the repository changed, in one UPDATE for the whole batch.
    for tag in ("v1", "v2", "v3"):
        await services.expire_now(tag)
    assert await shown() == tagged
    touches = len(services.db.ran("UPDATE repository SET changed_at"))
    assert await services.tags.end_expired() == 3
    expired = await shown()
    assert expired is not None and expired > tagged
    assert len(services.db.ran("UPDATE repository SET changed_at")) == touches + 1
