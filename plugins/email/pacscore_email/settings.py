"""The settings of the email plugin (``pacscore plugins configure email``)."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

SECURITY_CHOICES = ("none", "starttls", "ssl")
ALERTS_KEY = "alerts"  # recipients of every alert kind without a list of its own


class EmailSettings(Schema):
    smtp_host = fields.String(load_default="", metadata={"help": "SMTP server (empty: no mail)"})
    smtp_port = fields.Integer(load_default=25, validate=validate.Range(min=1, max=65535))
    security = fields.String(
        load_default="none",
        validate=validate.OneOf(SECURITY_CHOICES),
        metadata={"help": "none, starttls (usually port 587) or ssl (usually port 465)"},
    )
    tls_verify = fields.Boolean(
        load_default=True, metadata={"help": "check the server's certificate and host name"}
    )
    tls_ca_file = fields.String(
        load_default="", metadata={"help": "PEM file of the CA(s) to trust instead of the system's"}
    )
    login = fields.String(load_default="", metadata={"help": "SMTP AUTH login (empty: no AUTH)"})
    password = fields.String(
        load_default="", metadata={"help": "SMTP AUTH password (stored encrypted)", "secret": True}
    )
    sender = fields.Email(load_default="pacscore@localhost", metadata={"help": "From address"})
    reply_to = fields.String(load_default="", metadata={"help": "default Reply-To address"})
    server_name = fields.String(
        load_default="", metadata={"help": "base URL of the console, used in links"}
    )
    site_name = fields.String(load_default="pacscore", metadata={"help": "shown in every mail"})
    recipients = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.Email()),
        load_default=dict,
        metadata={
            "help": 'addresses per notification kind, e.g. {"alerts": [...], '
            '"low_disk_space": [...]}; "alerts" serves every alert kind without its own list'
        },
    )
    quiet_period_minutes = fields.Integer(
        load_default=60,
        validate=validate.Range(min=0),
        metadata={"help": "the same alert is not mailed again within this period"},
    )
    timeout_seconds = fields.Integer(load_default=30, validate=validate.Range(min=1, max=600))

    @validates_schema
    def _check_reply_to(self, data, **kwargs):
        if data.get("reply_to") and "@" not in data["reply_to"]:
            raise ValidationError({"reply_to": ["Not a valid email address."]})
