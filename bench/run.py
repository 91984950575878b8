#!/usr/bin/env python3
"""pacscore vs Orthanc, same data, same DCMTK clients, same machine, one run.

    .venv/bin/python bench/run.py [--large N] [--small N] [--out DIR]

The script re-executes itself under ``unshare --net`` (a private network
namespace with only ``lo`` up) so neither server listens on a real
interface.  See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import gen  # noqa: E402

VENV_BIN = Path(sys.executable).parent
# PACSCORE_BENCH_CMD="python variant.py" runs another pacscore command line instead
PACSCORE = shlex.split(os.environ.get("PACSCORE_BENCH_CMD", "")) or [str(VENV_BIN / "pacscore")]
# PACSCORE_BENCH_DICOM_PROCESSES=N serves with N DICOM processes (default: pacscore's)
DICOM_PROCESSES = os.environ.get("PACSCORE_BENCH_DICOM_PROCESSES", "")
ORTHANC = "/usr/sbin/Orthanc"
DCMTK = "/usr/bin"  # never the venv's pynetdicom scripts of the same names
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT_AET = "BENCHSCU"
DEST_AET = "BENCHDEST"
DEST_PORT = 11199
WARM = {"small": 20, "large": 5}
FLOOR_FILES = 500  # large files written by the disk-alone measure
# This machine kind's ext4 has no journal: allocating an inode there skips each inode
# deleted in the last 60 seconds, or 360 while its table block is dirty, reading its
# table block.  Right after a server's home was deleted, every file and folder the next
# server created paid for thousands (perf: recently_deleted, find_get_block_common; 540
# against 770 small instances/s on 4 associations).  A `sync` does not shorten the wait:
# the next server's own new inodes dirty those table blocks again (a wait of 65 s still
# left ext4's inode allocation 12% of all CPU samples in a small 4-association cell,
# against 0.8% for a home created far from any deletion).  So a run deletes nothing
# until its end (servers are only stopped, retrieved files overwritten), and a timed
# measure waits until what it deleted first (an earlier run's files) is older than that.
DELETIONS_SETTLE_SECONDS = 365.0
# when the latest deletion of any bench run ended (wall clock), for the next run
DELETION_MARK = HERE / "out" / "last-deletion"

# gen.py's set of the "store after start" cells (small instances, own UIDs)
START_SET = "start-small"
START_FS = {"root": "root fs", "journaled": "journaled ext4"}


def start_cell_name(nassoc: int, fs: str) -> str:
    return f"store after start {nassoc} assoc, {START_FS[fs]}"


# targets shown next to the ratios (pacscore / Orthanc, higher is better)
TARGETS = {
    "store large 1 assoc": 1.5,
    "store large 4 assoc": 1.0,
    "store small 1 assoc": 1.0,
    "store small 4 assoc": 1.0,
    "C-MOVE": 1.0,
    "C-GET": 1.0,
    **{start_cell_name(nassoc, fs): 1.0 for fs in START_FS for nassoc in (1, 4)},
}
RSS_TARGET_MIB = 150
ANALYSIS_MARKER = "<!-- hand-written analysis below: kept by bench/run.py -->"


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def client_env() -> dict:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"  # Debian's DCMTK: otherwise Nagle + delayed ACK, ~40 ms/store
    return env


def dcmtk(tool: str, *args, check=True, capture=False, timeout=3600) -> subprocess.CompletedProcess:
    cmd = [f"{DCMTK}/{tool}", *map(str, args)]
    res = subprocess.run(
        cmd,
        env=client_env(),
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if capture else subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
    if check and res.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:8])}... exited {res.returncode}: "
            f"{(res.stdout or res.stderr or '')[-2000:]}"
        )
    return res


# -- process accounting ---------------------------------------------------------------


def server_pids(pid: int) -> list[int]:
    """The server process and its direct children (pacscore's extra DICOM listeners)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [pid, *map(int, out.stdout.split())]


def note_deletion() -> None:
    """Files were deleted now (see DELETIONS_SETTLE_SECONDS); recorded in a file, so
    that a run started right after another's clean-up waits too."""
    DELETION_MARK.parent.mkdir(parents=True, exist_ok=True)
    DELETION_MARK.write_text(f"{time.time()}\n")


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
        note_deletion()


def settle_deletions() -> None:
    """Sync, then sleep until the latest :func:`remove_tree` costs the next creates nothing."""
    os.sync()
    try:
        last = float(DELETION_MARK.read_text())
    except (OSError, ValueError):
        return
    wait = last + DELETIONS_SETTLE_SECONDS - time.time()
    if wait > 0:
        time.sleep(wait)


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the server's processes."""
    total = 0
    for each in server_pids(pid):
        try:
            with open(f"/proc/{each}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a child that just exited
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def vm_hwm_kib(pid: int) -> int:
    """The largest peak RSS among the server's processes (the target is per process)."""
    peaks = [0]
    for each in server_pids(pid):
        try:
            with open(f"/proc/{each}/status") as f:
                peaks += [int(line.split()[1]) for line in f if line.startswith("VmHWM:")]
        except FileNotFoundError:
            continue
    return max(peaks)


def settle_cpu(pid: int, quiet=0.6, limit=60.0) -> float:
    """Wait until the server stops burning CPU (asynchronous work after the
    last response); return its CPU seconds then."""
    end = time.monotonic() + limit
    last = cpu_seconds(pid)
    while time.monotonic() < end:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now - last < 0.02:
            return now
        last = now
    return last


# -- servers ---------------------------------------------------------------------------


class Server:
    name = "?"
    aet = "?"

    def __init__(self, root: Path, dicom_port: int, http_port: int) -> None:
        self.root = root
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.proc: subprocess.Popen | None = None
        self.logfile = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout=60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}; see {self.root}")
            try:
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                    pass
                res = dcmtk(
                    "echoscu",
                    "-aet",
                    CLIENT_AET,
                    "-aec",
                    self.aet,
                    "127.0.0.1",
                    self.dicom_port,
                    check=False,
                )
                if res.returncode == 0:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout}s")

    def first_echo(self, timeout=120.0) -> float:
        """Seconds from launch until the server first answers C-ECHO (echoscu every 20 ms:
        a modality pushing its backlog the moment the port answers)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}; see {self.root}")
            echo = [CLIENT_AET, "-aec", self.aet, "-to", "5", "127.0.0.1", self.dicom_port]
            if dcmtk("echoscu", "-aet", *echo, check=False).returncode == 0:
                return time.monotonic() - self.launched
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not answer C-ECHO within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.logfile:
            self.logfile.close()
            self.logfile = None

    def destroy(self) -> None:
        """Stop; the home stays until the end of the run (see DELETIONS_SETTLE_SECONDS)."""
        self.stop()


class Pacscore(Server):
    name = "pacscore"
    aet = "PACSCORE"
    db_url = ""  # default: SQLite in the home

    def setup(self) -> None:
        home = self.root

        def run(*a: str) -> None:
            subprocess.run(
                [*PACSCORE, "--home", str(home), *a], check=True, stdout=subprocess.DEVNULL
            )

        run("init", "--aet", self.aet, *(["--db", self.db_url] if self.db_url else []))
        run(
            "node",
            "add",
            "bench",
            "--aet",
            CLIENT_AET,
            "--host",
            "127.0.0.1",
            "--port",
            "11998",
            "--allow",
            "store,find,move,get",
        )
        run(
            "node",
            "add",
            "dest",
            "--aet",
            DEST_AET,
            "--host",
            "127.0.0.1",
            "--port",
            str(DEST_PORT),
            "--allow",
            "store",
        )
        run("settings", "--set", "max_find_results=100000")
        run("storage", "set", "default", "--min-free-mb", "0")

    def start(self, wait: bool = True) -> None:
        # stays open for the server process's lifetime; closed in Server.stop()
        self.logfile = open(self.root / "serve.out", "ab")  # noqa: SIM115
        self.launched = time.monotonic()
        self.proc = subprocess.Popen(
            [
                *PACSCORE,
                "--home",
                str(self.root),
                "serve",
                "--host",
                "127.0.0.1",
                "--aet",
                self.aet,
                "--dicom-port",
                str(self.dicom_port),
                "--http-port",
                str(self.http_port),
                "--hl7-port",
                str(self.http_port + 1),
                *(["--dicom-processes", DICOM_PROCESSES] if DICOM_PROCESSES else []),
            ],
            # the listener processes run `python -m pacscore`, which puts the working
            # folder first on sys.path: the repository's pacscore would shadow PYTHONPATH's
            cwd=self.root,
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()

    def count_instances(self) -> int:
        con = sqlite3.connect(f"file:{self.root / 'index.db'}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT COUNT(*) FROM instance").fetchone()[0]
        finally:
            con.close()


class Orthanc(Server):
    name = "Orthanc"
    aet = "ORTHANC"

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # loopback only anyway (private netns)
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "DicomModalities": {
                "bench": [CLIENT_AET, "127.0.0.1", 11998],
                "dest": [DEST_AET, "127.0.0.1", DEST_PORT],
            },
            "SyncStorageArea": True,  # the default: fsync each file, like pacscore
            "StorageCompression": False,
            "Plugins": [],
        }
        (self.root / "orthanc.json").write_text(json.dumps(config, indent=2))

    def start(self, wait: bool = True) -> None:
        # stays open for the server process's lifetime; closed in Server.stop()
        self.logfile = open(self.root / "orthanc.out", "ab")  # noqa: SIM115
        self.launched = time.monotonic()
        self.proc = subprocess.Popen(
            [ORTHANC, str(self.root / "orthanc.json")],
            env=client_env(),
            cwd=self.root,
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()

    def rest(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=60) as r:
            return json.load(r)

    def count_instances(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])


SERVERS = {"pacscore": (Pacscore, 11112, 18080), "Orthanc": (Orthanc, 4242, 18042)}


def fresh_server(kind: str, out: Path, tag: str) -> Server:
    cls, dport, hport = SERVERS[kind]
    root = out / "homes" / f"{kind}-{tag}"
    remove_tree(root)
    server = cls(root, dport, hport)
    server.setup()
    server.start()
    return server


# -- clients ---------------------------------------------------------------------------


def store(server: Server, dirs: list[Path]) -> float:
    """One storescu per folder, in parallel; return the wall time."""
    procs = []
    t0 = time.perf_counter()
    for d in dirs:
        cmd = [
            f"{DCMTK}/storescu",
            "-aet",
            CLIENT_AET,
            "-aec",
            server.aet,
            "+sd",
            "+r",
            "127.0.0.1",
            str(server.dicom_port),
            str(d),
        ]
        procs.append(
            subprocess.Popen(
                cmd, env=client_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        )
    errors = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            errors.append(f"storescu exited {p.returncode}: {err[-1000:]}")
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError("; ".join(errors))
    return elapsed


def wait_count(server: Server, expected: int, timeout=60.0) -> int:
    end = time.monotonic() + timeout
    n = -1
    while time.monotonic() < end:
        n = server.count_instances()
        if n >= expected:
            return n
        time.sleep(0.5)
    return n


def query_args(query: dict) -> list[str]:
    args = []
    for key, value in query.items():
        args += ["-k", f"{key}={value}" if value is not None else key]
    return args


STUDY_RETURN_KEYS = {
    "PatientName": None,
    "PatientID": None,
    "PatientBirthDate": None,
    "StudyDate": None,
    "StudyTime": None,
    "AccessionNumber": None,
    "StudyDescription": None,
    "ModalitiesInStudy": None,
    "StudyInstanceUID": None,
}


def find_queries() -> dict[str, dict]:
    common = {"QueryRetrieveLevel": "STUDY", **STUDY_RETURN_KEYS}
    return {
        "C-FIND exact PatientID": {**common, "PatientID": gen.first_patient_id("large")},
        "C-FIND PatientName wildcard": {**common, "PatientName": "SMI*"},
        "C-FIND StudyDate range": {**common, "StudyDate": "20150101-20161231"},
        "C-FIND all studies": common,
    }


def findscu(server: Server, query: dict, repeat: int, verbose=False) -> tuple[float, str]:
    args = ["-S", "-aet", CLIENT_AET, "-aec", server.aet]
    if verbose:
        args.append("-v")
    if repeat > 1:
        args += ["--repeat", repeat]
    args += query_args(query) + ["127.0.0.1", server.dicom_port]
    t0 = time.perf_counter()
    res = dcmtk("findscu", *args, capture=True)
    return time.perf_counter() - t0, res.stdout


def find_cell(server: Server, query: dict, repeat: int) -> tuple[float, int, float]:
    """(ms per query, matches, server CPU ms per query): (T(repeat) - T(1)) / (repeat - 1),
    which leaves out process start and association set-up; median of 3."""
    _, out = findscu(server, query, 1, verbose=True)
    matches = out.count("Find Response:")  # pending responses; the final one has no colon
    findscu(server, query, 5)  # warm
    per_query, cpu_per_query = [], []
    for _ in range(3):
        t1, _ = findscu(server, query, 1)
        c0 = cpu_seconds(server.pid)
        tn, _ = findscu(server, query, repeat)
        c1 = cpu_seconds(server.pid)
        per_query.append((tn - t1) / (repeat - 1) * 1000)
        cpu_per_query.append((c1 - c0) / repeat * 1000)
    return statistics.median(per_query), matches, statistics.median(cpu_per_query)


class Destination:
    """storescp, the C-MOVE destination."""

    def __init__(self, folder: Path, discard: bool = False) -> None:
        self.folder = folder
        self.discard = discard  # storescp --ignore: receive every byte, write nothing
        self.proc = None
        self.aet, self.dicom_port = DEST_AET, DEST_PORT  # a store() target like a Server

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                f"{DCMTK}/storescp",
                "-aet",
                DEST_AET,
                "--max-pdu",
                "131072",
                *(["--ignore"] if self.discard else ["-od", str(self.folder)]),
                str(DEST_PORT),
            ],
            env=client_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", DEST_PORT), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("storescp did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait()


def clear(folder: Path) -> None:
    remove_tree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def disk_alone(files: list[Path], folder: Path) -> float:
    """Files a second this process writes and fsyncs, one by one, in the archive layout.

    What a server storing these files on this disk can at best do on one
    association: each file in a new ``<aa>/<bb>/`` folder named by a SHA-256,
    as pacscore and Orthanc lay them out, fsynced before the next.
    """
    clear(folder)
    contents = [f.read_bytes() for f in files]
    settle_deletions()
    t0 = time.perf_counter()
    for i, data in enumerate(contents):
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        subfolder = folder / digest[:2] / digest[2:4]
        subfolder.mkdir(parents=True, exist_ok=True)
        fd = os.open(subfolder / digest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    # kept until the end of the run: deleting 260 MB here (TRIM on a disk mounted with
    # discard) would slow the cell that follows, not the other server's
    return len(contents) / (time.perf_counter() - t0)


def measure_floors(files_folder: Path, out: Path, before: bool) -> dict[str, float]:
    """Disk alone before and after the large 1-association cell, the client alone once."""
    files = sorted(f for f in files_folder.rglob("*") if f.is_file())
    when = "before" if before else "after"
    floors = {f"disk {when}": disk_alone(files[:FLOOR_FILES], out / f"disk-alone-{when}")}
    log(f"{'disk alone (' + when + ')':26s} {floors[f'disk {when}']:8.1f} files/s")
    if before:
        floors["client"] = client_alone(files_folder, len(files), out)
        log(f"{'storescu alone':26s} {floors['client']:8.1f} inst/s")
    return floors


def client_alone(files_folder: Path, count: int, out: Path) -> float:
    """Instances a second one storescu sends (the ``count`` files of ``files_folder``) to a
    storescp that discards them."""
    sink = Destination(out / "recv-discard", discard=True)
    sink.start()
    try:
        return count / store(sink, [files_folder])
    finally:
        sink.stop()


def retrieve_cell(
    server: Server, op: str, study_uids: list[str], expected: int, recv: Path, runs: int = 3
) -> tuple[float, float]:
    """(instances/s, server CPU ms/instance), median of ``runs``.

    One C-MOVE / C-GET at STUDY level whose StudyInstanceUID is a list of UIDs
    (getscu 3.6.7 segfaults after several query files in one invocation)."""
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=" + "\\".join(study_uids)]
    rates, cpus = [], []
    recv.mkdir(parents=True, exist_ok=True)
    for _ in range(runs):
        settle_deletions()
        c0 = cpu_seconds(server.pid)
        started = time.time() - 1  # file times are coarser than the clock
        t0 = time.perf_counter()
        if op == "move":
            dcmtk(
                "movescu",
                "-S",
                "-aet",
                CLIENT_AET,
                "-aec",
                server.aet,
                "-aem",
                DEST_AET,
                *keys,
                "127.0.0.1",
                server.dicom_port,
            )
        else:
            dcmtk(
                "getscu",
                "-S",
                "-aet",
                CLIENT_AET,
                "-aec",
                server.aet,
                "--max-pdu",
                "131072",
                "-od",
                recv,
                *keys,
                "127.0.0.1",
                server.dicom_port,
            )
        elapsed = time.perf_counter() - t0
        cpu = settle_cpu(server.pid, quiet=0.3) - c0
        # same names each run: the files are overwritten, never deleted
        got = sum(1 for f in recv.iterdir() if f.stat().st_mtime >= started)
        if got != expected:
            raise RuntimeError(f"{server.name} C-{op.upper()}: received {got}, expected {expected}")
        rates.append(expected / elapsed)
        cpus.append(cpu / expected * 1000)
    return statistics.median(rates), statistics.median(cpus)


# -- the benchmark ---------------------------------------------------------------------


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    osname = "?"
    with contextlib.suppress(OSError):
        osname = platform.freedesktop_os_release().get("PRETTY_NAME", "?")
    return (
        f"nproc {os.cpu_count()}, CPU {cpu}, RAM {mem:.0f} GiB, {osname}, "
        f"kernel {platform.release()}"
    )


def versions() -> str:
    orth = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True).stdout.split(
        "\n"
    )[0]
    dcm = subprocess.run([f"{DCMTK}/storescu", "--version"], capture_output=True, text=True).stdout
    dcm = next((line for line in dcm.splitlines() if "$dcmtk" in line), "?")
    dcm = dcm.strip(" $").split(": ", 1)[-1]
    from importlib.metadata import version

    py = (
        f"pacscore {version('pacscore')}, pynetdicom {version('pynetdicom')}, "
        f"pydicom {version('pydicom')}, peewee {version('peewee')}, "
        f"Python {platform.python_version()}"
    )
    return f"{py}; {orth.strip()}; DCMTK {dcm} (Debian)"


def store_cell(
    server: Server, warm_dirs: list[Path], n_warm: int, dirs: list[Path], n: int
) -> tuple[float, float]:
    """Warm ``server`` up, then time the store of ``dirs``; (instances/s, CPU ms/instance)."""
    store(server, warm_dirs)
    if wait_count(server, n_warm) != n_warm:
        raise RuntimeError(f"{server.name}: warm-up not stored")
    settle_deletions()  # nothing left to write, nor recently deleted
    settle_cpu(server.pid)
    c0 = cpu_seconds(server.pid)
    elapsed = store(server, dirs)
    c1 = settle_cpu(server.pid)
    stored = wait_count(server, n_warm + n) - n_warm
    if stored != n:
        raise RuntimeError(f"{server.name}: {stored} stored, expected {n}")
    return n / elapsed, (c1 - c0) / n * 1000


def query_retrieve(
    server: Server, stored: int, sets: dict, counts: dict, args, destination: Destination, out: Path
) -> dict[str, dict]:
    """The C-FIND, C-MOVE and C-GET cells, on the archive of a large-4 store cell plus
    the small set (stored untimed): cell -> its values (and ``matches`` for C-FIND)."""
    name = server.name
    cells: dict[str, dict] = {}
    store(server, sets["small"])
    total = stored + counts["small"]
    if wait_count(server, total) != total:
        raise RuntimeError(f"{name}: small set for Q/R not stored")
    settle_cpu(server.pid)
    for qname, query in find_queries().items():
        ms, matches, cpu = find_cell(server, query, args.find_repeat)
        cells[qname] = {"rate": ms, "cpu": cpu, "unit": "ms/query", "matches": matches}
        log(f"{qname:26s} {name:8s} {ms:8.2f} ms/query ({matches} matches) CPU {cpu:.2f} ms/query")
    studies, total_r, last_k = [], 0, 0
    for uid, k in gen.studies_of("large", "large", counts["large"]):
        if total_r >= args.retrieve:
            break
        studies.append(uid)
        total_r += k
        last_k = k
    destination.start()
    try:
        # warm-up retrieve of one study
        retrieve_cell(server, "move", studies[-1:], last_k, out / "recv-move", 1)
        rate, cpu = retrieve_cell(server, "move", studies, total_r, out / "recv-move")
    finally:
        destination.stop()
    cells["C-MOVE"] = {"rate": rate, "cpu": cpu, "unit": "inst/s", "n": total_r}
    log(f"{'C-MOVE':26s} {name:8s} {rate:8.1f} inst/s ({total_r} large) CPU {cpu:.2f} ms/inst")
    rate, cpu = retrieve_cell(server, "get", studies, total_r, out / "recv-get")
    cells["C-GET"] = {"rate": rate, "cpu": cpu, "unit": "inst/s", "n": total_r}
    log(f"{'C-GET':26s} {name:8s} {rate:8.1f} inst/s ({total_r} large) CPU {cpu:.2f} ms/inst")
    return cells


# -- store right after start ------------------------------------------------------------


@contextlib.contextmanager
def journaled_ext4(out: Path, size: str):
    """A fresh ext4 with a journal (a loop image under ``out``), mounted; its folder.

    The root file system of this machine kind has no journal (see SPEC.md section 7);
    the inode tables and the journal are written by mkfs, so that no lazy
    initialisation thread writes to the disk during a measure.  Unmounted and deleted
    at the end.
    """
    base = Path(tempfile.mkdtemp(prefix="journaled-", dir=out))
    image, mount = base / "ext4.img", base / "mnt"
    mount.mkdir()
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-O", "has_journal",
         "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)],
        check=True,
    )  # fmt: skip
    features = subprocess.run(
        ["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True
    ).stdout
    if "has_journal" not in features:
        raise RuntimeError(f"{image}: mkfs.ext4 made no journal")
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    log(f"journaled ext4 ({size}) mounted on {mount}")
    try:
        yield mount
    finally:
        os.sync()
        if subprocess.run(["umount", str(mount)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)])
        shutil.rmtree(base, ignore_errors=True)
        note_deletion()


def store_after_start(
    kind: str, homes: Path, tag: str, dirs: list[Path], n: int, root_fs: bool
) -> dict[str, float]:
    """A fresh server on a home under ``homes``, stored ``n`` instances as soon as it
    first answers C-ECHO: its rate, CPU ms/instance (both from that echo) and the
    seconds from launch to that echo."""
    cls, dport, hport = SERVERS[kind]
    server = cls(homes / f"{kind}-{tag}", dport, hport)
    server.setup()
    if root_fs:
        settle_deletions()  # the root fs's inode allocation after deletions (see above)
    else:
        os.sync()
    server.start(wait=False)
    try:
        to_echo = server.first_echo()
        c0 = cpu_seconds(server.pid)
        elapsed = store(server, dirs)
        c1 = settle_cpu(server.pid)
        stored = wait_count(server, n)
    finally:
        server.destroy()
    if stored != n:
        raise RuntimeError(f"{server.name}: {stored} stored, expected {n}")
    return {"rate": n / elapsed, "cpu": (c1 - c0) / n * 1000, "echo_s": to_echo}


def start_cells(args, out: Path, servers: list[str], dirs: list[Path], record) -> dict:
    """The "store right after start" cells: per file system, 1 and 4 associations,
    ``--rounds`` rounds of a fresh server per side.  Returns cell -> server -> the
    seconds from launch to the first C-ECHO answer, per round."""
    echo_times: dict[str, dict[str, list[float]]] = {}
    for fs in args.start_fs:
        with contextlib.ExitStack() as stack:
            if fs == "journaled":
                homes = stack.enter_context(journaled_ext4(out, args.journaled_size)) / "homes"
            else:
                homes = out / "homes"
            for nassoc in (1, 4):
                cell = start_cell_name(nassoc, fs)
                rounds: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
                for round_number in range(args.rounds):
                    for name in servers:
                        tag = f"start-{fs}-{nassoc}-r{round_number}"
                        got = store_after_start(
                            name, homes, tag, dirs[:1] if nassoc == 1 else dirs[1:],
                            args.start_count, root_fs=fs == "root",
                        )  # fmt: skip
                        rounds[name].append(got)
                        log(
                            f"{cell:26s} {name:8s} {got['rate']:8.1f} inst/s  round "
                            f"{round_number + 1}  CPU {got['cpu']:.2f} ms/inst  first echo "
                            f"{got['echo_s']:.2f} s after launch"
                        )
                for name in servers:
                    each = rounds[name]
                    record(
                        cell,
                        name,
                        rate=statistics.median(r["rate"] for r in each),
                        cpu=statistics.median(r["cpu"] for r in each),
                        unit="inst/s",
                        rounds=[r["rate"] for r in each],
                    )
                    echo_times.setdefault(cell, {})[name] = [r["echo_s"] for r in each]
    return echo_times


def start_data(data: Path, count: int) -> list[Path]:
    """The start cells' instances: ``[all of them, part0, ..., part3]``."""
    folder = data / START_SET
    remove_tree(folder)
    return [folder, *gen.generate(folder, START_SET, "small", count)]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--large", type=int, default=4000, help="large instances per store cell")
    ap.add_argument("--small", type=int, default=4000, help="small instances per store cell")
    ap.add_argument("--out", type=Path, default=HERE / "out", help="work folder (data, homes)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per store cell (median reported)")
    ap.add_argument("--retrieve", type=int, default=300, help="instances per C-MOVE/C-GET")
    ap.add_argument("--find-repeat", type=int, default=50, help="C-FIND queries per association")
    ap.add_argument("--report", type=Path, default=REPO / "docs" / "performance.md")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    ap.add_argument("--keep-data", action="store_true", help="keep the generated data")
    ap.add_argument("--only", choices=["pacscore", "Orthanc"], help="run one server only")
    ap.add_argument(
        "--start-only",
        action="store_true",
        help="run only the 'store after start' cells (report: OUT/start-report.md unless "
        "--report is given)",
    )
    ap.add_argument(
        "--start-count", type=int, default=1000, help="small instances per 'store after start' cell"
    )
    ap.add_argument(
        "--start-fs",
        nargs="+",
        choices=list(START_FS),
        default=list(START_FS),
        help="file systems of the 'store after start' cells' homes (default: both)",
    )
    ap.add_argument("--journaled-size", default="8G", help="size of the journaled ext4 loop image")
    args = ap.parse_args()
    report_given = any(a == "--report" or a.startswith("--report=") for a in sys.argv[1:])
    argv_shown = ".venv/bin/python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    if os.environ.get("PACSCORE_BENCH_NETNS") != "1":
        env = dict(os.environ, PACSCORE_BENCH_NETNS="1", PACSCORE_BENCH_ARGV=argv_shown)
        cmd = [
            "unshare",
            "--net",
            "--",
            sys.executable,
            str(Path(__file__).resolve()),
            *sys.argv[1:],
        ]
        return subprocess.call(cmd, env=env)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    argv_shown = os.environ.get("PACSCORE_BENCH_ARGV", argv_shown)

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    started = dt.datetime.now()
    log(f"machine: {machine()}")

    servers = [args.only] if args.only else ["pacscore", "Orthanc"]
    if args.start_only:
        report = args.report if report_given else out / "start-report.md"
        return run_start_only(args, out, servers, argv_shown, started, report)

    # -- data ------------------------------------------------------------------
    t0 = time.perf_counter()
    sets = {}
    for set_name, kind, count in [
        ("large", "large", args.large),
        ("small", "small", args.small),
        ("warm-large", "large", WARM["large"]),
        ("warm-small", "small", WARM["small"]),
    ]:
        folder = data / set_name
        remove_tree(folder)
        sets[set_name] = gen.generate(folder, set_name, kind, count)
    size_large = os.path.getsize(next(sets["large"][0].iterdir()))
    size_small = os.path.getsize(next(sets["small"][0].iterdir()))
    log(
        f"generated data in {time.perf_counter() - t0:.0f}s: "
        f"large {size_large} B, small {size_small} B"
    )
    start_dirs = start_data(data, args.start_count)
    warm_dirs = [data / "warm-large", data / "warm-small"]
    n_warm = WARM["large"] + WARM["small"]

    results: dict[str, dict[str, dict]] = {}  # cell -> server -> {rate, cpu, unit, ...}
    rss: dict[str, list[tuple[str, int]]] = {s: [] for s in servers}
    find_matches: dict[str, dict[str, int]] = {}

    def record(cell, server_name, **values):
        results.setdefault(cell, {})[server_name] = values

    store_cells = [("small", 1), ("small", 4), ("large", 1), ("large", 4)]
    counts = {"large": args.large, "small": args.small}
    destination = Destination(out / "recv-move")
    floors: dict[str, float] = {}  # what the disk and the client allow, large on 1 assoc
    for kind, nassoc in store_cells:
        cell = f"store {kind} {nassoc} assoc"
        n = counts[kind]
        dirs = [data / kind] if nassoc == 1 else sets[kind]
        if (kind, nassoc) == ("large", 1):
            floors = measure_floors(data / "large", out, before=True)
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
        peaks: dict[str, int] = dict.fromkeys(servers, 0)
        for round_number in range(args.rounds):
            for name in servers:
                server = fresh_server(name, out, f"{kind}{nassoc}-r{round_number}")
                try:
                    rate, cpu = store_cell(server, warm_dirs, n_warm, dirs, n)
                    rounds[name].append((rate, cpu))
                    log(
                        f"{cell:26s} {name:8s} {rate:8.1f} inst/s  round {round_number + 1}  "
                        f"CPU {cpu:.2f} ms/inst"
                    )
                    if (kind, nassoc) == ("large", 4) and round_number == args.rounds - 1:
                        qr = query_retrieve(
                            server, n_warm + n, sets, counts, args, destination, out
                        )
                        for qr_cell, values in qr.items():
                            if "matches" in values:
                                find_matches.setdefault(qr_cell, {})[name] = values.pop("matches")
                            record(qr_cell, name, **values)
                    peaks[name] = max(peaks[name], vm_hwm_kib(server.pid))
                finally:
                    server.destroy()
        for name in servers:
            record(
                cell,
                name,
                rate=statistics.median(r for r, _ in rounds[name]),
                cpu=statistics.median(c for _, c in rounds[name]),
                unit="inst/s",
                rounds=[r for r, _ in rounds[name]],
            )
            rss[name].append((cell, peaks[name]))
        if (kind, nassoc) == ("large", 1):
            floors.update(measure_floors(data / "large", out, before=False))

    echo_times = start_cells(args, out, servers, start_dirs, record)

    profile_note = ""
    if not args.no_profile and "pacscore" in servers and shutil.which("py-spy", path=str(VENV_BIN)):
        profile_note = profile_pacscore(out, sets, warm_dirs, n_warm, counts["small"])

    for folder in ("recv-move", "recv-get", "disk-alone-before", "disk-alone-after"):
        remove_tree(out / folder)
    if not args.keep_data:
        remove_tree(data)
        remove_tree(out / "homes")

    report = render(
        results,
        rss,
        find_matches,
        argv_shown,
        started,
        args,
        size_large,
        size_small,
        profile_note,
        servers,
        floors,
        echo_times,
    )
    print(report)
    if args.report:
        write_report(args.report, report)
    (out / "results.json").write_text(
        json.dumps(
            {
                "results": results,
                "rss_kib": rss,
                "find_matches": find_matches,
                "first_echo_s": echo_times,
            },
            indent=2,
        )
    )
    return 0


def write_report(path: Path, report: str) -> None:
    """Write ``report``; hand-written notes below the marker survive a re-run."""
    kept = ""
    if path.exists() and ANALYSIS_MARKER in path.read_text():
        kept = path.read_text().split(ANALYSIS_MARKER, 1)[1]
    path.write_text(report + "\n" + ANALYSIS_MARKER + kept if kept else report)
    log(f"report written to {path}")


def run_start_only(args, out: Path, servers: list[str], argv_shown: str, started, report: Path):
    """``--start-only``: the "store after start" cells alone, with their own report."""
    data = out / "data"
    dirs = start_data(data, args.start_count)
    size = os.path.getsize(next(dirs[1].iterdir()))
    results: dict[str, dict[str, dict]] = {}

    def record(cell, server_name, **values):
        results.setdefault(cell, {})[server_name] = values

    echo_times = start_cells(args, out, servers, dirs, record)
    if not args.keep_data:
        remove_tree(data)
        remove_tree(out / "homes")
    rows, verdicts = table_rows(results, {}, servers, start_cell_names())
    missed = [cell for cell, ok in verdicts if not ok]
    lines = [
        "# Store right after start: pacscore vs Orthanc",
        "",
        f"Generated by `bench/run.py --start-only` on {started:%Y-%m-%d %H:%M} "
        f"(took {(dt.datetime.now() - started).total_seconds() / 60:.0f} min).",
        "",
        f"- Command: `{argv_shown}`",
        f"- Machine: {machine()}",
        f"- Software: {versions()}",
        f"- Data: {args.start_count} small instances (MR 64x64x16, {size} B), explicit VR "
        "little endian; Debian's DCMTK storescu with `TCP_NODELAY=1`; loopback in a private "
        "network namespace.",
        "",
        *TABLE_HEAD,
        *rows,
        *round_lines(results, servers),
        *start_lines(echo_times, servers),
        "",
        f"Targets met: {len(verdicts) - len(missed)}/{len(verdicts)}"
        + (f"; missed: {', '.join(missed)}." if missed else "."),
        "",
        "## Method",
        "",
        start_method(args),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_report(report, text)
    (out / "results-start.json").write_text(
        json.dumps({"results": results, "first_echo_s": echo_times}, indent=2)
    )
    return 0


# -- profiling --------------------------------------------------------------------------


def profile_pacscore(out: Path, sets, warm_dirs, n_warm: int, n: int) -> str:
    """py-spy on pacscore during a small-instance store on 1 association (not a measured cell)."""
    raw = out / "profile-small-store.txt"
    svg = out / "profile-small-store.svg"
    server = fresh_server("pacscore", out, "profile")
    try:
        store(server, warm_dirs)
        wait_count(server, n_warm)
        settle_cpu(server.pid)
        spy = subprocess.Popen(
            [
                str(VENV_BIN / "py-spy"),
                "record",
                "--pid",
                str(server.pid),
                "--subprocesses",  # the extra DICOM listener processes
                "--rate",
                "200",
                "--format",
                "raw",
                "--threads",
                "--nonblocking",
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.5)
        elapsed = store(server, [out / "data" / "small"])
        settle_cpu(server.pid)
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        # a flame graph too, on a shorter second pass (another fresh server)
    finally:
        server.destroy()
    server = fresh_server("pacscore", out, "profile-svg")
    try:
        store(server, warm_dirs)
        wait_count(server, n_warm)
        spy = subprocess.Popen(
            [
                str(VENV_BIN / "py-spy"),
                "record",
                "--pid",
                str(server.pid),
                "--subprocesses",  # the extra DICOM listener processes
                "--rate",
                "200",
                "--nonblocking",
                "-o",
                str(svg),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.5)
        store(server, [out / "data" / "small"])
        settle_cpu(server.pid)
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    finally:
        server.destroy()
    log(f"profiled small store: {n / elapsed:.1f} inst/s under py-spy; {raw}, {svg}")
    return summarize_profile(raw, n / elapsed)


def summarize_profile(raw: Path, rate: float) -> str:
    if not raw.exists():
        return "py-spy produced no profile.\n"
    total = 0
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    threads: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = stack.split(";")
        process = ""
        while frames and frames[0].startswith("process "):  # --subprocesses: parent, child
            process = "listener: " if "dicom-listener" in frames[0] else "main: "
            frames = frames[1:]
        if not frames:
            continue
        thread = re.sub(r"\(\d+\)|@\d+", "", frames[0]).replace("thread : ", "").strip()
        thread = process + thread
        threads[thread] = threads.get(thread, 0) + c
        funcs = [
            f.split(" (", 1)[0] + " (" + f.split(" (", 1)[1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in frames[1:]
        ]
        if funcs:
            self_t[funcs[-1]] = self_t.get(funcs[-1], 0) + c
        for f in set(funcs):
            incl[f] = incl.get(f, 0) + c
    if not total:
        return "py-spy produced no samples.\n"

    def table(d, k):
        rows = ["| share | function (file) |", "|---:|---|"]
        for f, c in sorted(d.items(), key=lambda x: -x[1])[:k]:
            rows.append(f"| {100 * c / total:.1f}% | `{f}` |")
        return "\n".join(rows)

    th = "\n".join(
        f"| {100 * c / total:.1f}% | {t} |"
        for t, c in sorted(threads.items(), key=lambda x: -x[1])[:6]
    )
    return (
        f"{total} non-idle samples at 200 Hz; store rate under py-spy {rate:.1f} inst/s.\n\n"
        f"By thread:\n\n| share | thread |\n|---:|---|\n{th}\n\n"
        f"Self time (where the CPU is when sampled):\n\n{table(self_t, 20)}\n\n"
        f"Inclusive time (function on the stack):\n\n{table(incl, 30)}\n"
    )


# -- report ------------------------------------------------------------------------------


def rate_text(v, unit) -> str:
    return f"{v['rate']:.2f} {unit}" if unit == "ms/query" else f"{v['rate']:.1f} {unit}"


def cpu_text(v, unit) -> str:
    return f"{v['cpu']:.2f} {unit}" if v else "-"


def floor_lines(floors: dict[str, float], orthanc: dict | None) -> list[str]:
    """What the disk and the client allow on one association, as rates and x Orthanc."""
    if "client" not in floors:
        return []
    disk = statistics.mean(v for k, v in floors.items() if k.startswith("disk"))
    ceiling = 1 / (1 / disk + 1 / floors["client"])

    def times(rate: float) -> str:
        return f"{rate / orthanc['rate']:.2f}x" if orthanc else "-"

    disks = " / ".join(f"{v:.1f}" for k, v in floors.items() if k.startswith("disk"))
    return [
        "",
        "What this machine allows for `store large 1 assoc`: an association is strictly "
        "one instance after the other (storescu sends it, the server writes and fsyncs it, "
        "answers, then storescu sends the next), so its rate is at best that of the disk "
        "and the client one after the other:",
        "",
        "| measure | rate | x Orthanc's rate |",
        "|---|---:|---:|",
        f"| disk alone: the bench writes and fsyncs (up to) {FLOOR_FILES} of the large files, each "
        f"in a new `<aa>/<bb>/` folder (before / after the cell) | {disks} files/s "
        f"| {times(disk)} |",
        f"| client alone: storescu to a storescp that discards them | "
        f"{floors['client']:.1f} inst/s | {times(floors['client'])} |",
        f"| ceiling: both one after the other, 1 / (1/disk + 1/client) | {ceiling:.1f} inst/s "
        f"| {times(ceiling)} |",
    ]


def round_lines(results: dict, servers: list[str]) -> list[str]:
    """Each store cell's rounds: the rates whose medians the table above gives, and the
    ratio of each round (the two servers one after the other)."""
    lines = [
        "",
        "Store rounds (inst/s; in each round every server stores the same data on a fresh "
        "home, one after the other; the table above gives the medians):",
        "",
        "| cell | " + " | ".join(servers) + (" | ratio per round |" if len(servers) > 1 else ""),
        "|---|" + "---:|" * len(servers) + ("---:|" if len(servers) > 1 else ""),
    ]
    for cell, by_server in results.items():
        if not all("rounds" in by_server.get(name, {}) for name in servers):
            continue
        rates = [by_server[name]["rounds"] for name in servers]
        row = [cell, *(" / ".join(f"{r:.1f}" for r in server_rates) for server_rates in rates)]
        if len(servers) > 1:
            row.append(" / ".join(f"{p / o:.2f}x" for p, o in zip(rates[0], rates[1], strict=True)))
        lines.append("| " + " | ".join(row) + " |")
    return lines


TABLE_HEAD = [
    "Rates: higher is better for inst/s, lower for ms/query. Ratio = pacscore / Orthanc "
    "expressed so that > 1 means pacscore is better (Orthanc ms / pacscore ms for C-FIND).",
    "",
    "| cell | pacscore | Orthanc | ratio | target | pacscore CPU | Orthanc CPU |",
    "|---|---:|---:|---:|---|---:|---:|",
]


def start_cell_names() -> list[str]:
    return [start_cell_name(nassoc, fs) for fs in START_FS for nassoc in (1, 4)]


def table_rows(results, find_matches, servers, order) -> tuple[list[str], list]:
    """The main table's rows of the cells of ``order`` that were measured, and
    (cell, target met) for those with a target."""
    lines, verdicts = [], []
    for cell in order:
        if cell not in results:
            continue
        r = results[cell]
        p, o = r.get("pacscore"), r.get("Orthanc")
        unit = (p or o or {}).get("unit", "")
        cpu_unit = "ms/query" if unit == "ms/query" else "ms/inst"
        ratio = ""
        target = ""
        if p and o:
            value = o["rate"] / p["rate"] if unit == "ms/query" else p["rate"] / o["rate"]
            ratio = f"{value:.2f}x"
            goal = TARGETS.get(cell, 1.0 if unit == "ms/query" else None)
            if goal is not None:
                ok = value >= goal
                target = f">= {goal:.1f}x {'met' if ok else '**missed**'}"
                verdicts.append((cell, ok))
        label = cell
        if cell in ("C-MOVE", "C-GET"):
            label = f"{cell} {(p or o)['n']} large inst"
        if cell in find_matches:
            m = find_matches[cell]
            label += f" ({'/'.join(str(m[s]) for s in servers)} matches)"
            if len(set(m.values())) > 1:
                label += " **results differ**"
        lines.append(
            f"| {label} | {rate_text(p, unit) if p else '-'} | "
            f"{rate_text(o, unit) if o else '-'} | {ratio} | {target} | "
            f"{cpu_text(p, cpu_unit)} | {cpu_text(o, cpu_unit)} |"
        )
    return lines, verdicts


def start_lines(echo_times: dict, servers: list[str]) -> list[str]:
    """How long each fresh server of the start cells took to first answer C-ECHO."""
    if not echo_times:
        return []
    lines = [
        "",
        "Store after start: seconds from each fresh server's launch to its first C-ECHO "
        "answer, per round (the store starts then; the rates above are from that moment):",
        "",
        "| cell | " + " | ".join(servers) + " |",
        "|---|" + "---:|" * len(servers),
    ]
    for cell, by_server in echo_times.items():
        row = [" / ".join(f"{t:.2f}" for t in by_server[name]) for name in servers]
        lines.append(f"| {cell} | " + " | ".join(row) + " |")
    return lines


def start_method(args) -> str:
    return (
        f"- Store after start: a **fresh server** per round and side ({args.rounds} rounds), "
        "without any warm-up: launched, polled with echoscu every 20 ms, and as soon as it "
        f"first answers C-ECHO sent {args.start_count} small instances (own UIDs): one storescu "
        "with all of them, or four in parallel with a quarter each; the rate runs from that "
        "first answer to the last storescu's exit, the CPU from that answer until the server "
        "is idle again. It measures what a modality pushing its backlog the moment a "
        "restarted server's port answers gets. Run on the root file system (ext4 without a "
        "journal; after the wait for earlier deletions) and on a journaled ext4 made for the "
        f"run (a loop image of {args.journaled_size} under the work folder, inode tables and "
        "journal initialised by mkfs, deleted at the end); the generated instances stay on "
        "the root file system."
    )


def render(
    results,
    rss,
    find_matches,
    argv_shown,
    started,
    args,
    size_large,
    size_small,
    profile_note,
    servers,
    floors,
    echo_times,
) -> str:
    lines = [
        "# Performance: pacscore vs Orthanc",
        "",
        f"Generated by `bench/run.py` on {started:%Y-%m-%d %H:%M} "
        f"(took {(dt.datetime.now() - started).total_seconds() / 60:.0f} min).",
        "",
        f"- Command: `{argv_shown}`",
        f"- Machine: {machine()}",
        f"- Software: {versions()}",
        f"- Data: {args.large} large instances (CT 512x512x16, {size_large} B) and {args.small} "
        f"small (MR 64x64x16, {size_small} B), explicit VR little endian; clients are Debian's "
        "DCMTK (storescu, findscu, movescu, getscu, storescp) with `TCP_NODELAY=1`; all on "
        "loopback in a private network namespace.",
        "",
        *TABLE_HEAD,
    ]
    order = [
        "store large 1 assoc",
        "store large 4 assoc",
        "store small 1 assoc",
        "store small 4 assoc",
        *start_cell_names(),
        *find_queries().keys(),
        "C-MOVE",
        "C-GET",
    ]
    rows, verdicts = table_rows(results, find_matches, servers, order)
    lines += rows
    lines += round_lines(results, servers)
    lines += start_lines(echo_times, servers)
    lines += [
        "",
        "Peak RSS (the largest VmHWM among the server's processes, sampled at the end of "
        "each server's life; a fresh server per store cell, the last one also served "
        "the Q/R cells):",
        "",
        "| server | " + " | ".join(c for c, _ in next(iter(rss.values()))) + " | max | target |",
        "|---|" + "---:|" * (len(next(iter(rss.values()))) + 1) + "---|",
    ]
    for name, samples in rss.items():
        peak = max(k for _, k in samples) / 1024
        target = (
            f"< {RSS_TARGET_MIB} MiB " + ("met" if peak < RSS_TARGET_MIB else "**missed**")
            if name == "pacscore"
            else ""
        )
        lines.append(
            f"| {name} | "
            + " | ".join(f"{k / 1024:.0f} MiB" for _, k in samples)
            + f" | {peak:.0f} MiB | {target} |"
        )
    lines += floor_lines(floors, results.get("store large 1 assoc", {}).get("Orthanc"))
    if verdicts:
        missed = [c for c, ok in verdicts if not ok]
        lines += [
            "",
            f"Targets met: {len(verdicts) - len(missed)}/{len(verdicts)}"
            + (f"; missed: {', '.join(missed)}." if missed else "."),
        ]
    lines += [
        "",
        "## Method",
        "",
        f"- Each store cell runs {args.rounds} rounds; in each, every server in turn stores "
        "the same data on a **fresh server** (new home / storage / index); the table gives "
        "the median rate and CPU of the rounds, and the rounds follow it. This machine's "
        "speed drifts by up to 30% from one minute to the next: rounds taken in turn "
        "expose both servers to the same drift. Each fresh server stores a "
        f"warm-up set ({WARM['large']} large + {WARM['small']} small instances, own UIDs), "
        "runs `sync`, then times the storescu process(es) from launch to exit: 1 association = one "
        "storescu with every file, 4 associations = four storescu in parallel on a quarter "
        "each. The stored count is checked afterwards (no duplicates are measured).",
        "- Nothing is deleted during a run (homes go at its end, retrieved files are "
        "overwritten), and a timed measure starts at least "
        f"{DELETIONS_SETTLE_SECONDS:.0f} s after an earlier run's files were deleted: on ext4 "
        "without a journal, each new inode otherwise costs a scan of the inodes deleted in the "
        "last 6 minutes (see `DELETIONS_SETTLE_SECONDS`).",
        "- Server CPU = utime+stime of the server's processes (all threads; pacscore's "
        "extra DICOM listeners included) from "
        "/proc/PID/stat, read before the cell and after the server goes idle again "
        "(so asynchronous post-store work is included), divided by the instance count.",
        "- C-FIND: study root, STUDY level, 9 return keys; `findscu --repeat N` in one "
        "association; ms/query = (T(N) - T(1)) / (N - 1), median of 3, so process start "
        f"and association set-up are excluded (N = {args.find_repeat}). Run against the "
        "archive of the `store large 4 assoc` cell plus the small set "
        "(untimed), i.e. large+small instances, warm-up included.",
        "- C-MOVE: movescu (study root, one C-MOVE at STUDY level with a list of Study UIDs) to a "
        "storescp started by the bench; C-GET: getscu, same studies; median of 3 runs "
        "after a warm-up move; the received file count is checked.",
        "- Orthanc runs with its defaults except ports/AETs/folders, no plugins, "
        "`DicomAlwaysAllow*` true (SyncStorageArea stays on: it fsyncs files like pacscore; "
        "its MaximumPduLength default of 16 KB is kept). pacscore runs with its defaults "
        "(SQLite index; each file fsynced once, with its `.incoming` journal name; store "
        "commits not waiting for the disk, redone from that journal after a power loss), "
        "`max_find_results=100000`, min free space 0.",
        *([start_method(args)] if echo_times else []),
        "",
    ]
    if profile_note:
        lines += [
            "## Where pacscore's time goes (py-spy, small instances, 1 association)",
            "",
            "A separate, unmeasured run of the `store small 1 assoc` cell with "
            "`py-spy record --subprocesses --rate 200 --nonblocking --threads --format raw` "
            "attached to the server and its DICOM listener processes "
            "(bench/out/profile-small-store.txt; flame graph of a second pass: "
            "bench/out/profile-small-store.svg).",
            "",
            profile_note,
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
