"""The LDAP identity provider against a real slapd (tests/support/ldap.py): password sign-in
on /v2 and the token endpoint, the local user it creates, refusals that look alike, LDAP
injection, the superuser filter, TLS, and team membership synced from LDAP groups at
sign-in, on a schedule and through the /syncing API.

Two servers share one directory:
- `plain` (SQLite): ldap://, no credential cache (a password changed in LDAP counts at
  once), no scheduled sync (so sign-in sync is seen alone);
- `tls` (PostgreSQL): ldaps:// verified against the test CA, the default credential cache,
  and a team sync every second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ldap3.core.exceptions import LDAPException
from pydantic import SecretStr

from cargohold.auth.ldap import LdapProvider
from cargohold.settings import LdapSettings
from tests.integration.identity_support import (
    Admin,
    audit,
    push,
    sync_group,
    team_members,
    upload_status,
    user_row,
)
from tests.support.audit import assert_logged, entries, last_id
from tests.support.identity import app_token, bearer, create_user, unique_name
from tests.support.ldap import LdapServer
from tests.support.postgres import temporary_database
from tests.support.server import ADMIN_PASSWORD, ADMIN_USER, RegistryProcess

SUPERUSER_GROUP = "registry-admins"


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll until `condition()` is truthy (the scheduled sync and the audit queue are
    asynchronous); no assertion on how long it took."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def ldap() -> Iterator[LdapServer]:
    with LdapServer() as server:
        server.add_group(SUPERUSER_GROUP, [])
        yield server


def ldap_env(ldap: LdapServer, **extra: str) -> dict[str, str]:
    env = {
        "CARGOHOLD_AUTH__PROVIDER": "ldap",
        "CARGOHOLD_AUTH__LDAP__URL": ldap.url,
        "CARGOHOLD_AUTH__LDAP__BIND_DN": ldap.bind_dn,
        "CARGOHOLD_AUTH__LDAP__BIND_PASSWORD": ldap.bind_password,
        "CARGOHOLD_AUTH__LDAP__BASE_DN": ldap.users_dn,
        "CARGOHOLD_AUTH__LDAP__GROUP_BASE_DN": ldap.groups_dn,
        "CARGOHOLD_AUTH__LDAP__SUPERUSER_FILTER": f"(memberOf={ldap.group_dn(SUPERUSER_GROUP)})",
    }
    return env | extra


@pytest.fixture(scope="module")
def plain(ldap: LdapServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    env = ldap_env(ldap, CARGOHOLD_AUTH__CREDENTIAL_CACHE_SECONDS="0")
    server = RegistryProcess(tmp_path_factory.mktemp("ldap-plain"), env=env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls(ldap: LdapServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    env = ldap_env(
        ldap,
        CARGOHOLD_AUTH__LDAP__URL=ldap.ldaps_url,
        CARGOHOLD_AUTH__LDAP__CA_CERT_FILE=str(ldap.ca_cert_path),
        CARGOHOLD_AUTH__LDAP__TEAM_SYNC_INTERVAL_SECONDS="1",
    )
    with temporary_database() as url:
        data = tmp_path_factory.mktemp("ldap-tls")
        server = RegistryProcess(data, database_url=url, env=env).start()
        yield server
        server.stop()


@pytest.fixture(scope="module")
def plain_admin(plain: RegistryProcess) -> Admin:
    return Admin(plain)


@pytest.fixture(scope="module")
def tls_admin(tls: RegistryProcess) -> Admin:
    return Admin(tls)


def new_ldap_user(ldap: LdapServer, *groups: str) -> tuple[str, str]:
    uid = unique_name("l")
    password = f"pw-{uid}"
    ldap.add_user(uid, password, f"{uid}@example.org", f"User {uid}")
    for group in groups:
        ldap.add_group_member(group, uid)
    return uid, password


def v2_status(server: RegistryProcess, auth: tuple[str, str]) -> httpx.Response:
    with server.client(auth=auth) as c:
        return c.get("/v2/")


def token_response(server: RegistryProcess, auth: tuple[str, str], scope: str) -> httpx.Response:
    with server.client(auth=auth) as c:
        return c.get("/v2/auth", params={"service": "cargohold", "scope": scope})


def binds_of(ldap: LdapServer, dn: str) -> int:
    return ldap.log_path.read_text(errors="replace").count(f'BIND dn="{dn}"')


# -- sign-in -------------------------------------------------------------------------------


def test_ldap_password_signs_in_and_creates_the_local_user(
    ldap: LdapServer, plain: RegistryProcess
) -> None:
    uid, password = new_ldap_user(ldap)
    assert user_row(plain, uid) is None

    assert v2_status(plain, (uid, password)).status_code == 200

    row = user_row(plain, uid)
    assert row == {
        "username": uid,
        "email": f"{uid}@example.org",
        "provider": "ldap",
        "external_id": ldap.user_dn(uid),  # as the server returned it
        "superuser": False,
        "namespace_kind": "user",
    }
    # The token endpoint takes the same password and grants push in the user's namespace.
    r = token_response(plain, (uid, password), f"repository:{uid}/app:pull,push")
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    with plain.client(auth=None, headers=bearer(token)) as c:
        assert c.post(f"/v2/{uid}/app/blobs/uploads/").status_code == 202
    push(plain, (uid, password), f"{uid}/app")
    with plain.client(auth=(uid, password)) as c:
        assert c.get(f"/v2/{uid}/app/tags/list").json()["tags"] == ["latest"]
    # Nowhere else.
    assert upload_status(plain, (uid, password), f"{ADMIN_USER}/app") == 403
    logins = wait_for(lambda: [d for d in audit(plain, "login") if '"password"' in d], "login")
    assert logins


def test_wrong_empty_and_unknown_credentials_are_refused_alike(
    ldap: LdapServer, plain: RegistryProcess
) -> None:
    uid, password = new_ldap_user(ldap)
    assert v2_status(plain, (uid, password)).status_code == 200
    gone, gone_password = new_ldap_user(ldap)
    assert v2_status(plain, (gone, gone_password)).status_code == 200
    ldap.delete_user(gone)  # signed in once, then removed from the directory

    cases = [
        (uid, "wrong-password"),
        (uid, ""),
        (unique_name("nobody"), password),
        (gone, gone_password),
    ]
    registry_answers, token_answers = [], []
    for auth in cases:
        r = v2_status(plain, auth)
        assert r.status_code == 401, auth
        registry_answers.append((r.json(), r.headers["www-authenticate"]))
        r = token_response(plain, auth, f"repository:{uid}/app:pull")
        assert r.status_code == 401, auth
        token_answers.append(r.json())
    assert all(a == registry_answers[0] for a in registry_answers)
    assert all(a == token_answers[0] for a in token_answers)
    assert user_row(plain, cases[2][0]) is None


def test_an_empty_password_never_reaches_the_directory(
    ldap: LdapServer, plain: RegistryProcess
) -> None:
    uid, _ = new_ldap_user(ldap)
    dn = ldap.user_dn(uid)
    before = binds_of(ldap, dn)
    assert v2_status(plain, (uid, "")).status_code == 401
    # The provider itself refuses it too (not only the HTTP layer).
    provider = LdapProvider(
        LdapSettings(
            url=ldap.url,
            bind_dn=ldap.bind_dn,
            bind_password=SecretStr(ldap.bind_password),
            base_dn=ldap.users_dn,
        )
    )
    assert asyncio.run(provider.authenticate(uid, "")) is None
    # A wrong password does bind: once it shows in slapd's log, the empty ones would have.
    assert v2_status(plain, (uid, "wrong")).status_code == 401
    wait_for(lambda: binds_of(ldap, dn) > before, "the wrong password's bind in slapd's log")
    assert binds_of(ldap, dn) == before + 1


def test_a_password_changed_in_ldap_counts_at_once(
    ldap: LdapServer, plain: RegistryProcess
) -> None:
    uid, old = new_ldap_user(ldap)
    assert v2_status(plain, (uid, old)).status_code == 200
    ldap.change_password(uid, "the-new-password")
    assert v2_status(plain, (uid, old)).status_code == 401
    assert v2_status(plain, (uid, "the-new-password")).status_code == 200


@pytest.mark.parametrize(
    "username",
    ["*", "a)(uid=*", "*)(|(uid=*", "l*", "*)(objectClass=*", "admin)(|(uid=*", "\\2a", "l\x00"],
)
def test_ldap_injection_in_the_username_signs_nobody_in(
    ldap: LdapServer, plain: RegistryProcess, username: str
) -> None:
    _, password = new_ldap_user(ldap)
    for secret in (password, "*"):
        assert v2_status(plain, (username, secret)).status_code == 401
        assert token_response(plain, (username, secret), "").status_code == 401
    assert user_row(plain, username) is None


def test_user_input_is_escaped_in_filters_even_past_the_name_check(ldap: LdapServer) -> None:
    """The name check refuses `*` before any search; the escaping still holds on its own."""
    uid, _ = new_ldap_user(ldap)
    provider = LdapProvider(
        LdapSettings(
            url=ldap.url,
            bind_dn=ldap.bind_dn,
            bind_password=SecretStr(ldap.bind_password),
            base_dn=ldap.users_dn,
        )
    )
    conn = provider._service()
    try:
        assert provider._find(conn, uid) is not None
        for pattern in ("*", uid[:3] + "*", f"{uid})(uid=*", "*)(|(objectClass=*"):
            assert provider._find(conn, pattern) is None, pattern
    finally:
        conn.unbind()


def test_local_superusers_keep_their_password_and_nobody_takes_over_a_local_name(
    ldap: LdapServer, plain: RegistryProcess
) -> None:
    # The initial superuser lives in the database and still signs in.
    assert v2_status(plain, (ADMIN_USER, ADMIN_PASSWORD)).status_code == 200
    # A directory entry with its name and another password gets nothing.
    if not ldap.user_exists(ADMIN_USER):
        ldap.add_user(ADMIN_USER, "ldap-admin-password", "evil@example.org")
    assert v2_status(plain, (ADMIN_USER, "ldap-admin-password")).status_code == 401
    assert user_row(plain, ADMIN_USER)["provider"] == "database"  # type: ignore[index]
    # A local account that is not a superuser has no password sign-in with LDAP on
    # (its app tokens still work), and its LDAP namesake cannot take it over.
    local = create_user(plain)
    assert v2_status(plain, local.auth).status_code == 401
    token = app_token(plain, local.name)
    assert v2_status(plain, ("$app", token)).status_code == 200
    ldap.add_user(local.name, "namesake-password", None)
    assert v2_status(plain, (local.name, "namesake-password")).status_code == 401
    assert user_row(plain, local.name)["provider"] == "database"  # type: ignore[index]


def test_superuser_filter(ldap: LdapServer, plain: RegistryProcess) -> None:
    boss, boss_password = new_ldap_user(ldap, SUPERUSER_GROUP)
    worker, worker_password = new_ldap_user(ldap)
    assert v2_status(plain, (boss, boss_password)).status_code == 200
    assert v2_status(plain, (worker, worker_password)).status_code == 200
    assert user_row(plain, boss)["superuser"] is True  # type: ignore[index]
    assert user_row(plain, worker)["superuser"] is False  # type: ignore[index]
    # A superuser may push anywhere, even where no namespace exists yet.
    elsewhere = unique_name("ns")
    assert upload_status(plain, (boss, boss_password), f"{elsewhere}/app") == 202
    assert upload_status(plain, (worker, worker_password), f"{elsewhere}/app") in (401, 403)
    # Leaving the group ends it at the next sign-in.
    ldap.remove_group_member(SUPERUSER_GROUP, boss)
    assert v2_status(plain, (boss, boss_password)).status_code == 200
    assert user_row(plain, boss)["superuser"] is False  # type: ignore[index]
    assert upload_status(plain, (boss, boss_password), f"{unique_name('ns')}/app") in (401, 403)


def test_ldaps_with_the_ca_certificate(ldap: LdapServer, tls: RegistryProcess) -> None:
    uid, password = new_ldap_user(ldap)
    assert v2_status(tls, (uid, password)).status_code == 200
    assert user_row(tls, uid)["provider"] == "ldap"  # type: ignore[index]
    assert v2_status(tls, (uid, "wrong")).status_code == 401


def test_tls_verifies_the_server_certificate(ldap: LdapServer, tmp_path: Path) -> None:
    uid, password = new_ldap_user(ldap)

    def provider(**settings: Any) -> LdapProvider:
        return LdapProvider(
            LdapSettings(
                bind_dn=ldap.bind_dn,
                bind_password=SecretStr(ldap.bind_password),
                base_dn=ldap.users_dn,
                **settings,
            )
        )

    ca = str(ldap.ca_cert_path)
    ok = provider(url=ldap.ldaps_url, ca_cert_file=ca)
    assert asyncio.run(ok.authenticate(uid, password)) is not None
    starttls = provider(url=ldap.url, start_tls=True, ca_cert_file=ca)
    assert asyncio.run(starttls.authenticate(uid, password)) is not None
    # Another CA (here: the system's, which never signed the test server) fails the
    # handshake: no credential is sent.
    for untrusted in (
        provider(url=ldap.ldaps_url),
        provider(url=ldap.url, start_tls=True),
    ):
        with pytest.raises(LDAPException):
            asyncio.run(untrusted.authenticate(uid, password))


# -- team sync -----------------------------------------------------------------------------


def test_team_sync_at_sign_in(ldap: LdapServer, plain: RegistryProcess, plain_admin: Admin) -> None:
    group = unique_name("grp")
    ldap.add_group(group, [])
    joiner, joiner_pw = new_ldap_user(ldap, group)
    outsider, outsider_pw = new_ldap_user(ldap)
    manual, manual_pw = new_ldap_user(ldap, group)
    org = plain_admin.org_with_team("devs", role="creator")
    with plain_admin.api() as api:  # a second team, not synced
        assert api.put(f"/api/v1/organization/{org}/team/ops", json={}).status_code == 200

    assert v2_status(plain, (manual, manual_pw)).status_code == 200
    plain_admin.add_member(org, "devs", manual)  # by hand: the sync never touches it
    mark = last_id(plain)
    # The DN as typed differs in case from the directory's: stored as the server spells it.
    typed = ldap.group_dn(group).replace("cn=", "CN=").replace("ou=groups", "OU=Groups")
    r = plain_admin.set_sync(org, "devs", group_dn=typed)
    assert r.status_code == 200, r.text
    assert r.json()["synced"] == {"service": "ldap", "config": {"group_dn": ldap.group_dn(group)}}
    assert sync_group(plain, org, "devs") == ldap.group_dn(group)

    assert v2_status(plain, (joiner, joiner_pw)).status_code == 200
    assert v2_status(plain, (outsider, outsider_pw)).status_code == 200
    assert team_members(plain, org, "devs") == {joiner: True, manual: False}
    assert team_members(plain, org, "ops") == {}
    # The team's role (creator) lets the synced member create repositories in the org.
    push(plain, (joiner, joiner_pw), f"{org}/from-sync")
    assert upload_status(plain, (outsider, outsider_pw), f"{org}/nope") in (403, 404)

    # The directory changes; each user's next sign-in follows it.
    ldap.set_group_members(group, [outsider])
    for auth in ((joiner, joiner_pw), (outsider, outsider_pw), (manual, manual_pw)):
        assert v2_status(plain, auth).status_code == 200
    members = team_members(plain, org, "devs")
    assert members.get(outsider) is True
    assert joiner not in members
    assert members.get(manual) is False  # a manual member stays, though not in the group
    assert upload_status(plain, (joiner, joiner_pw), f"{org}/again") in (403, 404)

    # Each change is recorded as done by the user whose sign-in made it.
    synced = {"team": "devs", "synced": True, "group": ldap.group_dn(group), "source": "login"}
    for who in (joiner, outsider):
        assert_logged(
            plain,
            "add_team_member",
            actor=who,
            actor_kind="user",
            namespace=org,
            details={**synced, "member": who},
            after=mark,
        )
    assert_logged(
        plain,
        "remove_team_member",
        actor=joiner,
        actor_kind="user",
        namespace=org,
        details={**synced, "member": joiner},
        after=mark,
    )
    # The manual member and the unsynced team were never touched by the sync.
    changes = [
        (e.kind, e.details["team"], e.details["member"])
        for e in entries(plain, after=mark)
        if e.namespace == org and e.kind in ("add_team_member", "remove_team_member")
    ]
    assert changes == [
        ("add_team_member", "devs", joiner),
        ("remove_team_member", "devs", joiner),
        ("add_team_member", "devs", outsider),
    ]


def test_scheduled_team_sync(ldap: LdapServer, tls: RegistryProcess, tls_admin: Admin) -> None:
    group = unique_name("grp")
    ldap.add_group(group, [])
    first, first_pw = new_ldap_user(ldap, group)
    second, second_pw = new_ldap_user(ldap)
    never, _ = new_ldap_user(ldap, group)  # in the group, never signed in: no local user
    # Team role admin: its members may push to every repository of the organization.
    org = tls_admin.org_with_team("builders", role="admin")
    push(tls, tls.admin_auth, f"{org}/shared")
    mark = last_id(tls)
    assert tls_admin.set_sync(org, "builders", group_dn=ldap.group_dn(group)).status_code == 200
    for auth in ((first, first_pw), (second, second_pw)):
        assert v2_status(tls, auth).status_code == 200
    assert team_members(tls, org, "builders") == {first: True}
    # `first` may push: that answer is now in the permission cache (default lifetime).
    assert upload_status(tls, (first, first_pw), f"{org}/shared") == 202
    assert upload_status(tls, (second, second_pw), f"{org}/shared") in (403, 404)

    ldap.set_group_members(group, [second, never])
    wait_for(
        lambda: team_members(tls, org, "builders") == {second: True},
        "the scheduled sync to follow the group",
    )
    assert user_row(tls, never) is None
    # The sync dropped the cached answers: `first` lost the right, `second` got it.
    assert upload_status(tls, (first, first_pw), f"{org}/shared") in (403, 404)
    assert upload_status(tls, (second, second_pw), f"{org}/shared") == 202
    # The scheduled sync acts as nobody in particular: recorded as anonymous.
    scheduled = {"team": "builders", "synced": True, "group": ldap.group_dn(group)}
    assert_logged(
        tls,
        "remove_team_member",
        actor_kind="anonymous",
        namespace=org,
        details={**scheduled, "member": first, "source": "schedule"},
        after=mark,
    )
    assert_logged(
        tls,
        "add_team_member",
        actor_kind="anonymous",
        namespace=org,
        details={**scheduled, "member": second, "source": "schedule"},
        after=mark,
    )

    # A group deleted from the directory empties the team's synced members.
    ldap.delete_group(group)
    wait_for(lambda: team_members(tls, org, "builders") == {}, "the deleted group's sync")


def test_sync_api(ldap: LdapServer, plain: RegistryProcess, plain_admin: Admin) -> None:
    group = unique_name("grp")
    ldap.add_group(group, [])
    member, member_pw = new_ldap_user(ldap, group)
    org = plain_admin.org_with_team("devs")
    assert v2_status(plain, (member, member_pw)).status_code == 200
    mark = last_id(plain)

    # Refused: no such entry, the OIDC field, unknown fields, no such team, a user's
    # namespace, and callers who do not administer the organization.
    for body in (
        {"group_dn": f"cn=missing,{ldap.groups_dn}"},
        {"group_dn": "not a dn"},
        {"group_name": group},
        {"group_dn": ldap.group_dn(group), "group_name": group},
        {},
    ):
        assert plain_admin.set_sync(org, "devs", **body).status_code == 400, body
    with plain_admin.api() as api:
        r = api.post(
            f"/api/v1/organization/{org}/team/devs/syncing",
            json={"group_dn": ldap.group_dn(group), "team": "x"},
        )
        assert r.status_code == 400
    assert plain_admin.set_sync(org, "nosuchteam", group_dn=ldap.group_dn(group)).status_code == 404
    token = app_token(plain, member, scopes=("org:admin",))
    with plain.client(auth=None, headers=bearer(token)) as c:
        url = f"/api/v1/organization/{org}/team/devs/syncing"
        assert c.post(url, json={"group_dn": ldap.group_dn(group)}).status_code == 404
        assert c.delete(url).status_code == 404
    with plain.client(auth=None) as c:
        assert c.post(url, json={"group_dn": ldap.group_dn(group)}).status_code == 401
    assert sync_group(plain, org, "devs") is None

    # Set: the group's members who exist locally join at once.
    r = plain_admin.set_sync(org, "devs", group_dn=ldap.group_dn(group))
    assert r.status_code == 200
    assert r.json()["is_synced"] is True
    assert team_members(plain, org, "devs").get(member) is True

    # Removed: the team keeps its members, now as ordinary ones.
    r = plain_admin.remove_sync(org, "devs")
    assert r.status_code == 204
    assert sync_group(plain, org, "devs") is None
    assert team_members(plain, org, "devs").get(member) is False
    ldap.remove_group_member(group, member)
    assert v2_status(plain, (member, member_pw)).status_code == 200
    assert team_members(plain, org, "devs").get(member) is False

    assert_logged(
        plain,
        "sync_team",
        actor=ADMIN_USER,
        actor_kind="token",
        namespace=org,
        details={"team": "devs", "group": ldap.group_dn(group), "service": "ldap", "enabled": True},
        after=mark,
    )
    assert_logged(
        plain,
        "sync_team",
        actor=ADMIN_USER,
        actor_kind="token",
        namespace=org,
        details={"team": "devs", "enabled": False},
        after=mark,
    )
    # Set once and removed once: the refused requests wrote nothing.
    logged = [
        (e.details["team"], e.details["enabled"])
        for e in entries(plain, "sync_team", after=mark)
        if e.namespace == org
    ]
    assert logged == [("devs", True), ("devs", False)]
