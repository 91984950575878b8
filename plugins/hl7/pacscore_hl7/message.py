"""Reading HL7 v2 messages (ER7) and building their ACKs.

Fields are read by a small splitter that honours the message's own
delimiters and escape sequences: a feed replaying a backlog needs hundreds
of messages per second, and hl7apy's full parse costs ~8-17 ms per message
here (see the README).  hl7apy (TOLERANT) builds the error ACKs (AE, AR),
whose ERR segment it lays out per HL7 version.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from itertools import count

log = logging.getLogger(__name__)

# MSH-18 value -> Python codec; an absent MSH-18 means ASCII, read leniently
CHARSETS = {
    "": "utf-8",
    "ASCII": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
}
SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")


class Unreadable(ValueError):
    """Not an HL7 message: no MSH segment to read."""


@dataclass
class Location:
    """``SEG-F[.C[.S]]``: a segment's field, component, subcomponent (1-based)."""

    segment: str
    field: int
    component: int | None = None
    subcomponent: int | None = None

    @classmethod
    def parse(cls, text: str) -> Location:
        match = re.fullmatch(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
        if not match:
            raise ValueError(f"invalid HL7 location {text!r}: expected SEG-F[.C[.S]]")
        seg, fld, comp, sub = match.groups()
        return cls(seg, int(fld), int(comp) if comp else None, int(sub) if sub else None)


@dataclass
class Segment:
    name: str
    fields: list[str]  # fields[n] is field n (for MSH, fields[1] is the field separator)

    def raw(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""


@dataclass
class Message:
    """A decoded message split into segments and fields (components left packed)."""

    text: str
    charset: str
    segments: list[Segment]
    separators: str  # field, component, repetition, escape, subcomponent
    _msh: Segment = field(init=False)

    def __post_init__(self) -> None:
        self._msh = self.segments[0]

    @classmethod
    def parse(cls, text: str, charset: str = "") -> Message:
        lines = [line for line in SEGMENT_SPLIT.split(text.strip("\r\n\x00 ")) if line]
        if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
            raise Unreadable("no MSH segment at the start of the message")
        field_sep = lines[0][3]
        encoding = lines[0][4:].split(field_sep, 1)[0]
        if len(encoding) < 4 or field_sep.isalnum():
            raise Unreadable("invalid MSH delimiters")
        separators = field_sep + encoding[:4]
        segments = []
        for line in lines:
            parts = line.split(field_sep)
            if parts[0] == "MSH":
                parts = ["MSH", field_sep, *parts[1:]]
            segments.append(Segment(parts[0][:3], parts))
        return cls(text, charset, segments, separators)

    # -- delimiters and escapes --------------------------------------------------

    @property
    def component_sep(self) -> str:
        return self.separators[1]

    @property
    def repetition_sep(self) -> str:
        return self.separators[2]

    @property
    def subcomponent_sep(self) -> str:
        return self.separators[4]

    def unescape(self, value: str) -> str:
        escape = self.separators[3]
        if escape not in value:
            return value
        names = {
            "F": self.separators[0],
            "S": self.separators[1],
            "R": self.separators[2],
            "E": escape,
            "T": self.separators[4],
            ".br": "\n",
        }
        pattern = re.escape(escape) + r"(.*?)" + re.escape(escape)
        return re.sub(pattern, lambda m: names.get(m.group(1), ""), value)

    # -- reading ------------------------------------------------------------------

    def msh(self, number: int) -> str:
        """MSH-n, first component, unescaped."""
        return self.components(self._msh.raw(number))[0]

    def components(self, raw: str) -> list[str]:
        """First repetition of a field, as unescaped components (first subcomponent each)."""
        repetition = raw.split(self.repetition_sep, 1)[0]
        return [
            self.unescape(c.split(self.subcomponent_sep, 1)[0])
            for c in repetition.split(self.component_sep)
        ]

    def read(self, segment: Segment | None, location: Location) -> str:
        if segment is None:
            return ""
        repetition = segment.raw(location.field).split(self.repetition_sep, 1)[0]
        components = repetition.split(self.component_sep)
        index = (location.component or 1) - 1
        if index >= len(components):
            return ""
        subcomponents = components[index].split(self.subcomponent_sep)
        index = (location.subcomponent or 1) - 1
        return self.unescape(subcomponents[index]).strip() if index < len(subcomponents) else ""

    @property
    def message_type(self) -> tuple[str, str]:
        """(code, trigger event) from MSH-9, e.g. ("ORM", "O01")."""
        parts = self.components(self._msh.raw(9))
        return parts[0].upper(), (parts[1].upper() if len(parts) > 1 else "")

    @property
    def control_id(self) -> str:
        return self.msh(10)


def charset_of(data: bytes) -> str:
    """MSH-18 read from the raw bytes (ASCII-compatible before decoding)."""
    first = SEGMENT_SPLIT.split(data.lstrip(b"\r\n\x00 ").decode("latin-1"), 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return ""
    fields = first.split(first[3])
    value = fields[17] if len(fields) > 17 else ""
    return value.split("~", 1)[0].split("^", 1)[0].strip().upper()


def decode(data: bytes) -> tuple[str, str]:
    """(text, MSH-18) of a frame; ValueError for a character set we cannot read."""
    charset = charset_of(data)
    codec = CHARSETS.get(charset)
    if codec is None:
        raise ValueError(f"unsupported character set (MSH-18) {charset!r}")
    if charset in ("", "ASCII"):
        # declared ASCII is often Latin-1 in practice: read UTF-8, else Latin-1
        try:
            return data.decode("utf-8"), charset
        except UnicodeDecodeError:
            return data.decode("latin-1"), charset
    return data.decode(codec, errors="replace"), charset


def codec_for(charset: str) -> str:
    return CHARSETS.get(charset, "utf-8")


# -- ACKs -------------------------------------------------------------------------------

_ack_ids = count(1)
ERROR_CODES = {
    "AE": ("207", "Application internal error"),
    "AR": ("200", "Unsupported message type"),
}


def _timestamp() -> str:
    return time.strftime("%Y%m%d%H%M%S")


def _ack_control_id() -> str:
    return f"ACK{int(time.time())}{next(_ack_ids)}"


def escape(text: str, separators: str = "|^~\\&") -> str:
    esc = separators[3]
    out = text.replace(esc, f"{esc}E{esc}")
    for char, name in zip(separators[0:3] + separators[4], "FSRT", strict=True):
        out = out.replace(char, f"{esc}{name}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def ack_accept(message: Message, sender: str = "PACSCORE") -> str:
    """An AA acknowledgement (the common case, built directly: it is the hot path)."""
    return _ack_header(message, sender) + f"\rMSA|AA|{escape(message.control_id)}\r"


def _ack_header(message: Message | None, sender: str) -> str:
    if message is None:
        return f"MSH|^~\\&|{sender}||||{_timestamp()}||ACK|{_ack_control_id()}|P|2.5"
    code, trigger = message.message_type
    fields = [
        "MSH",
        "^~\\&",
        escape(message.msh(5)) or sender,
        escape(message.msh(6)),
        escape(message.msh(3)),
        escape(message.msh(4)),
        _timestamp(),
        "",
        f"ACK^{escape(trigger)}^ACK" if trigger else "ACK",
        _ack_control_id(),
        escape(message.msh(11)) or "P",
        escape(message.msh(12)) or "2.5",
    ]
    if message.msh(18):
        fields += [""] * 5 + [escape(message.msh(18))]
    return "|".join(fields)


def ack_error(message: Message | None, code: str, text: str, sender: str = "PACSCORE") -> str:
    """An AE or AR acknowledgement with the error in MSA-3 and an ERR segment.

    Built with hl7apy (TOLERANT) when the message's version is one it knows;
    otherwise (or if hl7apy fails) laid out directly.
    """
    header = _ack_header(message, sender)
    control_id = message.control_id if message else ""
    try:
        return _hl7apy_error_ack(header, code, control_id, text)
    except Exception as exc:  # noqa: BLE001 - hl7apy raises many types on odd versions
        log.debug("hl7apy could not build the ACK (%s): laid out directly", exc)
    error_code, error_name = ERROR_CODES.get(code, ERROR_CODES["AE"])
    return (
        f"{header}\rMSA|{code}|{escape(control_id)}|{escape(text[:80])}\r"
        f"ERR|||{error_code}^{error_name}^HL70357|E||||{escape(text)}\r"
    )


def _hl7apy_error_ack(header: str, code: str, control_id: str, text: str) -> str:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Segment as ApySegment
    from hl7apy.parser import parse_message

    version = header.split("|")[11] if len(header.split("|")) > 11 else "2.5"
    ack = parse_message(
        header + "\r", validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False
    )
    msa = ApySegment("MSA", version=version, validation_level=VALIDATION_LEVEL.TOLERANT)
    msa.msa_1 = code
    msa.msa_2 = escape(control_id)
    msa.msa_3 = escape(text[:80])
    ack.add(msa)
    err = ApySegment("ERR", version=version, validation_level=VALIDATION_LEVEL.TOLERANT)
    error_code, error_name = ERROR_CODES.get(code, ERROR_CODES["AE"])
    if version >= "2.5":
        err.err_3 = f"{error_code}^{error_name}^HL70357"
        err.err_4 = "E"
        err.err_8 = escape(text)
    else:
        err.err_1 = f"^^^{error_code}&{escape(text[:60])}&HL70357"
    ack.add(err)
    return ack.to_er7() + "\r"
