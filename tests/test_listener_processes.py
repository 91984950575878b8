"""Several DICOM listener processes share the port; they live and die with the server."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pynetdicom.sop_class import Verification

from pacscore.dicom.pynetdicom_ext.shared_listener import bind_listening_socket
from pacscore.dicom.scu import client_ae
from tests.conftest import DCMTK_ENV, dcmtk
from tests.dicomgen import make_instance

pytestmark = pytest.mark.timeout(240)

PROCESSES = 3
ASSOCIATIONS = 24
PER_ASSOCIATION = 5
STUDY_UID = "1.2.826.0.1.3680043.9.7433.8.1"


def listener_pids(pacs) -> list[int]:
    """PIDs of the child listeners of a running server (``pacscore dicom-listener``)."""
    out = subprocess.run(
        ["ps", "-o", "pid=,stat=", "--ppid", str(pacs.process.pid)], capture_output=True, text=True
    ).stdout
    rows = [line.split() for line in out.splitlines()]
    return [int(pid) for pid, stat in rows if not stat.startswith("Z")]  # not yet reaped


def proc_file(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/{name}") as handle:
        return handle.read()


def cpu_seconds(pid: int) -> float:
    fields = proc_file(pid, "stat").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def store_concurrently(pacs, files) -> list[subprocess.CompletedProcess]:
    batches = [files[i : i + PER_ASSOCIATION] for i in range(0, len(files), PER_ASSOCIATION)]
    command = [dcmtk("storescu"), "-aet", "MODALITY", "-aec", pacs.aet, "127.0.0.1"]

    def send(batch):
        args = [*command, str(pacs.dicom_port), *map(str, batch)]
        return subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=120)

    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(send, batches))


def study_instance_count(pacs) -> int:
    result = pacs.findscu(
        "QueryRetrieveLevel=STUDY",
        f"StudyInstanceUID={STUDY_UID}",
        "NumberOfStudyRelatedInstances",
        aet="MODALITY",
        extra=("-v",),
    )
    found = re.findall(r"\(0020,1208\) IS \[(\d+)", result.stdout + result.stderr)
    assert len(found) == 1, result.stderr
    return int(found[0])


def test_concurrent_associations_are_spread_over_the_processes_and_all_indexed(pacs_home, tmp_path):
    """Concurrent writers in several processes create one patient, study and series."""
    files = [
        make_instance(tmp_path, study_uid=STUDY_UID, series_uid=STUDY_UID + ".1", instance_number=i)
        for i in range(ASSOCIATIONS * PER_ASSOCIATION)
    ]
    pacs_home.cli("node", "add", "modality", "--aet", "MODALITY", "--host", "127.0.0.1",
                  "--port", "104", "--allow", "store,find")  # fmt: skip
    pacs_home.start(args=("--dicom-processes", str(PROCESSES)))
    children = listener_pids(pacs_home)
    assert len(children) == PROCESSES - 1  # and accepting: the port opened after them
    before = {pid: cpu_seconds(pid) for pid in children}

    results = store_concurrently(pacs_home, files)

    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    assert study_instance_count(pacs_home) == len(files)
    # each child served some of the associations (an idle one uses next to no CPU)
    assert all(cpu_seconds(pid) - before[pid] > 0.05 for pid in children), before


def test_a_dead_listener_is_restarted_and_none_outlives_the_server(pacs_home, tmp_path):
    pacs_home.start(args=("--dicom-processes", str(PROCESSES)))
    victim = listener_pids(pacs_home)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(listener_pids(pacs_home)) == PROCESSES - 1)
    assert victim not in listener_pids(pacs_home)

    files = [make_instance(tmp_path, instance_number=i) for i in range(10)]
    assert all(r.returncode == 0 for r in store_concurrently(pacs_home, files))

    children = listener_pids(pacs_home)
    pacs_home.kill9()  # a crash of the server takes its listeners with it
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children))
    pacs_home.start(args=("--dicom-processes", "2"))  # the port and the home are free again
    assert len(listener_pids(pacs_home)) == 1


def served_connections(pid: int, port: int) -> int:
    """Established TCP connections on ``port`` whose socket process ``pid`` holds."""
    established = set()
    for table in ("tcp", "tcp6"):
        for row in proc_file(pid, f"net/{table}").splitlines()[1:]:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                established.add(fields[9])  # the socket's inode
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                held.add(target[8:-1])
    return len(established & held)


def test_associations_go_to_the_least_busy_process(pacs_home):
    """Four associations opened one after the other on two processes: two each (the
    kernel's hash of SO_REUSEPORT put all four in one process one time in eight)."""
    pacs_home.start(args=("--dicom-processes", "2"))
    (child,) = listener_pids(pacs_home)  # accepting: the port opened after it
    ae = client_ae("SPREAD", timeout=10)
    ae.add_requested_context(Verification)
    associations = []
    try:
        for _ in range(4):
            associations.append(
                ae.associate("127.0.0.1", pacs_home.dicom_port, ae_title=pacs_home.aet)
            )
            assert associations[-1].is_established
            time.sleep(0.2)
        counts = [
            served_connections(pid, pacs_home.dicom_port) for pid in (pacs_home.process.pid, child)
        ]
        assert counts == [2, 2]
        assert all(assoc.send_c_echo().Status == 0 for assoc in associations)
    finally:
        for assoc in associations:
            assoc.release()


def test_a_dicom_port_held_by_another_program_is_refused_clearly():
    """Without SO_REUSEPORT a second program can no longer share the port silently."""
    holder = bind_listening_socket("127.0.0.1", 0)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError, match=f"DICOM port {port} on 127.0.0.1 is in use"):
            bind_listening_socket("127.0.0.1", port)
    finally:
        holder.close()
