"""The LDAP identity provider: find the user with the service account, then bind as the
user to check the password. Group membership (for team sync) is read from groups whose
member attribute holds the user's DN. ldap3 is synchronous: calls run in a thread."""

from __future__ import annotations

import ssl
from typing import Any

import anyio
from ldap3 import ALL_ATTRIBUTES, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from cargohold.auth.identity import ExternalIdentity
from cargohold.settings import LdapSettings


class LdapProvider:
    name = "ldap"

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings

    def _server(self) -> Server:
        s = self.settings
        tls = None
        if s.url.startswith("ldaps://") or s.start_tls:
            tls = Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=s.ca_cert_file or None,
                version=ssl.PROTOCOL_TLS_CLIENT,
            )
        return Server(s.url, tls=tls, connect_timeout=int(s.timeout_seconds))

    def _connect(self, dn: str, password: str) -> Connection:
        s = self.settings
        conn = Connection(
            self._server(),
            user=dn or None,
            password=password or None,
            receive_timeout=int(s.timeout_seconds),
            raise_exceptions=False,
        )
        if s.start_tls and not s.url.startswith("ldaps://"):
            conn.open()
            conn.start_tls()
        return conn

    def _service(self) -> Connection:
        s = self.settings
        conn = self._connect(s.bind_dn, s.bind_password.get_secret_value())
        if not conn.bind():
            raise LDAPException(f"service bind failed: {conn.result.get('description')}")
        return conn

    def _find(self, conn: Connection, username: str, extra: str = "") -> tuple[str, Any] | None:
        s = self.settings
        query = f"(&{s.user_filter}({s.uid_attribute}={escape_filter_chars(username)}){extra})"
        conn.search(s.base_dn, query, SUBTREE, attributes=ALL_ATTRIBUTES, size_limit=2)
        if len(conn.entries) != 1:
            return None
        entry = conn.entries[0]
        return entry.entry_dn, entry

    def groups_of(self, conn: Connection, dn: str) -> frozenset[str]:
        s = self.settings
        query = f"({s.group_member_attribute}={escape_filter_chars(dn)})"
        conn.search(s.group_base_dn or s.base_dn, query, SUBTREE, attributes=["cn"])
        return frozenset(e.entry_dn for e in conn.entries)

    def _authenticate(self, username: str, password: str) -> ExternalIdentity | None:
        if not password:
            return None  # an empty password is an anonymous bind: never a login
        s = self.settings
        service = self._service()
        try:
            found = self._find(service, username)
            if found is None:
                return None
            dn, entry = found
            user = self._connect(dn, password)
            try:
                if not user.bind():
                    return None
            finally:
                user.unbind()
            superuser = (
                bool(s.superuser_filter)
                and self._find(service, username, s.superuser_filter) is not None
            )
            email_values = entry[s.email_attribute].values if s.email_attribute in entry else []
            return ExternalIdentity(
                username=username,
                email=str(email_values[0]) if email_values else None,
                external_id=dn,
                superuser=superuser,
                groups=self.groups_of(service, dn),
            )
        finally:
            service.unbind()

    async def authenticate(self, username: str, password: str) -> ExternalIdentity | None:
        return await anyio.to_thread.run_sync(self._authenticate, username, password)

    def _members(self, group_dn: str) -> list[str]:
        """The uids of a group's members (for the periodic team sync)."""
        s = self.settings
        service = self._service()
        try:
            service.search(group_dn, "(objectClass=*)", attributes=[s.group_member_attribute])
            if not service.entries:
                return []
            members = service.entries[0][s.group_member_attribute].values
            uids = []
            for member_dn in members:
                service.search(str(member_dn), "(objectClass=*)", attributes=[s.uid_attribute])
                if service.entries and s.uid_attribute in service.entries[0]:
                    uids.append(str(service.entries[0][s.uid_attribute].value))
            return uids
        finally:
            service.unbind()

    async def group_members(self, group_dn: str) -> list[str]:
        return await anyio.to_thread.run_sync(self._members, group_dn)
