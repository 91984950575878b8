"""pacscore-apicrypt: APICrypt v2 (S/MIME) mail to health professionals.

Implements ``prepare_mail``: a mail with a recipient whose address matches
the APICrypt domain patterns (default ``*.apicrypt.org``) is signed with our
key and encrypted for every recipient's certificate; without our key or a
recipient's valid certificate it is refused (the mail job fails at once),
never sent in clear.  Key and directory management are plain functions in
:mod:`pacscore_apicrypt.directory`, also offered as ``pacscore apicrypt``
commands.  See README.md.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import getaddresses
from fnmatch import fnmatch

from marshmallow import Schema, fields, validate

from pacscore import hookimpl
from pacscore.db import connection, utcnow
from pacscore.jobs import PermanentJobError

from . import directory
from .cli import add_commands
from .models import MODELS
from .smime import CIPHERS, protect

PLUGIN = "apicrypt"


class ApicryptSettings(Schema):
    domain_patterns = fields.List(
        fields.String(validate=validate.Length(min=1)),
        load_default=lambda: ["*.apicrypt.org"],
        metadata={"help": "domains (shell patterns) whose mail must be APICrypt-encrypted"},
    )
    cipher = fields.String(
        load_default="aes256",
        validate=validate.OneOf(sorted(CIPHERS)),
        metadata={"help": "content encryption: aes256 or aes128"},
    )


def recipients(message: EmailMessage) -> list[str]:
    values = [str(v) for h in ("To", "Cc", "Bcc") for v in message.get_all(h, [])]
    return [address.lower() for _, address in getaddresses(values) if address]


def is_apicrypt(address: str, patterns: list[str]) -> bool:
    domain = address.rsplit("@", 1)[-1].lower()
    return any(fnmatch(domain, pattern.lower()) for pattern in patterns)


def _refuse(reason: str) -> PermanentJobError:
    return PermanentJobError(
        f"APICrypt: not sent (never in clear to an APICrypt address): {reason}"
    )


@hookimpl
def database_models():
    return MODELS


@hookimpl
def settings_schema():
    return ApicryptSettings()


@hookimpl
def prepare_mail(pacs, message: EmailMessage):
    settings = pacs.plugin_settings(PLUGIN)
    addresses = recipients(message)
    if not any(is_apicrypt(a, settings["domain_patterns"]) for a in addresses):
        return None
    with connection():
        me = directory.identity(pacs)
        certificates, missing = [], []
        for address in addresses:  # every recipient reads the one encrypted body
            try:
                certificates.append(directory.certificate_for(address))
            except LookupError as exc:
                missing.append(str(exc))
    if me is None:
        raise _refuse("no key and certificate of ours (pacscore apicrypt identity import)")
    if me.row.not_after <= utcnow():
        raise _refuse(f"our certificate expired on {me.row.not_after:%Y-%m-%d}")
    if missing:
        raise _refuse("; ".join(missing))
    return protect(message, me, certificates, settings["cipher"])


@hookimpl
def cli_commands(subparsers):
    add_commands(subparsers)


@hookimpl
def register_blueprints(pacs, app):
    from pacscore.web.menu import add_menu_item
    from pacscore_apicrypt.web import make_blueprints

    for blueprint in make_blueprints():
        app.register_blueprint(blueprint)
    add_menu_item(app, "APICrypt", "apicrypt.identity", "configure")
