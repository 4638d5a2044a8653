"""Storage quotas of namespaces: the hard limit, the warning, their API, the recalculation
(docs/quotas.md).

The figures themselves are kept by db/usage.py on every blob link. This service adds the
rules on the paths that add links (an upload's publish, a mount): a link that would take
the namespace past its hard limit raises QuotaExceeded (DENIED), and its transaction rolls
back, leaving no link; an attempt is audited `quota_exceeded` (queued: the transaction
that would have carried it is gone). A link that takes usage to the warning threshold is
audited `quota_warning` in its own transaction, once per crossing: `quota_warned_at`
records it; it is cleared when usage falls back below (an unlink with the policy, or a
quota change), and a crossing is also recognised by usage before and after the link, so
a stale mark never hides a new crossing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from cargohold.auth.permissions import TEAM_ROLES, namespace_right
from cargohold.auth.principal import Principal
from cargohold.auth.roles import NamespaceRight
from cargohold.db import queries
from cargohold.db import usage as accounting
from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.usage import Difference, NamespaceUsage, QuotaPolicy
from cargohold.db.values import as_bool, as_datetime
from cargohold.domain.errors import QuotaExceeded
from cargohold.services.audit import AuditEntry, AuditLog, Origin
from cargohold.services.problems import Invalid, NotFound
from cargohold.settings import QuotaSettings

__all__ = ["Difference", "NamespaceQuota", "QuotaPolicy", "Quotas", "human_bytes"]

NAMESPACE = sql(
    """SELECT id, name, kind, used_bytes, quota_bytes, quota_warning_percent, quota_warned_at
       FROM namespace WHERE name = :name"""
)
NAMESPACE_FOR_UPDATE = sql(
    """SELECT id, name, kind, used_bytes, quota_bytes, quota_warning_percent, quota_warned_at
       FROM namespace WHERE name = :name""",
    postgres="""SELECT id, name, kind, used_bytes, quota_bytes, quota_warning_percent,
       quota_warned_at FROM namespace WHERE name = :name FOR UPDATE""",
)
SET_QUOTA = sql(
    "UPDATE namespace SET quota_bytes = :quota, quota_warning_percent = :percent WHERE id = :id"
)
# What an upload's early check reads: the namespace's usage and limit, and whether it holds
# the digest already (then the blob adds nothing).
ADMISSION = sql(
    """SELECT n.name, n.used_bytes, n.quota_bytes,
              EXISTS (SELECT 1 FROM blob b JOIN namespace_blob nb ON nb.blob_id = b.id
                      WHERE b.digest = :digest AND nb.namespace_id = n.id) AS held
       FROM namespace n WHERE n.name = :name"""
)
REPOSITORY_USAGE = sql(
    """SELECT n.id, n.name, n.kind, n.used_bytes, n.quota_bytes, n.quota_warning_percent,
              n.quota_warned_at, r.used_bytes, r.changed_at
       FROM repository r JOIN namespace n ON n.id = r.namespace_id
       WHERE r.name = :name AND r.deleted_at IS NULL"""
)
MAX_QUOTA_BYTES = 2**62


def human_bytes(n: int) -> str:
    """1536 -> "1.5 KiB": sizes as the messages and the API's `limit` show them."""
    if abs(n) < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit}"


@dataclass(frozen=True, slots=True)
class NamespaceQuota:
    """A namespace's usage and the quota that applies to it."""

    namespace_id: int
    name: str
    kind: str
    used_bytes: int
    own_bytes: int | None  # set on the namespace (None: the default applies)
    own_warning_percent: int | None
    limit_bytes: int | None  # what applies (None: unlimited)
    warning_percent: int
    warned_at: datetime | None

    @property
    def default_config(self) -> bool:
        """The limit comes from the settings (`quota.default_bytes`), not the namespace."""
        return self.own_bytes is None and self.limit_bytes is not None

    @property
    def warning_bytes(self) -> int | None:
        if self.limit_bytes is None:
            return None
        return -(-self.limit_bytes * self.warning_percent // 100)

    def json(self) -> dict[str, Any]:
        """Quay's quota object (GET /organization/{org}/quota lists it) plus the usage."""
        limit = self.limit_bytes
        return {
            "id": self.namespace_id,
            "limit_bytes": limit,
            "limit": None if limit is None else human_bytes(limit),
            "default_config": self.default_config,
            "limits": [
                {"type": "Warning", "limit_percent": self.warning_percent},
                {"type": "Reject", "limit_percent": 100},
            ],
            "used_bytes": self.used_bytes,
            "used_percent": None if not limit else round(100 * self.used_bytes / limit, 2),
            "warned_at": _iso(self.warned_at),
        }

    def report(self) -> dict[str, Any]:
        """Quay's `quota_report` of an organization."""
        return {
            "quota_bytes": self.used_bytes,
            "configured_quota": self.limit_bytes,
            "percent_consumed": (
                None if not self.limit_bytes else round(100 * self.used_bytes / self.limit_bytes, 2)
            ),
        }


@dataclass(frozen=True, slots=True)
class RepositoryUsage:
    used_bytes: int
    namespace: NamespaceQuota
    last_modified: datetime | None  # repository.changed_at: its last push or tag change
    member: bool  # the viewer belongs to the namespace: may see its limit


async def belongs_to(
    session: DbSession, principal: Principal, namespace_id: int, kind: str
) -> bool:
    """Superusers, the user of a user's namespace, members of any team of an organization
    (robots included): who may read the namespace's quota (as GET .../quota allows)."""
    if await namespace_right(session, principal, namespace_id, kind) is not NamespaceRight.NONE:
        return True
    if kind != "org" or principal.id is None or principal.is_anonymous:
        return False
    rows = await session.all(
        TEAM_ROLES, org=namespace_id, kind=principal.kind.value, member=principal.id
    )
    return bool(rows)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


class Quotas:
    def __init__(self, db: Database, audit: AuditLog, policy: QuotaPolicy = QuotaPolicy()) -> None:
        self.db = db
        self.audit = audit
        self.policy = policy

    @classmethod
    def from_settings(cls, db: Database, audit: AuditLog, settings: QuotaSettings) -> Quotas:
        return cls(db, audit, QuotaPolicy(settings.default_bytes, settings.default_warning_percent))

    # -- on the push path --------------------------------------------------------------------

    async def link(
        self,
        session: DbSession,
        repository_id: int,
        blob_id: int,
        size: int,
        *,
        repository: str,
        principal: Principal,
        origin: Origin,
    ) -> None:
        """Link a blob into a repository (counted), enforcing the namespace's quota.
        Raises QuotaExceeded when the namespace's usage would pass its hard limit; the
        caller's transaction must then roll back (run_write does)."""
        change = await queries.link_blob(session, repository_id, blob_id, size)
        if change is None:
            return  # nothing new in the namespace: nothing to check
        limit = self.policy.limit(change.quota_bytes)
        # Only bytes added are refused: a zero-byte blob passes even over the limit.
        if limit is not None and change.delta > 0 and change.used_bytes > limit:
            self._refuse(
                change.name, limit, change.before, change.delta, repository, principal, origin
            )
        await self._warn_if_crossed(session, change, principal, origin, repository)

    async def admit(
        self,
        namespace: str,
        *,
        digest: str | None,
        size: int | None,
        repository: str,
        principal: Principal,
        origin: Origin,
    ) -> None:
        """Refuse an upload's bytes before they are written or moved into blob storage
        when the link would refuse them: a blob of `size` bytes (None: not known yet, but
        not empty) that the namespace does not hold, while it is at its hard limit or the
        blob would take it past. One indexed read outside any transaction: the link's
        check in its transaction stays the exact one. QuotaExceeded, audited as the
        link's refusal is."""
        if size == 0:
            return
        async with self.db.read() as session:
            row = await session.one(ADMISSION, name=namespace, digest=digest or "")
        if row is None:
            return  # no namespace yet: the link creates it and checks
        name, used, quota, held = str(row[0]), int(row[1]), row[2], as_bool(row[3])
        limit = self.policy.limit(None if quota is None else int(quota))
        if limit is None or held:
            return
        # Size unknown: some bytes are coming, and at the limit any byte is one too many.
        if (used >= limit) if size is None else (used + size > limit):
            self._refuse(name, limit, used, size, repository, principal, origin)

    def _refuse(
        self,
        namespace: str,
        limit: int,
        used: int,
        requested: int | None,
        repository: str | None,
        principal: Principal,
        origin: Origin,
    ) -> NoReturn:
        details = {"quota_bytes": limit, "used_bytes": used, "requested_bytes": requested}
        self.audit.record(
            AuditEntry(
                "quota_exceeded",
                principal,
                origin,
                namespace=namespace,
                repository=repository,
                details=dict(details),
            )
        )
        if requested is None:
            more = f"its usage is {human_bytes(used)}"
        else:
            more = (
                f"{human_bytes(requested)} more would bring its usage to "
                f"{human_bytes(used + requested)}"
            )
        raise QuotaExceeded(
            f"namespace {namespace} is over its quota of {human_bytes(limit)}: {more}",
            detail={"namespace": namespace, **details},
        )

    async def unlink(
        self, session: DbSession, repository_id: int, blob_id: int, size: int | None = None
    ) -> None:
        await queries.unlink_blob(session, repository_id, blob_id, size, quota=self.policy)

    async def _warn_if_crossed(
        self,
        session: DbSession,
        change: NamespaceUsage,
        principal: Principal,
        origin: Origin,
        repository: str | None,
    ) -> None:
        threshold = self.policy.warning_bytes(change.quota_bytes, change.warning_percent)
        if threshold is None or change.used_bytes < threshold:
            return
        if change.warned_at is not None and change.before >= threshold:
            return  # warned already, and usage has not been below the threshold since
        await accounting.set_warned(session, change.namespace_id, utcnow())
        await self.audit.write(
            session,
            AuditEntry(
                "quota_warning",
                principal,
                origin,
                namespace=change.name,
                repository=repository,
                details={
                    "used_bytes": change.used_bytes,
                    "quota_bytes": self.policy.limit(change.quota_bytes),
                    "warning_percent": self.policy.warning_percent(change.warning_percent),
                },
            ),
        )

    # -- reading and setting quotas (the API) -------------------------------------------

    def _view(self, row: tuple[Any, ...]) -> NamespaceQuota:
        ns_id, name, kind, used, own, percent, warned = row
        own = None if own is None else int(own)
        percent = None if percent is None else int(percent)
        return NamespaceQuota(
            int(ns_id),
            str(name),
            str(kind),
            int(used),
            own,
            percent,
            self.policy.limit(own),
            self.policy.warning_percent(percent),
            as_datetime(warned),
        )

    async def namespace(self, name: str) -> NamespaceQuota:
        async with self.db.read() as session:
            row = await session.one(NAMESPACE, name=name)
        if row is None:
            raise NotFound(f"no namespace {name}")
        return self._view(row)

    async def repository(self, name: str, viewer: Principal) -> RepositoryUsage:
        """The repository's usage and its namespace's quota, with whether `viewer`
        belongs to the namespace (only members see the namespace's limit)."""
        async with self.db.read() as session:
            row = await session.one(REPOSITORY_USAGE, name=name)
            if row is None:
                raise NotFound("no such repository")
            member = await belongs_to(session, viewer, int(row[0]), str(row[2]))
        return RepositoryUsage(int(row[7]), self._view(row[:7]), as_datetime(row[8]), member)

    async def set(
        self, name: str, limit_bytes: int | None, warning_percent: int | None, audit: AuditEntry
    ) -> NamespaceQuota:
        """Set (or with None, clear) the namespace's own quota. Usage may already be above a
        new limit: nothing is deleted, only pushes that add bytes are refused."""
        if limit_bytes is not None and not 0 <= limit_bytes <= MAX_QUOTA_BYTES:
            raise Invalid(f"limit_bytes must be between 0 and {MAX_QUOTA_BYTES}")
        if warning_percent is not None and not 1 <= warning_percent <= 100:
            raise Invalid("warning_percent must be between 1 and 100")

        async def work(session: DbSession) -> NamespaceQuota:
            row = await session.one(NAMESPACE_FOR_UPDATE, name=name)
            if row is None:
                raise NotFound(f"no namespace {name}")
            old = self._view(row)
            await session.run(
                SET_QUOTA, id=old.namespace_id, quota=limit_bytes, percent=warning_percent
            )
            new = self._view((*row[:4], limit_bytes, warning_percent, row[6]))
            audit.namespace = name
            audit.details.update(
                {
                    "limit_bytes": limit_bytes,
                    "warning_percent": warning_percent,
                    "old_limit_bytes": old.own_bytes,
                    "old_warning_percent": old.own_warning_percent,
                }
            )
            await self.audit.write(session, audit)
            return await self._rearm(session, new, audit)

        return await run_write(self.db, work)

    async def _rearm(
        self, session: DbSession, quota: NamespaceQuota, cause: AuditEntry
    ) -> NamespaceQuota:
        """After a quota change: warn now if usage is at the new threshold (and was not
        warned), forget an old warning if it is below."""
        threshold = quota.warning_bytes
        above = threshold is not None and quota.used_bytes >= threshold
        if above and quota.warned_at is None:
            at: datetime | None = utcnow()
            await self.audit.write(
                session,
                AuditEntry(
                    "quota_warning",
                    cause.principal,
                    cause.origin,
                    namespace=quota.name,
                    details={
                        "used_bytes": quota.used_bytes,
                        "quota_bytes": quota.limit_bytes,
                        "warning_percent": quota.warning_percent,
                    },
                ),
            )
        elif not above and quota.warned_at is not None:
            at = None
        else:
            return quota
        await accounting.set_warned(session, quota.namespace_id, at)
        return NamespaceQuota(
            quota.namespace_id,
            quota.name,
            quota.kind,
            quota.used_bytes,
            quota.own_bytes,
            quota.own_warning_percent,
            quota.limit_bytes,
            quota.warning_percent,
            at,
        )

    # -- recalculation -----------------------------------------------------------------------

    async def check(self) -> list[Difference]:
        """What a recalculation from scratch would change (empty: the figures agree). On a
        read-only snapshot: pushes, deletes and the collector go on meanwhile."""
        async with self.db.snapshot() as session:
            return await accounting.differences(session)

    async def recalculate(self) -> list[Difference]:
        """Recalculate every figure from the blob links; what was wrong before."""

        async def work(session: DbSession) -> list[Difference]:
            await accounting.lock_links(session)
            found = await accounting.differences(session)
            if found:
                await accounting.repair(session)
            return found

        return await run_write(self.db, work)
