"""The collector's rules on real databases (SQLite and PostgreSQL) and filesystem storage:
what keeps a manifest, a link and a blob, and what goes once nothing does. Pushes go
through the services; the collector's clock is moved forward to pass grace periods and
time-machine windows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cargohold.services.accounts import AccountService
from cargohold.services.audit import AuditEntry
from cargohold.services.gc import report
from cargohold.services.organizations import OrganizationService
from cargohold.services.repository_admin import RepositoryAdmin
from tests.integration.gc_support import (
    DAY,
    HOUR,
    Registry,
    age,
    make_image,
    make_index,
    sha256,
    unique,
)
from tests.support.postgres import temporary_database
from tests.support.services import SUPERUSER

# The fixture's Database lives on the session's event loop: the tests run there too.
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


async def test_an_untagged_manifest_goes_after_the_grace_period_with_what_only_it_used(
    reg: Registry,
) -> None:
    repo = unique("gc")
    shared = os.urandom(500)
    kept, dropped = make_image(layers=[shared]), make_image(layers=[shared, os.urandom(400)])
    await reg.push_image(repo, kept, tag="v1")
    digest = await reg.push_image(repo, dropped)  # by digest: untagged from the start

    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert await reg.has_manifest(repo, digest)  # young: the grace period keeps it
    assert all([await reg.blob_kept(b) for b in dropped.blobs])

    reg.later(2 * HOUR)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None, run
    assert not await reg.has_manifest(repo, digest)
    assert await reg.has_manifest(repo, kept.digest)
    assert (run.manifests_deleted, run.links_deleted, run.blobs_deleted) == (1, 2, 2)
    assert run.bytes_freed == len(dropped.config) + len(dropped.layers[1])
    assert not await reg.blob_kept(dropped.config)
    assert not await reg.blob_kept(dropped.layers[1])
    assert await reg.blob_kept(shared)  # still used by the tagged image
    assert all([await reg.blob_kept(b) for b in kept.blobs])
    # Nothing left to do: the next pass is idle.
    again = await reg.gc.run_once()
    assert again is not None and again.idle


async def test_live_tags_keep_their_manifest_even_when_expired_but_not_yet_ended(
    reg: Registry,
) -> None:
    repo = unique("gc")
    image = make_image()
    await reg.push_image(repo, image, tag="v1")
    await reg.run(
        "UPDATE tag SET expires_at = :past WHERE name = 'v1'", past="2000-01-01 00:00:00.000000"
    ) if reg.rt.db.sqlite else await reg.run(
        "UPDATE tag SET expires_at = now() - interval '1 day' WHERE name = 'v1'"
    )
    reg.later(30 * DAY)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert await reg.has_manifest(repo, image.digest)  # the expiry job ends it first
    assert all([await reg.blob_kept(b) for b in image.blobs])


async def test_the_time_machine_window_keeps_history_then_gc_removes_what_only_it_held(
    reg: Registry,
) -> None:
    """Acceptance 2: a tag moved five times; inside the window every manifest it pointed
    at stays (restorable); after the window GC removes what only history held."""
    repo = unique("tm")
    images = [make_image() for _ in range(6)]
    for image in images:  # pushed five moves of "latest"
        await reg.push_image(repo, image, tag="latest")
    reg.later(2 * HOUR)  # past the grace period, well inside the 14-day window
    run = await reg.gc.run_once()
    assert run is not None and run.error is None and run.manifests_deleted == 0
    assert all([await reg.has_manifest(repo, i.digest) for i in images])

    reg.later(15 * DAY)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert run.manifests_deleted == 5 and run.tags_deleted == 5  # the history rows too
    assert await reg.has_manifest(repo, images[-1].digest)
    for image in images[:-1]:
        assert not await reg.has_manifest(repo, image.digest)
        assert not await reg.blob_kept(image.config)
    history = await reg.value(
        "SELECT COUNT(*) FROM tag t JOIN repository r ON r.id = t.repository_id "
        "WHERE r.name = :repo",
        repo=repo,
    )
    assert history == 1  # only the live row


async def test_a_namespace_window_of_zero_keeps_no_history(reg: Registry) -> None:
    repo = unique("tmzero")
    old, new = make_image(), make_image()
    await reg.push_image(repo, old, tag="t")
    await reg.push_image(repo, new, tag="t")
    await reg.run(
        "UPDATE namespace SET time_machine_seconds = 0 WHERE name = :ns", ns=repo.split("/")[0]
    )
    reg.later(2 * HOUR)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert not await reg.has_manifest(repo, old.digest)
    assert await reg.has_manifest(repo, new.digest)


async def test_an_index_keeps_its_children_until_it_goes(reg: Registry) -> None:
    repo = unique("idx")
    children = [make_image(), make_image()]
    for child in children:
        await reg.push_image(repo, child)  # untagged children
    index = make_index(children)
    index_digest = await reg.push_manifest(
        repo, index, tag="multi", media_type="application/vnd.oci.image.index.v1+json"
    )
    reg.later(2 * HOUR)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None and run.manifests_deleted == 0
    assert all([await reg.has_manifest(repo, c.digest) for c in children])

    await reg.untag(repo, "multi")
    await reg.run("UPDATE namespace SET time_machine_seconds = 0 WHERE name = 'idx'")
    first = await reg.gc.run_once()
    assert first is not None and first.error is None
    assert not await reg.has_manifest(repo, index_digest)
    # The children are collectable once their index is gone (this or the next pass).
    second = await reg.gc.run_once()
    assert second is not None and second.error is None
    assert first.manifests_deleted + second.manifests_deleted == 3
    for child in children:
        assert not await reg.has_manifest(repo, child.digest)
        assert not any([await reg.blob_kept(b) for b in child.blobs])


async def test_referrers_live_as_long_as_their_subject(reg: Registry) -> None:
    repo = unique("ref")
    subject = make_image()
    await reg.push_image(repo, subject, tag="app")
    signature = make_image(subject=subject.manifest)
    sbom = make_image(subject=subject.manifest)
    await reg.push_image(repo, signature)  # untagged referrers
    await reg.push_image(repo, sbom, tag="sbom")  # a tagged one
    reg.later(2 * HOUR)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None and run.manifests_deleted == 0
    assert await reg.has_manifest(repo, signature.digest)

    await reg.untag(repo, "app")
    await reg.run("UPDATE namespace SET time_machine_seconds = 0 WHERE name = 'ref'")
    for _ in range(2):  # the subject, then its untagged referrer
        run = await reg.gc.run_once()
        assert run is not None and run.error is None
    assert not await reg.has_manifest(repo, subject.digest)
    assert not await reg.has_manifest(repo, signature.digest)
    assert await reg.has_manifest(repo, sbom.digest)  # its own tag keeps it


async def test_links_no_manifest_uses_go_after_grace_and_shared_blobs_stay(reg: Registry) -> None:
    one, two = unique("links"), unique("links")
    lonely, shared = os.urandom(100), os.urandom(200)
    await reg.push_blob(one, lonely)
    await reg.push_blob(one, shared)
    image = make_image(layers=[shared])
    await reg.push_image(two, image, tag="v1")
    reg.later(2 * HOUR)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert not await reg.linked(one, lonely) and not await reg.linked(one, shared)
    assert await reg.linked(two, shared)
    assert not await reg.blob_kept(lonely)
    assert await reg.blob_kept(shared)
    assert run.links_deleted == 2 and run.blobs_deleted == 1


async def test_a_blob_pushed_again_counts_as_young_again(reg: Registry) -> None:
    repo = unique("touch")
    data = os.urandom(100)
    await reg.push_blob(repo, data)
    reg.later(2 * HOUR)
    await reg.gc.run_once()
    assert not await reg.blob_kept(data)
    await reg.push_blob(repo, data)  # uploaded anew: a fresh row, link and bytes
    reg.later(0 * HOUR)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert await reg.blob_kept(data) and await reg.linked(repo, data)


async def test_a_dry_run_counts_and_changes_nothing(reg: Registry) -> None:
    repo = unique("dry")
    image = make_image()
    await reg.push_image(repo, image)
    await reg.push_blob(repo, b"loose")
    reg.later(2 * HOUR)
    dry = await reg.gc.run_once(dry_run=True)
    assert dry is not None and dry.error is None and dry.dry_run
    assert dry.manifests_deleted == 1 and dry.links_deleted == 1  # the loose blob's link
    assert await reg.has_manifest(repo, image.digest)
    assert await reg.linked(repo, b"loose") and await reg.blob_kept(b"loose")
    real = await reg.gc.run_once()
    assert real is not None and real.manifests_deleted == 1
    assert not await reg.blob_kept(b"loose")
    body = await report(reg.rt.db)
    assert body["totals"]["manifests_deleted"] == 1  # dry runs are not totals
    assert [r["dry_run"] for r in body["runs"][:2]] == [False, True]


def _admin(reg: Registry) -> RepositoryAdmin:
    rt = reg.rt
    return RepositoryAdmin(
        rt.db,
        rt.audit,
        rt.creator,
        permissions_changed=rt.permissions.changed,
        content_changed=rt.cache.invalidate,
    )


async def test_a_deleted_repository_is_gone_at_once_and_purged_completely(reg: Registry) -> None:
    repo, other = unique("del"), unique("del")
    shared = os.urandom(300)
    children = [make_image(layers=[shared]), make_image()]
    for child in children:
        await reg.push_image(repo, child)
    await reg.push_manifest(
        repo,
        make_index(children),
        tag="multi",
        media_type="application/vnd.oci.image.index.v1+json",
    )
    await reg.push_image(repo, make_image(subject=children[0].manifest))
    await reg.push_image(other, make_image(layers=[shared]), tag="keep")
    repo_id = await reg.value("SELECT id FROM repository WHERE name = :n", n=repo)

    await _admin(reg).delete(repo, AuditEntry("delete_repo", SUPERUSER))
    assert await reg.value("SELECT id FROM repository WHERE name = :n", n=repo) is None
    assert await reg.value("SELECT name FROM repository WHERE id = :i", i=repo_id) == (
        f"{repo.split('/')[0]}/.deleted-{repo_id}"
    )
    # The name is free again at once: a push creates a new, empty repository.
    await reg.push_image(repo, make_image(), tag="fresh")
    assert (
        await reg.value(
            "SELECT COUNT(*) FROM manifest m JOIN repository r ON "
            "r.id = m.repository_id WHERE r.name = :n",
            n=repo,
        )
        == 1
    )

    run = await reg.gc.run_once()  # no grace for deleted repositories
    assert run is not None and run.error is None, run
    assert run.repositories_purged == 1 and run.manifests_deleted == 4
    assert await reg.value("SELECT COUNT(*) FROM repository WHERE id = :i", i=repo_id) == 0
    for table in ("tag", "manifest", "repository_blob"):
        assert (
            await reg.value(f"SELECT COUNT(*) FROM {table} WHERE repository_id = :i", i=repo_id)
            == 0
        )
    # Its blobs are unreferenced now; their bytes go once they are older than the grace
    # period (a push of the same bytes elsewhere may be under way).
    assert all([await reg.blob_kept(b) for b in children[1].blobs])
    reg.later(2 * HOUR)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert await reg.blob_kept(shared)  # the other repository uses it
    assert not any([await reg.blob_kept(b) for b in children[1].blobs])


async def test_an_organization_with_deleted_repositories_goes_after_their_purge(
    reg: Registry,
) -> None:
    rt = reg.rt
    orgs = OrganizationService(rt.db, rt.audit, rt.permissions.changed, rt.authenticator.changed)
    name = unique("o").replace("/", "")
    await orgs.create(name, None, SUPERUSER, AuditEntry("create_org", SUPERUSER))
    repo = f"{name}/app"
    await reg.push_image(repo, make_image(), tag="v1")
    await _admin(reg).delete(repo, AuditEntry("delete_repo", SUPERUSER))
    await orgs.delete(name, AuditEntry("delete_org", SUPERUSER))  # no 409, no foreign key error
    ns_id = await reg.value("SELECT namespace_id FROM repository WHERE deleted_at IS NOT NULL")
    assert await reg.value("SELECT name FROM namespace WHERE id = :i", i=ns_id) == (
        f".deleted-{ns_id}"
    )
    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert await reg.value("SELECT COUNT(*) FROM namespace WHERE id = :i", i=ns_id) == 0


async def test_a_pass_is_bounded_and_reports_what_it_left_as_backlog(tmp_path: Path) -> None:
    registry = Registry(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", batch_size=1)
    try:
        repo = unique("backlog")
        blobs = [os.urandom(50) for _ in range(60)]
        for blob in blobs:
            await registry.push_blob(repo, blob)
        registry.later(2 * HOUR)
        first = await registry.gc.run_once()
        assert first is not None and first.error is None
        # 50 transactions of one link at most; the 10 other links are the backlog.
        assert (first.links_deleted, first.blobs_deleted, first.backlog) == (50, 50, 10)
        second = await registry.gc.run_once()
        assert second is not None
        assert (second.links_deleted, second.blobs_deleted, second.backlog) == (10, 10, 0)
        assert not any([await registry.blob_kept(b) for b in blobs])
        body = await report(registry.rt.db)
        assert body["totals"]["blobs_deleted"] == 60 and body["backlog"] == 0
        assert body["last_error"] is None
    finally:
        await registry.close()


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env["CARGOHOLD_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "cargohold", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_gc_command_dry_run_then_once(tmp_path: Path) -> None:
    registry = Registry(tmp_path, f"sqlite:///{tmp_path / 'cargohold.db'}")
    try:
        data = os.urandom(100)
        await registry.push_blob(unique("cli"), data)
        await age(registry)
    finally:
        await registry.close()
    dry = _cli(tmp_path, "gc", "--once", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["links_deleted"] == 1
    assert (tmp_path / "storage" / "blobs" / "sha256" / sha256(data)[7:9]).exists()
    real = _cli(tmp_path, "gc", "--once")
    assert real.returncode == 0, real.stderr
    counts = json.loads(real.stdout)
    assert (counts["links_deleted"], counts["blobs_deleted"], counts["dry_run"]) == (1, 1, False)
    assert counts["bytes_freed"] == len(data)
    assert not (
        tmp_path / "storage" / "blobs" / "sha256" / sha256(data)[7:9] / sha256(data)[7:]
    ).exists()


async def test_the_worker_collects_without_serving_and_stops_on_sigterm(tmp_path: Path) -> None:
    registry = Registry(tmp_path, f"sqlite:///{tmp_path / 'cargohold.db'}")
    try:
        await registry.push_blob(unique("worker"), os.urandom(100))
        await age(registry)
    finally:
        await registry.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env.update(
        {
            "CARGOHOLD_DATA_DIR": str(tmp_path),
            "CARGOHOLD_GC__ENABLED": "false",
            "CARGOHOLD_GC__INTERVAL_SECONDS": "0.2",
        }
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cargohold",
        "worker",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        db = tmp_path / "cargohold.db"
        deleted = 0
        while time.monotonic() < deadline and not deleted:
            await asyncio.sleep(0.2)
            with contextlib.closing(sqlite3.connect(db)) as conn:
                (deleted,) = conn.execute(
                    "SELECT COALESCE(SUM(blobs_deleted), 0) FROM gc_run"
                ).fetchone()
        assert deleted == 1  # gc.enabled false is for `serve`: the worker collects anyway
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(worker.communicate(), 60)
    assert worker.returncode == 0, output


async def test_a_user_with_deleted_repositories_goes_and_the_name_is_free(reg: Registry) -> None:
    rt = reg.rt
    name = unique("u").replace("/", "")
    await rt.users.create(name, "a-long-enough-password")
    repo = f"{name}/app"
    await reg.push_image(repo, make_image(), tag="v1")
    await _admin(reg).delete(repo, AuditEntry("delete_repo", SUPERUSER))
    accounts = AccountService(
        rt.db,
        rt.audit,
        credentials_changed=rt.authenticator.changed,
        permissions_changed=rt.permissions.changed,
    )
    await accounts.delete(name, AuditEntry("delete_user", SUPERUSER))
    assert await accounts.get(name) is None
    await rt.users.create(name, "a-long-enough-password")  # the name is free at once
    run = await reg.gc.run_once()
    assert run is not None and run.error is None and run.repositories_purged == 1
    assert await reg.value("SELECT COUNT(*) FROM namespace WHERE name LIKE '.deleted-%'") == 0


async def test_a_manifest_pushed_again_by_digest_starts_a_new_grace_period(reg: Registry) -> None:
    """A client about to tag an old untagged manifest, or to push an index that names it,
    pushes it again first (by digest): the collector must not take it right after that
    201 because it was first pushed long ago."""
    repo = unique("gc")
    image = make_image(layers=[os.urandom(300)])
    digest = await reg.push_image(repo, image)
    await age(reg)  # long untagged: collectable now
    assert await reg.push_manifest(repo, image.manifest) == digest  # pushed again

    reg.later(HOUR / 2)  # within the new grace period
    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert await reg.has_manifest(repo, digest)

    reg.later(2 * HOUR)
    run = await reg.gc.run_once()
    assert run is not None and run.error is None
    assert not await reg.has_manifest(repo, digest)
