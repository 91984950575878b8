"""S/MIME (CMS) signing and encryption of a whole mail body, with ``cryptography``.

The body entity (every ``Content-*`` header and the content) is signed with
our key (detached signature, ``multipart/signed``), then the signed entity is
enveloped for the recipients' certificates (``application/pkcs7-mime``,
enveloped-data, AES-256-CBC).  Only the routing headers and the subject stay
in clear.
"""

from __future__ import annotations

import copy
from email import policy
from email.message import EmailMessage

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from .directory import Identity

# headers kept on the outer (clear) message; everything else goes inside or is dropped
CLEAR_HEADERS = ("From", "To", "Cc", "Bcc", "Reply-To", "Subject", "Date", "Message-ID")
CIPHERS = {"aes256": algorithms.AES256, "aes128": algorithms.AES128}


def body_entity(message: EmailMessage) -> bytes:
    """The MIME entity to protect: the message without its non-content headers, CRLF."""
    inner = copy.deepcopy(message)
    for name in set(inner.keys()):
        if not name.lower().startswith("content-"):
            del inner[name]
    return inner.as_bytes(policy=policy.SMTP)


def sign(data: bytes, me: Identity) -> bytes:
    """``multipart/signed`` S/MIME entity of ``data`` (detached SHA-256 signature)."""
    builder = (
        pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(me.cert, me.key, hashes.SHA256())
    )
    for cert in me.chain:
        builder = builder.add_certificate(cert)
    return builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])


def encrypt(data: bytes, recipients: list[x509.Certificate], cipher: str = "aes256") -> bytes:
    """DER CMS enveloped-data of ``data`` for ``recipients``."""
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(data)
    builder = builder.set_content_encryption_algorithm(CIPHERS[cipher])
    for cert in recipients:
        builder = builder.add_recipient(cert)
    return builder.encrypt(serialization.Encoding.DER, [])


def protect(
    message: EmailMessage, me: Identity, recipients: list[x509.Certificate], cipher: str
) -> EmailMessage:
    """A new message: the same clear headers, the body signed then encrypted."""
    enveloped = encrypt(sign(body_entity(message), me), recipients, cipher)
    outer = EmailMessage()
    for name in CLEAR_HEADERS:
        for value in message.get_all(name, []):
            outer[name] = value
    for name, value in message.items():
        if name.lower().startswith("x-pacscore-"):
            outer[name] = value
    outer.set_content(
        enveloped,
        maintype="application",
        subtype="pkcs7-mime",
        params={"smime-type": "enveloped-data", "name": "smime.p7m"},
        disposition="attachment",
        filename="smime.p7m",
    )
    return outer
