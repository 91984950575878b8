"""Helpers shared by the purge plugin's tests: an archive spread over ten
years, the rule set of the issue, and the expected outcome computed by hand."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pacscore_purge
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacscore.db import connection
from tests.dicomgen import dataset_bytes, make_instance

# the rule set, written with mixed case and accents, plus two of ours
RULES = ["MG * 1825", "* CHEST 1460", "* * 1095", "DX Chest 0", "US épaule 400", "cr thorax 2200"]

AGES = [20, 500, 1200, 1500, 1700, 2000, 2600, 3300]  # days; none on a rule's boundary

# (modality, study description) -> days kept by the rule that must win (None: forever)
KEEP_DAYS = {
    ("MG", "Mammo bilat"): 1825,  # MG *
    ("MG", "CHEST"): 1825,  # MG * beats * CHEST
    ("CT", "Chest"): 1460,  # * CHEST, other case
    ("CT", "chést"): 1460,  # * CHEST, accent
    ("DX", "CHEST"): None,  # DX Chest 0 beats * CHEST
    ("DX", "chést"): None,
    ("DX", "Knee"): 1095,  # * *
    ("US", "Épaule"): 400,  # US épaule
    ("US", "EPAULE"): 400,
    ("CR", "THORAX"): 2200,  # cr thorax
    ("CR", ""): 1095,  # no description: * *
}


@dataclass
class StudySpec:
    study_uid: str
    modality: str
    description: str
    age: int

    @property
    def expired(self) -> bool:
        keep = KEEP_DAYS[(self.modality, self.description)]
        return keep is not None and self.age > keep


def study_date(age: int) -> str:
    return (date.today() - timedelta(days=age)).strftime("%Y%m%d")


def ten_year_archive(folder: Path, **extra) -> tuple[list[StudySpec], list[Path]]:
    """One single-instance study per (modality, description, age)."""
    specs, files = [], []
    for number, ((modality, description), age) in enumerate(
        (combo, age) for combo in KEEP_DAYS for age in AGES
    ):
        spec = StudySpec(generate_uid(), modality, description, age)
        files.append(
            make_instance(
                folder,
                patient_id=f"P{number % 13}",
                study_uid=spec.study_uid,
                study_date=study_date(age),
                modality=modality,
                study_description=description,
                charset="ISO_IR 192",
                **extra,
            )
        )
        specs.append(spec)
    return specs, files


def store_files(pacs, files: list[Path]) -> None:
    with connection():
        for path in files:
            result = pacs.archive.store(dataset_bytes(path), ExplicitVRLittleEndian)
            assert result.ok, result.comment


def purge_pacs(make_pacs, *plugins):
    """An in-process Pacs with the purge plugin registered under its entry-point name."""
    pacs = make_pacs(*plugins)
    pacs.hooks.register(pacscore_purge, name="purge")
    return pacs


def configure(pacs, **changes) -> dict:
    with connection():
        return pacs.save_plugin_settings("purge", changes)
