"""Console/API measurements: ZIP streaming (throughput, memory) and study search latency.

Runs in one process: a temporary SQLite home, instances stored through the
archive, the real HTTP server (waitress) on 127.0.0.1, an API token.

    .venv/bin/python bench/console.py [--large 200] [--studies 2000] [--searches 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from pacscore.db import connection  # noqa: E402
from pacscore.models import User  # noqa: E402
from pacscore.server import start_http_server  # noqa: E402
from pacscore.users import ensure_admin  # noqa: E402
from pacscore.web.security import new_api_token  # noqa: E402
from tests.conftest import free_port, new_pacs  # noqa: E402
from tests.dicomgen import dataset_bytes, make_instance  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss_mb()
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.01)


def store(pacs, folder: Path, **attributes) -> None:
    path = make_instance(folder, **attributes)
    with connection():
        result = pacs.archive.store(dataset_bytes(path), ExplicitVRLittleEndian)
    assert result.ok, result
    path.unlink()


def get(url: str, token: str) -> tuple[int, float]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    size = 0
    with urllib.request.urlopen(request) as response:
        while chunk := response.read(1024 * 1024):
            size += len(chunk)
    return size, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large", type=int, default=200, help="instances of 512 KB in the ZIP")
    parser.add_argument("--studies", type=int, default=2000, help="studies to search")
    parser.add_argument("--searches", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pacscore-console-bench-"))
    pacs = new_pacs(work / "home", "sqlite:///index.db")
    with connection():
        ensure_admin("bench-password")
        token = new_api_token(User.get(User.login == "admin"), "bench")
    port = free_port()
    server = start_http_server(pacs, "127.0.0.1", port)
    base = f"http://127.0.0.1:{port}/api/v1"

    big_study, big_series = generate_uid(), generate_uid()
    for number in range(args.large):
        store(pacs, work / "in", study_uid=big_study, series_uid=big_series,
              rows=512, columns=512, instance_number=number)  # fmt: skip
    for number in range(args.studies):
        store(pacs, work / "in", patient_name=f"PATIENT^{number:05d}", patient_id=f"P{number}",
              modality=("CT", "MR", "US")[number % 3])  # fmt: skip

    before = rss_mb()
    monitor = PeakRss()
    monitor.start()
    size, seconds = get(f"{base}/studies/{big_study}/download", token)
    monitor.running = False
    monitor.join()
    print(f"ZIP of {args.large} instances: {size / 1e6:.1f} MB in {seconds:.2f} s "
          f"({size / 1e6 / seconds:.0f} MB/s); process RSS {before:.0f} MB before, "
          f"peak {monitor.peak:.0f} MB during")  # fmt: skip

    queries = ["patient_name=PATIENT*1*", "modalities=MR", "patient_id=P12*", "date_preset=year"]
    for query in queries:
        timings = []
        for _ in range(args.searches):
            _, seconds = get(f"{base}/studies?{query}&page_size=50", token)
            timings.append(seconds * 1000)
        print(f"search {query!r} over {args.studies + 1} studies: median "
              f"{statistics.median(timings):.1f} ms, max {max(timings):.1f} ms")  # fmt: skip
    server.close()


if __name__ == "__main__":
    main()
