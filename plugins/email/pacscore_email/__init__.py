"""pacscore-email: delivers the core's mail jobs over SMTP and mails alerts.

Hooks: ``database_models`` (its table ``mailalertsent``); ``settings_schema``;
``prepare_mail`` (first: fills in ``From`` and the default ``Reply-To``);
``deliver_mail`` (SMTP, none/STARTTLS/SSL, AUTH); ``on_alert`` (a templated
mail to the recipients of the alert's kind, not again within the quiet
period); ``cli_commands`` (``pacscore mail test``); ``register_blueprints``
(the "send test e-mail" page and API route).
See README.md.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from pacscore import hookimpl
from pacscore.db import connection
from pacscore.mail import deliver, mail_payload

from . import smtp
from .alerts import mail_alert, render
from .models import MODELS
from .settings import EmailSettings

PLUGIN = "email"
log = logging.getLogger(__name__)


def settings(pacs) -> dict[str, Any]:
    return pacs.plugin_settings(PLUGIN)


@hookimpl
def database_models():
    return MODELS


@hookimpl
def settings_schema():
    return EmailSettings()


@hookimpl(tryfirst=True)
def prepare_mail(pacs, message: EmailMessage):
    config = settings(pacs)
    if "From" not in message:
        message["From"] = config["sender"]
        # a Message-ID in our own domain (the core's is in pacscore.invalid)
        del message["Message-ID"]
        message["Message-ID"] = make_msgid(domain=config["sender"].rsplit("@", 1)[-1])
    if "Reply-To" not in message and config["reply_to"]:
        message["Reply-To"] = config["reply_to"]
    return message


@hookimpl
def deliver_mail(pacs, message: EmailMessage):
    config = settings(pacs)
    if not config["smtp_host"]:
        return None  # not configured: the core says no plugin delivered it
    password = pacs.secrets.decrypt(config["password"]) if config["password"] else ""
    smtp.send(config, password, message)
    return True


@hookimpl
def on_alert(pacs, kind: str, message: str, details: dict[str, Any]):
    with connection():
        mail_alert(pacs, settings(pacs), kind, message, details)


def send_test_mail(pacs, address: str) -> EmailMessage:
    """Send a test mail to ``address`` now (not through a job); raise on failure.

    For the console's "send test e-mail" button and ``pacscore mail test``.
    """
    config = settings(pacs)
    text, html = render(
        "test",
        site_name=config["site_name"],
        server_name=config["server_name"],
        smtp_host=config["smtp_host"],
        smtp_port=config["smtp_port"],
        security=config["security"],
    )
    subject = f"[{config['site_name']}] test e-mail"
    return deliver(pacs, mail_payload([address], subject, text, html, kind="test"))


def cmd_mail_test(args, pacs) -> int:
    try:
        send_test_mail(pacs, args.address)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is the answer the user wants
        raise ValueError(f"the test mail was not sent: {exc}") from exc
    config = settings(pacs)
    print(
        f"test mail sent to {args.address} through "
        f"{config['smtp_host']}:{config['smtp_port']} ({config['security']})"
    )
    return 0


@hookimpl
def cli_commands(subparsers):
    mail = subparsers.add_parser("mail", help="e-mail (plugin email)").add_subparsers(
        dest="mail_command", metavar="ACTION", required=True
    )
    p = mail.add_parser("test", help="send a test e-mail now with the SMTP settings")
    p.add_argument("address")
    p.set_defaults(func=cmd_mail_test)


@hookimpl
def register_blueprints(pacs, app):
    from pacscore.web.menu import add_menu_item

    from .web import make_blueprints

    for blueprint in make_blueprints():
        app.register_blueprint(blueprint)
    add_menu_item(app, "Test e-mail", "email.test_page", "configure")
