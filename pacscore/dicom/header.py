"""Read the few header attributes the index needs, without decoding the rest.

The data set bytes received over the network are parsed only up to group
0x0032 and only for the tags below; pixel data and later groups are never
touched, and the bytes written to disk are the bytes received.
"""

from __future__ import annotations

import unicodedata
import zlib
from dataclasses import dataclass, fields
from io import BytesIO

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

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
_LAST_GROUP = 0x0032
_UNDEFINED_LENGTH = 0xFFFFFFFF
# a deflated header never needs more than this once inflated
_MAX_INFLATED = 8 * 1024 * 1024


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


def normalize_text(value: str) -> str:
    """Upper-case and strip accents: the key used for case/accent-insensitive matching."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def _text(element: DataElement | None) -> str:
    if element is None or element.value is None:
        return ""
    value = element.value
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _stop_after_index_groups(fp: BytesIO, size: int | None):
    """pydicom's ``stop_when``: stop past the index groups, refuse lengths beyond the data.

    pydicom skips a value it was not asked for by seeking, and a seek past
    the end silently ends the data set: an element declaring more bytes than
    remain would otherwise let a truncated data set through as valid.
    """

    def stop_when(tag, vr, length) -> bool:
        if tag.group > _LAST_GROUP:
            return True
        if size is not None and length != _UNDEFINED_LENGTH and fp.tell() + length > size:
            raise InvalidDicom(f"element {tag} declares {length} bytes past the end of the data")
        return False

    return stop_when


def parse_dataset(data: bytes, transfer_syntax: str) -> Dataset:
    ts = UID(transfer_syntax)
    if not ts.is_transfer_syntax:
        raise InvalidDicom(f"unknown transfer syntax {transfer_syntax}")
    complete = True
    if ts.is_deflated:
        try:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            data = inflater.decompress(data, _MAX_INFLATED)
        except zlib.error as exc:
            raise InvalidDicom(f"corrupt deflated data set: {exc}") from exc
        complete = not inflater.unconsumed_tail
    fp = BytesIO(data)
    try:
        return read_dataset(
            fp,
            is_implicit_VR=ts.is_implicit_VR,
            is_little_endian=ts.is_little_endian,
            # a deflated data set cut at _MAX_INFLATED may end inside an element
            stop_when=_stop_after_index_groups(fp, len(data) if complete else None),
            specific_tags=_TAGS,
        )
    except InvalidDicom:
        raise
    except (RecursionError, MemoryError) as exc:
        raise InvalidDicom("data set nested too deeply or too large") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad input
        raise InvalidDicom(f"cannot parse data set: {exc}") from exc


def read_header(data: bytes, transfer_syntax: str) -> Header:
    ds = parse_dataset(data, transfer_syntax)
    header = Header()
    try:
        for name, keyword in HEADER_KEYWORDS.items():
            if keyword in ds:
                setattr(header, name, _text(ds[keyword]))
    except Exception as exc:  # noqa: BLE001 - value conversion of malformed elements
        raise InvalidDicom(f"cannot decode header attribute: {exc}") from exc
    if not header.sop_uid or not header.study_uid or not header.series_uid:
        raise InvalidDicom("missing SOP Instance, Study or Series Instance UID")
    for uid in (header.sop_uid, header.study_uid, header.series_uid, header.sop_class_uid):
        if len(uid) > 64:
            raise InvalidDicom(f"UID longer than 64 characters: {uid[:80]!r}")
    if len(header.patient_id) > 64:
        raise InvalidDicom("PatientID longer than 64 characters")
    return header


_MAX_CHECKED_INFLATED = 512 * 1024 * 1024  # a deflate bomb is refused, not inflated


def check_complete(data: bytes, transfer_syntax: str) -> None:
    """Raise ``InvalidDicom`` if the data set ends inside an element.

    The index reads only the header groups, so a data set cut short in its
    pixel data (an interrupted copy or transfer) would otherwise be archived
    as valid.  Only
    tags and lengths are walked: values are skipped, not loaded.
    """
    ts = UID(transfer_syntax)
    if not ts.is_transfer_syntax:
        return  # read_header refuses it with its own reason
    if ts.is_deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data, _MAX_CHECKED_INFLATED)
        except zlib.error as exc:
            raise InvalidDicom(f"corrupt deflated data set: {exc}") from exc
        if inflater.unconsumed_tail:
            raise InvalidDicom("deflated data set inflates beyond the accepted size")
        if not inflater.eof:
            raise InvalidDicom("truncated file: the deflated data set is cut short")
    size = len(data)
    fp = BytesIO(data)
    last = {"length": 0}

    def stop_when(tag, vr, length) -> bool:
        if length != _UNDEFINED_LENGTH and fp.tell() + length > size:
            raise InvalidDicom(
                f"truncated file: element {tag} declares {length} bytes, {size - fp.tell()} remain"
            )
        last["length"] = length
        return False

    try:  # specific_tags: every other value is skipped by seeking
        read_dataset(
            fp,
            is_implicit_VR=ts.is_implicit_VR,
            is_little_endian=ts.is_little_endian,
            stop_when=stop_when,
            specific_tags=[Tag(0x0008, 0x0018)],
        )
    except InvalidDicom:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises anything on garbage
        raise InvalidDicom(f"cannot parse data set: {exc}") from exc
    # an undefined-length element (sequence, encapsulated pixel data) that
    # misses its delimiter makes pydicom stop at, or seek past, the end
    delimiter = (b"\xfe\xff\xdd\xe0" if ts.is_little_endian else b"\xff\xfe\xe0\xdd") + bytes(4)
    if fp.tell() > size or (last["length"] == _UNDEFINED_LENGTH and not data.endswith(delimiter)):
        raise InvalidDicom("truncated file: the last element misses its delimiter")
