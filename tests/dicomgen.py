"""Generate small, valid DICOM files with chosen attributes for tests."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pacscore.dicomfile.part10 import read_dicom_file


def make_instance(
    folder: Path,
    *,
    patient_id: str = "PAT1",
    patient_name: str = "DOE^JOHN",
    birth_date: str = "19700101",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    study_date: str = "20240115",
    study_time: str = "101500",
    modality: str = "CT",
    accession: str = "",
    study_description: str = "",
    institution: str = "",
    requesting_service: str = "",
    body_part: str = "",
    rows: int = 8,
    columns: int = 8,
    charset: str | None = None,
    instance_number: int = 1,
) -> Path:
    """Write one CT image (explicit VR little endian) and return its path."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = "REF^DOC"
    ds.StudyDescription = study_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "O"
    ds.BodyPartExamined = body_part
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    if requesting_service:
        ds.RequestingService = requesting_service
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(i % 251 for i in range(rows * columns * 2))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_bytes(path: Path) -> bytes:
    """The data set bytes of a Part 10 file (after its file meta)."""
    return read_dicom_file(path)[0]
