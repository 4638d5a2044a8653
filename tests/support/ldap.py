"""A throwaway OpenLDAP server (Debian's slapd) on loopback, for the LDAP identity provider tests.

    with LdapServer() as ldap:
        ldap.add_user("alice", "alicepw", "alice@example.org")
        ldap.add_group("developers", ["alice"])
        ...  # point the identity provider at ldap.url, ldap.bind_dn, ldap.bind_password

What it runs: `/usr/sbin/slapd -d stats -f <tmp>/slapd.conf -h "ldap://127.0.0.1:<port>/
ldaps://127.0.0.1:<port2>/"` in its own process group, with an old-style slapd.conf, an mdb
database and a self-signed certificate authority, all generated into a fresh temporary
directory. It listens on 127.0.0.1 only (no ldapi socket, no other address).

The directory tree (seeded at start):

    dc=example,dc=org                 dcObject + organization
    ├── ou=people                     organizationalUnit
    │   └── uid=<uid>                 inetOrgPerson: uid, cn, sn, mail, userPassword ({SSHA})
    └── ou=groups                     organizationalUnit
        └── cn=<name>                 groupOfNames: cn, member (full user DNs)

The memberof overlay is on, so each user also carries the operational attribute `memberOf`
(ask for it by name) listing the DNs of its groups. Deleting a user does NOT remove it from
groups (no refint overlay), as on most real servers.

groupOfNames requires at least one `member`. An empty member list (`add_group(cn, [])`,
`set_group_members(cn, [])`) is stored as the single placeholder member `EMPTY_MEMBER`
(`cn=nobody,dc=example,dc=org`, an entry that does not exist), the usual convention.

Access control: the admin (`bind_dn`, the rootdn) can do anything; any bound user can read
everything except passwords; a user can change its own password; anonymous clients can only
bind (pass `anonymous_read=True` to let them search too).

TLS: `ldaps_url` (ldaps on a second loopback port) and StartTLS on `url` use a server
certificate for `127.0.0.1` and `localhost`, signed by a throwaway CA at `ca_cert_path`.
Needs the Debian packages `slapd` and `ldap-utils` (scripts/install-system-deps.sh).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from tests.support.server import free_port

SLAPD = "/usr/sbin/slapd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")

BASE_DN = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "admin-secret"
USERS_DN = f"ou=people,{BASE_DN}"
GROUPS_DN = f"ou=groups,{BASE_DN}"
EMPTY_MEMBER = f"cn=nobody,{BASE_DN}"

USER_OBJECT_CLASSES = ("inetOrgPerson", "organizationalPerson", "person", "top")
GROUP_OBJECT_CLASSES = ("groupOfNames", "top")


def ssha(password: str) -> str:
    """The `{SSHA}` form `slappasswd -s <password>` prints (salted SHA-1, base64)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _slapd_conf(
    workdir: Path,
    *,
    rootpw: str,
    tls: tuple[Path, Path, Path] | None,
    anonymous_read: bool,
) -> str:
    schemas = ("core", "cosine", "inetorgperson", "nis")
    lines = [f"include {SCHEMA_DIR / name}.schema" for name in schemas]
    lines += [
        f"modulepath {MODULE_DIR}",
        "moduleload back_mdb",
        "moduleload memberof",
        f"pidfile {workdir / 'run' / 'slapd.pid'}",
        f"argsfile {workdir / 'run' / 'slapd.args'}",
    ]
    if tls is not None:
        ca, cert, key = tls
        lines += [
            f"TLSCACertificateFile {ca}",
            f"TLSCertificateFile {cert}",
            f"TLSCertificateKeyFile {key}",
        ]
    anonymous = "read" if anonymous_read else "auth"
    lines += [
        "database mdb",
        "maxsize 104857600",
        f'suffix "{BASE_DN}"',
        f'rootdn "{ADMIN_DN}"',
        f"rootpw {rootpw}",
        f"directory {workdir / 'data'}",
        "index objectClass eq",
        "index uid eq",
        "index mail eq",
        "index cn eq",
        "index member eq",
        "overlay memberof",
        "memberof-group-oc groupOfNames",
        "memberof-member-ad member",
        "memberof-memberof-ad memberOf",
        "access to attrs=userPassword by self write by anonymous auth by * none",
        f"access to * by users read by anonymous {anonymous}",
        "",
    ]
    return "\n".join(lines)


def _write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost: (ca, cert, key) paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cargohold test LDAP CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


class LdapServer:
    """One slapd process on 127.0.0.1 with its own config and database; see the module doc."""

    base_dn = BASE_DN
    users_dn = USERS_DN
    groups_dn = GROUPS_DN
    bind_dn = ADMIN_DN
    bind_password = ADMIN_PASSWORD
    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        tls: bool = True,
        anonymous_read: bool = False,
        startup_timeout: float = 30.0,
    ) -> None:
        """`workdir`: where config, data and log go (kept afterwards); default a temp dir that
        stop() removes. `tls`: also serve ldaps and StartTLS."""
        self._given_workdir = workdir
        self.workdir: Path | None = None
        self.tls = tls
        self.anonymous_read = anonymous_read
        self.startup_timeout = startup_timeout
        self.port = 0
        self.ldaps_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._ca_cert_path: Path | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`ldap://127.0.0.1:<port>` (plain; StartTLS available when tls=True)."""
        self._require_started()
        return f"ldap://{self.host}:{self.port}"

    @property
    def ldaps_url(self) -> str:
        """`ldaps://127.0.0.1:<port>`; only with tls=True."""
        self._require_tls()
        return f"ldaps://{self.host}:{self.ldaps_port}"

    @property
    def ca_cert_path(self) -> Path:
        """PEM file of the CA that signed the server certificate; only with tls=True."""
        self._require_tls()
        assert self._ca_cert_path is not None
        return self._ca_cert_path

    @property
    def log_path(self) -> Path:
        """slapd's output (`-d stats`: one line per connection and operation)."""
        if self.workdir is None:
            raise RuntimeError("LdapServer is not started")
        return self.workdir / "slapd.log"

    def user_dn(self, uid: str) -> str:
        return f"uid={escape_rdn(uid)},{USERS_DN}"

    def group_dn(self, cn: str) -> str:
        return f"cn={escape_rdn(cn)},{GROUPS_DN}"

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LdapServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LdapServer:
        """Generate config, start slapd, wait for an admin bind, seed the tree. Idempotent."""
        if self.proc is not None:
            return self
        if not os.access(SLAPD, os.X_OK):
            raise RuntimeError(f"{SLAPD} missing: run scripts/install-system-deps.sh (slapd)")
        if self._given_workdir is not None:
            self.workdir = self._given_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="cargohold-ldap-"))
        try:
            self._configure(self.workdir)
            # A free port can be taken between free_port() and slapd's bind: retry then.
            for attempt in range(3):
                self.port = free_port()
                self.ldaps_port = 0
                while self.tls and self.ldaps_port in (0, self.port):
                    self.ldaps_port = free_port()
                if self._launch(last_attempt=attempt == 2):
                    break
            self._seed()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 10 s; remove the temp dir. Idempotent."""
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None
        if self._given_workdir is None and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _configure(self, workdir: Path) -> None:
        for sub in ("data", "run"):
            path = workdir / sub
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
        tls_files = _write_certificates(workdir / "tls") if self.tls else None
        self._ca_cert_path = tls_files[0] if tls_files else None
        conf = _slapd_conf(
            workdir,
            rootpw=ssha(ADMIN_PASSWORD),
            tls=tls_files,
            anonymous_read=self.anonymous_read,
        )
        (workdir / "slapd.conf").write_text(conf)

    def _launch(self, *, last_attempt: bool) -> bool:
        """Start slapd; True once the admin can bind, False if the port was taken."""
        assert self.workdir is not None
        listeners = [f"ldap://{self.host}:{self.port}/"]
        if self.tls:
            listeners.append(f"ldaps://{self.host}:{self.ldaps_port}/")
        with open(self.log_path, "ab") as log:
            log_start = log.tell()
            self.proc = subprocess.Popen(
                [
                    SLAPD,
                    "-d",
                    "stats",  # -d keeps slapd in the foreground; "stats" logs each operation
                    "-f",
                    str(self.workdir / "slapd.conf"),
                    "-h",
                    " ".join(listeners),
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                with open(self.log_path, "rb") as log:
                    log.seek(log_start)
                    output = log.read().decode(errors="replace")
                if "Address already in use" in output and not last_attempt:
                    return False
                raise RuntimeError(f"slapd exited early:\n{output[-4000:]}")
            try:
                # A short timeout: whatever else holds the port may accept and never answer.
                with self.connection(ADMIN_DN, ADMIN_PASSWORD, timeout=1):
                    return True
            except LDAPException:
                time.sleep(0.05)
        raise RuntimeError(
            f"slapd did not accept a bind within {self.startup_timeout}s:\n{self.log_tail()}"
        )

    def _seed(self) -> None:
        with self.admin_connection() as conn:
            conn.add(
                BASE_DN,
                ["top", "dcObject", "organization"],
                {"dc": "example", "o": "Example Org"},
            )
            for dn, ou in ((USERS_DN, "people"), (GROUPS_DN, "groups")):
                conn.add(dn, ["top", "organizationalUnit"], {"ou": ou})

    def log_tail(self, lines: int = 60) -> str:
        if self.workdir is None:
            return ""
        try:
            text = (self.workdir / "slapd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- connections -----------------------------------------------------------------------

    def server(self, *, ldaps: bool = False, timeout: int = 5, get_info: str = ldap3.NONE) -> Any:
        """An `ldap3.Server` for `url` (or `ldaps_url`), trusting `ca_cert_path` when TLS.

        get_info=ldap3.NONE skips the two schema searches ldap3 makes on every bind by
        default (pass ldap3.SCHEMA or ldap3.ALL to get them)."""
        if self.proc is None or not self.port:
            raise RuntimeError("LdapServer is not started")
        if not self.tls:
            if ldaps:
                raise RuntimeError("LdapServer was created with tls=False")
            return ldap3.Server(
                self.host, port=self.port, get_info=get_info, connect_timeout=timeout
            )
        tls = ldap3.Tls(
            ca_certs_file=str(self.ca_cert_path),
            validate=ssl.CERT_REQUIRED,
            version=ssl.PROTOCOL_TLS_CLIENT,
        )
        port = self.ldaps_port if ldaps else self.port
        return ldap3.Server(
            self.host,
            port=port,
            use_ssl=ldaps,
            tls=tls,
            get_info=get_info,
            connect_timeout=timeout,
        )

    @contextlib.contextmanager
    def connection(
        self,
        dn: str | None = None,
        password: str | None = None,
        *,
        ldaps: bool = False,
        timeout: int = 10,
    ) -> Iterator[Any]:
        """A bound `ldap3.Connection` (anonymous without `dn`) that raises on any LDAP error
        (`timeout`: whole seconds, ldap3 packs it into SO_RCVTIMEO);
        a wrong password raises `ldap3.core.exceptions.LDAPInvalidCredentialsResult`."""
        conn = ldap3.Connection(
            self.server(ldaps=ldaps, timeout=timeout),
            user=dn,
            password=password,
            raise_exceptions=True,
            receive_timeout=timeout,
        )
        try:
            conn.open()
            conn.bind()
            yield conn
        finally:
            conn.unbind()

    def admin_connection(self) -> contextlib.AbstractContextManager[Any]:
        """`connection()` as the admin (rootdn): no access control applies."""
        return self.connection(ADMIN_DN, ADMIN_PASSWORD)

    # -- directory contents ----------------------------------------------------------------

    def add_user(
        self,
        uid: str,
        password: str | None,
        email: str | None,
        cn: str | None = None,
        *,
        sn: str | None = None,
        hash_password: bool = True,
        extra: Mapping[str, str | Sequence[str]] | None = None,
    ) -> str:
        """Add `uid=<uid>,ou=people,...` (inetOrgPerson) and return its DN.

        `cn` defaults to `uid`, `sn` to the last word of `cn`. The password is stored as
        `{SSHA}` (as slappasswd does) or in clear with hash_password=False; slapd accepts a
        bind with either. password=None adds a user without userPassword (cannot bind)."""
        common_name = cn if cn is not None else uid
        attributes: dict[str, str | Sequence[str]] = {
            "uid": uid,
            "cn": common_name,
            "sn": sn if sn is not None else common_name.split()[-1],
        }
        if email is not None:
            attributes["mail"] = email
        if password is not None:
            attributes["userPassword"] = ssha(password) if hash_password else password
        attributes.update(extra or {})
        dn = self.user_dn(uid)
        with self.admin_connection() as conn:
            conn.add(dn, list(USER_OBJECT_CLASSES), attributes)
        return dn

    def modify_user(self, uid: str, changes: Mapping[str, str | Sequence[str] | None]) -> None:
        """Replace attributes of a user (`None` deletes the attribute), e.g. {"mail": "x@y"}."""
        self._replace(self.user_dn(uid), changes)

    def change_password(self, uid: str, password: str, *, hash_password: bool = True) -> None:
        """Set a user's userPassword (as the admin)."""
        self._replace(
            self.user_dn(uid), {"userPassword": ssha(password) if hash_password else password}
        )

    def delete_user(self, uid: str) -> None:
        """Delete the user entry. Group `member` values pointing at it stay (no refint)."""
        with self.admin_connection() as conn:
            conn.delete(self.user_dn(uid))

    def add_group(self, cn: str, member_uids: Iterable[str]) -> str:
        """Add `cn=<cn>,ou=groups,...` (groupOfNames, `member` = user DNs); return its DN."""
        dn = self.group_dn(cn)
        with self.admin_connection() as conn:
            conn.add(
                dn, list(GROUP_OBJECT_CLASSES), {"cn": cn, "member": self._members(member_uids)}
            )
        return dn

    def set_group_members(self, cn: str, uids: Iterable[str]) -> None:
        """Replace the group's members with exactly these users."""
        self._replace(self.group_dn(cn), {"member": self._members(uids)})

    def add_group_member(self, cn: str, uid: str) -> None:
        with self.admin_connection() as conn:
            conn.modify(self.group_dn(cn), {"member": [(ldap3.MODIFY_ADD, [self.user_dn(uid)])]})

    def remove_group_member(self, cn: str, uid: str) -> None:
        """Remove one member (a group left empty gets `EMPTY_MEMBER`)."""
        with self.admin_connection() as conn:
            conn.search(self.group_dn(cn), "(objectClass=*)", ldap3.BASE, attributes=["member"])
            members = [str(m) for m in conn.entries[0]["member"].values]
        target = self.user_dn(uid).lower()
        remaining = [m for m in members if m.lower() != target and m != EMPTY_MEMBER]
        self._replace(self.group_dn(cn), {"member": remaining or [EMPTY_MEMBER]})

    def delete_group(self, cn: str) -> None:
        with self.admin_connection() as conn:
            conn.delete(self.group_dn(cn))

    def user_exists(self, uid: str) -> bool:
        with self.admin_connection() as conn:
            found = conn.search(
                USERS_DN, f"(uid={escape_filter_chars(uid)})", ldap3.LEVEL, attributes=[]
            )
            return bool(found)

    # -- internals -------------------------------------------------------------------------

    def _members(self, uids: Iterable[str]) -> list[str]:
        return [self.user_dn(uid) for uid in uids] or [EMPTY_MEMBER]

    def _replace(self, dn: str, changes: Mapping[str, str | Sequence[str] | None]) -> None:
        modifications: dict[str, list[tuple[str, list[str]]]] = {}
        for attribute, value in changes.items():
            if value is None:
                modifications[attribute] = [(ldap3.MODIFY_REPLACE, [])]
            elif isinstance(value, str):
                modifications[attribute] = [(ldap3.MODIFY_REPLACE, [value])]
            else:
                modifications[attribute] = [(ldap3.MODIFY_REPLACE, list(value))]
        with self.admin_connection() as conn:
            conn.modify(dn, modifications)

    def _require_started(self) -> None:
        if self.proc is None:
            raise RuntimeError("LdapServer is not started")

    def _require_tls(self) -> None:
        self._require_started()
        if not self.tls:
            raise RuntimeError("LdapServer was created with tls=False")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL if it is still there after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
