"""The home folder, its bootstrap configuration file, and the run-time settings.

The file ``pacscore.toml`` in the home holds only what is needed before the
database can be opened (database URL, AE title, ports, secret key).  Every
setting an administrator changes at run time lives in the database and is
validated by :class:`CoreSettingsSchema`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

CONFIG_NAME = "pacscore.toml"
DEFAULT_DB_URL = "sqlite:///index.db"


def default_home() -> Path:
    return Path(os.environ.get("PACSCORE_HOME") or "pacscore-home").absolute()


@dataclass
class Config:
    home: Path
    db_url: str = DEFAULT_DB_URL
    aet: str = "PACSCORE"
    host: str = "0.0.0.0"
    dicom_port: int = 11112
    http_port: int = 8080
    hl7_port: int = 2575
    dicom_processes: int = 0  # DICOM listener processes; 0: one per core
    lean_store: bool = True  # C-STORE in the DUL thread (dicom/pynetdicom_ext/lean_store.py)
    sync_directories: bool = False  # fsync .incoming after each file (storage.py)
    keep_stored_in_cache: bool = False  # leave written files in the page cache (storage.py)
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32))

    @property
    def path(self) -> Path:
        return self.home / CONFIG_NAME

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @classmethod
    def load(cls, home: Path) -> Config:
        path = home / CONFIG_NAME
        if not path.exists():
            raise FileNotFoundError(
                f"{home} is not a pacscore home (no {CONFIG_NAME}); run 'pacscore init' first"
            )
        data = tomllib.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "home"}
        return cls(home=home, **known)

    def save(self) -> None:
        lines = ["# pacscore bootstrap configuration; run-time settings live in the database"]
        for key, value in asdict(self).items():
            if key == "home":
                continue
            lines.append(f"{key} = {json.dumps(value)}")
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o600)
        tmp.replace(self.path)


def _valid_network(text: str) -> None:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValidationError(f"not an address or network: {text!r}") from exc


# upper bounds of durations: a larger one overflowed timedelta (500 at login, dispatcher errors)
TEN_YEARS_MINUTES = 10 * 365 * 24 * 60
MINUTES = validate.Range(min=1, max=TEN_YEARS_MINUTES)


class CoreSettingsSchema(Schema):
    """Run-time settings of the core, editable by administrators."""

    study_stable_seconds = fields.Integer(
        load_default=60,
        validate=validate.Range(min=1, max=7 * 86400),
        metadata={"help": "quiet time"},
    )
    accept_empty_patient_id = fields.Boolean(load_default=True)
    accept_empty_patient_name = fields.Boolean(load_default=True)
    refuse_patient_id_mismatch = fields.Boolean(
        load_default=True,
        metadata={"help": "refuse an instance whose PatientID differs from its study's"},
    )
    # off by default: a site upgrading must not start refusing images it used to accept
    refuse_patient_name_mismatch = fields.Boolean(
        load_default=False,
        metadata={
            "help": "refuse an instance whose PatientID is already indexed with another "
            "PatientName (case, accents and trailing ^ ignored)"
        },
    )
    store_from_declared_nodes_only = fields.Boolean(load_default=False)
    overwrite_duplicates = fields.Boolean(load_default=False)
    max_find_results = fields.Integer(
        load_default=10000, validate=validate.Range(min=1, max=10_000_000)
    )
    low_disk_alert_mb = fields.Integer(load_default=4096, validate=validate.Range(min=0))
    # security of console and API accounts
    session_minutes = fields.Integer(load_default=480, validate=MINUTES)
    inactivity_minutes = fields.Integer(load_default=30, validate=MINUTES)
    max_failed_logins = fields.Integer(load_default=5, validate=validate.Range(min=1))
    lock_minutes = fields.Integer(load_default=15, validate=MINUTES)
    min_password_length = fields.Integer(load_default=10, validate=validate.Range(min=6, max=1024))
    password_renewal_days = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=TEN_YEARS_MINUTES // 1440),
        metadata={"help": "0: never"},
    )
    reset_link_minutes = fields.Integer(load_default=60, validate=MINUTES)
    reset_mail_interval_minutes = fields.Integer(
        load_default=5,
        validate=validate.Range(min=0, max=TEN_YEARS_MINUTES),
        metadata={"help": "at most one password reset mail per account in this time"},
    )
    public_url = fields.String(
        load_default="",
        validate=validate.Regexp(r"^(https?://[^\s]+)?$", error="an http(s):// URL, or empty"),
        metadata={"help": "base URL of the console in mailed links; empty: the request's host"},
    )
    api_ip_allowlist = fields.List(
        fields.String(validate=_valid_network),
        load_default=list,
        metadata={"help": "addresses or networks (CIDR) allowed to use the API; empty: any"},
    )
    worklist_timeout_hours = fields.Float(
        load_default=24.0,
        validate=validate.Range(min=0, max=TEN_YEARS_MINUTES / 60),
        metadata={"help": "a step not started this long after its start becomes DISCONTINUED"},
    )


CORE_SETTINGS = CoreSettingsSchema()


def parse_assignment(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def coerce_for_schema(schema: Schema, key: str, raw: str) -> Any:
    """Turn a command-line string into the JSON value a schema field expects."""
    if key not in schema.fields:
        raise ValidationError({key: ["Unknown field."]})
    field_obj = schema.fields[key]
    if isinstance(
        field_obj, fields.Boolean | fields.Integer | fields.Float | fields.List | fields.Dict
    ):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw
