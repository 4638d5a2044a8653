"""The logs API (/api/v1/.../logs and .../exportlogs): who may read which entries, the
filters (time range, kinds), keyset pages, the JSON-lines export, and retention."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from cargohold.web.api.logs import decode_page, encode_page, parse_time
from tests.support.audit import (
    drain_queue,
    entries,
    execute,
    query,
)
from tests.support.audit_setup import Member, grant, organization, users
from tests.support.oci import make_image, push_image
from tests.support.postgres import temporary_database
from tests.support.server import RegistryProcess


@dataclass(frozen=True)
class World:
    """Two organizations, a repository in each, and people with every standing."""

    server: RegistryProcess
    su: Member  # a superuser
    oadmin: Member  # administers `org`
    member: Member  # in a member team of `org`
    reader: Member  # may read `repo`
    repoadmin: Member  # administers `repo`
    narrow: Member  # administers `repo` with a token scoped repo:read only
    padmin: Member  # administers `other`
    alice: Member  # has her own namespace
    org: str
    other: str
    repo: str
    other_repo: str


_worlds: dict[str, World] = {}


def _push(server: RegistryProcess, who: Member, repo: str, tag: str, ua: str = "audit-api") -> None:
    with server.client(auth=who.auth, headers={"User-Agent": ua}) as c:
        push_image(c, repo, make_image(), tag)


@pytest.fixture
def world(any_registry: RegistryProcess) -> World:
    key = any_registry.url
    if key not in _worlds:
        server = any_registry
        su = users(server, 1, superuser=True)[0]
        oadmin, member, reader, repoadmin, padmin, alice = users(server, 6)
        narrow = users(server, 1, scopes=("repo:read",))[0]
        org = organization(server, admins=(oadmin,), members=(member,))
        other = organization(server, admins=(padmin,))
        repo, other_repo = f"{org}/app", f"{other}/app"
        _push(server, oadmin, repo, "v1")
        for person, role in ((reader, "read"), (repoadmin, "admin"), (narrow, "admin")):
            grant(server, repo, "user", person.id, role)
        _push(server, repoadmin, repo, "v2")
        _push(server, oadmin, repo, "v1")  # moves v1
        with server.client(auth=reader.auth) as c:
            assert c.get(f"/v2/{repo}/manifests/v1").status_code == 200
        _push(server, padmin, other_repo, "v1")
        _push(server, alice, f"{alice.name}/own", "v1")
        _push(server, su, f"{alice.name}/from-admin", "v1")
        drain_queue(server)
        _worlds[key] = World(
            server, su, oadmin, member, reader, repoadmin, narrow, padmin, alice, org, other,
            repo, other_repo,
        )  # fmt: skip
    return _worlds[key]


def api(world: World, who: Member | None) -> httpx.Client:
    headers = who.bearer if who is not None else {}
    return world.server.client(auth=None, headers=headers)


def get_logs(world: World, who: Member | None, path: str, **params: Any) -> dict[str, Any]:
    with api(world, who) as c:
        r = c.get(f"/api/v1/{path}", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def status(world: World, who: Member | None, path: str, **params: Any) -> int:
    with api(world, who) as c:
        return c.get(f"/api/v1/{path}", params=params).status_code


def walk(world: World, who: Member, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every entry, following next_page."""
    found: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        extra = {"next_page": token} if token else {}
        body = get_logs(world, who, path, limit=limit, **params, **extra)
        assert len(body["logs"]) <= limit
        found += body["logs"]
        token = body["next_page"]
        if token is None:
            return found


def export(world: World, who: Member, path: str, **params: Any) -> list[dict[str, Any]]:
    with api(world, who) as c:
        r = c.get(f"/api/v1/{path}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == "application/x-ndjson"
    assert r.text == "" or r.text.endswith("\n")
    return [json.loads(line) for line in r.text.splitlines()]


def stored(text: str) -> datetime:
    """A created_at as the test read it from either database."""
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def when(entry: dict[str, Any]) -> datetime:
    text: str = entry["datetime"]
    assert text.endswith("Z")
    return datetime.fromisoformat(text[:-1] + "+00:00")


# -- what an entry says --------------------------------------------------------------------


def test_repository_logs_match_the_table(world: World) -> None:
    logs = get_logs(world, world.repoadmin, f"repository/{world.repo}/logs")["logs"]
    ids = [e["id"] for e in logs]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    rows = {e.id: e for e in entries(world.server, after=min(ids) - 1)}
    for entry in logs:
        row = rows[entry["id"]]
        assert entry["repository"] == world.repo and entry["namespace"] == world.org
        assert entry["kind"] == row.kind
        assert entry["performer"] == {"kind": row.actor_kind, "name": row.actor}
        assert (entry["ip"], entry["user_agent"]) == (row.ip, row.user_agent)
        assert entry["metadata"] == row.details
        assert abs(when(entry) - stored(row.created_at)) < timedelta(milliseconds=1)
    summary = {(e["kind"], e["performer"]["name"]) for e in logs}
    assert {
        ("push", world.oadmin.name),
        ("create_tag", world.oadmin.name),
        ("push", world.repoadmin.name),
        ("move_tag", world.oadmin.name),
        ("pull", world.reader.name),
    } <= summary
    push = next(
        e for e in logs if e["kind"] == "push" and e["performer"]["name"] == world.repoadmin.name
    )
    assert push["ip"] == "127.0.0.1" and push["user_agent"] == "audit-api"
    assert push["metadata"]["tag"] == "v2" and push["metadata"]["digest"].startswith("sha256:")


def test_kinds_filter(world: World) -> None:
    path = f"repository/{world.repo}/logs"
    logs = get_logs(world, world.repoadmin, path, kinds="push, move_tag")["logs"]
    assert {e["kind"] for e in logs} == {"push", "move_tag"}
    assert len([e for e in logs if e["kind"] == "push"]) == 3
    assert status(world, world.repoadmin, path, kinds="push,not_a_kind") == 400
    assert get_logs(world, world.repoadmin, path, kinds="delete_repo")["logs"] == []


def test_pages_follow_each_other(world: World) -> None:
    path = f"repository/{world.repo}/logs"
    everything = get_logs(world, world.repoadmin, path, limit=1000)
    assert everything["next_page"] is None
    assert len(everything["logs"]) >= 7
    paged = walk(world, world.repoadmin, path, limit=2)
    assert [e["id"] for e in paged] == [e["id"] for e in everything["logs"]]
    assert paged == everything["logs"]
    for bad in ({"limit": 0}, {"limit": 1001}, {"next_page": "!!"}, {"next_page": "e30"}):
        assert status(world, world.repoadmin, path, **bad) == 400, bad


def test_time_range(world: World) -> None:
    path = f"repository/{world.repo}/logs"
    newest = get_logs(world, world.repoadmin, path, limit=1)["logs"][0]
    at = when(newest)
    iso = at.isoformat()
    ids = [e["id"] for e in get_logs(world, world.repoadmin, path, starttime=iso)["logs"]]
    assert newest["id"] in ids  # inclusive start
    ids = [e["id"] for e in get_logs(world, world.repoadmin, path, endtime=iso)["logs"]]
    assert newest["id"] not in ids and ids  # exclusive end, older entries remain
    # Quay's dates: one day, whole.
    day = at.strftime("%m/%d/%Y")
    body = get_logs(world, world.repoadmin, path, starttime=day, endtime=day)
    assert newest["id"] in [e["id"] for e in body["logs"]]
    start = datetime(at.year, at.month, at.day, tzinfo=UTC)
    assert body["start_time"] == start.isoformat().replace("+00:00", "Z")
    assert body["end_time"] == (start + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    # A naive time is UTC; an offset is honoured.
    naive = at.replace(tzinfo=None).isoformat()
    shifted = at.astimezone(timezone(timedelta(hours=2))).isoformat()
    for text in (naive, shifted):
        ids = [e["id"] for e in get_logs(world, world.repoadmin, path, starttime=text)["logs"]]
        assert newest["id"] in ids, text
    tomorrow = (at + timedelta(days=1)).date().isoformat()
    assert get_logs(world, world.repoadmin, path, starttime=tomorrow)["logs"] == []
    assert get_logs(world, world.repoadmin, path, endtime="01/01/2000")["logs"] == []
    for bad in (
        {"starttime": "yesterday"},
        {"endtime": "13/45/2024"},
        {"starttime": tomorrow, "endtime": "01/01/2000"},
    ):
        assert status(world, world.repoadmin, path, **bad) == 400, bad


def test_time_parameters() -> None:
    assert parse_time("05/01/2024", end=False) == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_time("05/01/2024", end=True) == datetime(2024, 5, 2, tzinfo=UTC)
    assert parse_time("2024-05-01", end=True) == datetime(2024, 5, 2, tzinfo=UTC)
    assert parse_time("2024-05-01T10:00:00Z", end=True) == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_time("2024-05-01T12:00:00+02:00", end=False) == datetime(
        2024, 5, 1, 10, tzinfo=UTC
    )
    assert decode_page(encode_page(12345)) == 12345


# -- who may read what ---------------------------------------------------------------------


def test_repository_logs_need_repository_admin(world: World) -> None:
    for path in (f"repository/{world.repo}/logs", f"repository/{world.repo}/exportlogs"):
        assert status(world, None, path) == 401
        assert status(world, world.reader, path) == 403  # may read the repository, not its log
        assert status(world, world.narrow, path) == 403  # an admin, with a repo:read token
        assert status(world, world.member, path) == 404  # in the organization, not the repo
        assert status(world, world.padmin, path) == 404  # another organization's admin
        assert status(world, world.alice, path) == 404
        for allowed in (world.repoadmin, world.oadmin, world.su):
            assert status(world, allowed, path) == 200, allowed
    assert status(world, world.repoadmin, f"repository/{world.org}/missing/logs") == 404


def test_organization_logs(world: World) -> None:
    path = f"organization/{world.org}/logs"
    logs = walk(world, world.oadmin, path, limit=1000)
    assert logs and all(e["namespace"] == world.org for e in logs)
    repo_ids = {
        e["id"] for e in get_logs(world, world.oadmin, f"repository/{world.repo}/logs")["logs"]
    }
    assert repo_ids <= {e["id"] for e in logs}
    others = get_logs(world, world.padmin, f"organization/{world.other}/logs")["logs"]
    assert others and all(e["namespace"] == world.other for e in others)
    assert not {e["id"] for e in others} & {e["id"] for e in logs}
    for p in (path, f"organization/{world.org}/exportlogs"):
        assert status(world, None, p) == 401
        assert status(world, world.padmin, p) == 404  # another organization's admin
        assert status(world, world.reader, p) == 404  # a repository reader, not a member
        assert status(world, world.member, p) == 403  # a member, not an administrator
        assert status(world, world.su, p) == 200
    assert status(world, world.oadmin, "organization/no-such-org-here/logs") == 404


def test_user_logs(world: World) -> None:
    alice = world.alice
    logs = walk(world, alice, "user/logs", limit=1000)
    for e in logs:
        mine = e["performer"]["name"] == alice.name and e["performer"]["kind"] in ("user", "token")
        assert mine or e["namespace"] == alice.name, e
    seen = {(e["kind"], e["performer"]["name"], e["repository"]) for e in logs}
    assert ("push", alice.name, f"{alice.name}/own") in seen
    assert ("push", world.su.name, f"{alice.name}/from-admin") in seen  # in her namespace
    assert ("login", alice.name, None) in seen  # her registry login
    assert not [e for e in logs if e["namespace"] == world.org]
    # Another user sees none of hers.
    theirs = walk(world, world.padmin, "user/logs", limit=1000)
    assert not {e["id"] for e in theirs} & {e["id"] for e in logs}
    for p in ("user/logs", "user/exportlogs"):
        assert status(world, None, p) == 401
        assert status(world, world.narrow, p) == 403  # the token lacks user:read


def test_superuser_logs(world: World) -> None:
    logs = get_logs(world, world.su, "superuser/logs", limit=1000, kinds="push")["logs"]
    repos = {e["repository"] for e in logs}
    assert {world.repo, world.other_repo, f"{world.alice.name}/own"} <= repos
    assert {e["kind"] for e in logs} == {"push"}
    for p in ("superuser/logs", "superuser/exportlogs"):
        assert status(world, None, p) == 401
        assert status(world, world.oadmin, p) == 403
        assert status(world, world.su, p) == 200


# -- export --------------------------------------------------------------------------------


def test_export_round_trips(world: World) -> None:
    drain_queue(world.server)
    for who, scope, limit in (
        (world.repoadmin, f"repository/{world.repo}", 3),
        (world.oadmin, f"organization/{world.org}", 3),
        (world.alice, "user", 3),
        (world.su, "superuser", 250),  # the whole shared server's log
    ):
        exported = export(world, who, f"{scope}/exportlogs")
        assert exported, scope
        assert exported == walk(world, who, f"{scope}/logs", limit=limit), scope
    # The filters apply to the export too.
    path = f"repository/{world.repo}"
    pushes = export(world, world.repoadmin, f"{path}/exportlogs", kinds="push")
    assert [e["kind"] for e in pushes] == ["push"] * 3
    assert pushes == get_logs(world, world.repoadmin, f"{path}/logs", kinds="push")["logs"]
    assert export(world, world.repoadmin, f"{path}/exportlogs", endtime="01/01/2000") == []
    assert status(world, world.repoadmin, f"{path}/exportlogs", kinds="nope") == 400


def test_export_spans_many_batches(world: World) -> None:
    """More entries than one export batch (500): written by SQL into a fresh namespace."""
    server = world.server
    org = organization(server, admins=(world.oadmin,))
    now = datetime.now(UTC)
    rows = [
        {
            "created_at": now - timedelta(seconds=i),
            "kind": "pull",
            "actor": world.oadmin.name,
            "namespace": org,
            "repository": f"{org}/bulk",
            "details": json.dumps({"n": i}),
        }
        for i in range(1203)
    ]
    execute(
        server,
        """INSERT INTO audit_log (created_at, kind, actor_kind, actor, namespace, repository,
           ip, user_agent, details) VALUES (:created_at, :kind, 'user', :actor, :namespace,
           :repository, NULL, NULL, :details)""",
        rows,
    )
    exported = export(world, world.oadmin, f"organization/{org}/exportlogs")
    assert len(exported) == 1203
    first = get_logs(world, world.oadmin, f"organization/{org}/logs")
    assert len(first["logs"]) == 100 and first["next_page"]  # the default page
    assert [e["id"] for e in exported] == sorted((e["id"] for e in exported), reverse=True)
    assert exported == walk(world, world.oadmin, f"organization/{org}/logs", limit=1000)


# -- retention -----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def short_retention(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryProcess]:
    env = {
        "CARGOHOLD_AUTH__AUDIT__RETENTION_DAYS": "2",
        "CARGOHOLD_AUTH__AUDIT__RETENTION_CHECK_SECONDS": "0.5",
    }
    data: Path = tmp_path_factory.mktemp(f"registry-retention-{request.param}")
    if request.param == "sqlite":
        server = RegistryProcess(data, env=env).start()
        yield server
        server.stop()
        return
    with temporary_database() as url:
        server = RegistryProcess(data, database_url=url, env=env).start()
        yield server
        server.stop()


def test_retention_deletes_old_entries_in_batches(short_retention: RegistryProcess) -> None:
    server = short_retention
    mark = f"ret/{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    insert = """INSERT INTO audit_log (created_at, kind, actor_kind, actor, namespace,
                repository, ip, user_agent, details) VALUES (:created_at, 'pull', 'anonymous',
                NULL, 'ret', :repository, NULL, NULL, :details)"""
    old = [
        {"created_at": now - timedelta(days=3, seconds=i), "repository": mark, "details": "{}"}
        for i in range(2500)  # more than two batches of 1000
    ]
    recent = [
        {"created_at": now - timedelta(days=1, hours=23), "repository": mark, "details": '{"k":1}'}
        for _ in range(3)
    ]
    execute(server, insert, old + recent)
    count = "SELECT COUNT(*) FROM audit_log WHERE repository = :r"
    deadline = time.monotonic() + 60
    while query(server, count, r=mark)[0][0] > len(recent) and time.monotonic() < deadline:
        time.sleep(0.2)
    # The old rows went, over several batches; the younger ones stay.
    left = query(server, "SELECT details FROM audit_log WHERE repository = :r", r=mark)
    assert [json.loads(row[0]) for row in left] == [{"k": 1}] * 3
