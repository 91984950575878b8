"""C-FIND matching driven by DCMTK's findscu against a running server.

Each test stores the same small archive (4 patients, 6 studies, 2019-2024,
CT/MR/US, accented and lower-case names, ``%`` and ``_`` in values) and checks
that every query answers exactly the expected matches, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.dicomgen import make_instance

PENDING = 0xFF00
SUCCESS = 0x0000

# study key -> (patient id, name, charset, date, time, accession, description,
#               [(modality, number of images)])
PATIENTS = {
    "QP-001": ("Müller^Anna", "ISO_IR 192"),
    "QP-002": ("müller^hans", "ISO_IR 192"),
    "QPX003": ("SMITH^JOHN", None),
    "QP_004": ("SMYTH^JANE", None),
}
STUDIES = {
    "S1": ("QP-001", "20190310", "081500", "ACC_1", "CT HEAD", [("CT", 2), ("MR", 1)]),
    "S2": ("QP-001", "20210615", "143000.250000", "ACC-2", "100% dose", [("US", 1)]),
    "S3": ("QP-002", "20220101", "101500", "ACCX1", "1000 dose", [("MR", 1)]),
    "S4": ("QP-002", "20231120", "235959", "ACC4", "KNEE [L]", [("CT", 1)]),
    "S5": ("QPX003", "20240229", "000000", "ACC5", "CHEST", [("CT", 1), ("US", 1)]),
    "S6": ("QP_004", "20200707", "120000", "ACC6", "Abdomen", [("MR", 1)]),
}
ROOT = "1.2.826.0.1.3680043.2.1143.77"


def study_uid(key: str) -> str:
    return f"{ROOT}.{key[1:]}"


def series_uid(key: str, number: int) -> str:
    return f"{study_uid(key)}.{number}"


def sop_uid(key: str, series: int, image: int) -> str:
    return f"{series_uid(key, series)}.{image}"


def build_archive(folder: Path) -> list[Path]:
    files = []
    for key, (patient_id, date, tm, accession, description, series) in STUDIES.items():
        name, charset = PATIENTS[patient_id]
        for number, (modality, images) in enumerate(series, start=1):
            for image in range(1, images + 1):
                files.append(
                    make_instance(
                        folder,
                        patient_id=patient_id,
                        patient_name=name,
                        charset=charset,
                        study_uid=study_uid(key),
                        series_uid=series_uid(key, number),
                        sop_uid=sop_uid(key, number, image),
                        study_date=date,
                        study_time=tm,
                        modality=modality,
                        accession=accession,
                        study_description=description,
                        body_part="HEAD" if (key, modality) == ("S1", "CT") else "",
                        instance_number=image,
                    )
                )
    return files


# -- findscu output --------------------------------------------------------------

_ELEMENT = re.compile(
    r"^\(([0-9a-f]{4}),([0-9a-f]{4})\) (\w\w) (?:\[(.*)\]|\(no value available\))"
    r"\s+#\s*(\d+),\s*(\d+) (\w+)$"
)


@dataclass
class Element:
    value: str
    vm: int

    @property
    def values(self) -> list[str]:
        return self.value.split("\\") if self.value else []


@dataclass
class Response:
    status: int
    identifier: dict[str, Element] = field(default_factory=dict)
    detail: dict[str, Element] = field(default_factory=dict)


@dataclass
class FindResult:
    responses: list[Response]
    output: str

    @property
    def pending(self) -> list[dict[str, Element]]:
        return [r.identifier for r in self.responses if r.status == PENDING]

    @property
    def final(self) -> Response:
        assert self.responses and self.responses[-1].status != PENDING, self.output
        return self.responses[-1]

    def values(self, keyword: str) -> list[str]:
        return sorted(r[keyword].value for r in self.pending)


def parse_findscu(output: str) -> list[Response]:
    """The C-FIND responses in findscu's debug (``-d``) log, in order."""
    responses: list[Response] = []
    current: dict | None = None
    for raw in output.splitlines():
        line = raw[3:] if raw[1:3] == ": " else raw
        if line.startswith("Message Type") and "C-FIND RSP" in line:
            responses.append(Response(status=-1))
            current = None
        elif line.startswith("DIMSE Status") and responses:
            responses[-1].status = int(re.search(r": (0x[0-9a-f]{4})", line).group(1), 16)
        elif line.startswith("Response Identifiers:") and responses:
            current = responses[-1].identifier
        elif line.startswith("Status Detail:") and responses:
            current = responses[-1].detail
        elif line.startswith("Request Identifiers:") or line.startswith("====="):
            current = None
        elif current is not None and (match := _ELEMENT.match(line)):
            value = (match.group(4) or "").strip(" \x00")
            current[match.group(7)] = Element(value, int(match.group(6)))
    return responses


def find(server, *keys: str, level: str = "STUDY", root: str = "-S") -> FindResult:
    result = server.findscu(f"QueryRetrieveLevel={level}", *keys, root=root, extra=("-d",))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return FindResult(parse_findscu(output), output)


def studies(server, *keys: str, root: str = "-S") -> list[str]:
    """The study keys (S1...) matching, after checking the C-FIND ended in success."""
    result = find(server, "StudyInstanceUID", *keys, root=root)
    assert result.final.status == SUCCESS, result.output
    by_uid = {study_uid(key): key for key in STUDIES}
    return sorted(by_uid.get(uid, uid) for uid in result.values("StudyInstanceUID"))


@pytest.fixture
def archive(server, tmp_path):
    """The server with the archive stored and FINDSCU declared."""
    result = server.storescu(*build_archive(tmp_path / "archive"))
    assert result.returncode == 0, result.stderr
    server.cli(
        "node",
        "add",
        "f",
        "--aet",
        "FINDSCU",
        "--host",
        "127.0.0.1",
        "--port",
        "1",
        "--allow",
        "find",
    )
    return server


# -- tests -----------------------------------------------------------------------


def test_study_level_matching(archive):
    s = archive
    # single value matching of a patient ID, `_` is literal even next to a wildcard
    assert studies(s, "PatientID=QP-001") == ["S1", "S2"]
    assert studies(s, "PatientID=QP_004") == ["S6"]
    assert studies(s, "PatientID=QP_00*") == ["S6"]
    assert studies(s, "PatientID=QP-00") == []

    # names: wildcards, case and accents ignored
    assert studies(s, "PatientName=MUL*") == ["S1", "S2", "S3", "S4"]
    assert studies(s, "PatientName=*anna*") == ["S1", "S2"]
    assert studies(s, "PatientName=muller^anna") == ["S1", "S2"]
    assert studies(s, "PatientName=MULLER^HANS") == ["S3", "S4"]
    assert studies(s, "SpecificCharacterSet=ISO_IR 192", "PatientName=MÜLLER^hans") == [
        "S3",
        "S4",
    ]
    assert studies(s, "PatientName=SM?TH*") == ["S5", "S6"]
    assert studies(s, "PatientName=SM?TH^J?HN") == ["S5"]
    assert studies(s, "PatientName=M?LLER*") == ["S1", "S2", "S3", "S4"]
    assert studies(s, "PatientName=SMITH") == []  # no wildcard: the whole value

    # dates: range, open ranges (bounds included), single date
    assert studies(s, "StudyDate=20200101-20221231") == ["S2", "S3", "S6"]
    assert studies(s, "StudyDate=20230101-") == ["S4", "S5"]
    assert studies(s, "StudyDate=-20200707") == ["S1", "S6"]
    assert studies(s, "StudyDate=20220101") == ["S3"]
    assert studies(s, "StudyDate=20220102") == []

    # times: ranges (fractional seconds inside the span), partial and HH:MM bounds
    assert studies(s, "StudyTime=100000-150000") == ["S2", "S3", "S6"]
    assert studies(s, "StudyTime=-0815") == ["S1", "S5"]
    assert studies(s, "StudyTime=2359-") == ["S4"]
    assert studies(s, "StudyTime=14:30-14:30") == ["S2"]
    assert studies(s, "StudyTime=-143000") == ["S1", "S2", "S3", "S5", "S6"]
    # a range without bounds is no range: the query cannot be processed
    result = find(s, "StudyInstanceUID", "StudyDate=-")
    assert (result.pending, result.final.status) == ([], 0xC000), result.output

    # a list of UIDs, one of them unknown
    uids = "\\".join([study_uid("S1"), study_uid("S3"), study_uid("S6"), f"{ROOT}.99"])
    assert studies(s, f"StudyInstanceUID={uids}") == ["S1", "S3", "S6"]
    assert studies(s, f"StudyInstanceUID={study_uid('S4')}") == ["S4"]

    # one modality of a multi-modality study, or any of several
    assert studies(s, "ModalitiesInStudy=MR") == ["S1", "S3", "S6"]
    assert studies(s, "ModalitiesInStudy=US") == ["S2", "S5"]
    assert studies(s, "ModalitiesInStudy=CT\\US") == ["S1", "S2", "S4", "S5"]
    assert studies(s, "ModalitiesInStudy=PT") == []

    # `%` and `_` are no SQL wildcards; other attributes than names match case
    assert studies(s, "AccessionNumber=ACC_1") == ["S1"]
    assert studies(s, "AccessionNumber=ACC_*") == ["S1"]
    assert studies(s, "StudyDescription=100% dose") == ["S2"]
    assert studies(s, "StudyDescription=100%*") == ["S2"]
    assert studies(s, "StudyDescription=*0%*") == ["S2"]
    assert studies(s, "StudyDescription=Abd*") == ["S6"]
    assert studies(s, "StudyDescription=ABD*") == []
    assert studies(s, "StudyDescription=abdomen") == []
    assert studies(s, "StudyDescription=*[L]") == ["S4"]
    assert studies(s, "StudyDescription=KNEE [?]") == ["S4"]

    # several keys together
    assert studies(s, "PatientName=MUL*", "StudyDate=2021-", "ModalitiesInStudy=MR") == ["S3"]


def test_return_keys_and_character_set(archive):
    s = archive
    # universal matching: empty keys come back filled
    result = find(
        s,
        f"StudyInstanceUID={study_uid('S1')}",
        "PatientID",
        "PatientName",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "SeriesDescription",  # a SERIES key at STUDY level: returned empty
    )
    assert result.final.status == SUCCESS, result.output
    [study] = result.pending
    assert study["PatientID"].value == "QP-001"
    assert study["StudyDate"].value == "20190310"
    assert study["StudyTime"].value == "081500"
    assert study["StudyDescription"].value == "CT HEAD"
    assert study["AccessionNumber"].value == "ACC_1"
    assert study["ModalitiesInStudy"].values == ["CT", "MR"]
    assert study["ModalitiesInStudy"].vm == 2
    assert study["NumberOfStudyRelatedSeries"].value == "2"
    assert study["NumberOfStudyRelatedInstances"].value == "3"
    assert study["SeriesDescription"].value == ""
    # the non-ASCII name is sent in UTF-8 and declared so
    assert study["SpecificCharacterSet"].value == "ISO_IR 192"
    assert study["PatientName"].value == "Müller^Anna"

    result = find(s, "PatientID=QP-002", "StudyDescription", "PatientName", "StudyInstanceUID")
    assert result.values("StudyDescription") == ["1000 dose", "KNEE [L]"]
    assert result.values("PatientName") == ["müller^hans", "müller^hans"]
    assert all(r["SpecificCharacterSet"].value == "ISO_IR 192" for r in result.pending)

    result = find(s, "PatientID=QPX003", "PatientName", "ModalitiesInStudy")
    [study] = result.pending
    assert study["PatientName"].value == "SMITH^JOHN"
    assert study["ModalitiesInStudy"].values == ["CT", "US"]


def test_series_image_and_patient_levels(archive):
    s = archive
    # SERIES level within a study
    result = find(
        s, f"StudyInstanceUID={study_uid('S1')}", "SeriesInstanceUID", "Modality=MR", level="SERIES"
    )
    assert result.final.status == SUCCESS, result.output
    assert result.values("SeriesInstanceUID") == [series_uid("S1", 2)]
    result = find(
        s,
        f"StudyInstanceUID={study_uid('S1')}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
        "BodyPartExamined",
        level="SERIES",
    )
    rows = sorted(
        (
            r["Modality"].value,
            r["NumberOfSeriesRelatedInstances"].value,
            r["BodyPartExamined"].value,
        )
        for r in result.pending
    )
    assert rows == [("CT", "2", "HEAD"), ("MR", "1", "")]
    result = find(s, "SeriesInstanceUID", "Modality=CT", level="SERIES")
    assert result.values("SeriesInstanceUID") == sorted(
        [series_uid("S1", 1), series_uid("S4", 1), series_uid("S5", 1)]
    )

    # IMAGE level: a list of SOP Instance UIDs within a series
    wanted = "\\".join([sop_uid("S1", 1, 2), sop_uid("S5", 1, 1)])
    result = find(
        s,
        f"StudyInstanceUID={study_uid('S1')}",
        f"SeriesInstanceUID={series_uid('S1', 1)}",
        f"SOPInstanceUID={wanted}",
        "InstanceNumber",
        level="IMAGE",
    )
    assert result.final.status == SUCCESS, result.output
    assert [(r["SOPInstanceUID"].value, r["InstanceNumber"].value) for r in result.pending] == [
        (sop_uid("S1", 1, 2), "2")
    ]
    wanted = "\\".join([sop_uid("S1", 1, 1), sop_uid("S1", 1, 2)])
    result = find(
        s, f"SeriesInstanceUID={series_uid('S1', 1)}", f"SOPInstanceUID={wanted}", level="IMAGE"
    )
    assert result.values("SOPInstanceUID") == [sop_uid("S1", 1, 1), sop_uid("S1", 1, 2)]

    # Patient Root: PATIENT level with related counts, then its STUDY level
    result = find(
        s,
        "PatientName=mul*",
        "PatientID",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
        level="PATIENT",
        root="-P",
    )
    assert result.final.status == SUCCESS, result.output
    patients = sorted(
        (
            r["PatientID"].value,
            r["PatientName"].value,
            r["NumberOfPatientRelatedStudies"].value,
            r["NumberOfPatientRelatedSeries"].value,
            r["NumberOfPatientRelatedInstances"].value,
        )
        for r in result.pending
    )
    assert patients == [
        ("QP-001", "Müller^Anna", "2", "3", "4"),
        ("QP-002", "müller^hans", "2", "2", "2"),
    ]
    result = find(s, "PatientID", "NumberOfPatientRelatedStudies", level="PATIENT", root="-P")
    assert sorted(
        (r["PatientID"].value, r["NumberOfPatientRelatedStudies"].value) for r in result.pending
    ) == [("QP-001", "2"), ("QP-002", "2"), ("QPX003", "1"), ("QP_004", "1")]
    assert studies(s, "PatientID=QP-002", root="-P") == ["S3", "S4"]

    # Study Root has no PATIENT level: a failure, no match
    result = find(s, "PatientID", level="PATIENT", root="-S")
    assert result.pending == []
    assert result.final.status == 0xA900, result.output


def test_max_find_results_cuts_with_a_failure(archive):
    s = archive
    s.cli("settings", "--set", "max_find_results=3")
    time.sleep(2.5)  # settings are re-read every 2 s
    result = find(s, "StudyInstanceUID")
    assert len(result.pending) == 3, result.output
    assert [r.status for r in result.responses] == [PENDING] * 3 + [0xA700]
    assert result.final.detail["ErrorComment"].value, result.output
    # exactly as many matches as allowed is no cut
    assert studies(s, "ModalitiesInStudy=MR") == ["S1", "S3", "S6"]
    result = find(s, "SeriesInstanceUID", "Modality=CT", level="SERIES")
    assert (len(result.pending), result.final.status) == (3, SUCCESS)
