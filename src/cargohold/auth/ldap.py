"""The LDAP identity provider: find the user with the service account, then bind as the
user to check the password. Group membership (for team sync) is read from groups whose
member attribute holds the user's DN. ldap3 is synchronous: calls run in a thread.

Rules this module keeps:
- an empty password is an unauthenticated bind (RFC 4513 5.1.2), which many servers
  accept as success: it is refused before any bind;
- user input reaches a filter only through `escape_filter_chars`, and a user name must be
  a valid cargohold name before it gets that far;
- DNs are never built from strings: the user's DN is the one the search returned, and
  group members are resolved by asking the server about each member DN (servers differ in
  how they escape and case a DN, so two spellings of one DN must not be compared);
- TLS (ldaps:// or StartTLS) verifies the certificate and the host name; a StartTLS that
  fails is an error, never a silent fall back to clear text."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import anyio
from ldap3 import BASE, NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException, LDAPInvalidDnError
from ldap3.utils.conv import escape_filter_chars

from cargohold.auth.external import LdapUnavailable
from cargohold.auth.identity import ExternalIdentity
from cargohold.domain.errors import NameInvalid
from cargohold.domain.names import parse_namespace
from cargohold.settings import LdapSettings

NO_SUCH_OBJECT = 32
INVALID_DN_SYNTAX = 34
SIZE_LIMIT_EXCEEDED = 4


@dataclass(frozen=True, slots=True)
class LdapEntry:
    dn: str  # as the server returned it
    attributes: dict[str, list[str]]

    def first(self, attribute: str) -> str | None:
        values = self.attributes.get(attribute.lower()) or []
        return values[0] if values else None


class LdapProvider:
    name = "ldap"

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings

    # -- connections -----------------------------------------------------------------------

    @property
    def _ldaps(self) -> bool:
        return self.settings.url.lower().startswith("ldaps://")

    def _server(self) -> Server:
        s = self.settings
        tls = None
        if self._ldaps or s.start_tls:
            tls = Tls(
                validate=ssl.CERT_REQUIRED,  # ldap3 also checks the host name then
                ca_certs_file=s.ca_cert_file or None,
                version=ssl.PROTOCOL_TLS_CLIENT,
            )
        # get_info=NONE: no schema searches before every bind.
        return Server(s.url, tls=tls, get_info=NONE, connect_timeout=int(s.timeout_seconds))

    def _connect(self, dn: str, password: str) -> Connection:
        """An open (not yet bound) connection, with TLS started when configured."""
        s = self.settings
        conn = Connection(
            self._server(),
            user=dn,
            password=password,
            receive_timeout=int(s.timeout_seconds),  # ldap3 packs it into SO_RCVTIMEO: an int
            raise_exceptions=False,
            auto_referrals=False,
            read_only=True,
        )
        try:
            conn.open()
            if s.start_tls and not self._ldaps and not conn.start_tls():
                raise LdapUnavailable(f"StartTLS failed: {conn.last_error}")
        except BaseException:
            conn.unbind()
            raise
        return conn

    def _service(self) -> Connection:
        s = self.settings
        password = s.bind_password.get_secret_value()
        if not s.bind_dn or not password:
            raise LdapUnavailable("auth.ldap.bind_dn and bind_password are required")
        conn = self._connect(s.bind_dn, password)
        if not conn.bind():
            description = conn.result.get("description") if conn.result else conn.last_error
            conn.unbind()
            raise LdapUnavailable(f"service bind failed: {description}")
        return conn

    def _search(
        self,
        conn: Connection,
        base: str,
        query: str,
        scope: Any,
        attributes: list[str],
        size_limit: int = 0,
    ) -> list[LdapEntry]:
        """The entries found; [] when `base` does not exist (or is no DN); LdapUnavailable
        on other errors."""
        try:
            conn.search(base, query, scope, attributes=attributes, size_limit=size_limit)
        except LDAPInvalidDnError:
            return []
        code = (conn.result or {}).get("result", 0)
        if code in (NO_SUCH_OBJECT, INVALID_DN_SYNTAX):
            return []
        if code not in (0, SIZE_LIMIT_EXCEEDED):
            raise LdapUnavailable(f"search failed: {conn.result.get('description')}")
        entries = []
        for item in conn.response or []:
            if item.get("type") != "searchResEntry":
                continue  # referrals
            attrs = {
                str(k).lower(): [str(v) for v in (vs if isinstance(vs, list) else [vs])]
                for k, vs in (item.get("attributes") or {}).items()
            }
            entries.append(LdapEntry(str(item["dn"]), attrs))
        return entries

    def _check(self) -> None:
        self._service().unbind()

    async def check(self) -> None:
        """Bind as the service account and unbind (health checks, `config check --online`);
        LdapUnavailable or an LDAPException when the directory cannot be used."""
        await anyio.to_thread.run_sync(self._check)

    # -- sign-in ---------------------------------------------------------------------------

    def _find(self, conn: Connection, username: str) -> LdapEntry | None:
        s = self.settings
        query = f"(&{s.user_filter}({s.uid_attribute}={escape_filter_chars(username)}))"
        found = self._search(
            conn, s.base_dn, query, SUBTREE, [s.uid_attribute, s.email_attribute], size_limit=2
        )
        return found[0] if len(found) == 1 else None  # none, or ambiguous

    def _password_ok(self, dn: str, password: str) -> bool:
        user = self._connect(dn, password)
        try:
            return bool(user.bind())
        finally:
            user.unbind()

    def _is_superuser(self, conn: Connection, dn: str) -> bool | None:
        query = self.settings.superuser_filter
        if not query:
            return None  # not decided here: the local flag stays
        return bool(self._search(conn, dn, query, BASE, []))

    def groups_of(self, conn: Connection, dn: str) -> frozenset[str]:
        """DNs (as the server spells them) of the groups whose member attribute holds `dn`."""
        s = self.settings
        query = f"({s.group_member_attribute}={escape_filter_chars(dn)})"
        found = self._search(conn, s.group_base_dn or s.base_dn, query, SUBTREE, ["cn"])
        return frozenset(e.dn for e in found)

    def _authenticate(self, username: str, password: str) -> ExternalIdentity | None:
        if not password:
            return None  # an empty password is an anonymous bind: never a login
        try:
            parse_namespace(username)
        except NameInvalid:
            return None  # cannot become a local user; also keeps odd input out of filters
        service = self._service()
        try:
            entry = self._find(service, username)
            if entry is None or not self._password_ok(entry.dn, password):
                return None
            return ExternalIdentity(
                username=username,
                email=entry.first(self.settings.email_attribute),
                external_id=entry.dn,
                superuser=self._is_superuser(service, entry.dn),
                groups=self.groups_of(service, entry.dn),
                provider=self.name,
            )
        finally:
            service.unbind()

    async def authenticate(self, username: str, password: str) -> ExternalIdentity | None:
        return await anyio.to_thread.run_sync(self._authenticate, username, password)

    # -- team sync -------------------------------------------------------------------------

    def _group(self, group_dn: str) -> str | None:
        service = self._service()
        try:
            found = self._search(service, group_dn, "(objectClass=*)", BASE, [])
            return found[0].dn if found else None
        finally:
            service.unbind()

    async def group(self, group_dn: str) -> str | None:
        """The group's DN as the server spells it, or None when there is no such entry."""
        try:
            return await anyio.to_thread.run_sync(self._group, group_dn)
        except LDAPException as exc:  # connection refused, TLS handshake
            raise LdapUnavailable(str(exc)) from exc

    def _members(self, group_dn: str) -> list[str]:
        s = self.settings
        service = self._service()
        try:
            found = self._search(
                service, group_dn, "(objectClass=*)", BASE, [s.group_member_attribute]
            )
            if not found:
                return []
            uids = []
            for member_dn in found[0].attributes.get(s.group_member_attribute.lower(), []):
                # Ask the server: the member value may spell the DN differently from the
                # user entry, and may name an entry that is gone or is not a user.
                query = s.user_filter or "(objectClass=*)"
                users = self._search(service, member_dn, query, BASE, [s.uid_attribute])
                uid = users[0].first(s.uid_attribute) if users else None
                if uid is not None:
                    uids.append(uid)
            return uids
        finally:
            service.unbind()

    async def group_members(self, group_dn: str) -> list[str]:
        """The uids of a group's members that are users (for the periodic team sync);
        [] when the group does not exist. LdapUnavailable when the directory fails."""
        try:
            return await anyio.to_thread.run_sync(self._members, group_dn)
        except LDAPException as exc:
            raise LdapUnavailable(str(exc)) from exc
