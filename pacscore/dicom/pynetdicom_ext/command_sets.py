"""DIMSE command sets encoded without pydicom's generic writer.

pynetdicom encodes every command set it sends twice through pydicom's
``write_dataset`` (once to compute the Command Group Length, once to send
it): with the identifier, that was about a third of the CPU of a C-FIND
response and an eighth of a C-MOVE sub-operation.  A command set is always
implicit VR little endian (PS3.7 section 6.3.1) and holds a few elements of
a handful of VRs, so :func:`encode` writes those directly and gives anything
else (another group, another VR, big endian, a value it does not expect) to
pynetdicom's encoder unchanged.  The output is byte for byte pydicom's; the
tests compare both on every kind of message.
"""

from __future__ import annotations

import struct

import pynetdicom.dimse_messages as dimse_messages
from pydicom.dataset import Dataset

_pynetdicom_encode = dimse_messages.encode
TEXT_PADDING = {"UI": b"\x00", "AE": b" ", "CS": b" ", "SH": b" ", "LO": b" "}
# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom.dsutils.encode": (  # replaced (dimse_messages.encode)
        "0d29ffd5d358c45a6b20436a9a45ec4ea003631dd4323e827c87365624c71cf0"
    ),
    "pynetdicom.dimse_messages.DIMSEMessage.encode_msg": (  # encodes through it
        "73000c902c52832dab302ddb3bc274ea93d205a810a197225dd87d4c1212ba57"
    ),
}


class _Unhandled(Exception):
    pass


def _value(vr: str, value) -> bytes:
    if value is None or value == "":
        return b""
    if vr == "US" and isinstance(value, int) and 0 <= value <= 0xFFFF:
        return struct.pack("<H", value)
    if vr == "UL" and isinstance(value, int) and 0 <= value <= 0xFFFFFFFF:
        return struct.pack("<L", value)
    if vr in TEXT_PADDING and isinstance(value, str) and value.isascii():
        raw = value.encode("ascii")
        return raw + TEXT_PADDING[vr] if len(raw) % 2 else raw
    raise _Unhandled


def encode_command_set(ds: Dataset) -> bytes:
    """A command set as implicit VR little endian; _Unhandled if not a simple one."""
    parts = []
    for elem in ds:
        if elem.tag >> 16 != 0x0000:
            raise _Unhandled
        raw = _value(elem.VR, elem.value)
        parts.append(struct.pack("<HHL", 0x0000, elem.tag & 0xFFFF, len(raw)) + raw)
    return b"".join(parts)


def encode(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    """pynetdicom's ``encode`` as dimse_messages calls it, for command sets."""
    if is_implicit_vr and is_little_endian and not deflated:
        try:
            return encode_command_set(ds)
        except _Unhandled:
            pass
    return _pynetdicom_encode(ds, is_implicit_vr, is_little_endian, deflated)


def install() -> None:
    dimse_messages.encode = encode
