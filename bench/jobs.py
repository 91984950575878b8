#!/usr/bin/env python3
"""Router send jobs drained to a DCMTK storescp, per number of routing threads.

    .venv/bin/python bench/jobs.py [--jobs 1000] [--threads 1 4] [--db URL]

One in-process pacscore (SQLite in a temporary home unless ``--db`` names a
PostgreSQL database) archives ``--jobs`` small instances once; then, for each
thread count, a new router rule queues one ``router.send`` job per instance
(PUSH per instance) and the job workers, with ``routing_threads`` threads,
drain them to ``storescp --fork``.  Printed: jobs, threads, seconds from the
workers' start to the last job done, jobs/s.  Each job is one association
with one C-STORE, so the figure is the per-send cost of the router (take the
job, read the file, associate, send, mark delivered), not a bulk transfer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pacscore_router  # noqa: E402
from pacscore_router.sending import queue_send  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from pacscore.db import connection  # noqa: E402
from pacscore.dicomfile.part10 import read_dicom_file  # noqa: E402
from pacscore.jobs import JobWorkers  # noqa: E402
from pacscore.models import Job, Node  # noqa: E402
from tests.conftest import new_pacs  # noqa: E402
from tests.dicomgen import make_instance  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int) -> None:
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"storescp does not listen on {port}")


def archive_instances(pacs, folder: Path, count: int) -> tuple[str, list[str]]:
    study_uid, series_uid = generate_uid(), generate_uid()
    sop_uids = []
    for n in range(count):
        path = make_instance(folder, study_uid=study_uid, series_uid=series_uid, instance_number=n)
        data, ts = read_dicom_file(path)
        with connection():
            assert pacs.archive.store(data, ts, "BENCH").ok
        sop_uids.append(path.stem)
        path.unlink()
    return study_uid, sop_uids


def drain(pacs, study_uid: str, sop_uids: list[str], threads: int) -> float:
    rule = {
        "name": f"bench-{threads}-{time.monotonic_ns()}",
        "actions": [{"type": "PUSH", "node": "dest", "per_instance": True}],
    }
    with connection():
        rules = pacs.save_plugin_settings("router", {"rules": [rule], "routing_threads": threads})
        rule = rules["rules"][0]
        for sop_uid in sop_uids:
            queue_send(pacs, rule, "dest", study_uid, [sop_uid])
    workers = JobWorkers(pacs, poll_seconds=0.2)
    started = time.perf_counter()
    with connection():
        workers.start()
    try:
        while True:
            with connection():
                if not Job.select().where(Job.state.in_(["pending", "running"])).exists():
                    break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        workers.stop()
    with connection():
        failed = Job.select().where(Job.state != "done").count()
    if failed:
        raise SystemExit(f"{failed} job(s) not done: see the log")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--db", default="sqlite:///index.db", help="database URL")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pacscore-bench-jobs-"))
    port = free_port()
    received = work / "received"
    received.mkdir()
    scp = subprocess.Popen(
        ["/usr/bin/storescp", "--fork", "-aet", "DEST", "-od", str(received), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        pacs = new_pacs(work / "home", args.db)
        pacs.hooks.register(pacscore_router, name="router")
        pacs.prepare_plugin_tables()
        with connection():
            Node.create(name="dest", aet="DEST", host="127.0.0.1", port=port)
        study_uid, sop_uids = archive_instances(pacs, work / "in", args.jobs)
        print("| jobs | routing threads | seconds | jobs/s |")
        print("| ---: | ---: | ---: | ---: |")
        for threads in args.threads:
            elapsed = drain(pacs, study_uid, sop_uids, threads)
            print(f"| {args.jobs} | {threads} | {elapsed:.1f} | {args.jobs / elapsed:.0f} |")
        pacs.database.close_all()
    finally:
        scp.terminate()
        scp.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
