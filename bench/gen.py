"""Generate the benchmark data sets with pydicom (no numpy needed).

Two kinds of instances, explicit VR little endian, distinct UIDs:

* ``large``: CT Image Storage, 512x512x16 bit (~525 KB), 50 instances per
  study (2 series of 25);
* ``small``: MR Image Storage, 64x64x16 bit (~9 KB), 10 instances per study
  (2 series of 5).

Studies are spread over a shared pool of patients (1 to several studies
each) with realistic attributes: PatientID, PatientName, birth date, sex,
StudyDate spread over 2005-2024, AccessionNumber, descriptions, institution.
Files are written round-robin into ``part0..part{parts-1}`` sub-folders so the
bench can start one storescu per part.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_ROOT = "1.2.826.0.1.3680043.10.1523.9"  # pacscore's root + a bench arc

LAST_NAMES = [
    "SMITH",
    "JOHNSON",
    "WILLIAMS",
    "BROWN",
    "JONES",
    "GARCIA",
    "MILLER",
    "DAVIS",
    "MARTIN",
    "BERNARD",
    "DUBOIS",
    "THOMAS",
    "ROBERT",
    "RICHARD",
    "PETIT",
    "DURAND",
    "LEROY",
    "MOREAU",
    "SIMON",
    "LAURENT",
    "MUELLER",
    "SCHMIDT",
    "SCHNEIDER",
    "FISCHER",
    "WEBER",
    "MEYER",
    "WAGNER",
    "BECKER",
    "ROSSI",
    "RUSSO",
    "FERRARI",
    "ESPOSITO",
]
FIRST_NAMES = [
    "JOHN",
    "MARY",
    "PETER",
    "ANNA",
    "LUC",
    "MARIE",
    "HANS",
    "GRETA",
    "PAOLO",
    "GIULIA",
    "JAMES",
    "LINDA",
    "PIERRE",
    "SOPHIE",
    "KARL",
    "EVA",
]
N_PATIENTS = 200


@dataclass(frozen=True)
class Kind:
    name: str
    sop_class: str
    modality: str
    rows: int
    per_series: int
    series_per_study: int
    body_parts: tuple[str, ...]
    descriptions: tuple[str, ...]


KINDS = {
    "large": Kind(
        "large",
        CT_IMAGE,
        "CT",
        512,
        25,
        2,
        ("CHEST", "ABDOMEN", "HEAD"),
        ("CT THORAX", "CT ABDOMEN PELVIS", "CT HEAD W/O"),
    ),
    "small": Kind(
        "small",
        MR_IMAGE,
        "MR",
        64,
        5,
        2,
        ("BRAIN", "KNEE", "SPINE"),
        ("MR BRAIN", "MR KNEE LEFT", "MR LUMBAR SPINE"),
    ),
}
# a data set tag keeps the UIDs of different sets apart (warm-up vs measured)
SET_CODES = {
    "large": 1, "small": 2, "warm-large": 3, "warm-small": 4,
    "flat-a": 5, "flat-b": 6, "flat-last": 7,  # bench/flatness.py
    "start-small": 8,  # bench/run.py's "store after start" cells
}  # fmt: skip


def patient(i: int) -> dict:
    rng = random.Random(1000 + i)
    birth = date(1930, 1, 1) + timedelta(days=rng.randrange(0, 365 * 85))
    last = LAST_NAMES[i % len(LAST_NAMES)]
    first = FIRST_NAMES[(i * 7) % len(FIRST_NAMES)]
    return {
        "PatientID": f"PID{i:06d}",
        "PatientName": f"{last}^{first}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": "MF"[i % 2],
    }


def generate(
    out: Path,
    set_name: str,
    kind_name: str,
    count: int,
    parts: int = 4,
    first_year: int = 2005,
    first_patient: int = 0,
) -> list[Path]:
    """Write ``count`` instances under ``out`` (study dates over the 20 years from
    ``first_year``, patients ``first_patient`` to ``first_patient + 199``); return the
    part folders."""
    kind = KINDS[kind_name]
    code = SET_CODES[set_name]
    rng = random.Random(code)
    part_dirs = [out / f"part{p}" for p in range(parts)]
    for d in part_dirs:
        d.mkdir(parents=True, exist_ok=True)
    pixel_bytes = kind.rows * kind.rows * 2
    noise = os.urandom(pixel_bytes)
    per_study = kind.per_series * kind.series_per_study
    n_studies = (count + per_study - 1) // per_study
    written = 0
    for s in range(n_studies):
        pat = patient(first_patient + rng.randrange(N_PATIENTS))
        study_day = date(first_year, 1, 1) + timedelta(days=rng.randrange(0, 365 * 20))
        study_uid = f"{UID_ROOT}.{code}.{s + 1}"
        hour = rng.randrange(7, 19)
        study_time = f"{hour:02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        body = kind.body_parts[s % len(kind.body_parts)]
        desc = kind.descriptions[s % len(kind.descriptions)]
        for se in range(kind.series_per_study):
            series_uid = f"{study_uid}.{se + 1}"
            for i in range(kind.per_series):
                if written >= count:
                    return part_dirs
                sop_uid = f"{series_uid}.{i + 1}"
                ds = Dataset()
                ds.SpecificCharacterSet = "ISO_IR 100"
                ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
                ds.SOPClassUID = kind.sop_class
                ds.SOPInstanceUID = sop_uid
                ds.StudyDate = study_day.strftime("%Y%m%d")
                ds.SeriesDate = ds.StudyDate
                ds.ContentDate = ds.StudyDate
                ds.StudyTime = study_time
                ds.SeriesTime = study_time
                ds.AccessionNumber = f"ACC{code}{s + 1:07d}"
                ds.Modality = kind.modality
                ds.Manufacturer = "BENCH"
                ds.InstitutionName = ["CHU NORD", "GENERAL HOSPITAL", "CLINIC WEST"][s % 3]
                ds.ReferringPhysicianName = "HOUSE^GREGORY"
                ds.StationName = f"{kind.modality}0{s % 4 + 1}"
                ds.StudyDescription = desc
                ds.SeriesDescription = f"{desc} SERIES {se + 1}"
                ds.update(pat)
                ds.BodyPartExamined = body
                ds.SliceThickness = "1.25"
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                ds.StudyID = str(s + 1)
                ds.SeriesNumber = str(se + 1)
                ds.InstanceNumber = str(i + 1)
                ds.ImagePositionPatient = ["-250", "-250", f"{-i * 1.25:.2f}"]
                ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
                ds.FrameOfReferenceUID = f"{study_uid}.0"
                ds.SamplesPerPixel = 1
                ds.PhotometricInterpretation = "MONOCHROME2"
                ds.Rows = kind.rows
                ds.Columns = kind.rows
                ds.PixelSpacing = ["0.7", "0.7"]
                ds.BitsAllocated = 16
                ds.BitsStored = 12
                ds.HighBit = 11
                ds.PixelRepresentation = 0
                ds.WindowCenter = "40"
                ds.WindowWidth = "400"
                ds.RescaleIntercept = "-1024"
                ds.RescaleSlope = "1"
                # distinct pixel data per instance, cheap to make
                ds.PixelData = written.to_bytes(8, "little") + noise[8:]
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = kind.sop_class
                meta.MediaStorageSOPInstanceUID = sop_uid
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.file_meta = meta
                path = part_dirs[written % parts] / f"{kind_name}{written:06d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                written += 1
    assert pixel_bytes
    return part_dirs


def studies_of(set_name: str, kind_name: str, count: int) -> list[tuple[str, int]]:
    """(StudyInstanceUID, number of instances) for a generated set, in order."""
    kind = KINDS[kind_name]
    per_study = kind.per_series * kind.series_per_study
    code = SET_CODES[set_name]
    result = []
    left = count
    s = 0
    while left > 0:
        n = min(per_study, left)
        result.append((f"{UID_ROOT}.{code}.{s + 1}", n))
        left -= n
        s += 1
    return result


def first_patient_id(set_name: str) -> str:
    """The PatientID of the first study of a set (a patient that certainly exists)."""
    rng = random.Random(SET_CODES[set_name])
    return patient(rng.randrange(N_PATIENTS))["PatientID"]
