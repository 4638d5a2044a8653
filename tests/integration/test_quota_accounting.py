"""Storage accounting and quotas (docs/quotas.md), stars and the repository search, over
HTTP against real servers on SQLite and on PostgreSQL.

- Concurrent pushes sharing layers across repositories of one namespace and across
  namespaces (with mounts and blob deletes among them): the figures kept on every link
  equal both a recalculation from scratch (`cargohold quota recalculate --check`) and what
  the test itself knows it stored.
- The hard limit refuses a blob upload (monolithic, chunked) and a mount with DENIED
  naming the quota, and leaves no link; the warning is recorded once per crossing.
- The quota API's permissions and shape; usage on repository and organization views.
- Stars, the starred filter and the search, with keyset pages."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from cargohold.web.api.users import iso
from tests.api_v1.access_helpers import (
    Person,
    add_team,
    admin_api,
    api,
    api_error,
    new_org,
    ok,
    person,
    v2,
)
from tests.support.audit import (
    assert_logged,
    database_url,
    entries,
    execute,
    last_id,
    query,
)
from tests.support.identity import unique_name
from tests.support.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    push_blob,
    sha256,
)
from tests.support.postgres import temporary_database
from tests.support.server import REPO_ROOT, RegistryProcess

KiB = 1024


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryProcess]:
    """A server of its own, so that the whole database's figures are this module's."""
    data = tmp_path_factory.mktemp(f"quota-{request.param}")
    if request.param == "sqlite":
        process = RegistryProcess(data).start()
        yield process
        process.stop()
        return
    with temporary_database() as url:
        process = RegistryProcess(data, database_url=url).start()
        yield process
        process.stop()


def recalculate(server: RegistryProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cargohold", "quota", "recalculate", *args],
        cwd=REPO_ROOT,
        env=server.environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_figures_agree(server: RegistryProcess) -> None:
    checked = recalculate(server, "--check")
    assert checked.returncode == 0, (checked.stdout, checked.stderr)
    assert "agree" in checked.stdout


def namespace_used(server: RegistryProcess, name: str) -> int:
    return int(query(server, "SELECT used_bytes FROM namespace WHERE name = :n", n=name)[0][0])


def repository_used(server: RegistryProcess, name: str) -> int:
    return int(query(server, "SELECT used_bytes FROM repository WHERE name = :n", n=name)[0][0])


def push_image(client: httpx.Client, repo: str, tag: str, layers: list[bytes]) -> list[bytes]:
    """Config + `layers` + manifest; the blobs pushed (config and layers)."""
    config = f'{{"repo": "{repo}", "tag": "{tag}"}}'.encode()
    for data in [config, *layers]:
        push_blob(client, repo, data)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, data) for data in layers],
    }
    r = client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201, r.text
    return [config, *layers]


def total(blobs: list[bytes]) -> int:
    return sum(len(b) for b in blobs)


def set_quota(
    server: RegistryProcess, namespace: str, limit: int, percent: int | None = None
) -> Any:
    body: dict[str, Any] = {"limit_bytes": limit}
    if percent is not None:
        body["warning_percent"] = percent
    with admin_api(server) as c:
        return ok(c.put(f"/superuser/namespaces/{namespace}/quota", json=body))


# -- accounting under concurrency ----------------------------------------------------------


def test_concurrent_pushes_keep_exact_figures(server: RegistryProcess) -> None:
    orgs = [new_org(server, "qa"), new_org(server, "qb")]
    shared = [os.urandom(6 * KiB), os.urandom(9 * KiB)]  # in every image of both orgs
    threads, images = 6, 6
    # What the test stored: blob bytes per repository, and per namespace (distinct blobs).
    stored: dict[str, dict[str, int]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def remember(repo: str, blobs: list[bytes]) -> None:
        with lock:
            held = stored.setdefault(repo, {})
            for data in blobs:
                held[sha256(data)] = len(data)

    def forget(repo: str, data: bytes) -> None:
        with lock:
            stored[repo].pop(sha256(data))

    def pusher(k: int) -> None:
        try:
            with server.client() as c:
                for i in range(images):
                    org = orgs[(k + i) % 2]
                    repo = f"{org}/app{(k + i) % 3}"
                    own = os.urandom(KiB + k * 100 + i)
                    remember(repo, push_image(c, repo, f"t{k}-{i}", [*shared, own]))
                    # A blob pushed and deleted again (no manifest holds it): unlinked.
                    loose = os.urandom(2 * KiB + k)
                    digest = push_blob(c, repo, loose)
                    remember(repo, [loose])
                    r = c.delete(f"/v2/{repo}/blobs/{digest}")
                    assert r.status_code == 202, r.text
                    forget(repo, loose)
                    # Mounts of a shared layer into repositories of the other org, and
                    # deletes of those links, racing with the other threads' (the last
                    # link of a blob in a namespace going while another one comes).
                    target = f"{orgs[(k + i + 1) % 2]}/mounted{k % 2}"
                    mount(c, target, repo)
                    r = c.delete(f"/v2/{target}/blobs/{sha256(shared[0])}")
                    assert r.status_code in (202, 404), r.text
                    mount(c, target, repo)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def mount(c: httpx.Client, target: str, source: str) -> None:
        r = c.post(
            f"/v2/{target}/blobs/uploads/",
            params={"mount": sha256(shared[0]), "from": source},
        )
        assert r.status_code == 201, r.text

    workers = [threading.Thread(target=pusher, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    with server.client() as c:  # whoever deleted last, every mounted repository holds it
        for org in orgs:
            for n in (0, 1):
                mount(c, f"{org}/mounted{n}", f"{org}/app0")
                remember(f"{org}/mounted{n}", [shared[0]])

    assert_figures_agree(server)
    for repo, blobs in stored.items():
        assert repository_used(server, repo) == sum(blobs.values()), repo
    for org in orgs:
        distinct: dict[str, int] = {}
        for repo, blobs in stored.items():
            if repo.startswith(f"{org}/"):
                distinct.update(blobs)
        assert namespace_used(server, org) == sum(distinct.values()), org
        # Each shared layer counts once in the namespace although every repository holds it.
        assert sum(distinct.values()) < sum(
            sum(b.values()) for r, b in stored.items() if r.startswith(f"{org}/")
        )
        with admin_api(server) as c:
            [quota] = ok(c.get(f"/organization/{org}/quota"))
            assert quota["used_bytes"] == sum(distinct.values())
            assert quota["limit_bytes"] is None
            view = ok(c.get(f"/organization/{org}"))
            assert view["used_bytes"] == sum(distinct.values())
            assert view["quota_report"]["quota_bytes"] == sum(distinct.values())
    with admin_api(server) as c:
        repo = f"{orgs[0]}/app0"
        shown = ok(c.get(f"/repository/{repo}"))
        assert shown["size"] == sum(stored[repo].values())
        assert shown["quota_report"] == {
            "quota_bytes": sum(stored[repo].values()),
            "configured_quota": None,
        }


def test_recalculation_reports_and_repairs_wrong_figures(server: RegistryProcess) -> None:
    org = new_org(server, "qfix")
    repo = f"{org}/app"
    with server.client() as c:
        size = total(push_image(c, repo, "v1", [os.urandom(3 * KiB)]))
    assert_figures_agree(server)
    execute(
        server, "UPDATE repository SET used_bytes = used_bytes + 7 WHERE name = :n", [{"n": repo}]
    )
    execute(server, "UPDATE namespace SET used_bytes = 1 WHERE name = :n", [{"n": org}])
    execute(
        server,
        """UPDATE namespace_blob SET links = links + 1 WHERE namespace_id =
           (SELECT id FROM namespace WHERE name = :n)""",
        [{"n": org}],
    )
    checked = recalculate(server, "--check")
    assert checked.returncode == 1, (checked.stdout, checked.stderr)
    assert f"repository {repo}: stored {size + 7}, recalculated {size}" in checked.stdout
    assert f"namespace {org}: stored 1, recalculated {size}" in checked.stdout
    assert f"namespace_blob {org}: 2 blob reference counts differ" in checked.stdout
    assert repository_used(server, repo) == size + 7  # --check changes nothing
    fixed = recalculate(server)
    assert fixed.returncode == 0, (fixed.stdout, fixed.stderr)
    assert "corrected 3 figures" in fixed.stdout
    assert repository_used(server, repo) == size
    assert namespace_used(server, org) == size
    assert_figures_agree(server)


# -- the hard limit ------------------------------------------------------------------------


def denied_for_quota(r: httpx.Response, namespace: str, limit: str) -> None:
    assert r.status_code == 403, r.text
    assert error_codes(r) == ["DENIED"]
    message = r.json()["errors"][0]["message"]
    assert message.startswith(f"namespace {namespace} is over its quota of {limit}: "), message


def test_hard_limit_refuses_uploads_and_mounts(server: RegistryProcess) -> None:
    org, other = new_org(server, "qlim"), new_org(server, "qsrc")
    repo = f"{org}/app"
    quota = set_quota(server, org, 64 * KiB)
    assert quota[0]["limit_bytes"] == 64 * KiB and quota[0]["limit"] == "64.0 KiB"
    first, second = os.urandom(40 * KiB), os.urandom(40 * KiB)
    mark = last_id(server)
    with server.client() as c:
        push_blob(c, repo, first)
        used = namespace_used(server, org)
        assert used == 40 * KiB
        # Monolithic POST of a blob that would pass the limit.
        r = c.post(
            f"/v2/{repo}/blobs/uploads/",
            params={"digest": sha256(second)},
            content=second,
            headers={"Content-Type": "application/octet-stream"},
        )
        denied_for_quota(r, org, "64.0 KiB")
        assert "40.0 KiB more would bring its usage to 80.0 KiB" in r.json()["errors"][0]["message"]
        # POST, PATCH, PUT: refused at the PUT that publishes it.
        start = c.post(f"/v2/{repo}/blobs/uploads/")
        assert start.status_code == 202
        location = start.headers["Location"]
        r = c.patch(location, content=second, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 202, r.text
        r = c.put(location, params={"digest": sha256(second)})
        denied_for_quota(r, org, "64.0 KiB")
        # Nothing half-done: no link, the usage unchanged, the upload spent.
        assert c.head(f"/v2/{repo}/blobs/{sha256(second)}").status_code == 404
        assert c.get(location).status_code == 404
        assert namespace_used(server, org) == used
        # The same bytes again in another repository of the namespace add nothing: allowed.
        push_blob(c, f"{org}/copy", first)
        assert namespace_used(server, org) == used
        # A mount from another namespace that would pass the limit.
        push_blob(c, f"{other}/src", second)
        r = c.post(
            f"/v2/{org}/mounted/blobs/uploads/",
            params={"mount": sha256(second), "from": f"{other}/src"},
        )
        denied_for_quota(r, org, "64.0 KiB")
        assert c.head(f"/v2/{org}/mounted/blobs/{sha256(second)}").status_code == 404
    with admin_api(server) as c:
        api_error(c.get(f"/repository/{org}/mounted"), 404)  # the refused mount created nothing
    logged = assert_logged(
        server,
        "quota_exceeded",
        actor="admin",
        namespace=org,
        repository=f"{org}/mounted",
        details={"quota_bytes": 64 * KiB, "used_bytes": used, "requested_bytes": 40 * KiB},
        after=mark,
    )
    assert logged.actor_kind == "user"
    assert len(entries(server, "quota_exceeded", after=mark)) == 3
    # Raising the limit lets the same push through.
    set_quota(server, org, 128 * KiB)
    with server.client() as c:
        push_blob(c, repo, second)
    assert namespace_used(server, org) == 80 * KiB
    assert_figures_agree(server)


def test_warning_is_recorded_once_per_crossing(server: RegistryProcess) -> None:
    org = new_org(server, "qwarn")
    repo = f"{org}/app"
    set_quota(server, org, 100 * KiB, percent=50)
    blobs = [os.urandom(30 * KiB), os.urandom(30 * KiB), os.urandom(10 * KiB)]
    mark = last_id(server)
    with server.client() as c, admin_api(server) as a:
        push_blob(c, repo, blobs[0])  # 30 %
        assert ok(a.get(f"/organization/{org}/quota"))[0]["warned_at"] is None
        push_blob(c, repo, blobs[1])  # 60 %: crosses 50 %
        warned = ok(a.get(f"/organization/{org}/quota"))[0]
        assert warned["warned_at"] is not None
        assert warned["limits"] == [
            {"type": "Warning", "limit_percent": 50},
            {"type": "Reject", "limit_percent": 100},
        ]
        push_blob(c, repo, blobs[2])  # 70 %: still above, no second warning
        assert_logged(
            server,
            "quota_warning",
            actor="admin",
            namespace=org,
            repository=repo,
            details={"used_bytes": 60 * KiB, "quota_bytes": 100 * KiB, "warning_percent": 50},
            after=mark,
        )
        assert len(entries(server, "quota_warning", after=mark)) == 1
        # Back below the threshold: the mark is cleared; the next crossing warns again.
        for data in blobs[1:]:
            assert c.delete(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 202
        assert ok(a.get(f"/organization/{org}/quota"))[0]["warned_at"] is None
        push_blob(c, repo, blobs[1])
        assert len(entries(server, "quota_warning", after=mark)) == 2
        # Lowering the quota under the usage warns at once (by the superuser who did it).
        for data in blobs[:2]:
            assert c.delete(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 202
        assert ok(a.get(f"/organization/{org}/quota"))[0]["warned_at"] is None
        push_blob(c, repo, blobs[2])  # 10 KiB: 10 %
        changed = set_quota(server, org, 16 * KiB, percent=50)[0]
        assert changed["warned_at"] is not None
        assert len(entries(server, "quota_warning", after=mark)) == 3
    assert_figures_agree(server)


def test_default_quota_from_the_settings(tmp_path: Path) -> None:
    process = RegistryProcess(
        tmp_path,
        env={
            "CARGOHOLD_QUOTA__DEFAULT_BYTES": str(32 * KiB),
            "CARGOHOLD_QUOTA__DEFAULT_WARNING_PERCENT": "75",
        },
    ).start()
    try:
        org = new_org(process, "qdef")
        with admin_api(process) as a:
            [quota] = ok(a.get(f"/organization/{org}/quota"))
            assert quota["limit_bytes"] == 32 * KiB and quota["default_config"] is True
            assert quota["limits"][0] == {"type": "Warning", "limit_percent": 75}
        with process.client() as c:
            push_blob(c, f"{org}/app", os.urandom(20 * KiB))
            r = c.post(
                f"/v2/{org}/app/blobs/uploads/",
                params={"digest": sha256(big := os.urandom(20 * KiB))},
                content=big,
            )
            denied_for_quota(r, org, "32.0 KiB")
        # A namespace's own quota overrides the default; clearing it brings it back.
        set_quota(process, org, 64 * KiB)
        with process.client() as c:
            push_blob(c, f"{org}/app", big)
        with admin_api(process) as a:
            r = a.delete(f"/superuser/namespaces/{org}/quota")
            assert r.status_code == 204
            [quota] = ok(a.get(f"/organization/{org}/quota"))
            assert quota["limit_bytes"] == 32 * KiB and quota["used_bytes"] == 40 * KiB
    finally:
        process.stop()


# -- the quota API -------------------------------------------------------------------------


def test_quota_api_permissions_and_audit(server: RegistryProcess) -> None:
    org = new_org(server, "qapi")
    member, admin, outsider = person(server, "qm"), person(server, "qad"), person(server, "qo")
    add_team(server, org, "readers", "member", member.name)
    add_team(server, org, "owners2", "admin", admin.name)
    mark = last_id(server)
    with api(server, member.token) as c:
        [quota] = ok(c.get(f"/organization/{org}/quota"))
        assert quota["limit_bytes"] is None and quota["used_bytes"] == 0
        api_error(c.put(f"/organization/{org}/quota", json={"limit_bytes": 1}), 403)
        [mine] = ok(c.get("/user/quota"))
        assert mine["used_bytes"] == 0
    with api(server, outsider.token) as c:
        api_error(c.get(f"/organization/{org}/quota"), 404)
    with api(server, admin.token) as c:  # an organization admin is no superuser
        api_error(c.put(f"/organization/{org}/quota", json={"limit_bytes": 1}), 403)
        api_error(c.delete(f"/organization/{org}/quota"), 403)
        api_error(c.put(f"/superuser/namespaces/{org}/quota", json={"limit_bytes": 1}), 403)
    with api(server) as c:
        api_error(c.get("/user/quota"), 401)
    with admin_api(server) as c:
        [quota] = ok(c.put(f"/organization/{org}/quota", json={"limit_bytes": 10 * 1024 * KiB}))
        assert quota["limit"] == "10.0 MiB" and quota["default_config"] is False
        assert quota["limits"] == [
            {"type": "Warning", "limit_percent": 80},
            {"type": "Reject", "limit_percent": 100},
        ]
        assert_logged(
            server,
            "change_quota",
            actor="admin",
            namespace=org,
            details={"limit_bytes": 10 * 1024 * KiB, "superuser": True, "old_limit_bytes": None},
            after=mark,
        )
        # A user's own namespace, through the superuser's path.
        ok(c.put(f"/superuser/namespaces/{member.name}/quota", json={"limit_bytes": 5 * KiB}))
        [user_quota] = ok(c.get(f"/superuser/namespaces/{member.name}/quota"))
        assert user_quota["limit_bytes"] == 5 * KiB
        # Bad bodies, unknown names; a user's namespace is no organization.
        api_error(c.put(f"/organization/{org}/quota", json={"limit_bytes": -1}), 400)
        body = {"limit_bytes": 1, "warning_percent": 0}
        api_error(c.put(f"/organization/{org}/quota", json=body), 400)
        api_error(c.put(f"/organization/{org}/quota", json={"limit": "1 GiB"}), 400)
        missing = unique_name("none")
        api_error(c.put(f"/superuser/namespaces/{missing}/quota", json={"limit_bytes": 1}), 404)
        api_error(c.put(f"/organization/{member.name}/quota", json={"limit_bytes": 1}), 404)
        assert c.delete(f"/organization/{org}/quota").status_code == 204
        [cleared] = ok(c.get(f"/organization/{org}/quota"))
        assert cleared["limit_bytes"] is None and cleared["limits"][0]["limit_percent"] == 80
        assert_logged(
            server,
            "delete_quota",
            actor="admin",
            namespace=org,
            details={"limit_bytes": None, "old_limit_bytes": 10 * 1024 * KiB},
            after=mark,
        )
    with api(server, member.token) as c:
        [mine] = ok(c.get("/user/quota"))
        assert mine["limit_bytes"] == 5 * KiB
    # The user's quota binds the user's own pushes.
    with v2(server, member.auth) as c:
        push_blob(c, f"{member.name}/app", os.urandom(4 * KiB))
        r = c.post(
            f"/v2/{member.name}/app/blobs/uploads/",
            params={"digest": sha256(data := os.urandom(2 * KiB))},
            content=data,
        )
        denied_for_quota(r, member.name, "5.0 KiB")
    assert_logged(server, "quota_exceeded", actor=member.name, namespace=member.name, after=mark)


# -- stars and search ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def alice(server: RegistryProcess) -> Person:
    return person(server, "qstar")


def full_names(found: list[dict[str, Any]]) -> list[str]:
    names = []
    for r in found:
        namespace = r["namespace"]["name"] if isinstance(r["namespace"], dict) else r["namespace"]
        names.append(f"{namespace}/{r['name']}")
    return names


def listed(c: httpx.Client, path: str, key: str = "repositories", **params: Any) -> list[str]:
    return full_names(ok(c.get(path, params=params))[key])


def test_stars(server: RegistryProcess, alice: Person) -> None:
    org = new_org(server, "qso")
    private_other = f"{org}/hidden"
    with admin_api(server) as c:
        ok(c.post("/repository", json={"namespace": org, "repository": "hidden"}), 201)
        ok(
            c.post(
                "/repository",
                json={"namespace": org, "repository": "open", "visibility": "public"},
            ),
            201,
        )
    mine = [f"{alice.name}/one", f"{alice.name}/two"]
    with v2(server, alice.auth) as c:
        size = total(push_image(c, mine[0], "v1", [os.urandom(2 * KiB)]))
        push_blob(c, mine[1], os.urandom(KiB))
    mark = last_id(server)
    with api(server, alice.token) as c:
        for ns, name in [(alice.name, "one"), (org, "open")]:
            created = ok(c.post("/user/starred", json={"namespace": ns, "repository": name}), 201)
            assert created == {"namespace": ns, "repository": name}
        ok(c.post("/user/starred", json={"namespace": org, "repository": "open"}), 201)  # again
        assert len(entries(server, "star_repo", after=mark)) == 2
        assert_logged(server, "star_repo", actor=alice.name, repository=f"{org}/open", after=mark)
        # What alice cannot read cannot be starred, exactly as if it did not exist.
        api_error(c.post("/user/starred", json={"namespace": org, "repository": "hidden"}), 404)
        api_error(c.post("/user/starred", json={"namespace": org, "repository": "nope"}), 404)
        api_error(c.post("/user/starred", json={"namespace": "Bad Name", "repository": "x"}), 404)
        assert listed(c, "/user/starred") == sorted([mine[0], f"{org}/open"])
        assert listed(c, "/repository", starred="true") == sorted([mine[0], f"{org}/open"])
        page = ok(c.get("/repository", params={"namespace": alice.name}))["repositories"]
        assert [(r["name"], r["is_starred"]) for r in page] == [("one", True), ("two", False)]
        assert page[0]["size"] == size and page[0]["last_modified"] is not None
        assert page[1]["size"] == KiB and page[1]["last_modified"] is None  # no manifest yet
        first = ok(c.get("/user/starred", params={"limit": 1}))
        assert len(first["repositories"]) == 1 and "next_page" in first
        rest = ok(c.get("/user/starred", params={"next_page": first["next_page"]}))
        assert full_names(first["repositories"] + rest["repositories"]) == sorted(
            [mine[0], f"{org}/open"]
        )
        assert c.delete(f"/user/starred/{org}/open").status_code == 204
        assert c.delete(f"/user/starred/{org}/open").status_code == 204  # idempotent
        assert c.delete(f"/user/starred/{private_other}").status_code == 204  # never starred
        assert listed(c, "/user/starred") == [mine[0]]
        assert_logged(server, "unstar_repo", actor=alice.name, repository=f"{org}/open", after=mark)
        assert len(entries(server, "unstar_repo", after=mark)) == 1
    with api(server) as c:
        api_error(c.get("/repository", params={"starred": "true"}), 400)
        api_error(c.get("/user/starred"), 401)


def test_search(server: RegistryProcess, alice: Person) -> None:
    org = new_org(server, "qse")
    word = unique_name("needle")  # unique to this test
    with admin_api(server) as c:
        for name, visibility, description in [
            (f"{word}-a", "public", ""),
            ("plain", "public", f"All about {word.upper()} here"),
            (f"{word}-private", "private", ""),
            ("other", "public", "nothing to see"),
        ]:
            body = {
                "namespace": org,
                "repository": name,
                "visibility": visibility,
                "description": description,
            }
            ok(c.post("/repository", json=body), 201)
        found = listed(c, "/find/repositories", key="results", query=word)
        assert found == sorted([f"{org}/{word}-a", f"{org}/plain", f"{org}/{word}-private"])
        result = ok(c.get("/find/repositories", params={"query": f"{word}-a"}))["results"][0]
        assert result["kind"] == "repository"
        assert result["namespace"] == {"name": org, "kind": "organization"}
        assert result["href"] == f"/repository/{org}/{word}-a"
        assert result["is_public"] is True and result["size"] == 0
    with api(server, alice.token) as c:  # the private one is not alice's to find
        assert listed(c, "/find/repositories", key="results", query=word.upper()) == sorted(
            [f"{org}/{word}-a", f"{org}/plain"]
        )
        first = ok(c.get("/find/repositories", params={"query": word, "limit": 1}))
        assert len(first["results"]) == 1
        second = ok(
            c.get(
                "/find/repositories",
                params={"query": word, "limit": 1, "next_page": first["next_page"]},
            )
        )
        assert "next_page" not in second
        assert full_names(first["results"] + second["results"]) == sorted(
            [f"{org}/{word}-a", f"{org}/plain"]
        )
        # Wildcards are taken literally.
        assert listed(c, "/find/repositories", key="results", query=f"{word[:4]}%") == []
        assert listed(c, "/find/repositories", key="results", query="_") == []
        api_error(c.get("/find/repositories", params={"query": ""}), 400)
        api_error(c.get("/find/repositories"), 400)
        api_error(c.get("/find/repositories", params={"query": word, "next_page": "%%%"}), 400)
    with api(server) as c:  # anonymous: public ones
        assert listed(c, "/find/repositories", key="results", query=word) == sorted(
            [f"{org}/{word}-a", f"{org}/plain"]
        )


def test_deleted_repositories_never_show(server: RegistryProcess, alice: Person) -> None:
    word = unique_name("gone")
    repo = f"{alice.name}/{word}"
    with v2(server, alice.auth) as c:
        push_image(c, repo, "v1", [os.urandom(KiB)])
    with api(server, alice.token) as c:
        ok(c.post("/user/starred", json={"namespace": alice.name, "repository": word}), 201)
        assert repo in listed(c, "/user/starred")
        assert c.delete(f"/repository/{repo}").status_code == 204
        assert repo not in listed(c, "/user/starred")
        assert repo not in listed(c, "/repository", namespace=alice.name)
        assert all(word not in r for r in listed(c, "/repository", namespace=alice.name))
        assert listed(c, "/find/repositories", key="results", query=word) == []


# -- review fixes: bad input, last_modified, early refusal, snapshot check, visibility -------


def page_token(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_nul_and_undecodable_input_is_a_400(server: RegistryProcess, alice: Person) -> None:
    """PostgreSQL cannot take NUL in a text parameter: refused before any query."""
    with api(server, alice.token) as c:
        for path, params in [
            ("/find/repositories", {"query": "a\x00b"}),
            ("/find/repositories", {"query": "a", "next_page": page_token("a\x00")}),
            ("/find/repositories", {"query": "a", "next_page": page_token(b"\xff\xfe")}),
            ("/repository", {"next_page": page_token("a\x00")}),
            ("/repository", {"last": "a\x00"}),
            ("/repository", {"next_page": page_token(b"\xed\xa0\x80")}),  # a surrogate
            ("/user/starred", {"next_page": page_token("\x00")}),
        ]:
            body = api_error(c.get(path, params=params), 400)
            assert "NUL" in json.dumps(body) or "page token" in json.dumps(body), body


def changed_at(server: RegistryProcess, repo: str) -> datetime | None:
    [(value,)] = query(server, "SELECT changed_at FROM repository WHERE name = :n", n=repo)
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)  # SQLite: naive UTC text


def shown_last_modified(server: RegistryProcess, repo: str) -> set[str | None]:
    """`last_modified` as the list, the search and the repository's view show it."""
    namespace, name = repo.split("/", 1)
    with admin_api(server) as c:
        listed = ok(c.get("/repository", params={"namespace": namespace}))["repositories"]
        found = ok(c.get("/find/repositories", params={"query": repo}))["results"]
        view = ok(c.get(f"/repository/{repo}"))
    [in_list] = [r["last_modified"] for r in listed if r["name"] == name]
    [in_search] = [r["last_modified"] for r in found if r["name"] == name]
    return {in_list, in_search, view["last_modified"]}


def test_last_modified_is_the_last_push_or_tag_change(server: RegistryProcess) -> None:
    """repository.changed_at, set in the transaction of every manifest push that stores a
    manifest or points a tag, every tag change (registry, API, expiry job) and every
    manifest delete, is what the list, the search and the view show."""
    org = new_org(server, "qlm")
    repo = f"{org}/app"
    steps: list[datetime] = []

    def changed() -> None:
        at = changed_at(server, repo)
        assert at is not None
        assert not steps or at > steps[-1]
        steps.append(at)
        assert shown_last_modified(server, repo) == {iso(at)}

    with server.client() as c:
        push_blob(c, repo, os.urandom(KiB))
        assert changed_at(server, repo) is None  # a blob is no change of content
        assert shown_last_modified(server, repo) == {None}
        first = push_image(c, repo, "v1", [os.urandom(KiB)])
        changed()
        manifest = c.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        digest = manifest.headers["Docker-Content-Digest"]
        # The same manifest and tag again change nothing.
        r = c.put(
            f"/v2/{repo}/manifests/v1",
            content=manifest.content,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert r.status_code == 201
        assert changed_at(server, repo) == steps[-1]
        # A tag deleted through the registry (the old list showed the tag's start still).
        assert c.delete(f"/v2/{repo}/manifests/v1").status_code == 202
        changed()
    with admin_api(server) as a:
        ok(a.put(f"/repository/{repo}/tag/v2", json={"manifest_digest": digest}), 201)
        changed()
        assert a.delete(f"/repository/{repo}/tag/v2").status_code == 204
        changed()
        restore = {"manifest_digest": digest}
        ok(a.post(f"/repository/{repo}/tag/v2/restore", json=restore))
        changed()
        soon = int(time.time()) + 2
        ok(a.put(f"/repository/{repo}/tag/v2", json={"expiration": soon}))
    # The expiry job ends the tag (tags.expiry_check_seconds: every second).
    deadline = time.monotonic() + 60
    while query(
        server,
        """SELECT COUNT(*) FROM tag t JOIN repository r ON r.id = t.repository_id
           WHERE r.name = :n AND t.name = 'v2' AND t.ended_at IS NULL""",
        n=repo,
    )[0][0]:
        assert time.monotonic() < deadline, "the expiry job did not end the tag"
        time.sleep(0.2)
    changed()
    with server.client() as c:
        push_image(c, repo, "v3", first[1:])  # a new manifest (new config), tagged
        changed()
        assert c.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
        changed()


def blob_row(server: RegistryProcess, data: bytes) -> bool:
    return bool(query(server, "SELECT 1 FROM blob WHERE digest = :d", d=sha256(data)))


def blob_file(server: RegistryProcess, data: bytes) -> Path:
    hexdigest = sha256(data).split(":", 1)[1]
    return server.data_dir / "storage" / "blobs" / "sha256" / hexdigest[:2] / hexdigest


def test_quota_refuses_before_bytes_reach_blob_storage(server: RegistryProcess) -> None:
    """A blob the namespace cannot take is refused before its bytes move to the blob's
    key (no blob row, no file for the collector); appends to a namespace at its limit
    are refused before they are written; a blob it holds already, or an empty one, is
    never refused."""
    org, other = new_org(server, "qearly"), new_org(server, "qearlysrc")
    repo = f"{org}/app"
    held = os.urandom(900)
    empty = b""
    mark = last_id(server)
    with server.client() as c:
        push_blob(c, repo, held)
        set_quota(server, org, 1000)
        # Monolithic: refused, nothing stored under the digest.
        big = os.urandom(5000)
        r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(big)}, content=big)
        denied_for_quota(r, org, "1000 bytes")
        assert not blob_row(server, big) and not blob_file(server, big).exists()
        # Chunked: the PATCH is taken (the namespace is under its limit), the PUT refused
        # before the bytes move; the upload is spent.
        chunked = os.urandom(3000)
        location = c.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        assert c.patch(location, content=chunked).status_code == 202
        r = c.put(location, params={"digest": sha256(chunked)})
        denied_for_quota(r, org, "1000 bytes")
        assert "2.9 KiB more would bring its usage to 3.8 KiB" in r.json()["errors"][0]["message"]
        assert not blob_row(server, chunked) and not blob_file(server, chunked).exists()
        assert c.get(location).status_code == 404
        # Over the limit: a new upload may start, but its bytes are refused at once.
        set_quota(server, org, 500)
        location = c.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        r = c.patch(location, content=os.urandom(100))
        denied_for_quota(r, org, "500 bytes")
        assert "its usage is 900 bytes" in r.json()["errors"][0]["message"]
        status = c.get(location)
        assert status.status_code == 204 and status.headers["Range"] == "0-0"  # nothing kept
        # What the namespace holds, and empty blobs, still link anywhere in it.
        for target in (repo, f"{org}/copy"):
            push_blob(c, target, empty)
        push_blob(c, f"{org}/copy", held)
        push_blob(c, f"{other}/src", empty)
        r = c.post(
            f"/v2/{org}/mounted/blobs/uploads/",
            params={"mount": sha256(empty), "from": f"{other}/src"},
        )
        assert r.status_code == 201, r.text
    assert namespace_used(server, org) == 900
    # Queued entries (the refusing transaction is gone): wait for the last one.
    assert_logged(
        server,
        "quota_exceeded",
        namespace=org,
        details={"quota_bytes": 500, "used_bytes": 900, "requested_bytes": None},
        after=mark,
    )
    refused = entries(server, "quota_exceeded", after=mark)
    assert [e.details["requested_bytes"] for e in refused] == [5000, 3000, None]
    assert_figures_agree(server)


@contextmanager
def writer_waiting(server: RegistryProcess) -> Iterator[None]:
    """A write transaction held open on the server's database: on SQLite the write lock,
    on PostgreSQL a lock on repository_blob that a SHARE lock would wait for."""
    url = database_url(server)
    if url.startswith("sqlite:"):
        lite = sqlite3.connect(url.split("///", 1)[1], timeout=30, isolation_level=None)
        try:
            lite.execute("BEGIN IMMEDIATE")
            lite.execute("UPDATE namespace SET used_bytes = used_bytes WHERE id < 0")
            yield
        finally:
            lite.execute("ROLLBACK")
            lite.close()
        return
    with psycopg.connect(url.replace("postgresql+psycopg:", "postgresql:")) as pg:
        pg.execute("LOCK TABLE repository_blob IN ROW EXCLUSIVE MODE")
        try:
            yield
        finally:
            pg.rollback()


def test_recalculate_check_waits_for_no_writer(server: RegistryProcess) -> None:
    """--check reads one snapshot: it neither takes the SQLite write lock nor locks
    repository_blob on PostgreSQL, so it runs while a write transaction is open (and
    pushes go on while it runs)."""
    with writer_waiting(server):
        # Without the snapshot it would wait for the writer: 3 x busy_timeout on SQLite,
        # the lock timeout below on PostgreSQL, and then fail.
        checked = subprocess.run(
            [sys.executable, "-m", "cargohold", "quota", "recalculate", "--check"],
            cwd=REPO_ROOT,
            env={**server.environment(), "PGOPTIONS": "-c lock_timeout=5000"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert checked.returncode == 0, (checked.stdout, checked.stderr)
    assert "agree" in checked.stdout


def test_quota_limit_must_be_a_json_integer(server: RegistryProcess) -> None:
    org = new_org(server, "qstrict")
    with admin_api(server) as c:
        for body in [
            {"limit_bytes": True},
            {"limit_bytes": "10"},
            {"limit_bytes": 10.0},
            {"limit_bytes": 10, "warning_percent": True},
            {"limit_bytes": 10, "warning_percent": "50"},
        ]:
            api_error(c.put(f"/organization/{org}/quota", json=body), 400)
        [quota] = ok(c.get(f"/organization/{org}/quota"))
        assert quota["limit_bytes"] is None


def test_only_members_see_the_namespace_limit(server: RegistryProcess) -> None:
    """A repository's view shows its size to every reader, its namespace's limit only
    to the namespace's members (as GET .../quota), superusers and the user whose
    namespace it is."""
    org = new_org(server, "qvis")
    member, outsider = person(server, "qvm"), person(server, "qvo")
    add_team(server, org, "readers", "member", member.name)
    with admin_api(server) as c:
        ok(
            c.post(
                "/repository", json={"namespace": org, "repository": "pub", "visibility": "public"}
            ),
            201,
        )
    set_quota(server, org, 10 * KiB)
    set_quota(server, member.name, 20 * KiB)
    with v2(server, member.auth) as c:
        push_blob(c, f"{member.name}/own", data := os.urandom(KiB))
    with api(server, member.token) as c:
        ok(
            c.post(
                "/repository",
                json={"namespace": member.name, "repository": "mine", "visibility": "public"},
            ),
            201,
        )

    def report(token: str | None, repo: str) -> dict[str, Any]:
        with api(server, token) as c:
            view = ok(c.get(f"/repository/{repo}"))
        assert view["size"] == view["quota_report"]["quota_bytes"]
        return dict(view["quota_report"])

    limited = {"quota_bytes": 0, "configured_quota": 10 * KiB}
    assert report(None, f"{org}/pub") == {"quota_bytes": 0}
    assert report(outsider.token, f"{org}/pub") == {"quota_bytes": 0}
    assert report(member.token, f"{org}/pub") == limited
    with admin_api(server) as c:
        assert dict(ok(c.get(f"/repository/{org}/pub"))["quota_report"]) == limited
    assert report(member.token, f"{member.name}/own") == {
        "quota_bytes": len(data),
        "configured_quota": 20 * KiB,
    }
    assert report(outsider.token, f"{member.name}/mine") == {"quota_bytes": 0}


def test_search_folds_case_beyond_ascii(server: RegistryProcess) -> None:
    org = new_org(server, "qfold")
    word = unique_name("w")
    with admin_api(server) as c:
        body = {
            "namespace": org,
            "repository": "school",
            "visibility": "public",
            "description": f"École Supérieure ÆTHER {word}",
        }
        ok(c.post("/repository", json=body), 201)
        for query_text in ["école", "ÉCOLE", "supérieure", "æther", f"ER {word.upper()}"]:
            found = listed(c, "/find/repositories", key="results", query=query_text)
            assert f"{org}/school" in found, query_text
        assert f"{org}/school" not in listed(c, "/find/repositories", key="results", query="ecole")
