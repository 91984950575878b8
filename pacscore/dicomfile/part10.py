"""Part 10 files: the preamble and File Meta Information written before a
data set's bytes, and read back without decoding the data set."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacscore.dicomfile.header import InvalidDicom, read_header

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1523.1"
IMPLEMENTATION_VERSION = "PACSCORE_01"
PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def encode_file_meta(
    sop_class_uid: str, sop_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """File Meta Information (group 0002), explicit VR little endian, with its group length."""
    body = b"".join(
        [
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", sop_class_uid.encode()),
            _element(0x0002, 0x0003, b"UI", sop_uid.encode()),
            _element(0x0002, 0x0010, b"UI", transfer_syntax.encode()),
            _element(0x0002, 0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode()),
            _element(0x0002, 0x0013, b"SH", IMPLEMENTATION_VERSION.encode()),
        ]
        + ([_element(0x0002, 0x0016, b"AE", source_ae.encode())] if source_ae else [])
    )
    return _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def read_part10(fp: BinaryIO) -> tuple[bytes, str]:
    """Split a Part 10 stream into (data set bytes, transfer syntax) without decoding it."""
    from pydicom.filereader import (  # the only reader that leaves fp after the meta
        _read_file_meta_info,
        read_preamble,
    )

    try:
        if read_preamble(fp, force=False) is None:
            raise InvalidDicom("no DICOM preamble")
        meta = _read_file_meta_info(fp)
    except InvalidDicom:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises anything on garbage
        raise InvalidDicom(f"unreadable file meta information: {exc}") from exc
    ts = meta.get("TransferSyntaxUID")
    if not ts:
        raise InvalidDicom("file meta information has no Transfer Syntax UID")
    return fp.read(), str(ts)


def read_dicom_file(path: Path) -> tuple[bytes, str]:
    with open(path, "rb") as fp:
        return read_part10(fp)


def load_dataset_bytes(path: Path) -> tuple[bytes, str]:
    """(data set bytes, transfer syntax) of a complete file; files without a
    DICOM preamble or file meta are re-encoded with one, other files are kept
    as is."""
    try:
        return read_dicom_file(path)  # Archive.store refuses an incomplete one
    except InvalidDicom:
        pass
    try:
        ds = dcmread(path, force=True)
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            raise InvalidDicom("not a DICOM file")
        if "TransferSyntaxUID" not in ds.file_meta:
            # name the encoding pydicom found, or the file cannot be re-encoded
            implicit, little = ds.original_encoding
            ts = (
                ImplicitVRLittleEndian
                if implicit
                else ExplicitVRLittleEndian
                if little
                else ExplicitVRBigEndian
            )
            if not ds.file_meta and ds.preamble is None:
                # a bare data set: pydicom reads a truncated one without complaint
                read_header(path.read_bytes(), ts)
            ds.file_meta.TransferSyntaxUID = ts
        buffer = BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
    except InvalidDicom:
        raise
    except InvalidDicomError:
        raise InvalidDicom("not a DICOM file") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises anything on garbage
        raise InvalidDicom(f"not a readable DICOM file: {exc}") from exc
    buffer.seek(0)
    return read_part10(buffer)
