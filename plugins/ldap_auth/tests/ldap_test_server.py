"""A real Debian slapd for the ldap_auth tests: free ports on 127.0.0.1, LDAP with
StartTLS and LDAPS under a CA generated here, the memberOf overlay, a test tree.
(Helpers; the fixtures are in conftest.py.)"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

os.environ.setdefault("LDAPNOINIT", "1")  # no ~/.ldaprc or /etc/ldap/ldap.conf in tests
from slapdtest import SlapdObject  # noqa: E402
from slapdtest._slapdtest import SLAPD_CONF_TEMPLATE  # noqa: E402

from pacscore import hookimpl  # noqa: E402

SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SERVICE_DN = f"cn=pacs-service,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "service-secret"

# -- certificates -------------------------------------------------------------------------


@dataclass
class Pki:
    ca_file: Path
    other_ca_file: Path  # a CA that did not sign the server certificate
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _certificate(subject, issuer, public_key, signing_key, extensions):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def _make_ca(folder: Path, name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    ca_extensions = [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
    ]
    cert = _certificate(_name(name), _name(name), key.public_key(), key, ca_extensions)
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_pki(folder: Path) -> Pki:
    ca_key, ca_cert, ca_file = _make_ca(folder, "test-ca")
    _, _, other_ca_file = _make_ca(folder, "other-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_extensions = [
        (x509.SubjectAlternativeName(names), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ]
    cert = _certificate(
        _name("127.0.0.1"), ca_cert.subject, key.public_key(), ca_key, server_extensions
    )
    server_cert = folder / "server.pem"
    server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    server_key = folder / "server.key"
    _write_key(key, server_key)
    return Pki(ca_file, other_ca_file, server_cert, server_key)


# -- slapd ------------------------------------------------------------------------------------

# slapdtest's configuration, loading the memberOf overlay module (maintains users' memberOf)
# and accepting unauthenticated binds (a DN without password) as Active Directory does by
# default: the tests show that the plugin never sends one
CONF_WITH_MEMBEROF = SLAPD_CONF_TEMPLATE.replace(
    "olcModuleLoad: back_%(database)s", "olcModuleLoad: back_%(database)s\nolcModuleLoad: memberof"
).replace("olcAllows: bind_v2", "olcAllows: bind_v2 bind_anon_dn")
# the overlay itself needs the schemas (attribute member), loaded after the template
MEMBEROF_OVERLAY = """dn: olcOverlay=memberof,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOf
olcOverlay: memberof
olcMemberOfRefInt: TRUE
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestSlapd(SlapdObject):
    """Debian's /usr/sbin/slapd with schemas from /etc/ldap/schema (slapdtest finds both)."""

    __test__ = False
    suffix = SUFFIX
    slapd_loglevel = "0"
    slapd_conf_template = CONF_WITH_MEMBEROF
    openldap_schema_files = ("core.ldif", "cosine.ldif", "inetorgperson.ldif")

    def __init__(self, workdir: Path, pki: Pki) -> None:
        self.TMPDIR = str(workdir)  # read by SlapdObject.__init__ for its run folder
        super().__init__()
        self.cafile = str(pki.ca_file)
        self.servercert = str(pki.server_cert)
        self.serverkey = str(pki.server_key)
        self.ldaps_port = free_port()
        self.ldaps_uri = f"ldaps://127.0.0.1:{self.ldaps_port}/"

    def _write_config(self) -> None:
        super()._write_config()
        self.slapadd(MEMBEROF_OVERLAY, ["-n0"])

    def _start_slapd(self) -> None:
        # SlapdObject listens on ldap:// and ldapi:// only; add ldaps://
        urls = " ".join(u for u in (self.ldap_uri, self.ldaps_uri, self.ldapi_uri) if u)
        args = [self.PATH_SLAPD, "-F", self._slapd_conf, "-h", urls, "-d", "0"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None:
                error = self._proc.stderr.read().decode(errors="replace")
                self._stopped()
                raise RuntimeError(f"slapd exited before opening its port:\n{error}")
            try:
                self.ldapwhoami()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def pause(self) -> None:
        """Stop slapd, keeping its data (``resume`` starts it again)."""
        self._proc.terminate()
        self._proc.wait()
        self._stopped()

    def add(self, ldif: str) -> None:
        self.ldapadd(ldif)

    def modify(self, ldif: str) -> None:
        self.ldapmodify(ldif)


def person(uid: str, password: str, first: str, last: str, rdn_value: str | None = None) -> str:
    rdn = rdn_value or uid
    return f"""dn: uid={rdn},{PEOPLE}
objectClass: inetOrgPerson
uid: {uid}
cn: {first} {last}
givenName: {first}
sn: {last}
mail: {uid.replace(" ", "")}@example.org
userPassword: {password}
"""


def group(name: str, *member_dns: str) -> str:
    # groupOfNames needs a member: an empty group holds the placeholder "cn=nobody"
    members = "".join(f"member: {dn}\n" for dn in (member_dns or (f"cn=nobody,{SUFFIX}",)))
    return f"dn: cn={name},{GROUPS}\nobjectClass: groupOfNames\ncn: {name}\n{members}"


def user_dn(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


BASE_TREE = "\n".join(
    [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
        "o: Example\n",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: pacs-service\nuserPassword: {SERVICE_PASSWORD}\n",
        person("alice", "alice-pw", "Alice", "Martin"),
        person("bob", "bob-pw", "Bob", "Durand"),
        person("carol", "carol-pw", "Carol", "Petit"),
        person("dave", "dave-pw", "Dave", "Nogroup"),
        # a login full of filter and DN metacharacters, stored escaped in its DN
        person("smith,(jr)*", "smith-pw", "John", "Smith", rdn_value=r"smith\,(jr)*"),
        group("radiologists", user_dn("alice"), user_dn("carol")),
        group("referring", user_dn("bob"), user_dn(r"smith\,(jr)*")),
        group("admins", user_dn("carol")),
        f"dn: cn=unique-referring,{GROUPS}\nobjectClass: groupOfUniqueNames\n"
        f"cn: unique-referring\nuniqueMember: {user_dn('bob')}\n",
        # a group of groups, for nested membership
        group("imaging-staff", f"cn=radiologists,{GROUPS}"),
    ]
)


# -- an in-process Pacs with the plugin ----------------------------------------------------


class AlertRecorder:
    """A plugin keeping the alerts raised (``on_alert``)."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, str]] = []

    @hookimpl
    def on_alert(self, kind, message):
        self.alerts.append((kind, message))
