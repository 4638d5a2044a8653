"""The throwaway slapd of tests/support/ldap.py behaves like the directory an LDAP identity
provider talks to: users bind with their password, groups are found by `member=<user dn>`."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest
from ldap3.core.exceptions import (
    LDAPException,
    LDAPInsufficientAccessRightsResult,
    LDAPInvalidCredentialsResult,
)
from ldap3.utils.conv import escape_filter_chars

from tests.support.ldap import EMPTY_MEMBER, LdapServer
from tests.support.server import free_port


@pytest.fixture(scope="module")
def ldap_server() -> Iterator[LdapServer]:
    with LdapServer() as server:
        server.add_user("alice", "alice-pw", "alice@example.org", "Alice Liddell")
        server.add_user("bob", "bob-pw", "bob@example.org")
        server.add_user("carol", "carol-pw", "carol@example.org", hash_password=False)
        server.add_group("developers", ["alice", "bob"])
        server.add_group("admins", ["alice"])
        server.add_group("nobody-yet", [])
        yield server


def identity_provider_login(server: LdapServer, uid: str, password: str) -> dict[str, Any]:
    """What an LDAP identity provider does: search the user as the service account, bind as
    the user, then search its groups by `member=<user dn>`."""
    with server.connection(server.bind_dn, server.bind_password) as service:
        service.search(
            server.users_dn,
            f"(&(objectClass=inetOrgPerson)(uid={escape_filter_chars(uid)}))",
            ldap3.SUBTREE,
            attributes=["uid", "mail", "cn"],
        )
        assert len(service.entries) == 1, f"{uid}: {len(service.entries)} entries"
        entry = service.entries[0]
        user_dn = str(entry.entry_dn)
    with server.connection(user_dn, password) as user:
        whoami = user.extend.standard.who_am_i()
    with server.connection(server.bind_dn, server.bind_password) as service:
        service.search(
            server.groups_dn,
            f"(&(objectClass=groupOfNames)(member={escape_filter_chars(user_dn)}))",
            ldap3.SUBTREE,
            attributes=["cn"],
        )
        groups = sorted(str(g.cn.value) for g in service.entries)
    return {
        "dn": user_dn,
        "whoami": whoami,
        "mail": str(entry.mail.value),
        "cn": str(entry.cn.value),
        "groups": groups,
    }


def test_listens_on_loopback_only(ldap_server: LdapServer) -> None:
    assert ldap_server.url.startswith("ldap://127.0.0.1:")
    assert ldap_server.ldaps_url.startswith("ldaps://127.0.0.1:")
    conf = (ldap_server.log_path.parent / "slapd.conf").read_text()
    assert "127.0.0.1" not in conf  # the listeners come only from -h
    with open(f"/proc/{ldap_server.proc.pid}/cmdline", "rb") as f:  # type: ignore[union-attr]
        argv = f.read().split(b"\0")
    listeners = argv[argv.index(b"-h") + 1].decode().split()
    assert listeners == [
        f"ldap://127.0.0.1:{ldap_server.port}/",
        f"ldaps://127.0.0.1:{ldap_server.ldaps_port}/",
    ]


def test_user_binds_with_right_password(ldap_server: LdapServer) -> None:
    result = identity_provider_login(ldap_server, "alice", "alice-pw")
    assert result["dn"] == "uid=alice,ou=people,dc=example,dc=org"
    assert result["whoami"] == "dn:uid=alice,ou=people,dc=example,dc=org"
    assert result["mail"] == "alice@example.org"
    assert result["cn"] == "Alice Liddell"
    assert result["groups"] == ["admins", "developers"]
    assert identity_provider_login(ldap_server, "bob", "bob-pw")["groups"] == ["developers"]
    # A clear-text userPassword binds too.
    assert identity_provider_login(ldap_server, "carol", "carol-pw")["groups"] == []


@pytest.mark.parametrize("password", ["wrong", "alice-PW", ""])
def test_user_cannot_bind_with_wrong_password(ldap_server: LdapServer, password: str) -> None:
    if password == "":
        # An empty password is an *unauthenticated* bind (RFC 4513 5.1.2): slapd refuses it
        # by default, and an identity provider must refuse it before it gets there.
        with (
            pytest.raises(LDAPException),
            ldap_server.connection(ldap_server.user_dn("alice"), password),
        ):
            pass
        return
    with (
        pytest.raises(LDAPInvalidCredentialsResult),
        ldap_server.connection(ldap_server.user_dn("alice"), password),
    ):
        pass


def test_unknown_user_cannot_bind(ldap_server: LdapServer) -> None:
    with (
        pytest.raises(LDAPInvalidCredentialsResult),
        ldap_server.connection(ldap_server.user_dn("mallory"), "x"),
    ):
        pass


def test_memberof_lists_groups(ldap_server: LdapServer) -> None:
    with ldap_server.admin_connection() as conn:
        conn.search(ldap_server.users_dn, "(uid=alice)", attributes=["memberOf"])
        member_of = sorted(str(v) for v in conn.entries[0].memberOf.values)
    assert member_of == [ldap_server.group_dn("admins"), ldap_server.group_dn("developers")]


def test_anonymous_and_users_see_no_passwords(ldap_server: LdapServer) -> None:
    with (
        ldap_server.connection() as anonymous,
        pytest.raises(LDAPInsufficientAccessRightsResult),
    ):
        anonymous.search(ldap_server.base_dn, "(uid=alice)", attributes=["*"])
    with ldap_server.connection(ldap_server.user_dn("bob"), "bob-pw") as bob:
        bob.search(ldap_server.users_dn, "(uid=alice)", attributes=["*"])
        assert len(bob.entries) == 1
        assert "userPassword" not in bob.entries[0].entry_attributes


def test_group_membership_changes(ldap_server: LdapServer) -> None:
    ldap_server.set_group_members("nobody-yet", ["bob", "carol"])
    assert identity_provider_login(ldap_server, "carol", "carol-pw")["groups"] == ["nobody-yet"]
    ldap_server.remove_group_member("nobody-yet", "carol")
    assert identity_provider_login(ldap_server, "carol", "carol-pw")["groups"] == []
    ldap_server.add_group_member("nobody-yet", "carol")
    assert identity_provider_login(ldap_server, "carol", "carol-pw")["groups"] == ["nobody-yet"]
    ldap_server.set_group_members("nobody-yet", [])
    with ldap_server.admin_connection() as conn:
        conn.search(
            ldap_server.group_dn("nobody-yet"), "(objectClass=*)", ldap3.BASE, attributes=["member"]
        )
        assert [str(m) for m in conn.entries[0].member.values] == [EMPTY_MEMBER]
    assert identity_provider_login(ldap_server, "bob", "bob-pw")["groups"] == ["developers"]


def test_change_password_and_delete_user(ldap_server: LdapServer) -> None:
    ldap_server.add_user("dave", "old-pw", "dave@example.org")
    ldap_server.add_group("temps", ["dave"])
    assert identity_provider_login(ldap_server, "dave", "old-pw")["groups"] == ["temps"]
    ldap_server.change_password("dave", "new-pw")
    with (
        pytest.raises(LDAPInvalidCredentialsResult),
        ldap_server.connection(ldap_server.user_dn("dave"), "old-pw"),
    ):
        pass
    assert identity_provider_login(ldap_server, "dave", "new-pw")["groups"] == ["temps"]
    ldap_server.modify_user("dave", {"mail": "dave@new.example.org"})
    assert identity_provider_login(ldap_server, "dave", "new-pw")["mail"] == "dave@new.example.org"
    ldap_server.delete_user("dave")
    assert not ldap_server.user_exists("dave")
    with (
        pytest.raises(LDAPInvalidCredentialsResult),
        ldap_server.connection(ldap_server.user_dn("dave"), "new-pw"),
    ):
        pass
    ldap_server.delete_group("temps")


def test_special_characters_in_uid(ldap_server: LdapServer) -> None:
    uid = "o'neil,jr+x"
    dn = ldap_server.add_user(uid, "pw-1", "oneil@example.org", "Jack O'Neil")
    ldap_server.add_group("quoted (group)", [uid])
    result = identity_provider_login(ldap_server, uid, "pw-1")
    # slapd hands DNs back in its own escaping (`\2C`, not `\,`): DNs are compared by the
    # server, never as strings.
    assert dn == "uid=o'neil\\,jr\\+x,ou=people,dc=example,dc=org"
    assert result["dn"] == "uid=o'neil\\2Cjr\\2Bx,ou=people,dc=example,dc=org"
    assert result["whoami"] == f"dn:{result['dn']}"
    assert result["groups"] == ["quoted (group)"]


def test_ldaps_and_starttls_verify_the_ca(ldap_server: LdapServer) -> None:
    dn = ldap_server.user_dn("alice")
    with ldap_server.connection(dn, "alice-pw", ldaps=True) as conn:
        assert conn.extend.standard.who_am_i() == f"dn:{dn}"
    conn = ldap3.Connection(
        ldap_server.server(), user=dn, password="alice-pw", raise_exceptions=True
    )
    conn.open()
    assert conn.start_tls()
    assert conn.bind()
    assert conn.extend.standard.who_am_i() == f"dn:{dn}"
    conn.unbind()
    # Without the CA the certificate is refused.
    untrusted = ldap3.Server(
        "127.0.0.1",
        port=ldap_server.ldaps_port,
        use_ssl=True,
        tls=ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=None),
        connect_timeout=5,
    )
    with pytest.raises(LDAPException):
        ldap3.Connection(untrusted, user=dn, password="alice-pw", auto_bind=True)


def test_start_retries_when_the_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        ports = iter([taken_port])
        monkeypatch.setattr(
            "tests.support.ldap.free_port", lambda: next(ports, None) or free_port()
        )
        with LdapServer(tmp_path / "ldap", tls=False) as server:
            assert server.port != taken_port
            server.add_user("eve", "eve-pw", None)
            with server.connection(server.user_dn("eve"), "eve-pw") as conn:
                assert conn.extend.standard.who_am_i() == f"dn:{server.user_dn('eve')}"
            pid = server.proc.pid  # type: ignore[union-attr]
    assert server.proc is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert (tmp_path / "ldap" / "slapd.log").exists()  # a given workdir is kept
