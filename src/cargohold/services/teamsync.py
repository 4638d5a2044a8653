"""Team membership synced from the identity provider's groups.

A team whose `sync_group` is set follows a group: an LDAP group DN (as the directory
spells it, checked when the sync is set) or an OpenID Connect group name (a value of the
groups claim). Membership rows the sync adds carry `team_member.synced = true`; the sync
adds and removes only those, never rows an administrator added by hand (a user who is
already a manual member stays one).

- At each sign-in through the provider (Authenticator.on_external_login): the user joins
  every synced team whose group lists them and leaves the synced teams whose group does
  not any more.
- LDAP also on a schedule (`auth.ldap.team_sync_interval_seconds`): each synced team's
  group members are read from the directory and the memberships of users who exist
  locally (signed in once through LDAP) are brought in line. A directory error leaves
  every membership as it was.

Setting a team's sync group keeps its members; removing it turns the synced members into
ordinary ones (the team keeps them, as Quay does)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cargohold.auth.identity import ExternalIdentity
from cargohold.auth.permissions import Permissions
from cargohold.auth.principal import ANONYMOUS, Principal
from cargohold.db.session import Database, DbSession, run_write
from cargohold.db.sql import sql
from cargohold.db.values import as_bool
from cargohold.services.audit import AuditEntry, AuditLog, Origin
from cargohold.settings import Settings

if TYPE_CHECKING:
    from cargohold.auth.ldap import LdapProvider

log = logging.getLogger(__name__)

SYNCED_TEAMS = sql(
    """SELECT t.id, t.name, n.name, t.sync_group FROM team t
       JOIN namespace n ON n.id = t.org_id WHERE t.sync_group IS NOT NULL"""
)
USER_TEAM_ROWS = sql(
    "SELECT team_id, synced FROM team_member WHERE kind = 'user' AND member_id = :user"
)
TEAM_USER_ROWS = sql(
    "SELECT member_id, synced FROM team_member WHERE kind = 'user' AND team_id = :team"
)
TEAM_SYNC_GROUP = sql("SELECT sync_group FROM team WHERE id = :team")
LDAP_USER = sql("SELECT id FROM user_account WHERE username = :name AND provider = 'ldap'")
ADD = sql(
    """INSERT INTO team_member (team_id, kind, member_id, synced)
       VALUES (:team, 'user', :user, :yes) ON CONFLICT DO NOTHING"""
)
REMOVE = sql(
    """DELETE FROM team_member
       WHERE team_id = :team AND kind = 'user' AND member_id = :user AND synced = :yes"""
)
USERNAME = sql("SELECT username FROM user_account WHERE id = :id")
TEAM = sql(
    """SELECT t.id, t.sync_group FROM team t JOIN namespace n ON n.id = t.org_id
       WHERE n.name = :org AND n.kind = 'org' AND t.name = :team"""
)
SET_SYNC_GROUP = sql("UPDATE team SET sync_group = :group WHERE id = :team")
RELEASE_SYNCED = sql("UPDATE team_member SET synced = :no WHERE team_id = :team AND synced = :yes")


@dataclass(frozen=True, slots=True)
class SyncedTeam:
    id: int
    name: str
    org: str
    group: str


@dataclass(frozen=True, slots=True)
class Change:
    team: SyncedTeam
    user_id: int
    added: bool


class TeamSyncError(Exception):
    """The sync group cannot be set (no such group, no provider with groups)."""


class TeamSync:
    def __init__(
        self, settings: Settings, db: Database, audit: AuditLog, permissions: Permissions
    ) -> None:
        self.provider = settings.auth.provider
        self.db = db
        self.audit = audit
        self.permissions = permissions
        self.ldap: LdapProvider | None = None
        if self.provider == "ldap":
            from cargohold.auth.ldap import LdapProvider  # ldap3 only where it is used

            self.ldap = LdapProvider(settings.auth.ldap)

    def _key(self, group: str) -> str:
        # LDAP DNs come from the server on both sides; their attribute types and the
        # usual naming attributes (cn, ou, dc) compare without case. OIDC groups are
        # opaque strings.
        return group.lower() if self.provider == "ldap" else group

    async def _teams(self, session: DbSession) -> list[SyncedTeam]:
        rows = await session.all(SYNCED_TEAMS)
        return [SyncedTeam(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    # -- at sign-in ------------------------------------------------------------------------

    async def at_login(self, principal: Principal, identity: ExternalIdentity) -> None:
        """The on_external_login hook. Never fails the sign-in: errors are logged."""
        if principal.id is None or identity.provider not in (None, self.provider):
            return
        try:
            await self.sync_user(principal, identity.groups)
        except Exception:
            log.exception("team sync for %s failed", principal.name)

    async def sync_user(self, principal: Principal, groups: Iterable[str]) -> list[Change]:
        """Bring one user's synced memberships in line with `groups`."""
        user_id = principal.id
        assert user_id is not None
        keys = {self._key(g) for g in groups}

        async def work(session: DbSession) -> list[Change]:
            teams = await self._teams(session)
            rows = {
                int(r[0]): as_bool(r[1]) for r in await session.all(USER_TEAM_ROWS, user=user_id)
            }
            changes = []
            for team in teams:
                wanted = self._key(team.group) in keys
                if wanted and team.id not in rows:
                    await session.run(ADD, team=team.id, user=user_id, yes=True)
                    changes.append(Change(team, user_id, True))
                elif not wanted and rows.get(team.id) is True:
                    await session.run(REMOVE, team=team.id, user=user_id, yes=True)
                    changes.append(Change(team, user_id, False))
            for change in changes:
                await self.audit.write(session, self._entry(change, principal, principal.name))
            return changes

        changes = await run_write(self.db, work)
        if changes:
            self.permissions.changed()
        return changes

    # -- on a schedule (LDAP) --------------------------------------------------------------

    async def sync_all(self) -> list[Change]:
        """The periodic job: every synced team against its LDAP group's members."""
        if self.ldap is None:
            return []
        async with self.db.read() as session:
            teams = await self._teams(session)
        changes: list[Change] = []
        for team in teams:
            try:
                changes += await self.sync_team(team)
            except Exception:
                log.exception("team sync of %s/%s failed", team.org, team.name)
        return changes

    async def sync_team(self, team: SyncedTeam) -> list[Change]:
        """One team against its group's current members (LDAP only)."""
        if self.ldap is None:
            return []
        uids = await self.ldap.group_members(team.group)
        members = {uid.lower() for uid in uids}

        async def work(session: DbSession) -> list[Change]:
            current = await session.one(TEAM_SYNC_GROUP, team=team.id)
            if current is None or current[0] != team.group:
                return []  # the team or its sync changed meanwhile: the next run sees it
            wanted: dict[int, str] = {}
            for name in members:  # local names are lower case; LDAP matches uids so too
                row = await session.one(LDAP_USER, name=name)
                if row is not None:
                    wanted[int(row[0])] = name
            rows = {
                int(r[0]): as_bool(r[1]) for r in await session.all(TEAM_USER_ROWS, team=team.id)
            }
            changes = []
            names = dict(wanted)
            for user_id in wanted:
                if user_id not in rows:
                    await session.run(ADD, team=team.id, user=user_id, yes=True)
                    changes.append(Change(team, user_id, True))
            for user_id, synced in rows.items():
                if synced and user_id not in wanted:
                    await session.run(REMOVE, team=team.id, user=user_id, yes=True)
                    changes.append(Change(team, user_id, False))
                    names[user_id] = str(await session.value(USERNAME, id=user_id))
            for change in changes:
                await self.audit.write(
                    session, self._entry(change, ANONYMOUS, names[change.user_id])
                )
            return changes

        changes = await run_write(self.db, work)
        if changes:
            self.permissions.changed()
        return changes

    def _entry(self, change: Change, principal: Principal, member: str | None) -> AuditEntry:
        return AuditEntry(
            "add_team_member" if change.added else "remove_team_member",
            principal,
            Origin(),
            namespace=change.team.org,
            details={
                "team": change.team.name,
                "member": member,
                "synced": True,
                "group": change.team.group,
                "source": "login" if principal.id is not None else "schedule",
            },
        )

    # -- setting and removing a team's sync group (the API) --------------------------------

    async def canonical_group(self, group: str) -> str:
        """The group as it will be stored: for LDAP the DN as the directory spells it
        (TeamSyncError if there is no such entry); for OIDC the name as given."""
        group = group.strip()
        if not group or len(group) > 512:
            raise TeamSyncError("the group must be 1 to 512 characters")
        if self.provider == "ldap":
            assert self.ldap is not None
            found = await self.ldap.group(group)
            if found is None:
                raise TeamSyncError(f"no LDAP entry {group!r}")
            return found
        if self.provider == "oidc":
            return group
        raise TeamSyncError("team sync needs auth.provider ldap or oidc")

    async def set_group(self, org: str, team: str, group: str, entry: AuditEntry) -> str | None:
        """Make `org/team` follow `group` (canonical). None if there is no such team."""

        async def work(session: DbSession) -> int | None:
            row = await session.one(TEAM, org=org, team=team)
            if row is None:
                return None
            await session.run(SET_SYNC_GROUP, group=group, team=row[0])
            await self.audit.write(session, entry)
            return int(row[0])

        team_id = await run_write(self.db, work)
        if team_id is None:
            return None
        if self.ldap is not None:
            try:  # members at once, not at the next run
                await self.sync_team(SyncedTeam(team_id, team, org, group))
            except Exception:
                log.exception("first sync of %s/%s failed; the schedule retries", org, team)
        return group

    async def remove_group(self, org: str, team: str, entry: AuditEntry) -> bool:
        """Stop syncing `org/team`; its synced members become ordinary members.
        False if there is no such team."""

        async def work(session: DbSession) -> bool:
            row = await session.one(TEAM, org=org, team=team)
            if row is None:
                return False
            await session.run(SET_SYNC_GROUP, group=None, team=row[0])
            await session.run(RELEASE_SYNCED, team=row[0], no=False, yes=True)
            await self.audit.write(session, entry)
            return True

        done = await run_write(self.db, work)
        if done:
            self.permissions.changed()
        return done
