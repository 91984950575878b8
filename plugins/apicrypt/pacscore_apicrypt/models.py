"""The plugin's tables: our identity and the directory of correspondents' certificates
(declared to the core by ``database_models``)."""

from __future__ import annotations

from peewee import CharField, DateTimeField, TextField

from pacscore.db import utcnow
from pacscore.models import BaseModel


class ApicryptIdentity(BaseModel):
    """Our APICrypt signing identity: one row, the last import."""

    email = CharField(max_length=255, default="")
    name = CharField(max_length=324, default="")
    fingerprint = CharField(max_length=64)  # SHA-256 of our certificate, hex
    not_after = DateTimeField()
    cert_pem = TextField()  # our certificate, then its chain
    key = TextField()  # PKCS#8 PEM, encrypted with pacs.secrets
    imported = DateTimeField(default=utcnow)


class ApicryptCertificate(BaseModel):
    """A correspondent's S/MIME certificate (the directory), one row per address."""

    email = CharField(max_length=255, index=True)  # lower-case
    name = CharField(max_length=324, default="")
    subject = TextField(default="")
    issuer = TextField(default="")
    serial = CharField(max_length=128, default="")
    fingerprint = CharField(max_length=64, index=True)  # SHA-256, hex
    not_before = DateTimeField()
    not_after = DateTimeField(index=True)
    pem = TextField()
    imported = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("fingerprint", "email"), True),)


MODELS = [ApicryptIdentity, ApicryptCertificate]
