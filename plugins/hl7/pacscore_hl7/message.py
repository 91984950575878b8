"""Reading HL7 v2 messages (ER7) and building their ACKs.

Fields are read by a small splitter that honours the message's own
delimiters and escape sequences: a feed replaying a backlog needs hundreds
of messages per second, and hl7apy's full parse costs ~8-17 ms per message
here (see the README).  ACKs are laid out directly, the ERR segment in the
layout of the ACK's HL7 version.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from itertools import count

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
# MSH-12 versions read and answered; a message of another version (or none) is refused
SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8",
                      "2.8.1", "2.8.2")  # fmt: skip
# version of an ACK to a message without a supported version of its own
DEFAULT_ACK_VERSION = "2.5"


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

    @property
    def version(self) -> str:
        """MSH-12 version ID (its first component), e.g. ``2.5.1``."""
        return self.msh(12).strip()


def version_problem(message: Message) -> str:
    """Why the message's MSH-12 version is refused, or "" when it is supported."""
    if not message.version:
        return "MSH-12 (version ID) is missing"
    if message.version not in SUPPORTED_VERSIONS:
        return (
            f"unsupported HL7 version {message.version!r} (MSH-12): "
            f"supported {', '.join(SUPPORTED_VERSIONS)}"
        )
    return ""


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
# HL7 table 0357 (message error condition codes): (code, name)
UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
UNSUPPORTED_VERSION = ("203", "Unsupported version id")
INTERNAL_ERROR = ("207", "Application internal error")
ERROR_CODES = {"AE": INTERNAL_ERROR, "AR": UNSUPPORTED_MESSAGE_TYPE}


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


def ack_version(message: Message | None) -> str:
    """MSH-12 of our ACK: the message's version when supported, else ``DEFAULT_ACK_VERSION``."""
    if message is not None and message.version in SUPPORTED_VERSIONS:
        return message.version
    return DEFAULT_ACK_VERSION


def _ack_header(message: Message | None, sender: str) -> str:
    if message is None:
        version = DEFAULT_ACK_VERSION
        return f"MSH|^~\\&|{sender}||||{_timestamp()}||ACK|{_ack_control_id()}|P|{version}"
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
        ack_version(message),
    ]
    if message.msh(18):
        fields += [""] * 5 + [escape(message.msh(18))]
    return "|".join(fields)


def ack_error(
    message: Message | None,
    code: str,
    text: str,
    sender: str = "PACSCORE",
    error: tuple[str, str] | None = None,
    location: str = "",
) -> str:
    """An AE or AR acknowledgement: the reason in MSA-3 and an ERR segment.

    ``error`` is the HL7 table 0357 (code, name) (default: 207 for AE, 200 for
    AR) and ``location`` where it lies, ``SEG^sequence^field`` (``MSH^1^12``).
    ERR follows the ACK's version: before 2.5 all of it is in ERR-1 (ELD);
    from 2.5 on, ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 the text
    (hl7apy's layout for 2.8 and later omits the withdrawn ERR-1).
    """
    header = _ack_header(message, sender)
    control_id = message.control_id if message else ""
    number, name = error or ERROR_CODES.get(code, INTERNAL_ERROR)
    if _version_tuple(ack_version(message)) < (2, 5):
        where = location or "^^"
        err = f"ERR|{where}^{number}&{name}&HL70357"
    else:
        err = f"ERR||{location}|{number}^{name}^HL70357|E||||{escape(text)}"
    return f"{header}\rMSA|{code}|{escape(control_id)}|{escape(text[:80])}\r{err}\r"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())
