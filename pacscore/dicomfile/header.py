"""Read the few header attributes the index needs, without decoding the rest.

One walk over the data set keeps only the tags below and checks every
element's length; other values (pixel data included) are skipped, never
decoded, and the bytes written to disk are the bytes received.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, fields
from io import BytesIO

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

from pacscore.dicomfile import header_scan

# keyword of each Header field, in tag order
HEADER_KEYWORDS = {
    "charset": "SpecificCharacterSet",
    "sop_class_uid": "SOPClassUID",
    "sop_uid": "SOPInstanceUID",
    "study_date": "StudyDate",
    "series_date": "SeriesDate",
    "study_time": "StudyTime",
    "series_time": "SeriesTime",
    "accession_number": "AccessionNumber",
    "modality": "Modality",
    "institution": "InstitutionName",
    "referring_physician": "ReferringPhysicianName",
    "station_name": "StationName",
    "study_description": "StudyDescription",
    "series_description": "SeriesDescription",
    "patient_name": "PatientName",
    "patient_id": "PatientID",
    "birth_date": "PatientBirthDate",
    "sex": "PatientSex",
    "body_part": "BodyPartExamined",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "study_id": "StudyID",
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
    "requesting_service": "RequestingService",
}
_TAGS = [Tag(kw) for kw in HEADER_KEYWORDS.values()]
# Header field and dictionary VR of each index tag, for the fast path
_FIELDS = {int(Tag(kw)): (name, dictionary_VR(kw)) for name, kw in HEADER_KEYWORDS.items()}
_VR_BYTES = {tag: vr.encode() for tag, (_, vr) in _FIELDS.items()}
_WANTED = frozenset(_FIELDS)
_CHARSET_TAG = 0x00080005
_UNDEFINED_LENGTH = 0xFFFFFFFF
# a deflate bomb is refused, not inflated
_MAX_INFLATED = 512 * 1024 * 1024


class InvalidDicom(ValueError):
    """The bytes are not a DICOM data set we can index."""


@dataclass
class Header:
    charset: str = ""
    sop_class_uid: str = ""
    sop_uid: str = ""
    study_date: str = ""
    series_date: str = ""
    study_time: str = ""
    series_time: str = ""
    accession_number: str = ""
    modality: str = ""
    institution: str = ""
    referring_physician: str = ""
    station_name: str = ""
    study_description: str = ""
    series_description: str = ""
    patient_name: str = ""
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    body_part: str = ""
    study_uid: str = ""
    series_uid: str = ""
    study_id: str = ""
    series_number: str = ""
    instance_number: str = ""
    requesting_service: str = ""

    def as_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _text(element: DataElement | None) -> str:
    if element is None or element.value is None:
        return ""
    value = element.value
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def parse_dataset(data: bytes, transfer_syntax: str) -> Dataset:
    """Walk the whole data set once: keep the index tags, check every length.

    Values other than the index tags are skipped by seeking, not loaded.  A
    seek past the end would silently end the data set, so an element that
    declares more bytes than remain, or an undefined-length element missing
    its delimiter, is refused: a data set cut short (an interrupted copy or
    transfer) is never archived as valid.
    """
    ts = UID(transfer_syntax)
    if not ts.is_transfer_syntax:
        raise InvalidDicom(f"unknown transfer syntax {transfer_syntax}")
    if ts.is_deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data, _MAX_INFLATED)
        except zlib.error as exc:
            raise InvalidDicom(f"corrupt deflated data set: {exc}") from exc
        if inflater.unconsumed_tail:
            raise InvalidDicom("deflated data set inflates beyond the accepted size")
        if not inflater.eof:
            raise InvalidDicom("truncated data set: the deflated stream is cut short")
    size = len(data)
    fp = BytesIO(data)
    last = {"length": 0}

    def stop_when(tag, vr, length) -> bool:
        if length != _UNDEFINED_LENGTH and fp.tell() + length > size:
            raise InvalidDicom(
                f"truncated data set: element {tag} declares {length} bytes, "
                f"{size - fp.tell()} remain"
            )
        last["length"] = length
        return False

    try:
        ds = read_dataset(
            fp,
            is_implicit_VR=ts.is_implicit_VR,
            is_little_endian=ts.is_little_endian,
            stop_when=stop_when,
            specific_tags=_TAGS,
        )
    except InvalidDicom:
        raise
    except (RecursionError, MemoryError) as exc:
        raise InvalidDicom("data set nested too deeply or too large") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad input
        raise InvalidDicom(f"cannot parse data set: {exc}") from exc
    # an undefined-length element (sequence, encapsulated pixel data) that
    # misses its delimiter makes pydicom stop at, or seek past, the end
    delimiter = (b"\xfe\xff\xdd\xe0" if ts.is_little_endian else b"\xff\xfe\xe0\xdd") + bytes(4)
    if fp.tell() > size or (last["length"] == _UNDEFINED_LENGTH and not data.endswith(delimiter)):
        raise InvalidDicom("truncated data set: the last element misses its delimiter")
    return ds


def read_header(data: bytes, transfer_syntax: str) -> Header:
    """The index attributes of a data set, or InvalidDicom.

    Little endian, non-deflated data sets take the byte scanner of
    header_scan; it declines what it cannot reproduce exactly, and the
    pydicom path reads those.
    """
    try:
        return _scan_header(data, transfer_syntax)
    except header_scan.Fallback:
        return read_header_pydicom(data, transfer_syntax)


def read_header_pydicom(data: bytes, transfer_syntax: str) -> Header:
    """read_header through pydicom: every transfer syntax, slower."""
    ds = parse_dataset(data, transfer_syntax)
    header = Header()
    try:
        for name, keyword in HEADER_KEYWORDS.items():
            if keyword in ds:
                setattr(header, name, _text(ds[keyword]))
    except Exception as exc:  # noqa: BLE001 - value conversion of malformed elements
        raise InvalidDicom(f"cannot decode header attribute: {exc}") from exc
    _check(header)
    return header


@functools.lru_cache(maxsize=64)
def _fast_syntax(transfer_syntax: str) -> bool | None:
    """Implicit VR flag if the scanner reads this transfer syntax, else None."""
    ts = UID(transfer_syntax)
    if not ts.is_transfer_syntax or not ts.is_little_endian or ts.is_deflated:
        return None
    return ts.is_implicit_VR


def _scan_header(data: bytes, transfer_syntax: str) -> Header:
    """The fast path; raises header_scan.Fallback when the pydicom path must decide."""
    implicit = _fast_syntax(transfer_syntax)
    if implicit is None or config.settings.reading_validation_mode == config.RAISE:
        # strict pydicom refuses invalid values; the scanner does not validate
        raise header_scan.Fallback("transfer syntax or strict validation")
    try:
        kept = header_scan.scan(data, implicit, _WANTED)
    except header_scan.Truncated as exc:
        raise InvalidDicom(f"truncated data set: {exc}") from None
    charset = kept.get(_CHARSET_TAG)
    raw_charset = None if charset is None else data[charset[1] : charset[1] + charset[2]]
    header = Header()
    header.charset, codec = header_scan.codec_of(raw_charset)
    for tag, (vr, start, length) in kept.items():
        name, expected_vr = _FIELDS[tag]
        if vr is not None and vr != _VR_BYTES[tag]:
            raise header_scan.Fallback("VR differs from the dictionary")
        if tag != _CHARSET_TAG:
            value = header_scan.decode(data[start : start + length], expected_vr, codec)
            setattr(header, name, value)
    _check(header)
    return header


def _check(header: Header) -> None:
    if not header.sop_uid or not header.study_uid or not header.series_uid:
        raise InvalidDicom("missing SOP Instance, Study or Series Instance UID")
    for uid in (header.sop_uid, header.study_uid, header.series_uid, header.sop_class_uid):
        if len(uid) > 64:
            raise InvalidDicom(f"UID longer than 64 characters: {uid[:80]!r}")
    if len(header.patient_id) > 64:
        raise InvalidDicom("PatientID longer than 64 characters")
