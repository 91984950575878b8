"""The byte scanner of read_header (pacscore/dicomfile/header_scan.py) gives exactly what
the pydicom path gives, or declines; a data set cut short is always refused.

``read_header_pydicom`` is the reference; ``_scan_header`` is the fast path alone
(it raises ``Fallback`` where it declines), so each test can tell whether the
scanner really answered.
"""

from __future__ import annotations

import random
import struct
import time
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from pacscore.dicomfile import header as header_module
from pacscore.dicomfile.header import InvalidDicom, read_header, read_header_pydicom
from pacscore.dicomfile.header_scan import Fallback
from pacscore.dicomfile.part10 import read_dicom_file

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SEQ_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}


def element(tag: int, vr: bytes, value: bytes, implicit: bool = False) -> bytes:
    """One element with a defined length (value taken as is, no padding)."""
    group, elem = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHL", group, elem, len(value)) + value
    if vr in LONG_VRS:
        return struct.pack("<HH2sHL", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def undefined(tag: int, vr: bytes, implicit: bool) -> bytes:
    """The header of an undefined-length element."""
    if implicit:
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, 0xFFFFFFFF)
    return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, 0xFFFFFFFF)


def item(content: bytes, defined: bool) -> bytes:
    if defined:
        return struct.pack("<HHL", 0xFFFE, 0xE000, len(content)) + content
    return struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + content + ITEM_END


def uid_value(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def index_elements(implicit: bool = False, **values: bytes) -> dict[int, bytes]:
    """Elements of the index attributes by tag: UIDs, patient and the ``values`` given."""
    raw = {
        0x00080016: (b"UI", uid_value(CTImageStorage)),
        0x00080018: (b"UI", uid_value(generate_uid())),
        0x00080060: (b"CS", b"CT"),
        0x00100010: (b"PN", b"DOE^JOHN"),
        0x00100020: (b"LO", b"PAT1"),
        0x0020000D: (b"UI", uid_value(generate_uid())),
        0x0020000E: (b"UI", uid_value(generate_uid())),
    }
    for keyword, value in values.items():
        tag = int(header_module.Tag(keyword))
        raw[tag] = (header_module._FIELDS[tag][1].encode(), value)
    return {tag: element(tag, vr, value, implicit) for tag, (vr, value) in raw.items()}


def assemble(elements: dict[int, bytes]) -> bytes:
    return b"".join(elements[tag] for tag in sorted(elements))


def outcome(read, data: bytes, ts: str):
    try:
        return read(data, ts).as_dict()
    except InvalidDicom:
        return "InvalidDicom"


def fast_outcome(data: bytes, ts: str):
    """The fast path alone: a Header dict, "InvalidDicom", or "fallback"."""
    try:
        return outcome(header_module._scan_header, data, ts)
    except Fallback:
        return "fallback"


def assert_same(data: bytes, ts: str) -> str:
    """read_header agrees with the pydicom path; return how the fast path answered."""
    expected = outcome(read_header_pydicom, data, ts)
    assert outcome(read_header, data, ts) == expected
    fast = fast_outcome(data, ts)
    if fast == "fallback":
        return "fallback"
    assert fast == expected
    return "fast"


# -- every pydicom test file --------------------------------------------------------


def testdata_datasets() -> list[tuple[str, bytes, str]]:
    """(name, data set bytes, transfer syntax) of every pydicom test file pydicom reads."""
    found = []
    for name in get_testdata_files():
        path = Path(name)
        if not path.is_file():
            continue
        try:
            data, ts = read_dicom_file(path)
        except (InvalidDicom, OSError):
            # no file meta: pydicom reads the whole file as a data set, if at all
            try:
                ds = dcmread(path, force=True)
            except Exception:  # noqa: BLE001 - not DICOM at all
                continue
            implicit, little = ds.original_encoding
            if not little:
                continue
            data = path.read_bytes()
            ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        found.append((path.name, data, ts))
    return found


def test_every_pydicom_test_file_gives_the_same_header():
    datasets = testdata_datasets()
    assert len(datasets) > 100
    answers: dict[str, list[str]] = {"fast": [], "fallback": []}
    basic = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    basic_answers = []
    for name, data, ts in datasets:
        answer = assert_same(data, ts)
        answers[answer].append(name)
        if ts in basic:
            basic_answers.append(answer)
    print(f"fast path: {len(answers['fast'])}, fallback: {answers['fallback']}")
    # the scanner really answers for the plain little endian files
    assert basic_answers.count("fast") >= 0.95 * len(basic_answers)
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "rtstruct.dcm"):
        assert name in answers["fast"], name


# -- cut short ----------------------------------------------------------------------------


def nested_data_set(implicit: bool) -> tuple[bytes, set[int]]:
    """Index attributes, a sequence of undefined length with nested and defined-length
    items, and encapsulated pixel data; and the offsets where top-level elements start."""
    elements = index_elements(implicit, PatientName=b"M\xfcller^J\xfcrgen", SeriesNumber=b" 7")
    inner = (
        undefined(0x00081140, b"SQ", implicit)
        + item(element(0x00081150, b"UI", uid_value(CTImageStorage), implicit), True)
        + SEQ_END
    )
    first = element(0x00081150, b"UI", uid_value(CTImageStorage), implicit) + inner
    second = element(0x00081155, b"UI", uid_value(generate_uid()), implicit)
    elements[0x00081115] = (
        undefined(0x00081115, b"SQ", implicit) + item(first, False) + item(second, True) + SEQ_END
    )
    fragments = item(b"", True) + item(b"\xff\xd8" + bytes(30) + b"\xff\xd9", True)
    elements[0x7FE00010] = undefined(0x7FE00010, b"OB", implicit) + fragments + SEQ_END
    boundaries, offset = set(), 0
    for tag in sorted(elements):
        boundaries.add(offset)
        offset += len(elements[tag])
    return assemble(elements), boundaries


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_every_cut_inside_an_element_is_refused(implicit):
    ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    data, boundaries = nested_data_set(implicit)
    header = read_header(data, ts)
    assert header.patient_name == "Müller^Jürgen" and header.series_number == "7"
    assert fast_outcome(data, ts) == header.as_dict() == read_header_pydicom(data, ts).as_dict()
    for cut in range(1, len(data)):
        if cut in boundaries:
            # whole elements only: a shorter, valid data set; both paths agree
            assert_same(data[:cut], ts)
            continue
        with pytest.raises(InvalidDicom):
            read_header(data[:cut], ts)


def test_a_cut_in_encapsulated_pixel_data_of_a_jpeg_syntax():
    data, boundaries = nested_data_set(implicit=False)
    assert assert_same(data, JPEGBaseline8Bit) == "fast"
    start = max(boundaries)
    for cut in range(start + 1, len(data)):
        with pytest.raises(InvalidDicom, match="truncated"):
            read_header(data[:cut], JPEGBaseline8Bit)


def test_an_element_declaring_more_bytes_than_remain():
    elements = index_elements()
    elements[0x00204000] = element(0x00204000, b"UT", b"x" * 64)[:-10]
    data = assemble(elements)
    with pytest.raises(InvalidDicom, match="declares 64 bytes, 54 remain"):
        read_header(data, ExplicitVRLittleEndian)
    assert outcome(read_header_pydicom, data, ExplicitVRLittleEndian) == "InvalidDicom"


# -- character sets --------------------------------------------------------------------


@pytest.mark.parametrize(
    "charset, name",
    [
        (b"ISO_IR 100", "Müller^Jürgen=Ærø"),
        (b"ISO_IR 192", "Łukasz^Żółć=山田^太郎"),
        (b"ISO_IR 6", "DOE^JOHN"),
        (b"", "DOE^J\xe9r\xf4me"),
    ],
)
def test_single_byte_and_utf8_names_take_the_fast_path(charset, name):
    codec = "utf-8" if charset == b"ISO_IR 192" else "latin-1"
    for implicit, ts in ((False, ExplicitVRLittleEndian), (True, ImplicitVRLittleEndian)):
        elements = index_elements(
            implicit,
            SpecificCharacterSet=charset + b" " * (len(charset) % 2),
            PatientName=name.encode(codec),
            InstitutionName=" Höpital  Saint-Éloi ".encode(codec),
            StudyDescription="Thorax\\Abdomen ".encode(codec),
        )
        data = assemble(elements)
        assert assert_same(data, ts) == "fast"
        header = read_header(data, ts)
        assert header.patient_name == name
        assert header.institution == "Höpital  Saint-Éloi"
        assert header.study_description == "Thorax\\Abdomen"


@pytest.mark.parametrize(
    "charset, value, expected",
    [
        (
            b"\\ISO 2022 IR 87",
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B",
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
        ),
        (b"GB18030", "Wang^XiaoDong=王^小东".encode("gb18030"), "Wang^XiaoDong=王^小东"),
        (b"ISO_IR 144", "Люкceмбypг".encode("iso8859_5"), "Люкceмбypг"),
    ],
)
def test_other_character_sets_fall_back_to_pydicom(charset, value, expected):
    if len(value) % 2:
        value += b" "
    data = assemble(index_elements(SpecificCharacterSet=charset, PatientName=value))
    assert fast_outcome(data, ExplicitVRLittleEndian) == "fallback"
    assert read_header(data, ExplicitVRLittleEndian).patient_name == expected
    assert assert_same(data, ExplicitVRLittleEndian) == "fallback"


# -- values: random strings against pydicom's conversion -----------------------------------

ALPHABET = [" ", " ", "\x00", "\\", "0", "1", "7", "+", "-", ".", "A", "z", "^", "=", "\t", "é"]
FIELDS = {
    "SOPClassUID": b"UI",
    "StudyDate": b"DA",
    "StudyTime": b"TM",
    "AccessionNumber": b"SH",
    "Modality": b"CS",
    "InstitutionName": b"LO",
    "ReferringPhysicianName": b"PN",
    "PatientID": b"LO",
    "PatientName": b"PN",
    "SeriesNumber": b"IS",
    "InstanceNumber": b"IS",
}


def random_value(rng: random.Random, vr: bytes, utf8: bool) -> bytes:
    if vr == b"IS" and rng.random() < 0.8:  # integers, padded, signed, several
        pad = ["", " ", "  "]
        items = [
            rng.choice(pad) + rng.choice(["", "+", "-"]) + str(rng.randrange(10**12)).zfill(3)
            if rng.random() < 0.9
            else rng.choice(pad)
            for _ in range(rng.randrange(1, 4))
        ]
        text = "\\".join(v[: rng.randrange(len(v) + 1)] for v in items)
        raw = (text + rng.choice(pad + ["\x00"])).encode()
        return raw + b" " * (len(raw) % 2)
    alphabet = ALPHABET + (["山", "ł"] if utf8 else [])
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 9)))
    if utf8 and rng.random() < 0.02:
        text += "\udcff"  # an invalid UTF-8 byte: the scanner declines
    raw = text.encode("utf-8" if utf8 else "latin-1", "surrogateescape")
    return raw + b" " * (len(raw) % 2)


@pytest.mark.parametrize("charset", [None, b"ISO_IR 100", b"ISO_IR 192"])
def test_random_values_decode_as_pydicom_does(charset):
    rng = random.Random(20240115)
    answers = {"fast": 0, "fallback": 0}
    for _ in range(400):
        utf8 = charset == b"ISO_IR 192"
        values = {kw: random_value(rng, vr, utf8) for kw, vr in FIELDS.items()}
        if charset:
            values["SpecificCharacterSet"] = charset
        for implicit, ts in ((False, ExplicitVRLittleEndian), (True, ImplicitVRLittleEndian)):
            answers[assert_same(assemble(index_elements(implicit, **values)), ts)] += 1
    print(answers)
    assert answers["fast"] > answers["fallback"]


# -- nesting --------------------------------------------------------------------------------


def nested_sequences(depth: int, implicit: bool) -> bytes:
    seq, start = (
        undefined(0x00081115, b"SQ", implicit),
        struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF),
    )
    return (seq + start) * depth + (ITEM_END + SEQ_END) * depth


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_deep_nesting_is_refused_quickly(implicit):
    ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    elements = index_elements(implicit)
    elements[0x00081115] = nested_sequences(10_000, implicit)
    data = assemble(elements)
    started = time.monotonic()
    assert fast_outcome(data, ts) == "fallback"  # the scanner does not go that deep
    with pytest.raises(InvalidDicom, match="nested too deeply"):
        read_header(data, ts)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_moderate_nesting_takes_the_fast_path(implicit):
    ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    elements = index_elements(implicit)
    nested = elements[0x00081115] = nested_sequences(40, implicit)
    data = assemble(elements)
    assert assert_same(data, ts) == "fast"
    # cut at any depth: refused by the scanner itself
    start = data.index(nested)
    for cut in range(start + 1, start + len(nested), 7):
        with pytest.raises(InvalidDicom, match="truncated"):
            header_module._scan_header(data[:cut], ts)


def test_refusals_of_read_header_are_kept():
    # a UID over 64 characters, a PatientID over 64, a missing Series Instance UID
    long_uid = index_elements(SOPInstanceUID=b"1." * 40)
    long_id = index_elements(PatientID=b"P" * 66)
    no_series = index_elements()
    del no_series[0x0020000E]
    for elements, message in (
        (long_uid, "UID longer"),
        (long_id, "PatientID"),
        (no_series, "missing"),
    ):
        data = assemble(elements)
        assert fast_outcome(data, ExplicitVRLittleEndian) == "InvalidDicom"
        with pytest.raises(InvalidDicom, match=message):
            read_header(data, ExplicitVRLittleEndian)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InvalidDicom, match="unknown transfer syntax"):
            read_header(assemble(index_elements()), "1.2.3.4")
