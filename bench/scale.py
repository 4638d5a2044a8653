#!/usr/bin/env python3
"""Scale benchmark: listings and blob HEAD with 10,000 repositories, 100,000 tags in one
repository and 1,000,000 blob rows.

Goals (from the performance issue): a page of tags or of the catalog (n=100) answers in
under 10 ms at the 99th percentile, and a full 100,000-tag list in under 1 s.

For each database asked for (SQLite by default; `--database postgresql://USER@HOST:PORT/DB`
creates a fresh database on that server and drops it afterwards), this:

  1. runs `cargohold migrate` on an empty data directory,
  2. seeds the rows straight into the tables of src/cargohold/db/models.py (sqlite3
     executemany, or psycopg COPY, in one transaction): namespaces, repositories, blobs,
     repository_blob links, manifests and their manifest_blob rows, live tags,
  3. starts `cargohold serve` on a free port of 127.0.0.1 (own process group) with
     CARGOHOLD_REGISTRY__MAX_PAGE_SIZE=100000, so that `?n=100000` is not clamped to
     the default maximum of 1000 (pages of n=100 and n=1000 are unaffected),
  4. measures over HTTP, one keep-alive connection, one request at a time:
       tags_page        GET /v2/bench/big/tags/list?n=100&last=<random existing tag>
       catalog_page     GET /v2/_catalog?n=100&last=<random existing repository>
       tags_full        GET /v2/bench/big/tags/list?n=100000 (the whole list at once)
       tags_walk        the whole list in pages of n=1000, following the Link headers
       catalog_full     GET /v2/_catalog?n=100000
       blob_head        HEAD of a random linked blob of a random repository (never the same
                        twice, so the server's blob cache does not answer)
       blob_head_404    HEAD of an unknown digest
       manifest_by_tag  GET /v2/bench/big/manifests/<random tag>
       floor            GET /v2/ (no database): what client and server cost by themselves
     and checks every answer against the seeded data,
  5. runs each measurement that missed its goal again under `py-spy record -f raw` on
     the worker process (--profile all: every measurement; none: no profiling) and
     summarises where the busy samples went.

The measurements run in 3 interleaved rounds (--rounds); every figure is the median of
its per-round values, which a burst of other work on a shared machine moves less.

Writes docs/benchmarks-scale.md and docs/bench-results/scale.json (with --quick:
bench/.out/quick/). Seeding takes under a minute per database.

Examples (from the repository root):
  .venv/bin/python bench/scale.py                      # SQLite, full size
  .venv/bin/python bench/scale.py --database sqlite \\
      --database postgresql://postgres@127.0.0.1:5432/postgres   # both, one report
  .venv/bin/python bench/scale.py --quick              # smoke run, < 1 min

Exit status: 0 measured (whatever the timings); 1 a wrong answer or a server crash;
2 the benchmark could not run. Timing never makes it fail.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import itertools
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import procstat
import report
import servers
import sysinfo

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "benchmarks-scale.md"
SCRATCH_OUT = REPO / "bench" / ".out"
BIG_REPO = "bench/big"
PAGE = 100
WALK_PAGE = 1000
MAX_PAGE_SIZE = 100_000
CREDENTIAL_CACHE_SECONDS = 3600  # the server keeps verified credentials for the whole run
GOAL_PAGE_P99_MS = 10.0
GOAL_FULL_LIST_MS = 1000.0
GIB_PER_MILLION_BLOBS = 1 << 30  # rough size of a database and its WAL per million blobs
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
WORDS = ("api", "web", "worker", "db", "cache", "auth", "billing", "search", "ml", "etl")


SetupError = servers.SetupError


class CheckError(Exception):
    """The server gave a wrong answer."""


def log(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Sizes and the data set
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    repos: int
    tags: int  # live tags in BIG_REPO
    blobs: int
    samples: int  # requests per latency measurement
    full_reps: int  # whole-list requests / walks


FULL = Sizes(repos=10_000, tags=100_000, blobs=1_000_000, samples=1000, full_reps=10)
QUICK = Sizes(repos=500, tags=5_000, blobs=20_000, samples=100, full_reps=3)


@dataclass
class Dataset:
    """Every row the benchmark seeds, generated once and shared by all databases.

    Ids are 1-based and dense. Repository 1 is BIG_REPO. Blob i is linked to repository
    ((i - 1) % repos) + 1. Each repository has one manifest tagged `latest`, except
    BIG_REPO, which has up to 100 manifests and `tags` tags pointing at them in turn."""

    namespaces: list[str]
    repos: list[str]
    repo_namespace: list[int]  # namespace id of each repository
    digests: list[str]
    sizes: list[int]
    manifests: list[tuple[int, str, bytes, int, int]]  # repo id, digest, payload, config, layer
    tags: list[tuple[int, str, int]]  # repo id, name, manifest id
    big_tags: list[str]

    @property
    def links(self) -> int:
        return len(self.digests)

    def repo_of_blob(self, blob_id: int) -> int:
        return (blob_id - 1) % len(self.repos) + 1


def _blob_digest(i: int) -> str:
    return "sha256:" + hashlib.sha256(b"cargohold-scale-blob-%d" % i).hexdigest()


def _manifest(config: tuple[str, int], layer: tuple[str, int]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config[0],
            "size": config[1],
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer[0],
                "size": layer[1],
            }
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def make_dataset(sizes: Sizes, seed: int = 1) -> Dataset:
    rnd = random.Random(seed)
    n_repos = sizes.repos
    namespaces = ["bench"] + [f"team{k:03d}" for k in range(max(1, min(100, n_repos // 100)))]
    repos, repo_ns = [BIG_REPO], [1]
    for i in range(1, n_repos):
        ns = 1 + (i % (len(namespaces) - 1)) if len(namespaces) > 1 else 1
        repos.append(f"{namespaces[ns - 1]}/{WORDS[i % len(WORDS)]}-{rnd.getrandbits(24):06x}-{i}")
        repo_ns.append(ns)
    digests = [_blob_digest(i) for i in range(1, sizes.blobs + 1)]
    blob_sizes = [1 + (i * 2654435761) % 100_000_000 for i in range(1, sizes.blobs + 1)]

    def blob(i: int) -> tuple[str, int]:
        return digests[i - 1], blob_sizes[i - 1]

    manifests: list[tuple[int, str, bytes, int, int]] = []
    tags: list[tuple[int, str, int]] = []
    # BIG_REPO: manifests k = 0.. reference config blob 1 and layer blob 1 + repos*k,
    # all of them blobs linked to repository 1.
    big_manifests = max(1, min(100, sizes.blobs // n_repos))
    for k in range(big_manifests):
        config, layer = 1, 1 + n_repos * k
        payload = _manifest(blob(config), blob(layer))
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        manifests.append((1, digest, payload, config, layer))
    big_tags = []
    for j in range(sizes.tags):
        # v<j%10>.<(j//10)%100>.<j//1000>: unique, and not in insertion order
        name = f"v{j % 10}.{(j // 10) % 100}.{j // 1000}-{rnd.getrandbits(32):08x}"
        big_tags.append(name)
        tags.append((1, name, 1 + j % big_manifests))
    for r in range(2, n_repos + 1):
        config = r
        layer = r + n_repos if r + n_repos <= sizes.blobs else r
        payload = _manifest(blob(config), blob(layer))
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        manifests.append((r, digest, payload, config, layer))
        tags.append((r, "latest", len(manifests)))
    return Dataset(namespaces, repos, repo_ns, digests, blob_sizes, manifests, tags, big_tags)


Row = tuple[Any, ...]


def table_rows(data: Dataset, ts: Any) -> Iterator[tuple[str, tuple[str, ...], Iterator[Row]]]:
    """(table, columns, rows) in foreign-key order; `ts` is the created_at value."""
    yield (
        "namespace",
        ("id", "name", "created_at"),
        ((i, n, ts) for i, n in enumerate(data.namespaces, 1)),
    )
    yield (
        "repository",
        ("id", "namespace_id", "name", "created_at"),
        ((i, data.repo_namespace[i - 1], n, ts) for i, n in enumerate(data.repos, 1)),
    )
    yield (
        "blob",
        ("id", "digest", "size", "created_at"),
        ((i, d, data.sizes[i - 1], ts) for i, d in enumerate(data.digests, 1)),
    )
    yield (
        "repository_blob",
        ("repository_id", "blob_id", "created_at"),
        ((data.repo_of_blob(i), i, ts) for i in range(1, len(data.digests) + 1)),
    )
    yield (
        "manifest",
        ("id", "repository_id", "digest", "media_type", "size", "payload", "created_at"),
        (
            (i, r, d, OCI_MANIFEST, len(p), p, ts)
            for i, (r, d, p, _, _) in enumerate(data.manifests, 1)
        ),
    )
    yield (
        "manifest_blob",
        ("manifest_id", "blob_id"),
        (
            row
            for i, (_, _, _, c, layer) in enumerate(data.manifests, 1)
            for row in ((i, c), (i, layer))[: 1 if c == layer else 2]
        ),
    )
    yield (
        "tag",
        ("id", "repository_id", "name", "manifest_id", "started_at", "ended_at"),
        ((i, r, n, m, ts, None) for i, (r, n, m) in enumerate(data.tags, 1)),
    )


# --------------------------------------------------------------------------------------
# Databases: a fresh one per run, seeded directly
# --------------------------------------------------------------------------------------


@dataclass
class Backend:
    label: str  # "SQLite", "PostgreSQL"
    kind: str  # "sqlite" or "postgresql"
    admin_url: str = ""  # PostgreSQL: the server's URL we create the database through
    url: str = ""  # PostgreSQL: the fresh database
    data_dir: Path = Path()

    def server_env(self) -> dict[str, str]:
        env = {
            "CARGOHOLD_REGISTRY__MAX_PAGE_SIZE": str(MAX_PAGE_SIZE),
            # One argon2 check at the start, not one a minute inside the timed requests.
            "CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS": str(CREDENTIAL_CACHE_SECONDS),
        }
        if self.url:
            env["CARGOHOLD_DATABASE__URL"] = self.url
        return env


def parse_backend(text: str) -> Backend:
    if text == "sqlite":
        return Backend("SQLite", "sqlite")
    if text.startswith(("postgresql://", "postgresql+psycopg://")):
        return Backend("PostgreSQL", "postgresql", admin_url=text)
    raise argparse.ArgumentTypeError("expected `sqlite` or a postgresql://... URL")


def _pg_url(admin_url: str, dbname: str) -> str:
    parts = urlsplit(admin_url.replace("postgresql+psycopg://", "postgresql://", 1))
    return parts._replace(path=f"/{dbname}").geturl()


@contextlib.contextmanager
def fresh_database(backend: Backend) -> Iterator[None]:
    """PostgreSQL: CREATE DATABASE cargohold_scale_<random>, DROP it on the way out."""
    if backend.kind != "postgresql":
        yield
        return
    import psycopg

    admin = _pg_url(backend.admin_url, urlsplit(backend.admin_url).path.lstrip("/") or "postgres")
    name = f"cargohold_scale_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise SetupError(f"cannot create a database through {backend.admin_url}: {exc}") from exc
    backend.url = _pg_url(backend.admin_url, name)
    log(f"created database {name}")
    try:
        yield
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"dropped database {name}")


def seed_sqlite(path: Path, data: Dataset) -> None:
    # SQLAlchemy stores SQLite datetimes as text in this format (naive, UTC).
    ts = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA synchronous=OFF")  # seeding only: the server uses NORMAL
        con.execute("PRAGMA cache_size=-1000000")  # 1 GB of page cache for the index builds
        con.execute("BEGIN")
        for table, cols, rows in table_rows(data, ts):
            marks = ", ".join("?" * len(cols))
            con.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", rows)
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def seed_postgresql(url: str, data: Dataset) -> None:
    import psycopg

    ts = datetime.now(UTC)
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            for table, cols, rows in table_rows(data, ts):
                stmt = f"COPY {table} ({', '.join(cols)}) FROM STDIN"
                with cur.copy(stmt) as copy:
                    for row in rows:
                        copy.write_row(row)
            for table in ("namespace", "repository", "blob", "manifest", "tag"):
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
        conn.commit()
        # What autovacuum would do within a minute of such a bulk load.
        conn.autocommit = True
        conn.execute("ANALYZE")


def database_backends(backend: Backend) -> Callable[[], list[int]]:
    """A function listing the PostgreSQL server processes connected to the benchmark's
    database (asked through the admin database, so the asking adds none)."""
    import psycopg

    admin = _pg_url(backend.admin_url, urlsplit(backend.admin_url).path.lstrip("/") or "postgres")
    dbname = urlsplit(backend.url).path.lstrip("/")

    def pids() -> list[int]:
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,)
                ).fetchall()
        except psycopg.Error:
            return []
        return [int(r[0]) for r in rows]

    return pids


def database_size(backend: Backend) -> int:
    if backend.kind == "sqlite":
        return sum(p.stat().st_size for p in backend.data_dir.glob("cargohold.db*"))
    import psycopg

    with psycopg.connect(backend.url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------------------
# HTTP client
# --------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


class Client:
    """One keep-alive connection; each request is timed until its body is read. `auth`
    (the Authorization header) goes on every request."""

    def __init__(self, port: int, auth: dict[str, str] | None = None) -> None:
        self.port = port
        self.auth = dict(auth or {})
        self.conn = http.client.HTTPConnection(servers.HOST, port, timeout=120)

    def close(self) -> None:
        self.conn.close()

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
        for attempt in (1, 2):
            try:
                t0 = time.perf_counter()
                self.conn.request(method, path, headers={**self.auth, **(headers or {})})
                resp = self.conn.getresponse()
                body = resp.read()
                seconds = time.perf_counter() - t0
                return Answer(
                    resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, seconds
                )
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection: once more on a new one.
                self.conn.close()
                self.conn = http.client.HTTPConnection(servers.HOST, self.port, timeout=120)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, path: str) -> tuple[Answer, Any]:
        ans = self.request("GET", path)
        if ans.status != 200:
            raise CheckError(f"GET {path}: {ans.status} {ans.body[:300]!r}")
        return ans, json.loads(ans.body)


def next_link(headers: dict[str, str]) -> str | None:
    link = headers.get("link")
    if not link:
        return None
    target = link.split(";", 1)[0].strip()
    return target[1:-1] if target.startswith("<") and target.endswith(">") else None


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Stats:
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = [s * 1000 for s in seconds]
        return cls(
            len(ms),
            percentile(ms, 50),
            percentile(ms, 90),
            percentile(ms, 99),
            max(ms),
            statistics.fmean(ms),
        )


@dataclass(frozen=True)
class Goal:
    stat: str  # the Stats field judged: "p99_ms" or "max_ms"
    limit_ms: float
    text: str
    from_issue: bool = True

    def met(self, stats: Stats) -> bool:
        return float(getattr(stats, self.stat)) < self.limit_ms


@dataclass(frozen=True)
class MeasurementDef:
    name: str
    what: str
    goal: Goal | None


PAGE_GOAL = Goal("p99_ms", GOAL_PAGE_P99_MS, f"p99 < {GOAL_PAGE_P99_MS:.0f} ms")
FULL_GOAL = Goal("max_ms", GOAL_FULL_LIST_MS, "every one < 1 s")
MEASUREMENTS = [
    MeasurementDef("tags_page", "tags/list?n=100&last=<random tag> of bench/big", PAGE_GOAL),
    MeasurementDef("catalog_page", "_catalog?n=100&last=<random repository>", PAGE_GOAL),
    MeasurementDef("tags_full", "tags/list?n=100000 of bench/big: the whole list", FULL_GOAL),
    MeasurementDef("tags_walk", "the whole list in pages of n=1000 (Link headers)", FULL_GOAL),
    MeasurementDef("catalog_full", "_catalog?n=100000: every repository", None),
    MeasurementDef(
        "blob_head",
        "HEAD a random blob of a random repository (cache misses)",
        Goal("p99_ms", 10.0, "p99 < 10 ms (the page bar)", from_issue=False),
    ),
    MeasurementDef("blob_head_404", "HEAD an unknown digest (404)", None),
    MeasurementDef("manifest_by_tag", "GET manifests/<random tag> of bench/big", None),
    MeasurementDef("floor", "GET /v2/ (no database): the client + server floor", None),
]


@dataclass
class Result:
    name: str
    what: str
    stats: Stats | None = None
    items: int = 0  # names in one answer / pages in a walk
    goal: str = ""
    met: bool | None = None
    profile: Profile | None = None  # py-spy, when the goal was missed
    rounds: list[Stats] = field(default_factory=list)  # one per round; `stats` their medians
    judged_stat: str = "p99_ms"


def combine(mdef: MeasurementDef, per_round: list[Result]) -> Result:
    """One measurement over the rounds: each statistic is the median of its per-round
    values (robust to one round hit by a noisy neighbour); the goal is judged on that."""
    rounds = [r.stats for r in per_round if r.stats is not None]
    out = Result(mdef.name, mdef.what, items=per_round[-1].items if per_round else 0)
    out.rounds = rounds
    if mdef.goal:
        out.judged_stat = mdef.goal.stat
    if not rounds:
        return out

    def med(attr: str) -> float:
        return float(statistics.median(float(getattr(x, attr)) for x in rounds))

    out.stats = Stats(
        n=sum(x.n for x in rounds),
        p50_ms=med("p50_ms"),
        p90_ms=med("p90_ms"),
        p99_ms=med("p99_ms"),
        max_ms=med("max_ms"),
        mean_ms=med("mean_ms"),
    )
    if mdef.goal:
        out.goal = mdef.goal.text + ("" if mdef.goal.from_issue else "*")
        out.met = mdef.goal.met(out.stats)
    return out


def per_round(r: Result) -> str:
    """The judged statistic of each round: '4.71 / 5.02 / 12.3'."""
    return " / ".join(ms(float(getattr(x, r.judged_stat))).removesuffix(" ms") for x in r.rounds)


class Measurer:
    """The measurements against one running server and one data set."""

    def __init__(
        self,
        port: int,
        data: Dataset,
        sizes: Sizes,
        seed: int = 2,
        auth: dict[str, str] | None = None,
    ) -> None:
        self.client = Client(port, auth)
        self.data = data
        self.sizes = sizes
        self.rnd = random.Random(seed)
        self.tag_order: list[str] = []  # the server's order (the database's collation)
        self.repo_order: list[str] = []
        self.used_blobs: set[int] = set()
        self.notes: list[str] = []
        self.big_manifest_digest = {name: "" for name in data.big_tags}
        for _, name, m in data.tags[: len(data.big_tags)]:
            self.big_manifest_digest[name] = data.manifests[m - 1][1]

    def close(self) -> None:
        self.client.close()

    # -- the whole lists (they also learn the server's order, for checking pages) ------

    def _whole(self, path: str, key: str, expected: list[str]) -> tuple[list[Answer], list[str]]:
        answers, order = [], []
        for _ in range(self.sizes.full_reps + 1):  # the first one warms up, not counted
            ans, doc = self.client.json(path)
            order = doc[key]
            if len(order) != len(expected) or set(order) != set(expected):
                raise CheckError(f"GET {path}: {len(order)} names, expected {len(expected)}")
            if next_link(ans.headers):
                raise CheckError(f"GET {path}: a Link header although everything was listed")
            answers.append(ans)
        note = (
            f"{path.split('?')[0]}: the server's order is not byte order "
            "(the database's collation); pages were checked against the server's order"
        )
        if order != sorted(expected) and note not in self.notes:
            self.notes.append(note)
        return answers[1:], order

    def tags_full(self) -> Result:
        path = f"/v2/{BIG_REPO}/tags/list?n={MAX_PAGE_SIZE}"
        answers, self.tag_order = self._whole(path, "tags", self.data.big_tags)
        return Result("", "", Stats.of([a.seconds for a in answers]), len(self.tag_order))

    def catalog_full(self) -> Result:
        answers, self.repo_order = self._whole(
            f"/v2/_catalog?n={MAX_PAGE_SIZE}", "repositories", self.data.repos
        )
        return Result("", "", Stats.of([a.seconds for a in answers]), len(self.repo_order))

    def tags_walk(self) -> Result:
        walks: list[float] = []
        pages = 0
        for rep in range(self.sizes.full_reps + 1):
            path: str | None = f"/v2/{BIG_REPO}/tags/list?n={WALK_PAGE}"
            names: list[str] = []
            pages, elapsed = 0, 0.0
            while path:
                ans, doc = self.client.json(path)
                elapsed += ans.seconds
                names.extend(doc["tags"])
                pages += 1
                path = next_link(ans.headers)
            if names != self.tag_order:
                raise CheckError(f"walking the tags with n={WALK_PAGE} gave another list")
            if rep:
                walks.append(elapsed)
        return Result("", "", Stats.of(walks), pages)

    # -- pages ---------------------------------------------------------------------------

    def _pages(self, base: str, key: str, order: list[str]) -> Result:
        if len(order) < 2:
            raise CheckError(f"{base}: too few names to page through")
        times = []
        warm = 20
        for i in range(warm + self.sizes.samples):
            at = self.rnd.randrange(len(order) - 1)
            ans, doc = self.client.json(f"{base}?n={PAGE}&last={quote(order[at], safe='')}")
            want = order[at + 1 : at + 1 + PAGE]
            if doc[key] != want:
                raise CheckError(f"{base} after {order[at]!r}: wrong page")
            if (next_link(ans.headers) is not None) != (at + 1 + PAGE < len(order)):
                raise CheckError(f"{base} after {order[at]!r}: Link header wrong")
            if i >= warm:
                times.append(ans.seconds)
        return Result("", "", Stats.of(times), PAGE)

    def tags_page(self) -> Result:
        return self._pages(f"/v2/{BIG_REPO}/tags/list", "tags", self.tag_order)

    def catalog_page(self) -> Result:
        return self._pages("/v2/_catalog", "repositories", self.repo_order)

    # -- blobs and manifests -------------------------------------------------------------

    def _fresh_blob(self) -> int:
        n = len(self.data.digests)
        if len(self.used_blobs) >= n:
            self.used_blobs.clear()
        while True:
            i = self.rnd.randrange(1, n + 1)
            if i not in self.used_blobs:
                self.used_blobs.add(i)
                return i

    def blob_head(self) -> Result:
        times = []
        for i in range(20 + self.sizes.samples):
            b = self._fresh_blob()
            repo = self.data.repos[self.data.repo_of_blob(b) - 1]
            ans = self.client.request("HEAD", f"/v2/{repo}/blobs/{self.data.digests[b - 1]}")
            if ans.status != 200 or ans.headers.get("content-length") != str(
                self.data.sizes[b - 1]
            ):
                raise CheckError(f"HEAD blob {b} in {repo}: {ans.status} {ans.headers}")
            if i >= 20:
                times.append(ans.seconds)
        return Result("", "", Stats.of(times), 1)

    def blob_head_404(self) -> Result:
        times = []
        for i in range(20 + self.sizes.samples):
            repo = self.rnd.choice(self.data.repos)
            digest = "sha256:" + hashlib.sha256(b"unknown-%d" % i).hexdigest()
            ans = self.client.request("HEAD", f"/v2/{repo}/blobs/{digest}")
            if ans.status != 404:
                raise CheckError(f"HEAD unknown blob in {repo}: {ans.status}")
            if i >= 20:
                times.append(ans.seconds)
        return Result("", "", Stats.of(times), 0)

    def manifest_by_tag(self) -> Result:
        times = []
        accept = {"Accept": OCI_MANIFEST}
        for i in range(20 + self.sizes.samples):
            tag = self.rnd.choice(self.data.big_tags)
            ans = self.client.request("GET", f"/v2/{BIG_REPO}/manifests/{tag}", accept)
            if ans.status != 200 or (
                ans.headers.get("docker-content-digest") != self.big_manifest_digest[tag]
            ):
                raise CheckError(f"GET manifest {tag}: {ans.status}")
            if i >= 20:
                times.append(ans.seconds)
        return Result("", "", Stats.of(times), 1)

    def floor(self) -> Result:
        times = []
        for i in range(20 + self.sizes.samples):
            ans = self.client.request("GET", "/v2/")
            if ans.status != 200:
                raise CheckError(f"GET /v2/: {ans.status}")
            if i >= 20:
                times.append(ans.seconds)
        return Result("", "", Stats.of(times), 0)

    def run(self, name: str) -> Result:
        fn: Callable[[], Result] = getattr(self, name)
        return fn()


# --------------------------------------------------------------------------------------
# py-spy
# --------------------------------------------------------------------------------------


def py_spy() -> Path | None:
    exe = REPO / ".venv" / "bin" / "py-spy"
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    found = shutil.which("py-spy")
    return Path(found) if found else None


# Leaves of stacks that wait for work: granian's worker main thread sitting in its
# native server, and idle threads of the thread pools.
IDLE_LEAVES = {
    ("_spawn_asgi_lifespan_worker", "granian/server/mp.py"),
    ("_spawn_asgi_worker", "granian/server/mp.py"),
    ("wait", "threading.py"),
    ("get", "queue.py"),
    ("select", "selectors.py"),
}


@dataclass
class Profile:
    file: str = ""
    samples: int = 0
    busy: int = 0
    inclusive: list[tuple[str, float]] = field(default_factory=list)  # % of busy samples
    leaves: list[tuple[str, float]] = field(default_factory=list)


# Frames of the process's scaffolding (command line, granian's worker start-up): on every
# stack, they say nothing about where a request's time goes.
SCAFFOLDING = (
    "typer/",
    "click/",
    "granian/",
    "multiprocessing/",
    "threading.py",
    "cargohold/cli.py",
)


def _frame(frame: str) -> tuple[str, str]:
    """'func (path/to/file.py:12)' -> ('func', 'pkg/file.py')."""
    name, _, where = frame.strip().partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return name, path.rsplit("site-packages/", 1)[-1].rsplit("/src/", 1)[-1]


def summarise_folded(text: str, top: int = 12) -> Profile:
    """Where the busy samples of py-spy's raw (folded) output went: each function's share
    of them, counted once per sample it is anywhere on the stack in (the scaffolding and
    frames on nearly every busy stack left out), and the leaves."""
    prof = Profile()
    stacks: list[tuple[list[tuple[str, str]], int]] = []
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        prof.samples += count
        frames = [_frame(f) for f in stack.split(";") if f.strip()]
        leaf_name, leaf_path = frames[-1] if frames else ("", "")
        if not frames or (leaf_name.rsplit(".", 1)[-1], leaf_path) in IDLE_LEAVES:
            continue
        prof.busy += count
        stacks.append((frames, count))
    if not prof.busy:
        return prof
    inclusive: Counter[tuple[str, str]] = Counter()
    leaves: Counter[tuple[str, str]] = Counter()
    for frames, count in stacks:
        for f in set(frames):
            if f[0] != "<module>" and not f[1].startswith(SCAFFOLDING):
                inclusive[f] += count
        leaves[frames[-1]] += count

    def label(f: tuple[str, str]) -> str:
        return f"{f[0]} ({f[1]})" if f[1] else f[0]

    ranked = [(f, c) for f, c in inclusive.most_common() if c < 0.95 * prof.busy]
    prof.inclusive = [(label(f), 100 * c / prof.busy) for f, c in ranked[:top]]
    prof.leaves = [(label(f), 100 * c / prof.busy) for f, c in leaves.most_common(top)]
    return prof


def profile(exe: Path, worker: int, out: Path, work: Callable[[], object]) -> Profile | None:
    """Run `work` while py-spy records the worker; summarise what it recorded."""
    argv = [str(exe), "record", "-p", str(worker), "-f", "raw", "-r", "200", "--nolineno"]
    proc = subprocess.Popen(
        [*argv, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        time.sleep(1.5)  # attach
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            log(f"py-spy did not start: {err.strip()[:300]}")
            return None
        work()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if not out.is_file():
        return None
    prof = summarise_folded(out.read_text())
    prof.file = out.name
    return prof


# --------------------------------------------------------------------------------------
# One database, start to end
# --------------------------------------------------------------------------------------


@dataclass
class BackendRun:
    label: str
    kind: str
    seed_s: dict[str, float] = field(default_factory=dict)  # migrate, insert
    db_bytes: int = 0
    results: list[Result] = field(default_factory=list)
    cpu: procstat.CpuUse | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    server_cmd: str = ""
    tree: str = ""


def run_backend(
    backend: Backend,
    data: Dataset,
    sizes: Sizes,
    args: argparse.Namespace,
    workdir: Path,
    results_dir: Path,
) -> BackendRun:
    out = BackendRun(backend.label, backend.kind)
    backend.data_dir = workdir / backend.kind
    backend.data_dir.mkdir(parents=True)
    with fresh_database(backend):
        server_env = {**backend.server_env(), **args.source_env}
        env = {**os.environ, "CARGOHOLD_DATA_DIR": str(backend.data_dir), **server_env}
        t0 = time.monotonic()
        res = subprocess.run(
            [str(args.cargohold), "migrate"],
            env=env,
            cwd=backend.data_dir,
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise SetupError(f"cargohold migrate failed: {res.stderr.strip()[-500:]}")
        out.seed_s["migrate"] = time.monotonic() - t0
        t0 = time.monotonic()
        log(f"{backend.label}: inserting the rows")
        if backend.kind == "sqlite":
            seed_sqlite(backend.data_dir / "cargohold.db", data)
        else:
            seed_postgresql(backend.url, data)
        out.seed_s["insert"] = time.monotonic() - t0
        out.db_bytes = database_size(backend)
        log(
            f"{backend.label}: seeded in {sum(out.seed_s.values()):.1f}s "
            f"({out.db_bytes / procstat.MIB:.0f} MiB)"
        )
        server = servers.start_cargohold(
            args.cargohold,
            backend.data_dir,
            workdir / f"{backend.kind}.log",
            name=f"cargohold-{backend.kind}",
            extra_env=server_env,
            timeout=args.start_timeout,
        )
        shown_env = {
            k: (
                "<temporary database>"
                if k == "CARGOHOLD_DATABASE__URL"
                else "***"
                if k.endswith("PASSWORD")
                else v
            )
            for k, v in server.env.items()
        }
        out.server_cmd = " ".join(
            [*(f"{k}={v}" for k, v in shown_env.items()), *server.argv]
        ).replace(str(REPO) + "/", "")
        measurer: Measurer | None = None
        try:
            out.tree = ", ".join(f"{pid} {name}" for pid, name in server.tree())
            log(f"{backend.label}: cargohold on {server.url} ({out.tree})")
            measurer = Measurer(server.port, data, sizes, auth=server.authorization)
            meter = procstat.CpuMeter(
                server.pid, database_backends(backend) if backend.kind == "postgresql" else None
            )
            order = ["tags_full", "catalog_full"] + [
                m.name for m in MEASUREMENTS if m.name not in ("tags_full", "catalog_full")
            ]
            # Rounds interleave the measurements, so that a burst of other work on the
            # machine hits one round of several measurements rather than all of one.
            rounds: dict[str, list[Result]] = {m.name: [] for m in MEASUREMENTS}
            for n in range(1, args.rounds + 1):
                for name in order:
                    r = measurer.run(name)
                    rounds[name].append(r)
                    if r.stats:
                        log(
                            f"{backend.label}: round {n}: {name}: p50 {r.stats.p50_ms:.2f} ms, "
                            f"p99 {r.stats.p99_ms:.2f} ms, max {r.stats.max_ms:.2f} ms"
                        )
            out.cpu = meter.stop()
            out.results = [combine(m, rounds[m.name]) for m in MEASUREMENTS]
            out.notes = measurer.notes
            spy = py_spy()
            missed = [r for r in out.results if r.met is False]
            if args.profile == "all":
                missed = list(out.results)
            elif args.profile == "none":
                missed = []
            workers = [p for p in servers.process_tree(server.pid) if p != server.pid]
            if missed and spy and workers:
                for r in missed:
                    path = results_dir / f"scale-{backend.kind}-{r.name}.pyspy.txt"
                    log(f"{backend.label}: profiling {r.name} with py-spy (worker {workers[0]})")
                    r.profile = profile(
                        spy, workers[0], path, functools.partial(measurer.run, r.name)
                    )
            elif missed:
                out.notes.append("py-spy or the worker process was not found: no profile")
            if not server.alive():
                out.error = f"cargohold exited (code {server.exit_code})"
        except CheckError as exc:
            out.error = f"wrong answer: {exc}"
            log(f"{backend.label}: {out.error}\n{server.log_tail()}")
        finally:
            if measurer is not None:
                measurer.close()
            log(f"{backend.label}: stopping cargohold (process group {server.pid})")
            try:
                server.stop()
            except servers.ServerError as exc:
                log(f"warning: {exc}")
    return out


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def ms(v: float) -> str:
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def verdict(r: Result, markdown: bool = True) -> str:
    if r.met is None:
        return "-"
    return "met" if r.met else ("**MISSED**" if markdown else "MISSED")


def judged(r: Result) -> str:
    """The figure a goal is judged on, e.g. 'p99 3.21 ms'."""
    if r.stats is None:
        return "-"
    spread = f"; rounds {per_round(r)}" if len(r.rounds) > 1 else ""
    if r.judged_stat == "max_ms":
        return f"max {ms(r.stats.max_ms)} (median {ms(r.stats.p50_ms)}{spread})"
    return f"p99 {ms(r.stats.p99_ms)} (p50 {ms(r.stats.p50_ms)}{spread})"


@dataclass
class ScaleRun:
    quick: bool
    started: float
    sizes: Sizes
    data_counts: dict[str, int]
    generate_s: float
    backends: list[BackendRun]
    invocation: str
    rounds: int = 1
    duration_s: float = 0.0
    warnings: list[str] = field(default_factory=list)


def render_markdown(run: ScaleRun, env: sysinfo.Environment) -> str:
    s = run.sizes
    date = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(run.started))
    out = [
        f"# Scale benchmark: {s.repos:,} repositories, {s.tags:,} tags in one, {s.blobs:,} blobs",
        "<!-- Generated by bench/scale.py; do not edit by hand. -->",
    ]
    if run.quick:
        out.append("> **Quick smoke run** (`--quick`: small data set, few requests).")
    out.extend(f"> **Warning**: {w}" for w in run.warnings)
    out.append(
        "**Goals** (performance issue): with 10,000 repositories, 100,000 tags in one "
        "repository and 1,000,000 blob rows, a page of tags or of the catalog (n=100) answers "
        "in under 10 ms at the 99th percentile, and a full 100,000-tag list in under 1 s."
    )
    out.append(
        f"Measured on {date}, each database freshly seeded, one `cargohold serve` (1 worker) "
        "per database, the client on the same machine over 127.0.0.1: one keep-alive "
        "connection, one request at a time, each timed from sending it to the last byte of "
        "its answer. Every answer was checked against the seeded data. The server ran with "
        f"`CARGOHOLD_REGISTRY__MAX_PAGE_SIZE={MAX_PAGE_SIZE}` so that `?n=100000` returns the "
        "whole list in one answer (the default maximum, 1000, would clamp it); pages of n=100 "
        f"and n=1000 are the same either way. The whole run took {run.duration_s / 60:.1f} min."
    )
    out.append(
        "cargohold requires authentication: every request carried the Basic credentials of "
        "the superuser the server was started with (`CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD`), "
        "which cargohold accepts on /v2 directly. The server kept verified credentials for "
        f"{CREDENTIAL_CACHE_SECONDS} s (`CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS`, default 60), "
        "so the one argon2 check happened before the measurements and each timed request "
        "paid only the cache lookup: these figures are about listing at scale, not about "
        "authentication (docs/benchmarks-auth.md measures that)."
    )
    backends = [b for b in run.backends if b.results]
    head = ["measurement", "goal", *(b.label for b in backends)]
    rows = []
    for mdef in MEASUREMENTS:
        if mdef.goal is None:
            continue
        cells = [mdef.name, mdef.goal.text + ("" if mdef.goal.from_issue else "*")]
        for b in backends:
            r = next(x for x in b.results if x.name == mdef.name)
            cells.append(f"{verdict(r)}: {judged(r)}")
        rows.append(cells)
    if backends:
        out.append("## Goals\n\n" + report.md_table(head, rows, set()))
        out.append(
            "\\* blob HEAD has no goal of its own in the issue; the page bar is shown for scale. "
            "`tags_walk`: the full list as clients such as skopeo and crane fetch it (following "
            f"Link headers, n={WALK_PAGE}), judged by the same 1 s bar."
        )
    for b in run.backends:
        out.append(_backend_section(b, run))
    out.append(_data_section(run))
    out.append(_machine_section(env, run))
    out.append(
        "## Commands\n\n```sh\n# this run\n"
        + run.invocation
        + "\n"
        + "".join(f"# started by it ({b.label})\n{b.server_cmd}\n" for b in run.backends)
        + "```\n\nRaw data: [bench-results/scale.json](bench-results/scale.json) next to this "
        "file; py-spy profiles (folded stacks, `-f raw`) as bench-results/scale-*.pyspy.txt."
    )
    return "\n\n".join(x.strip("\n") for x in out if x) + "\n"


def _backend_section(b: BackendRun, run: ScaleRun) -> str:
    parts = [f"## {b.label}"]
    if b.error:
        parts.append(f"**Failed**: {b.error}")
    if b.results:
        head = [
            "measurement",
            "what",
            "requests",
            "p50",
            "p90",
            "p99",
            "max",
            "judged, per round",
            "goal",
            "verdict",
        ]
        rows = []
        for r in b.results:
            st = r.stats
            rows.append(
                [
                    r.name,
                    r.what,
                    str(st.n) if st else "-",
                    ms(st.p50_ms) if st else "-",
                    ms(st.p90_ms) if st else "-",
                    f"**{ms(st.p99_ms)}**" if st else "-",
                    ms(st.max_ms) if st else "-",
                    f"{r.judged_stat.removesuffix('_ms')}: {per_round(r)}" if r.rounds else "-",
                    r.goal or "-",
                    verdict(r),
                ]
            )
        parts.append(report.md_table(head, rows, {2, 3, 4, 5, 6, 7}))
        walk = next((r for r in b.results if r.name == "tags_walk"), None)
        legend = (
            f"{run.rounds} round(s), the measurements interleaved; each figure is the median of "
            "its per-round values, and a goal is judged on that median. Percentiles: nearest "
            "rank over a round's requests (after 20 warm-up requests, or one warm-up list); "
            f"whole lists and walks: {run.sizes.full_reps} per round. Requests: all rounds. "
        )
        if walk is not None:
            legend += f"A walk is {walk.items} requests, timed together. "
        if b.cpu is not None:
            c = b.cpu
            db = "" if c.database_pct is None else f"PostgreSQL {c.database_pct:.0f}%, "
            legend += (
                f"CPU during the measurements ({c.wall_s:.0f} s, % of one core): cargohold "
                f"{c.server_pct:.0f}%, {db}client {c.client_pct:.0f}%, rest of the machine "
                f"{c.other_pct:.0f}% (steal {c.steal_pct:.0f}%); load average "
                f"{c.load_start[0]:.2f} at the start, {c.load_end[0]:.2f} at the end."
            )
            if c.other_pct > 25:
                legend += (
                    " **Noisy**: other work used more than a quarter of a core; tail latencies "
                    "(p99, max) are the figures it inflates first."
                )
        parts.append(legend)
    for r in b.results:
        if r.profile is not None:
            parts.append(_profile_section(r.name, r.profile))
    seed = ", ".join(f"{k} {v:.1f} s" for k, v in b.seed_s.items())
    parts.append(
        f"Seeding: {seed}; database {b.db_bytes / procstat.MIB:.0f} MiB. "
        + (
            "The server's SQLite file was not ANALYZEd (cargohold does not run ANALYZE or "
            "PRAGMA optimize, so a real deployment's file has no statistics either)."
            if b.kind == "sqlite"
            else "ANALYZE ran after the load, as autovacuum would within a minute."
        )
    )
    parts.extend(f"Note: {n}." for n in b.notes)
    return "\n\n".join(parts)


def _profile_section(name: str, p: Profile) -> str:
    head = (
        f"**py-spy profile of `{name}`** (it ran again under "
        f"`py-spy record -r 200 -f raw --nolineno` on the worker process; raw stacks: "
        f"[bench-results/{p.file}](bench-results/{p.file})): {p.samples} samples, "
        f"{p.busy} of them busy ({100 * p.busy / max(p.samples, 1):.0f}%; in the rest the worker "
        "waited, for the next request or for the database)."
    )
    if not p.busy:
        return head
    rows = [
        [f"{pct:.0f}%", f"`{fn}`", f"{lp:.0f}%" if lp else "", f"`{lf}`" if lf else ""]
        for (fn, pct), (lf, lp) in itertools.zip_longest(p.inclusive, p.leaves, fillvalue=("", 0.0))
    ]
    table = report.md_table(
        ["busy samples", "on the stack (inclusive)", "busy samples", "running (leaf)"],
        rows,
        {0, 2},
    )
    return head + "\n\n" + table


def _data_section(run: ScaleRun) -> str:
    c = run.data_counts
    rows = [[k, f"{v:,}"] for k, v in c.items()]
    return (
        "## Data set\n\n"
        + report.md_table(["rows", "count"], rows, {1})
        + "\n\n"
        + f"Generated in {run.generate_s:.1f} s, the same for every database. Repository "
        f"`{BIG_REPO}` holds the {run.sizes.tags:,} tags (names like `v3.41.87-1a2b3c4d`, "
        "inserted out of name order) over up to 100 manifests; every other repository has one "
        "manifest tagged `latest`. Each blob is linked to one repository (about "
        f"{run.sizes.blobs // run.sizes.repos} per repository). Every tag row is live "
        "(`ended_at` NULL)."
    )


def _machine_section(env: sysinfo.Environment, run: ScaleRun) -> str:
    load_end = env.load_end or env.load_start
    return (
        "## Machine\n\n"
        f"{env.cpu_model}, {env.logical_cpus} logical CPUs, {env.memory_gib:.0f} GiB; "
        f"{env.os_name}, {env.kernel}; {env.python}; data on {env.data_fs}. Load average "
        f"(1/5/15 min) at the start {' / '.join(f'{x:.2f}' for x in env.load_start)}, at the "
        f"end {' / '.join(f'{x:.2f}' for x in load_end)}. "
        + " ".join(f"{k}: {v}." for k, v in env.versions.items())
        + " The machine is shared with other tenants; the CPU line under each database says "
        "how busy the rest of it was during the measurements."
    )


def render_text(run: ScaleRun) -> str:
    lines = []
    for b in run.backends:
        lines.append(f"{b.label}" + (f"  FAILED: {b.error}" if b.error else ""))
        for r in b.results:
            if r.stats:
                lines.append(
                    f"  {r.name:<16} p50 {r.stats.p50_ms:>8.2f} ms  p99 {r.stats.p99_ms:>8.2f} ms"
                    f"  max {r.stats.max_ms:>8.2f} ms  {r.goal or '':<30} "
                    + verdict(r, markdown=False)
                    + (f"  (rounds: {per_round(r)})" if len(r.rounds) > 1 else "")
                )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="bench/scale.py",
        description=doc.split("\n\n")[0],
        epilog="\n\n".join(doc.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small data set, few requests (< 1 min)")
    p.add_argument(
        "--database",
        type=parse_backend,
        action="append",
        metavar="sqlite|postgresql://...",
        help="database(s) to measure, repeatable (default: sqlite). For PostgreSQL give the "
        "server's URL: a fresh database is created there and dropped afterwards",
    )
    p.add_argument("--repos", type=int, help="repositories (default 10000; --quick 500)")
    p.add_argument("--tags", type=int, help="tags in bench/big (default 100000; --quick 5000)")
    p.add_argument("--blobs", type=int, help="blob rows (default 1000000; --quick 20000)")
    p.add_argument("--samples", type=int, help="requests per round of a latency figure (1000)")
    p.add_argument(
        "--rounds", type=int, help="rounds of every measurement, medians reported (3; --quick 1)"
    )
    p.add_argument("--out", type=Path, help="report (default docs/benchmarks-scale.md)")
    p.add_argument("--tmpdir", type=Path, help="where the data directories go")
    p.add_argument("--keep-data", action="store_true", help="keep the data directories")
    p.add_argument(
        "--profile",
        choices=("missed", "all", "none"),
        default="missed",
        help="run these measurements again under py-spy: those that missed their goal "
        "(default), all, or none",
    )
    p.add_argument(
        "--cargohold", type=Path, default=REPO / ".venv" / "bin" / "cargohold", help="executable"
    )
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for /v2/")
    p.add_argument(
        "--rev",
        help="benchmark this commit instead of the work tree: its src/ is exported with "
        "`git archive` into the temporary directory and put first on PYTHONPATH",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    words = list(sys.argv[1:] if argv is None else argv)
    shown = [w if "://" not in w else _hide_password(w) for w in words]
    invocation = " ".join([".venv/bin/python bench/scale.py", *shown])
    return servers.run_cli(lambda: run(args, invocation), log)


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def run(args: argparse.Namespace, invocation: str) -> int:
    started = time.time()
    base = QUICK if args.quick else FULL
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.rounds < 1:
        raise SetupError("--rounds must be >= 1")
    sizes = Sizes(
        repos=args.repos or base.repos,
        tags=args.tags or base.tags,
        blobs=args.blobs or base.blobs,
        samples=args.samples or base.samples,
        full_reps=base.full_reps,
    )
    if sizes.repos < 2 or sizes.tags < 2 or sizes.blobs < sizes.repos:
        raise SetupError("need at least 2 repositories, 2 tags and a blob per repository")
    if not os.access(args.cargohold, os.X_OK):
        raise SetupError(f"cargohold not found at {args.cargohold} (make install)")
    backends: list[Backend] = args.database or [parse_backend("sqlite")]
    tmp = Path(args.tmpdir or tempfile.gettempdir())
    need = 2 * GIB_PER_MILLION_BLOBS * max(sizes.blobs, 100_000) // 1_000_000
    if shutil.disk_usage(tmp).free < need:
        raise SetupError(f"{tmp} has less than {need >> 20} MiB free")
    out = (
        args.out.resolve()
        if args.out
        else (SCRATCH_OUT / "quick" / DEFAULT_OUT.name if args.quick else DEFAULT_OUT)
    )
    results_dir = out.parent / "bench-results"
    results_dir.mkdir(parents=True, exist_ok=True)
    for old in results_dir.glob("scale-*.pyspy.txt"):
        old.unlink()

    log(f"generating {sizes.repos:,} repositories, {sizes.tags:,} tags, {sizes.blobs:,} blobs")
    t0 = time.monotonic()
    data = make_dataset(sizes)
    generate_s = time.monotonic() - t0
    counts = {}
    for table, _, rows in table_rows(data, None):
        counts[table] = sum(1 for _ in rows)
    counts["tag (in bench/big)"] = len(data.big_tags)

    workdir = Path(tempfile.mkdtemp(prefix="cargohold-scale-", dir=tmp))
    env = sysinfo.collect(workdir)
    revision, fingerprint = sysinfo.git_revision(REPO), sysinfo.source_fingerprint(REPO)
    args.source_env = {}
    runs: list[BackendRun] = []
    try:
        if args.rev:
            revision, fingerprint, args.source_env = export_rev(args, workdir)
        for backend in backends:
            try:
                runs.append(run_backend(backend, data, sizes, args, workdir, results_dir))
            except servers.ServerError as exc:
                runs.append(BackendRun(backend.label, backend.kind, error=str(exc)))
                log(f"{backend.label}: {exc}")
    finally:
        env.load_end = os.getloadavg()
        if args.keep_data or any(r.error for r in runs):
            if not args.keep_data:
                for db in workdir.glob("*/cargohold.db*"):
                    db.unlink()
            log(f"kept {workdir} (server logs)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    env.versions = {"cargohold": sysinfo.cargohold_version(args.cargohold.parent / "python")}
    env.versions["repository"] = f"git {revision} (source fingerprint {fingerprint})"
    scale = ScaleRun(
        args.quick, started, sizes, counts, generate_s, runs, invocation, rounds=args.rounds
    )
    scale.warnings = [] if args.rev else changed_source(revision, fingerprint)
    scale.duration_s = time.time() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(scale, env))
    raw = results_dir / "scale.json"
    doc = {"run": asdict(scale), "environment": asdict(env)}
    raw.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(render_text(scale))
    log(f"wrote {out} and {raw} in {scale.duration_s:.0f}s")
    return 1 if any(r.error for r in runs) else 0


def export_rev(args: argparse.Namespace, workdir: Path) -> tuple[str, str, dict[str, str]]:
    """--rev: src/ of that commit into the work directory; (revision, fingerprint, env)."""
    try:
        sha, env = sysinfo.export_source(
            REPO, args.rev, workdir / "source", args.cargohold.parent / "python"
        )
    except ValueError as exc:
        raise SetupError(str(exc)) from exc
    log(f"benchmarking commit {sha} (src/ exported to {workdir / 'source'})")
    return f"{sha} (--rev {args.rev})", sysinfo.source_fingerprint(workdir / "source"), env


def changed_source(revision: str, fingerprint: str) -> list[str]:
    """A warning when cargohold's code changed between the start of the run and now."""
    now_rev, now_fp = sysinfo.git_revision(REPO), sysinfo.source_fingerprint(REPO)
    if (now_rev, now_fp) == (revision, fingerprint):
        return []
    return [
        f"cargohold's source changed while this ran (git {revision} -> {now_rev}, source "
        f"fingerprint {fingerprint} -> {now_fp}): a server started after the change ran other "
        "code, so the figures may mix two versions."
    ]


if __name__ == "__main__":
    sys.exit(main())
