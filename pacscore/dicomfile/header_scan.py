"""Fast path of read_header: one struct walk over a little endian data set.

It reproduces what the pydicom path (header.parse_dataset plus value
conversion) returns for the common cases only.  Whenever it is not sure to
reproduce it exactly it raises Fallback, and the pydicom path decides: the
fast path may decline, never disagree.  A data set cut short is refused here
(InvalidDicom), without the pydicom path.
"""

from __future__ import annotations

import re
from struct import Struct

from pydicom.datadict import dictionary_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

_IMPLICIT = Struct("<HHL")
_EXPLICIT = Struct("<HH2sH")
_U32 = Struct("<L")
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_SEQ_END_TAG = b"\xfe\xff\xdd\xe0"
_SEQ_END = _SEQ_END_TAG + bytes(4)
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_SHORT_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_16)
# pydicom recurses per level; deeper data sets are left to it (it refuses them)
MAX_DEPTH = 64
# Specific Character Set values decoded here, and their Python codec
_CODECS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_TEXT_VRS = frozenset({"SH", "LO", "PN", "ST", "LT", "UT", "UC"})
_PLAIN_VRS = frozenset({"CS", "DA", "TM"})
_IS_ITEM = re.compile(r" *[+-]?[0-9]{1,12} *")


class Fallback(Exception):  # noqa: N818 - a decision, not an error
    """The fast path declines this data set: the pydicom path must read it."""


class Truncated(Exception):  # noqa: N818 - mapped to InvalidDicom by the caller
    """The data set is cut short."""


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _looks_implicit(data: bytes, pos: int) -> bool:
    """pydicom's guess from the first element's VR bytes (filereader._is_implicit_vr)."""
    vr = data[pos + 4 : pos + 6]
    return not (len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)


def _header(data: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR, value length, value offset) of the element at ``pos``."""
    size = len(data)
    if size - pos < 8:
        raise Truncated("an element header is cut short")
    if implicit:
        group, elem, length = _IMPLICIT.unpack_from(data, pos)
        return group << 16 | elem, None, length, pos + 8
    group, elem, vr, length = _EXPLICIT.unpack_from(data, pos)
    tag = group << 16 | elem
    if vr in _LONG_VRS:
        if size - pos < 12:
            raise Truncated(f"element {_tag(tag)} header is cut short")
        return tag, vr, _U32.unpack_from(data, pos + 8)[0], pos + 12
    if vr in _SHORT_VRS:
        return tag, vr, length, pos + 8
    if group == 0xFFFE and not (0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B):
        # delimiters carry no VR; pydicom reads them as implicit too
        group, elem, length = _IMPLICIT.unpack_from(data, pos)
        return tag, None, length, pos + 8
    raise Fallback("unknown VR")


def _undefined_is_sequence(data: bytes, pos: int, tag: int, vr: bytes | None) -> bool:
    """Whether pydicom parses this undefined-length value as a sequence."""
    if vr == b"UN" or vr == b"SQ":
        return True
    if vr is not None:
        return False
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return data[pos : pos + 4] == _ITEM_TAG


def _skip_fragments(data: bytes, pos: int) -> int:
    """End of an undefined-length non-sequence value (encapsulated pixel data)."""
    size = len(data)
    start = pos
    while size - pos >= 4:
        marker = data[pos : pos + 4]
        if marker == _SEQ_END_TAG:
            return pos + 8
        if marker != _ITEM_TAG or size - pos < 8:
            break
        pos += 8 + _U32.unpack_from(data, pos + 4)[0]
    # pydicom then searches the delimiter byte by byte: leave odd cases to it
    if data.find(_SEQ_END_TAG, start) != -1:
        raise Fallback("undefined-length value not made of items")
    raise Truncated("an undefined-length value misses its delimiter")


def _skip_sequence(data: bytes, pos: int, implicit: bool) -> int:
    """End of an undefined-length sequence starting at ``pos``, walked without recursion.

    Each stack entry is a sequence (item end None, expecting items) or an
    item data set (its end offset, or -1 for an undefined-length item).
    """
    size = len(data)
    stack: list[tuple[bool, int | None, bool]] = [(False, None, implicit)]
    while stack:
        if len(stack) > 2 * MAX_DEPTH:
            raise Fallback("nested too deeply")
        in_item, end, implicit = stack[-1]
        if not in_item:
            pos = _next_item(data, pos, implicit, stack)
            continue
        if end is not None and end >= 0 and pos >= end:
            if pos != end:
                raise Fallback("item overrun")
            stack.pop()
            continue
        tag, vr, length, pos = _header(data, pos, implicit)
        if tag >> 16 == 0xFFFE:
            if tag != _ITEM_END or length or end != -1:
                raise Fallback("misplaced delimiter")
            stack.pop()
        elif length != _UNDEFINED:
            if length > size - pos:
                raise Truncated(f"element {_tag(tag)} declares {length} bytes, {size - pos} remain")
            pos += length
        elif _undefined_is_sequence(data, pos, tag, vr):
            stack.append((False, None, implicit))
        else:
            pos = _skip_fragments(data, pos)
    return pos


def _next_item(data: bytes, pos: int, implicit: bool, stack: list) -> int:
    """Read an item tag (push its data set) or the sequence delimiter (pop)."""
    size = len(data)
    if size - pos < 8:
        raise Truncated("a sequence misses its delimiter")
    group, elem, length = _IMPLICIT.unpack_from(data, pos)
    tag = group << 16 | elem
    pos += 8
    if tag == 0xFFFEE0DD:
        stack.pop()
        return pos
    if tag != _ITEM:
        raise Fallback("sequence element that is not an item")
    # pydicom's guess: an item of an explicit VR data set may be implicit
    item_implicit = implicit or _looks_implicit(data, pos)
    if length == _UNDEFINED:
        stack.append((True, -1, item_implicit))
    elif length > size - pos:
        raise Truncated(f"an item declares {length} bytes, {size - pos} remain")
    else:
        stack.append((True, pos + length, item_implicit))
    return pos


def scan(data: bytes, implicit: bool, wanted: frozenset[int]) -> dict[int, tuple]:
    """Walk the top-level data set: (VR, offset, length) of each wanted tag.

    Raises Truncated for a data set cut short, Fallback when unsure.
    """
    size = len(data)
    if size < 8 or _looks_implicit(data, 0) != implicit:
        raise Fallback("tiny data set or VR encoding not the transfer syntax's")
    kept: dict[int, tuple] = {}
    pos = 0
    length = 0
    while pos < size:
        tag, vr, length, pos = _header(data, pos, implicit)
        if tag >> 16 == 0xFFFE:
            raise Fallback("delimiter at top level")
        if length == _UNDEFINED:
            if tag in wanted:
                raise Fallback("undefined-length index attribute")
            if _undefined_is_sequence(data, pos, tag, vr):
                pos = _skip_sequence(data, pos, implicit)
            else:
                pos = _skip_fragments(data, pos)
            continue
        if length > size - pos:
            raise Truncated(f"element {_tag(tag)} declares {length} bytes, {size - pos} remain")
        if tag in wanted:
            kept[tag] = (vr, pos, length)
        pos += length
    # the checks of header.parse_dataset, for the same outcome
    if pos > size or (length == _UNDEFINED and not data.endswith(_SEQ_END)):
        raise Truncated("the last element misses its delimiter")
    return kept


# -- values ---------------------------------------------------------------------------


def _join(items: list[str]) -> str:
    """header._text: a single value stripped, several joined unstripped."""
    return items[0].strip() if len(items) == 1 else "\\".join(items)


def _integer_string(value: str) -> str:
    """str(IS(value)): a number without its padding; blank values are kept as is."""
    if not value.strip(" "):
        return value
    if not _IS_ITEM.fullmatch(value):
        raise Fallback("IS value not a plain integer")
    return value.strip(" ")


def _person_name(value: str) -> str:
    """str(PersonName): its component groups without the empty trailing ones."""
    groups = value.split("=")
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def decode(raw: bytes, vr: str, codec: str) -> str:
    """The header string pydicom + header._text give for this value, or Fallback."""
    if not raw:
        return ""
    if vr in _TEXT_VRS:
        if b"\x1b" in raw:
            raise Fallback("ISO 2022 escape sequence")
        if vr == "PN":
            try:
                text = raw.rstrip(b"\x00 ").decode(codec)
            except UnicodeDecodeError:
                raise Fallback("undecodable text") from None
            return _join([_person_name(v) for v in text.split("\\")])
        if vr not in ("SH", "LO"):
            raise Fallback("text VR not handled")
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            raise Fallback("undecodable text") from None
        return _join([v.rstrip("\0 ") for v in text.split("\\")])
    text = raw.decode("latin_1").rstrip(" \x00")
    if vr == "UI":  # pydicom's UID strips each value
        return _join([v.strip() for v in text.split("\\")])
    if vr in _PLAIN_VRS:
        return _join(text.split("\\"))
    if vr == "IS":
        return _join([_integer_string(v) for v in text.split("\\")])
    raise Fallback(f"VR {vr} not handled")


def codec_of(raw: bytes | None) -> tuple[str, str]:
    """(header charset string, Python codec) for a Specific Character Set value."""
    value = (raw or b"").decode("latin_1").rstrip(" \x00")
    codec = _CODECS.get(value)
    if codec is None:
        raise Fallback(f"character set {value!r}")
    return value.strip(), codec
