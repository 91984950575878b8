"""The purge plugin's settings (a marshmallow schema, edited with
``pacscore plugins configure purge`` or the console's schema-driven form)."""

from __future__ import annotations

import logging

from marshmallow import Schema, ValidationError, fields, post_load, pre_load, validate

from pacscore_purge.rules import normalize

log = logging.getLogger(__name__)

PLUGIN_NAME = "purge"

# DICOM Modality (0008,0060) defined terms, current and retired (PS3.3 C.7.3.1.1.1)
KNOWN_MODALITIES = frozenset(
    """
    ANN AR ASMT AU BDUS BI BMD CFM CT CTPROTOCOL DG DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD
    IO IOL IVOCT IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA
    PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN
    RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC
    AS CD CF CP CR CS DD DF DM DS EC FA FS LP MA MS OPR ST VF SC
    """.split()  # noqa: SIM905 - a table is easier to read and extend
)


class RuleSchema(Schema):
    modality = fields.String(load_default="*", metadata={"help": "modality code, * for any"})
    description = fields.String(
        load_default="*", metadata={"help": "study description (no case, no accents), * for any"}
    )
    days = fields.Integer(
        required=True,
        validate=validate.Range(min=0, error="days must be 0 (keep forever) or more"),
        metadata={"help": "age after which the study goes; 0 keeps it forever"},
    )


def parse_rule(value) -> dict:
    """A rule from its text form ``MODALITY DESCRIPTION... DAYS`` (``DX Chest 0``)."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise ValidationError("a rule is an object or 'MODALITY DESCRIPTION DAYS'")
    words = value.split()
    if len(words) < 3:
        raise ValidationError(f"expected 'MODALITY DESCRIPTION DAYS', got {value!r}")
    try:
        days = int(words[-1])
    except ValueError:
        raise ValidationError(f"days must be a whole number in {value!r}") from None
    return {"modality": words[0], "description": " ".join(words[1:-1]), "days": days}


class ThresholdSchema(Schema):
    storage = fields.String(required=True, metadata={"help": "storage folder name"})
    min_free_mb = fields.Float(
        load_default=0,
        validate=validate.Range(min=0),
        metadata={"help": "purge when free space goes under this (0: off)"},
    )
    max_size_mb = fields.Float(
        load_default=0,
        validate=validate.Range(min=0),
        metadata={"help": "purge when the archive in this folder exceeds this (0: off)"},
    )
    margin_mb = fields.Float(
        load_default=0,
        validate=validate.Range(min=0),
        metadata={"help": "free this much beyond the threshold"},
    )


class PurgeSettingsSchema(Schema):
    rules = fields.List(
        fields.Nested(RuleSchema),
        load_default=list,
        metadata={"help": "retention rules; also accepted as text: 'MG * 1825'"},
    )
    date_source = fields.String(
        load_default="study_date",
        validate=validate.OneOf(["study_date", "last_received"]),
        metadata={"help": "age from the study date or from the last reception"},
    )
    thresholds = fields.List(
        fields.Nested(ThresholdSchema), load_default=list, metadata={"help": "size thresholds"}
    )
    purge_undelivered = fields.Boolean(
        load_default=False,
        metadata={"help": "also purge studies a plugin holds (e.g. not yet forwarded)"},
    )
    schedule_time = fields.String(
        load_default="02:00",
        validate=validate.Regexp(r"^(([01]\d|2[0-3]):[0-5]\d)?$", error="expected HH:MM or empty"),
        metadata={"help": "daily run, server local time (empty: no schedule)"},
    )
    size_check_minutes = fields.Integer(
        load_default=10,
        validate=validate.Range(min=1),
        metadata={"help": "how often the size thresholds are checked"},
    )
    batch_series = fields.Integer(
        load_default=200,
        validate=validate.Range(min=1),
        metadata={"help": "series deleted per transaction"},
    )

    @pre_load
    def _rules_from_text(self, data, **kwargs):
        rules = data.get("rules") if isinstance(data, dict) else None
        if not isinstance(rules, list):
            return data
        parsed, errors = [], {}
        for index, rule in enumerate(rules):
            try:
                parsed.append(parse_rule(rule))
            except ValidationError as exc:
                errors[index] = exc.messages
        if errors:
            raise ValidationError({"rules": errors})
        return {**data, "rules": parsed}

    @post_load
    def _warn(self, data, **kwargs):
        for warning in rule_warnings(data["rules"]):
            _warn_once(warning)
        return data


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("purge settings: %s", message)


def rule_warnings(rules: list[dict]) -> list[str]:
    """What is allowed but probably a mistake: unknown modality codes, repeated rules."""
    warnings, seen = [], set()
    for rule in rules:
        modality = normalize(rule["modality"])
        is_pattern = modality in ("", "*") or any(c in modality for c in "*?")
        if not is_pattern and modality not in KNOWN_MODALITIES:
            warnings.append(f"unknown modality code {rule['modality']!r}")
        key = (modality or "*", normalize(rule["description"]) or "*")
        if key in seen:
            warnings.append(f"rule {' '.join(key)} is listed twice: the first one applies")
        seen.add(key)
    return warnings
