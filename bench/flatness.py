"""Is ingest flat as the archive grows?  Rates and C-FIND latencies at 4 000 and 200 000.

One pacscore server (the venv's, default settings: one DICOM process per
core) on SQLite or PostgreSQL:

1. stores 4 000 small instances (4 storescu associations), times two C-FIND
   queries (exact PatientID, StudyDate range), stores 6 000 more: the rate
   over the first 10 000;
2. stops, and grows the index to ``total - window`` instances with rows
   written directly in SQL (patients, studies of 10 instances in 2 series,
   instances whose files are not written: C-FIND never opens files).  The
   filler studies, like those stored after the first queries, are dated
   1985-2004 and belong to other patients, so the two queries (the first
   patient, 2015-2016) return the same studies at both sizes: what is
   compared is the cost of the index, not of a longer answer;
3. restarts, stores the last 10 000 instances: the rate over the last
   10 000; times the two queries again.

Targets (issue 10): last/first rate >= 0.9; C-FIND at the end within 1.5x of
at 4 000.  The rate of the first 10 000 varies by a quarter from one measure
to the next on the same machine (0.80 to 1.25 for the ratio in five
measures of one version), so the whole measure is repeated (``--runs``,
default 3) and the medians are reported.  Each measure also prints the
server's CPU per instance and the disk's own rate at both ends: a slower
disk at the end is not a less flat archive.

    .venv/bin/python bench/flatness.py                       # SQLite
    .venv/bin/python bench/flatness.py --db postgresql://postgres@127.0.0.1:5432/flat

Each measure on PostgreSQL creates its own database, ``--db``'s name with
``_0``, ``_1``...: dropped first if left over, and at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen  # noqa: E402
from run import (  # noqa: E402
    FLOOR_FILES,
    Pacscore,
    disk_alone,
    find_cell,
    find_queries,
    log,
    note_deletion,
    remove_tree,
    settle_cpu,
    settle_deletions,
    store,
)

FIND_REPEAT = 30
QUERIES = ("C-FIND exact PatientID", "C-FIND StudyDate range")
BATCH = 5000


class FlatPacscore(Pacscore):
    def __init__(self, root: Path, db_url: str) -> None:
        super().__init__(root, 11812, 18812)
        self.db_url = db_url

    def count_instances(self) -> int:
        with self.index():
            from pacscore.models import Instance

            return Instance.select().count()

    def index(self):
        from pacscore.db import bind_database, connection

        bind_database(self.db_url or "sqlite:///index.db", self.root)
        return connection()


def queries() -> dict[str, dict]:
    found = find_queries()
    picked = {name: found[name] for name in QUERIES}
    picked["C-FIND exact PatientID"]["PatientID"] = gen.first_patient_id("flat-a")
    return picked


def timed_finds(server: FlatPacscore) -> dict[str, dict]:
    result = {}
    for name, query in queries().items():
        ms, matches, cpu_ms = find_cell(server, query, FIND_REPEAT)
        result[name] = {"ms": round(ms, 2), "matches": matches, "cpu_ms": round(cpu_ms, 2)}
        log(f"  {name}: {ms:.2f} ms ({matches} matches)")
    return result


def timed_store(server: FlatPacscore, dirs: list[Path]) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) of storing ``dirs``."""
    settle_deletions()
    cpu_before = settle_cpu(server.pid)
    seconds = store(server, dirs)
    return seconds, settle_cpu(server.pid) - cpu_before


def disk_rate(files_folder: Path, folder: Path) -> float:
    """The disk alone, as the bench measures it, at one end of a window: a slower
    machine at the end is not a less flat archive."""
    files = sorted(f for f in files_folder.rglob("*") if f.is_file())[:FLOOR_FILES]
    rate = disk_alone(files, folder)
    log(f"  disk alone: {rate:.1f} files/s")
    return round(rate, 1)


def fill_index(server: FlatPacscore, instances: int) -> None:
    """Add ``instances`` instance rows (and their patients, studies, series) in SQL."""
    from pacscore.db import db
    from pacscore.models import Instance, Patient, Series, Storage, Study

    rng = random.Random(7)
    per_study, per_series = 10, 5
    with server.index():
        storage_id = Storage.select(Storage.id).order_by(Storage.id).scalar()
        for first in range(0, instances // per_study, BATCH // per_study):
            studies = range(first, min(first + BATCH // per_study, instances // per_study))
            with db.atomic():
                _fill_batch(rng, studies, per_study, per_series, storage_id,
                            Patient, Study, Series, Instance)  # fmt: skip
            if first % 20000 == 0:
                log(f"  filled {first * per_study} instances")
        # a bulk load leaves stale planner statistics that a growing archive would not
        # have (PostgreSQL's autovacuum analyses as rows arrive): refresh them now
        db.execute_sql("ANALYZE")


def _fill_batch(rng, studies, per_study, per_series, storage_id, Patient, Study, Series, Instance):
    patients = [
        {"patient_id": f"FILL{s:07d}", "patient_name": f"FILLER^{s}", "name_key": f"FILLER^{s}"}
        for s in studies
    ]
    Patient.insert_many(patients).execute()
    ids = dict(
        Patient.select(Patient.patient_id, Patient.id)
        .where(Patient.patient_id.in_([p["patient_id"] for p in patients]))
        .tuples()
    )
    rows = []
    for s in studies:
        year = rng.randrange(1985, 2005)
        rows.append({
            "study_uid": f"2.25.1{s:09d}", "patient": ids[f"FILL{s:07d}"],
            "study_date": f"{year}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}",
            "accession_number": f"FILL{s:07d}", "modalities": "\\MR\\",
            "num_series": 2, "num_instances": per_study, "stable": True,
        })  # fmt: skip
    Study.insert_many(rows).execute()
    study_ids = dict(
        Study.select(Study.study_uid, Study.id)
        .where(Study.study_uid.in_([r["study_uid"] for r in rows]))
        .tuples()
    )
    series = [
        {"series_uid": f"{uid}.{n}", "study": study_id, "modality": "MR", "num_instances": 5}
        for uid, study_id in study_ids.items()
        for n in (1, 2)
    ]
    Series.insert_many(series).execute()
    series_ids = Series.select(Series.series_uid, Series.id).where(
        Series.series_uid.in_([r["series_uid"] for r in series])
    )
    instances = [
        {
            "sop_uid": f"{series_uid}.{i}",
            "series": series_id,
            "sop_class_uid": gen.MR_IMAGE,
            "transfer_syntax": "1.2.840.10008.1.2.1",
            "storage": storage_id,
            "path": f"filler/{series_id}/{i}",
            "size": 9000,
        }  # fmt: skip
        for series_uid, series_id in series_ids.tuples()
        for i in range(1, per_series + 1)
    ]
    Instance.insert_many(instances).execute()


def _postgres_admin(url: str):
    """A connection to the server of ``url`` (the role must be allowed to create
    databases)."""
    import psycopg2

    parsed = urlparse(url)
    admin = psycopg2.connect(
        dbname="postgres",
        user=parsed.username,
        password=parsed.password,
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 5432,
    )
    admin.autocommit = True
    return admin


def _database_name(url: str) -> str:
    return urlparse(url).path.lstrip("/")


def is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def measure_database(args, run: int) -> str:
    """The database URL of measure ``run``: each measure its own PostgreSQL database,
    all dropped at the end, since dropping one within the run would slow the next
    measure's file creations (see run.DELETIONS_SETTLE_SECONDS)."""
    return f"{args.db}_{run}" if is_postgres(args.db) else args.db


def create_postgres_database(url: str) -> None:
    admin = _postgres_admin(url)
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{_database_name(url)}"')
    admin.close()


def drop_postgres_databases(urls: list[str]) -> None:
    """Drop those that exist (all on one server); a drop deletes files on the bench's
    file system."""
    admin = _postgres_admin(urls[0])
    with admin.cursor() as cursor:
        names = [_database_name(url) for url in urls]
        cursor.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,))
        existing = [name for (name,) in cursor.fetchall()]
        for name in existing:
            cursor.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # our own index reads
    admin.close()
    if existing:
        note_deletion()


def remove_homes(out: Path) -> None:
    for leftover in [*out.glob("home-*"), *out.glob("disk-alone-*")]:
        remove_tree(leftover)


def measure(args, parts: dict[str, list[Path]], data: Path, run: int) -> dict:
    """One whole measure on a fresh home and database: the first window, the fill,
    the last window, the queries at both sizes."""
    home = args.out / f"home-{run}"  # deleted at the end (see run.DELETIONS_SETTLE_SECONDS)
    db_url = measure_database(args, run)
    if is_postgres(db_url):
        create_postgres_database(db_url)
    server = FlatPacscore(home, db_url)
    server.setup()
    server.start()
    result: dict = {"db": db_url or "sqlite", "total": args.total, "window": args.window}
    try:
        result["disk_at_start"] = disk_rate(data / "a", args.out / f"disk-alone-{run}-start")
        t_a, cpu_a = timed_store(server, parts["flat-a"])
        result["find_at_start"] = timed_finds(server)
        t_b, cpu_b = timed_store(server, parts["flat-b"])
        result["first_rate"] = round(args.window / (t_a + t_b), 1)
        result["first_cpu_ms"] = round(1000 * (cpu_a + cpu_b) / args.window, 2)
        log(f"first {args.window}: {result['first_rate']}/s, {result['first_cpu_ms']} ms CPU/inst")
        server.stop()
        log(f"filling the index to {args.total - args.window} instances")
        fill_index(server, args.total - 2 * args.window)
        server.start()
        t_last, cpu_last = timed_store(server, parts["flat-last"])
        result["last_rate"] = round(args.window / t_last, 1)
        result["last_cpu_ms"] = round(1000 * cpu_last / args.window, 2)
        result["instances_at_end"] = server.count_instances()
        log(f"last {args.window}: {result['last_rate']}/s, {result['last_cpu_ms']} ms CPU/inst, "
            f"{result['instances_at_end']} indexed")  # fmt: skip
        result["find_at_end"] = timed_finds(server)
        result["disk_at_end"] = disk_rate(data / "last", args.out / f"disk-alone-{run}-end")
    finally:
        server.stop()
    result["rate_ratio"] = round(result["last_rate"] / result["first_rate"], 2)
    for name in QUERIES:
        ratio = result["find_at_end"][name]["ms"] / result["find_at_start"][name]["ms"]
        result[f"{name} ratio"] = round(ratio, 2)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="", help="database URL (default: SQLite in the home)")
    ap.add_argument("--total", type=int, default=200_000)
    ap.add_argument("--window", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3, help="whole measures; medians are reported")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "flatness")
    args = ap.parse_args()
    early = 4000 if args.window > 4000 else args.window // 2
    data = args.out / "data"
    # (count, folder, first year of the study dates, first patient): the queried
    # patient and date range are those of the first 4 000 only
    sets = {
        "flat-a": (early, data / "a", 2005, 0),
        "flat-b": (args.window - early, data / "b", 1985, 1000),
        "flat-last": (args.window, data / "last", 1985, 2000),
    }
    for name, (count, folder, first_year, first_patient) in sets.items():
        if not folder.exists():
            log(f"generating {count} small instances ({name})")
            gen.generate(folder, name, "small", count, first_year=first_year,
                         first_patient=first_patient)  # fmt: skip
    parts = {name: sorted(p for p in s[1].iterdir() if p.is_dir()) for name, s in sets.items()}
    databases = [measure_database(args, run) for run in range(args.runs)]
    remove_homes(args.out)  # an earlier run's
    if is_postgres(args.db):
        drop_postgres_databases(databases)  # an earlier run's
    runs = []
    for number in range(1, args.runs + 1):
        log(f"measure {number} of {args.runs}")
        runs.append(measure(args, parts, data, len(runs)))
    remove_homes(args.out)
    if is_postgres(args.db):
        drop_postgres_databases(databases)
    summary = {
        key: statistics.median(run[key] for run in runs)
        for key in ("rate_ratio", *(f"{name} ratio" for name in QUERIES))
    }
    summary["rate_ratios"] = [run["rate_ratio"] for run in runs]
    result = {"db": runs[0]["db"], "median": summary, "runs": runs}
    print(json.dumps(result, indent=1))
    (args.out / f"result-{result['db'].split(':')[0]}.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
