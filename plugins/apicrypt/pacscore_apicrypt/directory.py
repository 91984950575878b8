"""Our key and certificate, and the directory of correspondents' certificates.

Plain functions (no web, no CLI) so that the console's pages and the
``pacscore apicrypt`` commands share them.  Call them with a database
connection open.  Invalid input raises ``ValueError`` with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import NameOID
from peewee import fn

from pacscore.db import db, utcnow

from .models import ApicryptCertificate, ApicryptIdentity


@dataclass
class Identity:
    """Our signing key, certificate and chain, decrypted for use."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    chain: list[x509.Certificate]
    row: ApicryptIdentity


# -- reading certificates ----------------------------------------------------------


def _naive_utc(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def addresses(cert: x509.Certificate) -> list[str]:
    """The e-mail addresses of a certificate: SAN rfc822Name, else subject emailAddress."""
    found: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        found = [str(a) for a in san.value.get_values_for_type(x509.RFC822Name)]
    except x509.ExtensionNotFound:
        pass
    if not found:
        found = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)]
    return sorted({a.strip().lower() for a in found if "@" in a})


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates from PEM (one or more), DER, or a PKCS#7 bundle (.p7b)."""
    loaders = (
        x509.load_pem_x509_certificates,
        lambda d: [x509.load_der_x509_certificate(d)],
        pkcs7.load_pem_pkcs7_certificates,
        pkcs7.load_der_pkcs7_certificates,
    )
    for loader in loaders:
        try:
            certs = loader(data)
        except ValueError:
            continue
        if certs:
            return certs
    raise ValueError("no certificate found (expected PEM, DER or PKCS#7)")


# -- our identity ------------------------------------------------------------------------


def _load_key(data: bytes, password: bytes | None):
    try:
        return serialization.load_pem_private_key(data, password)
    except TypeError as exc:  # encrypted without password, or a password for a clear key
        raise ValueError(f"private key: {exc}") from exc
    except ValueError as exc:
        raise ValueError("cannot read the private key (wrong password or not a PEM key)") from exc


def _parse_identity(data: bytes, password: str | None, key_data: bytes | None):
    secret = password.encode() if password else None
    if b"-----BEGIN" not in data:
        try:
            key, cert, chain = pkcs12.load_key_and_certificates(data, secret)
        except ValueError as exc:
            raise ValueError("cannot read the PKCS#12 file (wrong password?)") from exc
        if key is None or cert is None:
            raise ValueError("the PKCS#12 file holds no private key or no certificate")
        return key, cert, list(chain)
    certs = load_certificates(data)
    key = _load_key(key_data if key_data is not None else data, secret)
    public = key.public_key().public_numbers()
    mine = [c for c in certs if c.public_key().public_numbers() == public]
    if not mine:
        raise ValueError("no certificate matches the private key")
    return key, mine[0], [c for c in certs if c is not mine[0]]


def import_identity(
    pacs, data: bytes, password: str | None = None, key_data: bytes | None = None
) -> ApicryptIdentity:
    """Import our key and certificate: PKCS#12 (``password``), or PEM with the key
    in ``data`` or in ``key_data`` (``password`` if the key is encrypted).

    Replaces the previous identity.  The key is stored encrypted with
    ``pacs.secrets``.
    """
    key, cert, chain = _parse_identity(data, password, key_data)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("only RSA keys are supported for S/MIME here")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise ValueError("the certificate does not match the private key")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *chain])
    emails = addresses(cert)
    with db.atomic():
        ApicryptIdentity.delete().execute()
        return ApicryptIdentity.create(
            email=emails[0] if emails else "",
            name=common_name(cert),
            fingerprint=fingerprint(cert),
            not_after=_naive_utc(cert.not_valid_after_utc),
            cert_pem=cert_pem.decode(),
            key=pacs.secrets.encrypt(key_pem),
        )


def identity(pacs) -> Identity | None:
    """Our identity, decrypted; ``None`` if none was imported."""
    row = ApicryptIdentity.select().first()
    if row is None:
        return None
    key = serialization.load_pem_private_key(pacs.secrets.decrypt_bytes(row.key), None)
    cert, *chain = x509.load_pem_x509_certificates(row.cert_pem.encode())
    return Identity(key, cert, chain, row)


# -- correspondents ------------------------------------------------------------------------


def import_certificates(data: bytes) -> list[ApicryptCertificate]:
    """Add correspondents' certificates (PEM, DER or PKCS#7); return the new rows.

    A certificate already in the directory is skipped.  One without an
    e-mail address or without an RSA key is refused (nothing is imported).
    """
    certs = load_certificates(data)
    for cert in certs:
        if not addresses(cert):
            raise ValueError(f"certificate {cert.subject.rfc4514_string()} has no e-mail address")
        if not isinstance(cert.public_key(), rsa.RSAPublicKey):
            raise ValueError(f"certificate {cert.subject.rfc4514_string()}: only RSA is supported")
    added = []
    with db.atomic():
        for cert in certs:
            for email in addresses(cert):
                exists = ApicryptCertificate.select().where(
                    (ApicryptCertificate.fingerprint == fingerprint(cert))
                    & (ApicryptCertificate.email == email)
                )
                if exists.exists():
                    continue
                added.append(_create(cert, email))
    return added


def _create(cert: x509.Certificate, email: str) -> ApicryptCertificate:
    return ApicryptCertificate.create(
        email=email,
        name=common_name(cert),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        fingerprint=fingerprint(cert),
        not_before=_naive_utc(cert.not_valid_before_utc),
        not_after=_naive_utc(cert.not_valid_after_utc),
        pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def list_certificates(search: str = "") -> list[ApicryptCertificate]:
    """The directory by address, optionally those whose address or name contains ``search``."""
    query = ApicryptCertificate.select().order_by(
        ApicryptCertificate.email, ApicryptCertificate.not_after.desc()
    )
    if search.strip():
        needle = search.strip().lower()
        query = query.where(
            fn.LOWER(ApicryptCertificate.email).contains(needle)
            | fn.LOWER(ApicryptCertificate.name).contains(needle)
        )
    return list(query)


def remove_certificate(cert_id: int) -> bool:
    return bool(ApicryptCertificate.delete().where(ApicryptCertificate.id == cert_id).execute())


def certificate_for(address: str) -> x509.Certificate:
    """The valid certificate of ``address`` that expires last; ``LookupError`` if none."""
    now = utcnow()
    rows = list(
        ApicryptCertificate.select()
        .where(ApicryptCertificate.email == address.strip().lower())
        .order_by(ApicryptCertificate.not_after.desc())
    )
    valid = [r for r in rows if r.not_before <= now < r.not_after]
    if valid:
        return x509.load_pem_x509_certificate(valid[0].pem.encode())
    if not rows:
        raise LookupError(f"no certificate for {address} in the APICrypt directory")
    if rows[0].not_after <= now:
        raise LookupError(f"the certificate of {address} expired on {rows[0].not_after:%Y-%m-%d}")
    first = min(r.not_before for r in rows)
    raise LookupError(f"the certificate of {address} is valid only from {first:%Y-%m-%d}")
