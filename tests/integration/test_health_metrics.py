"""Operations endpoints: /health/instance, /health/endtoend, /metrics, and `cargohold
config check --online` (docs/operations.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from cargohold.web.metrics import access_denied, registry_template
from cargohold.web.registry.routes import ROUTES
from tests.support.audit import execute
from tests.support.ldap import LdapServer
from tests.support.oci import sha256, unique_repo
from tests.support.postgres import ADMIN_URL, temporary_database
from tests.support.server import REPO_ROOT, RegistryProcess, free_port

METRICS_TOKEN = "scrape-token-for-tests"
WAIT = 60.0  # seconds a condition may take to come true (never asserted on)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: RegistryProcess, **headers: str) -> Samples:
    r = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {WAIT:g} s")
        time.sleep(0.2)


def endtoend(server: RegistryProcess) -> httpx.Response:
    return httpx.get(f"{server.url}/health/endtoend", timeout=30)


# -- pure rules --------------------------------------------------------------------------


def test_registry_route_labels_are_templates() -> None:
    labels = {registry_template(r.pattern.pattern) for r in ROUTES}
    assert "/v2/{name}/manifests/{reference}" in labels
    assert "/v2/{name}/blobs/uploads/{upload}" in labels
    assert "/v2/" in labels
    for label in labels:
        assert not set(label) & set("()?*+[]\\^$"), label


def test_metrics_access_rule() -> None:
    none: list[tuple[bytes, bytes]] = []
    # No token configured: loopback only, and not through a proxy.
    assert access_denied("127.0.0.1", none, "") is None
    assert access_denied("::1", none, "") is None
    assert access_denied("::ffff:127.0.0.1", none, "") is None
    assert access_denied("10.1.2.3", none, "") == 403
    assert access_denied("2001:db8::1", none, "") == 403
    assert access_denied(None, none, "") == 403
    assert access_denied("127.0.0.1", [(b"x-forwarded-for", b"10.1.2.3")], "") == 403
    assert access_denied("127.0.0.1", [(b"forwarded", b"for=10.1.2.3")], "") == 403
    # A token configured: required from everywhere, loopback included.
    good = [(b"authorization", b"Bearer tok")]
    assert access_denied("10.1.2.3", good, "tok") is None
    assert access_denied("10.1.2.3", [(b"authorization", b"bearer tok")], "tok") is None
    assert access_denied("127.0.0.1", none, "tok") == 401
    assert access_denied("127.0.0.1", [(b"authorization", b"Bearer tok2")], "tok") == 401
    assert access_denied("127.0.0.1", [(b"authorization", b"Basic dG9rOnRvaw==")], "tok") == 401


# -- health, on the shared embedded-default server -----------------------------------------


def test_health_instance(registry: RegistryProcess) -> None:
    r = httpx.get(f"{registry.url}/health/instance")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_health_endtoend_ok(registry: RegistryProcess) -> None:
    r = endtoend(registry)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    assert set(body["services"]) == {"database", "storage"}  # the database provider
    for service in body["services"].values():
        assert service["ok"] is True
        assert service["ms"] >= 0
    assert str(registry.data_dir) not in r.text
    # The storage check left its sentinel, under the layout's health/ prefix.
    assert (registry.data_dir / "storage" / "health" / "sentinel").is_file()


# -- metrics on the shared server: labels, counters, access --------------------------------


def test_metrics_from_loopback_without_token(registry: RegistryProcess) -> None:
    scrape(registry)  # loopback, no token configured
    for header in ({"X-Forwarded-For": "192.0.2.7"}, {"Forwarded": "for=192.0.2.7"}):
        r = httpx.get(f"{registry.url}/metrics", headers=header)
        assert r.status_code == 403


def _upload(c: httpx.Client, repo: str, chunks: list[bytes], digest: str | None = None) -> int:
    """POST, one PATCH per chunk, PUT; the PUT's status."""
    data = b"".join(chunks)
    r = c.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    offset = 0
    for chunk in chunks:
        r = c.patch(
            location,
            content=chunk,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            },
        )
        assert r.status_code == 202, r.text
        offset += len(chunk)
        location = r.headers["Location"]
    r = c.put(location, params={"digest": digest or sha256(data)})
    return r.status_code


def test_metrics_count_requests_uploads_tokens_and_failures(registry: RegistryProcess) -> None:
    repo = unique_repo("metrics")
    before = scrape(registry)
    sent = 0
    with registry.client() as c:
        # A chunked upload that finishes, one whose digest is wrong, a monolithic POST.
        assert _upload(c, repo, [b"a" * 1000, b"b" * 500]) == 201
        sent += 1500
        assert _upload(c, repo, [b"c" * 300], digest=sha256(b"something else")) == 400
        sent += 300
        mono = os.urandom(200)
        r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(mono)}, content=mono)
        assert r.status_code == 201, r.text
        sent += 200
        # A manifest, pulled by tag twice: the second answer comes from the cache.
        config = b"{}"
        r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(config)}, content=config)
        assert r.status_code == 201
        sent += len(config)
        manifest = (
            b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
            b'"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"'
            + sha256(config).encode()
            + b'","size":2},"layers":[]}'
        )
        r = c.put(
            f"/v2/{repo}/manifests/v1",
            content=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.status_code == 201, r.text
        for _ in range(2):
            r = c.get(f"/v2/{repo}/manifests/v1", headers={"Accept": "*/*"})
            assert r.status_code == 200
        # A registry token.
        r = c.get("/v2/auth", params={"service": "cargohold", "scope": f"repository:{repo}:pull"})
        assert r.status_code == 200
    # Credentials that do not verify, on /v2 and on the token endpoint; and an anonymous
    # request, whose 401 is a challenge, not a failure.
    with registry.client(auth=("admin", "not-the-password")) as c:
        assert c.get("/v2/").status_code == 401
        assert c.get("/v2/auth").status_code == 401
    with registry.client(auth=None) as c:
        assert c.get("/v2/").status_code == 401
    after = scrape(registry)  # one worker: the scrape itself moved every figure

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("cargohold_uploads_total", outcome="started") == 4
    assert delta("cargohold_uploads_total", outcome="finished") == 3
    assert delta("cargohold_uploads_total", outcome="failed") == 1
    assert delta("cargohold_upload_bytes_total") == sent
    assert delta("cargohold_tokens_issued_total", kind="registry") == 1
    assert delta("cargohold_auth_failures_total", surface="registry") == 2
    assert delta("cargohold_metadata_cache_lookups_total", cache="tag", result="hit") >= 1
    route = "/v2/{name}/manifests/{reference}"
    assert (
        delta(
            "cargohold_http_request_duration_seconds_count", route=route, method="GET", status="2xx"
        )
        == 2
    )
    assert (
        delta(
            "cargohold_http_request_duration_seconds_bucket",
            route=route,
            method="GET",
            status="2xx",
            le="+Inf",
        )
        == 2
    )
    assert delta(
        "cargohold_http_response_bytes_total", route=route, method="GET", status="2xx"
    ) == 2 * len(manifest)
    assert delta(
        "cargohold_http_request_bytes_total", route=route, method="PUT", status="2xx"
    ) == len(manifest)
    assert value(after, "cargohold_http_requests_in_flight") >= 1  # the scrape itself
    assert value(after, "cargohold_build_info", version="0.1.0") == 1
    # Labels are route templates: no repository name, digest or upload id reaches them.
    text = httpx.get(f"{registry.url}/metrics").text
    assert repo not in text
    assert "sha256:" not in text


def test_unmatched_paths_share_one_label(registry: RegistryProcess) -> None:
    for path in (f"/nothing-{uuid.uuid4().hex}", f"/v2/{uuid.uuid4().hex}/bogus"):
        httpx.get(registry.url + path)
    text = httpx.get(f"{registry.url}/metrics").text
    assert "nothing-" not in text and "/bogus" not in text
    assert 'route="unmatched"' in text


# -- two worker processes, a token -----------------------------------------------------------


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    env = {"CARGOHOLD_SERVER__WORKERS": "2", "CARGOHOLD_METRICS__TOKEN": METRICS_TOKEN}
    server = RegistryProcess(tmp_path_factory.mktemp("two-workers"), env=env).start()
    yield server
    server.stop()


def _per_worker_counts(server: RegistryProcess, route: str) -> dict[str, float]:
    """GETs of `route` answered 4xx that each worker has recorded in its own file so far."""
    labels = {"route": route, "method": "GET", "status": "4xx"}
    assert server.proc is not None
    folder = server.data_dir / "run" / "metrics" / str(server.proc.pid)
    counts = {}
    for path in folder.glob("histogram_*.db"):
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)], accumulate=True):  # type: ignore[no-untyped-call]
            for s in metric.samples:
                if s.name.endswith("_count") and s.labels == labels:
                    total += s.value
        counts[path.stem.rsplit("_", 1)[-1]] = total
    return counts


def test_metrics_sum_every_worker(two_workers: RegistryProcess) -> None:
    auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    route = "/v2/"
    base = value(
        scrape(two_workers, **auth),
        "cargohold_http_request_duration_seconds_count",
        route=route,
        method="GET",
        status="4xx",
    )
    assert base == 0
    sent = 0

    def both_served() -> bool:
        nonlocal sent
        for _ in range(20):
            # A new connection each time, so the kernel hands them to both workers.
            assert httpx.get(f"{two_workers.url}/v2/").status_code == 401
            sent += 1
        counts = _per_worker_counts(two_workers, route)
        return len(counts) == 2 and all(n > 0 for n in counts.values())

    wait_for(both_served, "served by both workers")

    def all_flushed() -> Samples | None:
        samples = scrape(two_workers, **auth)
        n = value(
            samples,
            "cargohold_http_request_duration_seconds_count",
            route=route,
            method="GET",
            status="4xx",
        )
        return samples if n == sent else None

    wait_for(all_flushed, f"counting {sent} requests")
    counts = _per_worker_counts(two_workers, route)
    assert len(counts) == 2 and all(n > 0 for n in counts.values()), counts
    assert sum(counts.values()) == sent


def test_metrics_token_required(two_workers: RegistryProcess) -> None:
    url = f"{two_workers.url}/metrics"
    r = httpx.get(url)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    # The superuser's credentials are no scrape token.
    assert httpx.get(url, auth=two_workers.admin_auth).status_code == 401
    r = httpx.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200
    assert "cargohold_http_request_duration_seconds" in r.text


def test_health_bypasses_authentication(two_workers: RegistryProcess) -> None:
    for path in ("/health/instance", "/health/endtoend"):
        assert httpx.get(two_workers.url + path).status_code == 200


# -- failing dependencies --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ldap_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    env = {
        "CARGOHOLD_AUTH__PROVIDER": "ldap",
        "CARGOHOLD_AUTH__LDAP__URL": f"ldap://127.0.0.1:{free_port()}",  # nothing listens
        "CARGOHOLD_AUTH__LDAP__BIND_DN": "cn=admin,dc=example,dc=org",
        "CARGOHOLD_AUTH__LDAP__BIND_PASSWORD": "unused",
        "CARGOHOLD_AUTH__LDAP__BASE_DN": "ou=people,dc=example,dc=org",
        "CARGOHOLD_METRICS__ENABLED": "false",
    }
    server = RegistryProcess(tmp_path_factory.mktemp("ldap-down"), env=env).start()
    yield server
    server.stop()


def test_endtoend_names_the_unreachable_services(ldap_down: RegistryProcess) -> None:
    r = endtoend(ldap_down)
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "failing"
    assert body["failed"] == ["identity_provider"]
    assert body["services"]["identity_provider"] == {
        "ok": False,
        "ms": body["services"]["identity_provider"]["ms"],
        "reason": "error",
    }
    assert body["services"]["database"]["ok"] is True
    assert "127.0.0.1" not in r.text and "ldap" not in r.text.lower()
    # The instance itself is fine.
    assert httpx.get(f"{ldap_down.url}/health/instance").status_code == 200
    # Now the storage breaks too: its health/ prefix becomes a file.
    storage = ldap_down.data_dir / "storage"
    (storage / "health" / "sentinel").unlink()
    (storage / "health").rmdir()
    (storage / "health").write_bytes(b"not a folder")

    def both_failing() -> dict[str, Any] | None:
        answer = endtoend(ldap_down)
        data: dict[str, Any] = answer.json()
        return data if set(data.get("failed", [])) == {"identity_provider", "storage"} else None

    body = wait_for(both_failing, "failing storage")
    assert body["services"]["database"]["ok"] is True
    (storage / "health").unlink()


def test_metrics_disabled_answer_404(ldap_down: RegistryProcess) -> None:
    assert httpx.get(f"{ldap_down.url}/metrics").status_code == 404


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with temporary_database() as url:
        env = {"CARGOHOLD_GC__ENABLED": "false"}  # this test writes gc_run itself
        server = RegistryProcess(
            tmp_path_factory.mktemp("health-pg"), database_url=url, env=env
        ).start()
        yield server
        server.stop()


def test_pool_and_gc_figures(postgres_server: RegistryProcess) -> None:
    samples = scrape(postgres_server)
    assert value(samples, "cargohold_db_pool_connections", pool="read", state="size") >= 1
    assert ("cargohold_gc_last_pass_timestamp_seconds", frozenset()) not in samples
    now = datetime.now(UTC)
    insert = (
        "INSERT INTO gc_run (started_at, finished_at, dry_run, tags_deleted, "
        "manifests_deleted, links_deleted, blobs_deleted, bytes_freed, repositories_purged, "
        "backlog, error) VALUES (:started_at, :finished_at, :dry_run, :tags, :manifests, "
        ":links, :blobs, :freed, :repositories, :backlog, :error)"
    )
    row = {"finished_at": now, "tags": 0, "manifests": 0, "links": 0, "repositories": 0}
    row["error"] = None
    execute(
        postgres_server,
        insert,
        [
            {
                **row,
                "started_at": now - timedelta(minutes=3),
                "dry_run": False,
                "blobs": 4,
                "freed": 1000,
                "backlog": 9,
            },
            {
                **row,
                "started_at": now - timedelta(minutes=2),
                "dry_run": False,
                "blobs": 3,
                "manifests": 2,
                "freed": 500,
                "backlog": 7,
            },
            {
                **row,
                "started_at": now - timedelta(minutes=1),
                "dry_run": True,
                "blobs": 50,
                "freed": 99999,
                "backlog": 1,
            },
        ],
    )

    def recorded() -> Samples | None:
        s = scrape(postgres_server)
        return s if value(s, "cargohold_gc_freed_bytes") == 1500 else None

    samples = wait_for(recorded, "showing the recorded passes")  # scrapes cache them 5 s
    assert value(samples, "cargohold_gc_last_pass_deleted", kind="blobs") == 3
    assert value(samples, "cargohold_gc_last_pass_deleted", kind="manifests") == 2
    assert value(samples, "cargohold_gc_backlog") == 7
    assert value(samples, "cargohold_gc_last_pass_failed") == 0
    stamp = value(samples, "cargohold_gc_last_pass_timestamp_seconds")
    assert abs(stamp - now.timestamp()) < 1


def test_job_queue_depth(postgres_server: RegistryProcess) -> None:
    """cargohold_jobs: the job table by kind and state, read at scrape time. The kinds are
    made up, so no worker claims these rows."""
    waiting, broken = f"metrics-{uuid.uuid4().hex[:8]}", f"metrics-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    later = now + timedelta(days=1)  # not due, whatever claims them
    insert = (
        "INSERT INTO job (kind, payload, state, run_at, attempts, max_attempts, lease_owner, "
        "lease_until, created_at, finished_at) VALUES (:kind, '{}', :state, :run_at, 0, 5, "
        ":owner, :lease_until, :now, :finished_at)"
    )
    row = {"run_at": later, "owner": None, "lease_until": None, "now": now, "finished_at": None}
    execute(
        postgres_server,
        insert,
        [
            *[{**row, "kind": waiting, "state": "queued"} for _ in range(3)],
            {
                **row,
                "kind": waiting,
                "state": "running",
                "owner": "elsewhere",
                "lease_until": later,
            },
            *[{**row, "kind": broken, "state": "failed", "finished_at": now} for _ in range(2)],
        ],
    )

    def counted() -> Samples | None:
        s = scrape(postgres_server)
        return s if value(s, "cargohold_jobs", kind=waiting, state="queued") == 3 else None

    samples = wait_for(counted, "counting the queued jobs")  # scrapes cache them 5 s
    assert value(samples, "cargohold_jobs", kind=waiting, state="running") == 1
    assert value(samples, "cargohold_jobs", kind=broken, state="failed") == 2
    # Every state of a kind the table holds is there, 0 included.
    assert (("cargohold_jobs", frozenset({"kind": waiting, "state": "done"}.items()))) in samples
    assert value(samples, "cargohold_jobs", kind=broken, state="queued") == 0
    execute(postgres_server, "DELETE FROM job WHERE kind = :kind", [{"kind": waiting}])

    def drained() -> Samples | None:
        s = scrape(postgres_server)
        key = ("cargohold_jobs", frozenset({"kind": waiting, "state": "queued"}.items()))
        return s if key not in s else None

    wait_for(drained, "forgetting the deleted jobs")


def test_endtoend_names_an_unreachable_database(postgres_server: RegistryProcess) -> None:
    assert endtoend(postgres_server).status_code == 200
    url = postgres_server.database_url
    assert url is not None
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    try:

        def database_failing() -> httpx.Response | None:
            answer = endtoend(postgres_server)
            return answer if answer.status_code == 503 else None

        r = wait_for(database_failing, "failing")
        body = r.json()
        assert body["failed"] == ["database"]
        assert body["services"]["database"]["ok"] is False
        assert body["services"]["database"]["reason"] in ("error", "timeout")
        assert body["services"]["storage"]["ok"] is True
        assert name not in r.text and "5432" not in r.text and "postgres" not in r.text
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    wait_for(lambda: endtoend(postgres_server).status_code == 200, "healthy again")


# -- cargohold config check --online ---------------------------------------------------------


def config_check(data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    environment["CARGOHOLD_DATA_DIR"] = str(data_dir)
    environment.update({f"CARGOHOLD_{k.upper()}": v for k, v in env.items()})
    return subprocess.run(
        [sys.executable, "-m", "cargohold", "config", "check", "--online", "--timeout", "3"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_config_check_online_good(tmp_path: Path) -> None:
    done = config_check(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "database: ok" in done.stderr
    assert "storage: ok" in done.stderr
    assert "identity_provider" not in done.stderr


def test_config_check_online_bad_database(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    done = config_check(tmp_path, database__url=url)
    assert done.returncode == 1
    assert "database: FAILED" in done.stderr
    assert "storage: ok" in done.stderr
    assert done.stderr.strip().endswith("unreachable: database")


def test_config_check_online_redis(tmp_path: Path) -> None:
    done = config_check(tmp_path, redis__url="redis://127.0.0.1:6379/0")
    assert done.returncode == 0, done.stderr
    assert "redis: ok" in done.stderr
    done = config_check(tmp_path, redis__url=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 1
    assert "redis: FAILED" in done.stderr
    assert done.stderr.strip().endswith("unreachable: redis")


LDAP_ENV = {
    "auth__provider": "ldap",
    "auth__ldap__bind_dn": "cn=admin,dc=example,dc=org",
    "auth__ldap__base_dn": "ou=people,dc=example,dc=org",
}


def test_config_check_online_unreachable_ldap(tmp_path: Path) -> None:
    done = config_check(
        tmp_path,
        **LDAP_ENV,
        auth__ldap__url=f"ldap://127.0.0.1:{free_port()}",
        auth__ldap__bind_password="x",
    )
    assert done.returncode == 1
    assert "identity_provider: FAILED" in done.stderr
    assert "database: ok" in done.stderr
    assert done.stderr.strip().endswith("unreachable: identity_provider")


def test_config_check_online_ldap_service_bind(tmp_path: Path) -> None:
    with LdapServer(tls=False) as ldap:
        env = {
            **LDAP_ENV,
            "auth__ldap__url": ldap.url,
            "auth__ldap__bind_dn": ldap.bind_dn,
            "auth__ldap__base_dn": ldap.users_dn,
        }
        done = config_check(tmp_path, **env, auth__ldap__bind_password=ldap.bind_password)
        assert done.returncode == 0, done.stderr
        assert "identity_provider: ok" in done.stderr
        done = config_check(tmp_path, **env, auth__ldap__bind_password="wrong")
        assert done.returncode == 1
        assert "identity_provider: FAILED" in done.stderr


def test_config_check_masks_the_metrics_token(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    environment["CARGOHOLD_DATA_DIR"] = str(tmp_path)
    environment["CARGOHOLD_METRICS__TOKEN"] = "metrics-token-in-env"
    done = subprocess.run(
        [sys.executable, "-m", "cargohold", "config", "check"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "metrics-token-in-env" not in done.stdout
    assert '"token": "**********"' in done.stdout
