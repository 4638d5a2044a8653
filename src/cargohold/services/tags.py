"""Tags through the API: list with history, create or move, delete, set or clear an
expiration, the time machine (restore, remove from history), and the expiry job.

A tag is a series of lifetime rows (`started_at`, `ended_at`); the open row is the live
tag unless its `expires_at` passed (db/queries.LIVE). The expiry job ends expired rows
at their expiry, so from then on they are history like a moved or deleted tag. Within
the namespace's window (`namespace.time_machine_seconds`, else `tags.time_machine_seconds`)
any ended row can be restored: a new live row starts on its manifest. An admin may remove
a tag's ended rows for good. Immutable tags (services/immutability.py) refuse moves,
deletes, expirations and restores that would replace them (Conflict)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cargohold.auth.principal import ANONYMOUS, Principal
from cargohold.db import queries
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_datetime
from cargohold.domain import mediatypes as mt
from cargohold.domain.digests import parse_digest
from cargohold.domain.durations import MAX as MAX_DURATION
from cargohold.domain.errors import DigestInvalid, Unsupported
from cargohold.domain.names import is_tag
from cargohold.services import immutability
from cargohold.services.audit import AuditEntry, AuditLog, Origin
from cargohold.services.problems import Conflict, Invalid, NotFound

log = logging.getLogger(__name__)

MAX_PAGE = 100
EXPIRY_BATCH = 500

REPOSITORY = sql(
    """SELECT r.id, n.time_machine_seconds FROM repository r
       JOIN namespace n ON n.id = r.namespace_id WHERE r.name = :name"""
)
MANIFEST = sql("SELECT id FROM manifest WHERE repository_id = :repository_id AND digest = :digest")
MANIFEST_DIGEST = sql("SELECT digest FROM manifest WHERE id = :id")
SET_EXPIRY = sql("UPDATE tag SET expires_at = :expires_at WHERE id = :id")
# When a row stopped being live: its end, or its expiry once that passed.
_END = "COALESCE(t.ended_at, t.expires_at)"
_HISTORY = "(t.ended_at IS NOT NULL OR (t.expires_at IS NOT NULL AND t.expires_at <= :now))"
RESTORABLE = sql(
    f"""SELECT 1 FROM tag t WHERE t.repository_id = :repository_id AND t.name = :name
        AND t.manifest_id = :manifest_id AND {_HISTORY} AND {_END} > :cutoff LIMIT 1"""
)
DELETE_HISTORY = sql(
    f"""DELETE FROM tag WHERE id IN (SELECT t.id FROM tag t
        WHERE t.repository_id = :repository_id AND t.name = :name AND {_HISTORY})"""
)
DELETE_HISTORY_OF_MANIFEST = sql(
    f"""DELETE FROM tag WHERE id IN (SELECT t.id FROM tag t
        WHERE t.repository_id = :repository_id AND t.name = :name
        AND t.manifest_id = :manifest_id AND {_HISTORY})"""
)
# Open rows whose expiry passed, on the partial index ix_tag_live_expiry (expires_at
# WHERE ended_at IS NULL): neither the expired history nor the live tags without an
# expiry, however many, are scanned. SQLite is told so: without statistics (it has none
# unless ANALYZE ran) it prefers ix_tag_ended_at, every open row, for `ended_at IS NULL`.
_DUE = """SELECT t.id, t.name, r.name, m.digest, t.expires_at FROM tag t {hint}
       JOIN repository r ON r.id = t.repository_id
       JOIN manifest m ON m.id = t.manifest_id
       WHERE t.ended_at IS NULL AND t.expires_at IS NOT NULL AND t.expires_at <= :now
       ORDER BY t.expires_at LIMIT :limit"""
DUE = sql(_DUE.format(hint="INDEXED BY ix_tag_live_expiry"), postgres=_DUE.format(hint=""))
# The bytes of an image's blobs (config and layers); none for an index.
_INDEXES = ", ".join(f"'{t}'" for t in sorted(mt.INDEXES))
_SIZE = f"""CASE WHEN m.media_type IN ({_INDEXES}) THEN NULL ELSE
    (SELECT COALESCE(SUM(b.size), 0) FROM manifest_blob mb JOIN blob b ON b.id = mb.blob_id
     WHERE mb.manifest_id = m.id) END"""
_COLUMNS = f"""t.id, t.name, m.digest, m.media_type, t.started_at, t.ended_at, t.expires_at,
    {_SIZE}"""
# Live tags by name (on the live-tag index); history newest first (by row id).
ACTIVE_PAGE = sql(
    f"""SELECT {_COLUMNS} FROM tag t JOIN manifest m ON m.id = t.manifest_id
        WHERE t.repository_id = :repository_id AND {queries.LIVE} AND t.name > :after
        ORDER BY t.name LIMIT :limit"""
)
ACTIVE_ONE = sql(
    f"""SELECT {_COLUMNS} FROM tag t JOIN manifest m ON m.id = t.manifest_id
        WHERE t.repository_id = :repository_id AND {queries.LIVE} AND t.name = :name
        AND t.name > :after LIMIT :limit"""
)
HISTORY_PAGE = sql(
    f"""SELECT {_COLUMNS} FROM tag t JOIN manifest m ON m.id = t.manifest_id
        WHERE t.repository_id = :repository_id AND t.id < :before
        ORDER BY t.id DESC LIMIT :limit"""
)
HISTORY_ONE = sql(
    f"""SELECT {_COLUMNS} FROM tag t JOIN manifest m ON m.id = t.manifest_id
        WHERE t.repository_id = :repository_id AND t.name = :name AND t.id < :before
        ORDER BY t.id DESC LIMIT :limit"""
)
LAST_ID = 2**62  # above any row id: the first page of the history


@dataclass(frozen=True, slots=True)
class TagRow:
    """One lifetime row of a tag."""

    id: int
    name: str
    digest: str
    media_type: str
    started_at: datetime
    ended_at: datetime | None
    expires_at: datetime | None
    size: int | None

    @property
    def is_manifest_list(self) -> bool:
        return self.media_type in mt.INDEXES

    @property
    def end(self) -> datetime | None:
        """When the row stopped (or stops) being live, if it has an end."""
        return self.ended_at or self.expires_at


@dataclass(frozen=True, slots=True)
class TagPage:
    tags: list[TagRow]
    next_page: str | None
    window: timedelta  # the namespace's time machine window


@dataclass(frozen=True, slots=True)
class Repo:
    id: int
    name: str
    window: timedelta


def _row(row: tuple[Any, ...]) -> TagRow:
    started = as_datetime(row[4])
    assert started is not None
    return TagRow(
        int(row[0]),
        str(row[1]),
        str(row[2]),
        str(row[3]),
        started,
        as_datetime(row[5]),
        as_datetime(row[6]),
        None if row[7] is None else int(row[7]),
    )


def _token(kind: str, value: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def _untoken(token: str, kind: str) -> str:
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        found, _, value = raw.decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise Invalid("next_page is not a page token of this list") from exc
    if found != kind or len(value) > 255:
        raise Invalid("next_page is not a page token of this list")
    return value


def check_tag(tag: str) -> str:
    if not is_tag(tag):
        raise Invalid("tag must match [A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
    return tag


def check_digest(digest: str) -> str:
    try:
        return str(parse_digest(digest))
    except (DigestInvalid, Unsupported) as exc:
        raise Invalid(f"manifest_digest: {exc.message}") from exc


def check_expiration(expiration: datetime | None) -> datetime | None:
    """An expiration must lie in the future, and within ten years."""
    if expiration is None:
        return None
    now = utcnow()
    if expiration <= now:
        raise Invalid("expiration is in the past")
    if expiration > now + MAX_DURATION:
        raise Invalid("expiration is more than ten years away")
    return expiration


def from_unix(seconds: float | None) -> datetime | None:
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise Invalid("expiration is not a time") from exc


async def find_repository(session: DbSession, name: str, default_window: int) -> Repo:
    row = await session.one(REPOSITORY, name=name)
    if row is None:
        raise NotFound("no such repository")
    seconds = default_window if row[1] is None else int(row[1])
    return Repo(int(row[0]), name, timedelta(seconds=seconds))


async def find_manifest(session: DbSession, repo: Repo, digest: str) -> int:
    manifest_id = await session.value(MANIFEST, repository_id=repo.id, digest=digest)
    if manifest_id is None:
        raise NotFound(f"no manifest {digest} in {repo.name}")
    return int(manifest_id)


class TagService:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        *,
        time_machine_seconds: int,
        content_changed: Callable[[], None],
    ) -> None:
        self.db = db
        self.audit = audit
        self.time_machine_seconds = time_machine_seconds
        self.content_changed = content_changed  # empties the metadata caches (tag -> digest)

    async def _repo(self, session: DbSession, name: str) -> Repo:
        return await find_repository(session, name, self.time_machine_seconds)

    # -- reading -------------------------------------------------------------------------

    async def page(
        self,
        repository: str,
        *,
        active_only: bool,
        specific: str | None = None,
        limit: int = MAX_PAGE,
        next_page: str | None = None,
    ) -> TagPage:
        """Live tags by name (`active_only`), or every lifetime row newest first."""
        limit = max(1, min(limit, MAX_PAGE))
        if specific is not None:
            check_tag(specific)
        now = utcnow()
        async with self.db.read() as session:
            repo = await self._repo(session, repository)
            common: dict[str, Any] = {"repository_id": repo.id, "limit": limit + 1, "now": now}
            if specific is not None:
                common["name"] = specific
            if active_only:
                after = _untoken(next_page, "n") if next_page else ""
                if after and not is_tag(after):  # a tag name, or no token of ours
                    raise Invalid("next_page is not a page token of this list")
                statement = ACTIVE_ONE if specific is not None else ACTIVE_PAGE
                rows = await session.all(statement, after=after, **common)
            else:
                before = LAST_ID
                if next_page:
                    text = _untoken(next_page, "i")
                    # isdigit() alone takes "²" and other digits int() refuses.
                    if not (text.isascii() and text.isdigit() and len(text) <= 19):
                        raise Invalid("next_page is not a page token of this list")
                    before = min(int(text), LAST_ID)
                statement = HISTORY_ONE if specific is not None else HISTORY_PAGE
                rows = await session.all(statement, before=before, **common)
        tags = [_row(r) for r in rows[:limit]]
        token = None
        if len(rows) > limit and tags:
            last = tags[-1]
            token = _token("n", last.name) if active_only else _token("i", str(last.id))
        return TagPage(tags, token, repo.window)

    # -- changing ------------------------------------------------------------------------

    async def _open_row(
        self, session: DbSession, repo: Repo, tag: str
    ) -> tuple[int, int, datetime | None] | None:
        """(row id, manifest id, expiry) of the live tag, or None. An open row whose
        expiry passed is ended here first (at its expiry) and audited, as the job does."""
        current = await queries.live_tag(session, repo.id, tag)
        if current is None:
            return None
        expires = as_datetime(current[2])
        if expires is not None and expires <= utcnow():
            if await queries.end_expired_tag(session, current[0]):
                digest = await session.value(MANIFEST_DIGEST, id=current[1])
                details = {"tag": tag, "digest": digest, "expires_at": expires.isoformat()}
                entry = AuditEntry("tag_expired", ANONYMOUS, Origin(), repository=repo.name)
                entry.details = details
                await self.audit.write(session, entry)
            return None
        return int(current[0]), int(current[1]), expires

    async def _write(self, session: DbSession, entry: AuditEntry, repo: Repo) -> None:
        entry.repository = repo.name
        await self.audit.write(session, entry)

    async def put(
        self,
        repository: str,
        tag: str,
        *,
        digest: str | None,
        set_expiration: bool,
        expiration: datetime | None,
        principal: Principal,
        origin: Origin,
    ) -> bool:
        """Create or move `tag` to the manifest `digest`, and/or set (or clear, None) its
        expiration; True when the tag was created."""
        check_tag(tag)
        if digest is None and not set_expiration:
            raise Invalid("give manifest_digest, expiration, or both")
        if digest is not None:
            digest = check_digest(digest)
        if set_expiration:
            check_expiration(expiration)
        new_expiry = expiration if set_expiration else None

        async def work(session: DbSession) -> tuple[bool, bool]:
            """(created, changed)"""
            repo = await self._repo(session, repository)
            manifest_id = await find_manifest(session, repo, digest) if digest else None
            current = await self._open_row(session, repo, tag)
            rules = await immutability.rules(session, repo.id)
            rule = immutability.matching(rules, tag)
            if current is None:
                if manifest_id is None:
                    raise NotFound(f"no live tag {tag} in {repository}")
                if rule is not None and new_expiry is not None:
                    raise Conflict(immutability.refusal(tag, rule, "given an expiration"))
                await queries.insert_tag(session, repo.id, tag, manifest_id, expires_at=new_expiry)
                await queries.touch_repository(session, repo.id)
                details = {"tag": tag, "old": None, "new": digest}
                if new_expiry is not None:
                    details["expires_at"] = new_expiry.isoformat()
                await self._write(session, _entry("create_tag", principal, origin, details), repo)
                return True, True
            row_id, current_manifest, current_expiry = current
            changed = False
            if manifest_id is not None and manifest_id != current_manifest:
                if rule is not None:
                    raise Conflict(immutability.refusal(tag, rule, "moved"))
                old = await session.value(MANIFEST_DIGEST, id=current_manifest)
                await queries.end_tag(session, row_id)
                await queries.insert_tag(session, repo.id, tag, manifest_id, expires_at=new_expiry)
                await queries.touch_repository(session, repo.id)
                details = {"tag": tag, "old": old, "new": digest}
                if new_expiry is not None:
                    details["expires_at"] = new_expiry.isoformat()
                await self._write(session, _entry("move_tag", principal, origin, details), repo)
                return False, True
            if set_expiration and new_expiry != current_expiry:
                if rule is not None and new_expiry is not None:
                    raise Conflict(immutability.refusal(tag, rule, "given an expiration"))
                await session.run(SET_EXPIRY, expires_at=new_expiry, id=row_id)
                details = {
                    "tag": tag,
                    "digest": await session.value(MANIFEST_DIGEST, id=current_manifest),
                    "expiration": None if new_expiry is None else new_expiry.isoformat(),
                    "old_expiration": None
                    if current_expiry is None
                    else current_expiry.isoformat(),
                }
                entry = _entry("change_tag_expiration", principal, origin, details)
                await self._write(session, entry, repo)
                changed = True
            return False, changed

        created, changed = await run_write(self.db, work)
        if changed:
            self.content_changed()
        return created

    async def delete(
        self, repository: str, tag: str, *, principal: Principal, origin: Origin
    ) -> None:
        check_tag(tag)

        async def work(session: DbSession) -> None:
            repo = await self._repo(session, repository)
            current = await self._open_row(session, repo, tag)
            if current is None:
                raise NotFound(f"no live tag {tag} in {repository}")
            rule = await immutability.rule_for(session, repo.id, tag)
            if rule is not None:
                raise Conflict(immutability.refusal(tag, rule, "deleted"))
            await queries.end_tag(session, current[0])
            await queries.touch_repository(session, repo.id)
            digest = await session.value(MANIFEST_DIGEST, id=current[1])
            details = {"tag": tag, "digest": digest}
            await self._write(session, _entry("delete_tag", principal, origin, details), repo)

        await run_write(self.db, work)
        self.content_changed()

    async def restore(
        self,
        repository: str,
        tag: str,
        digest: str,
        *,
        principal: Principal,
        origin: Origin,
    ) -> None:
        """Make `tag` live on `digest` again, if it pointed there within the window: a
        new row starts (without expiration), ending the live one if any."""
        check_tag(tag)
        digest = check_digest(digest)

        async def work(session: DbSession) -> bool:
            repo = await self._repo(session, repository)
            manifest_id = await find_manifest(session, repo, digest)
            now = utcnow()
            found = await session.value(
                RESTORABLE,
                repository_id=repo.id,
                name=tag,
                manifest_id=manifest_id,
                now=now,
                cutoff=now - repo.window,
            )
            if found is None:
                seconds = int(repo.window.total_seconds())
                raise NotFound(
                    f"tag {tag} did not point at {digest} within the time machine's window "
                    f"({seconds} seconds)"
                )
            current = await self._open_row(session, repo, tag)
            old = None
            if current is not None:
                if current[1] == manifest_id and current[2] is None:
                    return False  # already live there, for good
                rule = await immutability.rule_for(session, repo.id, tag)
                if rule is not None and current[1] != manifest_id:
                    raise Conflict(immutability.refusal(tag, rule, "moved"))
                old = await session.value(MANIFEST_DIGEST, id=current[1])
                await queries.end_tag(session, current[0])
            await queries.insert_tag(session, repo.id, tag, manifest_id)
            await queries.touch_repository(session, repo.id)
            details = {"tag": tag, "digest": digest, "old": old}
            await self._write(session, _entry("restore_tag", principal, origin, details), repo)
            return True

        if await run_write(self.db, work):
            self.content_changed()

    async def remove_history(
        self,
        repository: str,
        tag: str,
        digest: str | None,
        *,
        principal: Principal,
        origin: Origin,
    ) -> int:
        """Delete the tag's ended rows (only those on `digest` if given): they leave the
        time machine for good, and the collector may take what only they kept."""
        check_tag(tag)
        if digest is not None:
            digest = check_digest(digest)

        async def work(session: DbSession) -> int:
            repo = await self._repo(session, repository)
            params: dict[str, Any] = {"repository_id": repo.id, "name": tag, "now": utcnow()}
            if digest is not None:
                params["manifest_id"] = await find_manifest(session, repo, digest)
                removed = await session.run(DELETE_HISTORY_OF_MANIFEST, **params)
            else:
                removed = await session.run(DELETE_HISTORY, **params)
            if removed == 0:
                on = f" on {digest}" if digest else ""
                raise NotFound(f"tag {tag} has no history{on} in {repository}")
            details = {"tag": tag, "digest": digest, "rows": removed}
            entry = _entry("permanently_delete_tag", principal, origin, details)
            await self._write(session, entry, repo)
            return removed

        removed = await run_write(self.db, work)
        self.content_changed()
        return removed

    # -- the expiry job ------------------------------------------------------------------

    async def end_expired(self, *, batch: int = EXPIRY_BATCH) -> int:
        """End the open rows whose expiry passed (ended_at = expires_at), `batch` per
        transaction, each with a `tag_expired` entry; the number ended. Reads hide expired
        tags already: this turns them into history and keeps the scan short."""

        async def work(session: DbSession) -> tuple[int, int]:
            rows = await session.all(DUE, now=utcnow(), limit=batch)
            ended = 0
            changed: list[str] = []  # repositories whose last_modified moves: one UPDATE
            for row_id, tag, repository, digest, expires_at in rows:
                if not await queries.end_expired_tag(session, row_id):
                    continue  # a push or another worker ended it meanwhile
                ended += 1
                changed.append(repository)
                expires = as_datetime(expires_at)
                details = {
                    "tag": tag,
                    "digest": digest,
                    "expires_at": expires.isoformat() if expires else None,
                }
                entry = AuditEntry("tag_expired", ANONYMOUS, Origin(), repository=repository)
                entry.details = details
                await self.audit.write(session, entry)
            await queries.touch_repositories(session, changed)
            return len(rows), ended

        async with self.db.read() as session:  # the usual answer, without a write lock
            if not await session.all(DUE, now=utcnow(), limit=1):
                return 0
        total = 0
        while True:
            seen, ended = await run_write(self.db, work)
            total += ended
            if seen < batch:
                break
            await asyncio.sleep(0)  # let waiting requests in between batches
        if total:
            log.info("ended %d expired tags", total)
            self.content_changed()
        return total


def _entry(kind: str, principal: Principal, origin: Origin, details: dict[str, Any]) -> AuditEntry:
    return AuditEntry(kind, principal, origin, details=details)


# -- an organization's time machine window ---------------------------------------------------

MAX_WINDOW_SECONDS = int(MAX_DURATION.total_seconds())  # ten years
ORG_WINDOW = sql(
    "SELECT id, time_machine_seconds FROM namespace WHERE name = :name AND kind = 'org'"
)
SET_ORG_WINDOW = sql("UPDATE namespace SET time_machine_seconds = :seconds WHERE id = :id")


class TimeMachineWindows:
    """How long an organization's ended tags stay restorable (Quay's `tag_expiration_s`).
    None resets the organization to the configured default."""

    def __init__(self, db: Database, audit: AuditLog, *, default_seconds: int) -> None:
        self.db = db
        self.audit = audit
        self.default_seconds = default_seconds

    async def get(self, org: str) -> int:
        async with self.db.read() as session:
            row = await session.one(ORG_WINDOW, name=org)
        if row is None:
            raise NotFound("no such organization")
        return self.default_seconds if row[1] is None else int(row[1])

    async def set(self, org: str, seconds: int | None, entry: AuditEntry) -> None:
        if seconds is not None and not 0 <= seconds <= MAX_WINDOW_SECONDS:
            raise Invalid(f"tag_expiration_s is 0 to {MAX_WINDOW_SECONDS} seconds")

        async def work(session: DbSession) -> None:
            row = await session.one(ORG_WINDOW, name=org)
            if row is None:
                raise NotFound("no such organization")
            await session.run(SET_ORG_WINDOW, seconds=seconds, id=row[0])
            old = self.default_seconds if row[1] is None else int(row[1])
            entry.namespace = org
            entry.details.update(
                {
                    "tag_expiration_s": self.default_seconds if seconds is None else seconds,
                    "old_tag_expiration_s": old,
                }
            )
            await self.audit.write(session, entry)

        await run_write(self.db, work)
