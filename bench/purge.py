"""Purge benchmark: evaluate the retention rules over 100 000 indexed
instances, then delete 10 000 of them (rows, trash, files, audit, events).

The index is filled directly in SQL (no DICOM parsing) for speed; only the
instances to delete get a small real file, since only they are unlinked.

    .venv/bin/python bench/purge.py                    # SQLite in a temp home
    .venv/bin/python bench/purge.py --db postgresql://postgres@127.0.0.1:5432/DBNAME
    .venv/bin/python bench/purge.py --instances 20000 --delete 2000   # quicker

The PostgreSQL database must exist and be empty (``createdb``); SQLite runs
in a temporary home unless ``--home`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import pacscore_purge
from pacscore_purge import make_plan, run_purge

from pacscore.app import Pacs
from pacscore.config import Config
from pacscore.db import connection
from pacscore.models import Instance, Patient, Series, Storage, Study
from pacscore.storage import instance_relpath

RULES = ["MG * 1825", "* CHEST 1460", "* * 3650", "DX Chest 0", "US épaule 400"]
MODALITIES = ["CT", "MR", "US", "DX", "MG", "CR", "PT", "NM"]
DESCRIPTIONS = ["Chest", "CHEST", "chést", "Épaule", "EPAULE", "Knee", "Abdomen", "Brain"] + [
    f"Protocol {n}" for n in range(200)
]
INSTANCES_PER_SERIES = 10
SERIES_PER_STUDY = 2
FILE_BYTES = 512


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite:///index.db", help="database URL")
    parser.add_argument("--home", type=Path, help="home folder (default: a temporary one)")
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--delete", type=int, default=10_000, help="instances that expire")
    parser.add_argument("--repeat", type=int, default=3, help="dry runs timed")
    return parser.parse_args()


def open_bench_pacs(home: Path, db_url: str) -> Pacs:
    config = Config(home=home, db_url=db_url)
    config.save()
    pacs = Pacs(Config.load(home))
    pacs.prepare()
    pacs.hooks.load_builtins()
    pacs.hooks.register(pacscore_purge, name="purge")
    return pacs


def recent_date(n: int) -> str:
    # within the last 1400 days: younger than every rule
    return (date.today() - timedelta(days=1 + n % 1400)).strftime("%Y%m%d")


def old_date(n: int) -> str:
    # between 11 and 12 years: older than every rule but DX Chest 0
    return (date.today() - timedelta(days=4100 + n % 300)).strftime("%Y%m%d")


def insert_chunked(model, rows: list[dict], size: int = 1000) -> None:
    for start in range(0, len(rows), size):
        model.insert_many(rows[start : start + size]).execute()


def populate(pacs: Pacs, instances: int, to_delete: int) -> None:
    """Studies of 2 series x 10 instances; the first ``to_delete`` instances expire."""
    storage = Storage.get()
    root = Path(storage.path)
    now = datetime.now()
    studies = instances // (INSTANCES_PER_SERIES * SERIES_PER_STUDY)
    expiring_studies = to_delete // (INSTANCES_PER_SERIES * SERIES_PER_STUDY)
    with pacs.database.atomic():
        insert_chunked(
            Patient,
            [{"patient_id": f"P{n}", "patient_name": f"BENCH^{n}"} for n in range(studies // 3)],
        )
        patient_ids = [p.id for p in Patient.select(Patient.id).order_by(Patient.id)]
        study_rows = []
        for n in range(studies):
            expiring = n < expiring_studies
            modality = MODALITIES[n % len(MODALITIES)]
            description = DESCRIPTIONS[n % len(DESCRIPTIONS)]
            if expiring and modality == "DX" and "CH" in description.upper():
                description = "Knee"  # DX chest is kept forever: not a victim
            study_rows.append(
                {
                    "study_uid": f"1.2.999.{n}",
                    "patient": patient_ids[n % len(patient_ids)],
                    "study_date": old_date(n) if expiring else recent_date(n),
                    "description": description,
                    "modalities": f"\\{modality}\\",
                    "num_series": SERIES_PER_STUDY,
                    "num_instances": SERIES_PER_STUDY * INSTANCES_PER_SERIES,
                    "size": SERIES_PER_STUDY * INSTANCES_PER_SERIES * FILE_BYTES,
                    "first_received": now,
                    "last_received": now,
                    "stable": True,
                }
            )
        insert_chunked(Study, study_rows)
        study_ids = dict(Study.select(Study.study_uid, Study.id).tuples())
        series_rows = [
            {
                "series_uid": f"{row['study_uid']}.{k}",
                "study": study_ids[row["study_uid"]],
                "modality": row["modalities"].strip("\\"),
                "num_instances": INSTANCES_PER_SERIES,
                "size": INSTANCES_PER_SERIES * FILE_BYTES,
            }
            for row in study_rows
            for k in range(SERIES_PER_STUDY)
        ]
        insert_chunked(Series, series_rows)
        series_ids = dict(Series.select(Series.series_uid, Series.id).tuples())
        instance_rows = []
        for number, row in enumerate(series_rows):
            for k in range(INSTANCES_PER_SERIES):
                sop_uid = f"{row['series_uid']}.{k}"
                relpath = instance_relpath(sop_uid)
                if number < expiring_studies * SERIES_PER_STUDY:
                    target = root / relpath
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(b"\0" * FILE_BYTES)
                instance_rows.append(
                    {
                        "sop_uid": sop_uid,
                        "series": series_ids[row["series_uid"]],
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "transfer_syntax": "1.2.840.10008.1.2.1",
                        "storage": storage.id,
                        "path": relpath,
                        "size": FILE_BYTES,
                        "received_at": now,
                    }
                )
        insert_chunked(Instance, instance_rows)


def main() -> int:
    args = parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="pacscore-bench-purge-"))
    pacs = open_bench_pacs(home, args.db)
    with connection():
        if Instance.select().exists():
            print(f"error: {args.db} already holds instances", file=sys.stderr)
            return 1
        started = time.perf_counter()
        populate(pacs, args.instances, args.delete)
        print(f"populated {Instance.select().count()} instances in "
              f"{time.perf_counter() - started:.1f} s ({args.db}, home {home})")  # fmt: skip
        pacs.save_plugin_settings("purge", {"rules": RULES})

        timings = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            plan = make_plan(pacs)
            timings.append(time.perf_counter() - started)
        print(
            f"evaluate rules (dry run) over {args.instances} instances: "
            f"median {statistics.median(timings) * 1000:.0f} ms of {args.repeat} "
            f"-> {plan.totals['instances']} instances in {plan.totals['series']} series to delete"
        )

        started = time.perf_counter()
        report = run_purge(pacs)
        elapsed = time.perf_counter() - started
        left = Instance.select().count()
    files_left = sum(1 for _ in Path(Storage.get().path).rglob("*.dcm"))
    print(
        f"purge: deleted {report.instances} instances ({report.totals['series']} series, "
        f"{report.bytes} bytes) in {elapsed:.2f} s "
        f"({report.instances / elapsed:.0f} instances/s); "
        f"{left} rows and {files_left} files left"
    )
    pacs.database.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
