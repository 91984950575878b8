"""A server that has just started answers only once every listener process accepts.

Modalities push their backlog the moment a restarted server's port answers: if
the parent accepted those associations alone while its child listeners were
still importing, it kept them to their end on one core (0.6-0.7x Orthanc's
rate in the first seconds).  The start gate (pacscore/listeners.py) keeps the
port refusing connections until every process is ready.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pynetdicom.sop_class import Verification

from pacscore.dicom.scu import client_ae
from tests.test_listener_processes import listener_pids, served_connections, wait_until

pytestmark = pytest.mark.timeout(240)


def wait_until_listening(port: int, timeout: float = 60.0) -> None:
    """Connect until the port listens; a refused connection is the only failure allowed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
            return
        except ConnectionRefusedError:  # nothing listens yet: what a stopped server does
            assert time.monotonic() < deadline, "the DICOM port never opened"
            time.sleep(0.01)


def echo_association(ae, pacs):
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
    assert assoc.is_established, "association not accepted"
    return assoc


def test_every_listener_process_accepts_when_the_port_first_answers(pacs_home):
    """Right after the first C-ECHO of a fresh server with two processes, four
    associations opened at once are served by both processes."""
    starting = threading.Thread(
        target=pacs_home.start, kwargs={"args": ("--dicom-processes", "2")}, daemon=True
    )
    starting.start()
    wait_until_listening(pacs_home.dicom_port)
    ae = client_ae("RESTARTED", timeout=20)
    ae.add_requested_context(Verification)
    first = echo_association(ae, pacs_home)
    try:
        assert first.send_c_echo().Status == 0
    finally:
        first.release()

    with ThreadPoolExecutor(4) as pool:
        associations = list(pool.map(lambda _: echo_association(ae, pacs_home), range(4)))
    try:
        (child,) = listener_pids(pacs_home)
        counts = [
            served_connections(pid, pacs_home.dicom_port) for pid in (pacs_home.process.pid, child)
        ]
        assert sum(counts) == 4
        assert min(counts) >= 1, f"parent, child: {counts}"
        assert all(assoc.send_c_echo().Status == 0 for assoc in associations)
    finally:
        for assoc in associations:
            assoc.release()
    starting.join(timeout=60)
    log = pacs_home.log()
    assert f"DICOM listener 1 accepting (pid {child})" in log
    assert log.index("DICOM listener 1 accepting") < log.index("pacscore ready")


def test_a_restarted_listener_joins_while_the_port_stays_open(pacs_home):
    """A listener that crashed is restarted without the server closing its port: the
    parent accepts meanwhile, and the new child takes associations once it is ready."""
    pacs_home.start(args=("--dicom-processes", "2"))
    (victim,) = listener_pids(pacs_home)
    os.kill(victim, signal.SIGKILL)
    ae = client_ae("MODALITY", timeout=20)
    ae.add_requested_context(Verification)
    for _ in range(3):  # the parent alone, while the child is dead or starting
        assoc = echo_association(ae, pacs_home)
        assert assoc.send_c_echo().Status == 0
        assoc.release()

    def restarted() -> int | None:
        pids = [pid for pid in listener_pids(pacs_home) if pid != victim]
        return pids[0] if pids else None

    wait_until(lambda: restarted() and f"accepting (pid {restarted()})" in pacs_home.log(), 60)
    child = restarted()
    associations = []
    try:
        for _ in range(2):  # one after the other: the least busy process takes each
            associations.append(echo_association(ae, pacs_home))
            time.sleep(0.2)
        counts = [
            served_connections(pid, pacs_home.dicom_port) for pid in (pacs_home.process.pid, child)
        ]
        assert counts == [1, 1]
    finally:
        for assoc in associations:
            assoc.release()
