"""What a C-STORE success promises survives ``kill -9``, and one home has one server.

A real ``pacscore serve`` receives a few hundred ~130 KB instances from
DCMTK's storescu and is killed with SIGKILL in the middle of the transfer.
After a restart every instance the sender saw acknowledged must be indexed,
findable and intact on disk, with nothing half-written left behind.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from pacscore.storage import instance_relpath
from tests.conftest import DCMTK_ENV, dcmtk, run_dcmtk
from tests.dicomgen import dataset_bytes, make_instance

pytestmark = pytest.mark.timeout(180)

PATIENT_ID = "DURABLE"
SENDER = "SENDER"
NUM_INSTANCES = 300
KILL_AFTER_ACKS = 30
# after a store request starts: the server is receiving, writing or indexing it
KILL_DELAY = 0.01


@pytest.fixture(scope="module")
def transfer(tmp_path_factory) -> list[Path]:
    """300 CT images of 256x256 (about 130 KB each) in 4 studies of 2 series."""
    folder = tmp_path_factory.mktemp("transfer")
    files = []
    for i in range(NUM_INSTANCES):
        study, series = i % 4, i % 8
        files.append(
            make_instance(
                folder,
                patient_id=PATIENT_ID,
                study_uid=f"1.2.826.0.1.3680043.9.7433.3.{study}",
                series_uid=f"1.2.826.0.1.3680043.9.7433.3.{study}.{series}",
                rows=256,
                columns=256,
                instance_number=i,
            )
        )
    return files


def sop_uid(path: Path | str) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def find_sop_uids(pacs) -> set[str]:
    """SOP Instance UIDs of the test patient, by a C-FIND at IMAGE level (DCMTK findscu)."""
    result = pacs.findscu(
        "QueryRetrieveLevel=IMAGE", f"PatientID={PATIENT_ID}", "SOPInstanceUID",
        aet=SENDER, extra=("-v",),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # DCMTK prints the NUL that pads an odd-length UID
    found = re.findall(r"\(0008,0018\) UI \[([0-9.]+)\x00?\]", output)
    assert len(found) == output.count("(Pending)"), output
    return set(found)


def send_and_kill(pacs, files: list[Path]) -> tuple[list[str], int]:
    """Send ``files`` with storescu, SIGKILL the server after some acknowledgements.

    Return the files acknowledged with a success (every one storescu reported,
    including those it read after the kill) and storescu's exit status.
    """
    sender = subprocess.Popen(
        [dcmtk("storescu"), "-v", "-aet", SENDER, "-aec", pacs.aet,
         "127.0.0.1", str(pacs.dicom_port), *map(str, files)],
        stdout=subprocess.DEVNULL,  # progress dots
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=DCMTK_ENV,
    )  # fmt: skip
    acknowledged: list[str] = []
    current = None
    killed = False
    assert sender.stderr is not None
    for line in sender.stderr:
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Sending Store Request" in line:
            if len(acknowledged) >= KILL_AFTER_ACKS and not killed:
                time.sleep(KILL_DELAY)
                pacs.kill9()
                killed = True
        elif "Received Store Response (Success)" in line:
            assert current is not None
            acknowledged.append(current)
        elif "Received Store Response" in line:
            raise AssertionError(f"unexpected store status: {line}")
    returncode = sender.wait(timeout=60)
    assert killed, f"storescu ended after {len(acknowledged)} acknowledgements, before the kill"
    return acknowledged, returncode


def test_kill9_mid_transfer_loses_no_acknowledged_instance(pacs_home, transfer):
    pacs_home.cli("node", "add", "sender", "--aet", SENDER, "--host", "127.0.0.1",
                  "--port", "104", "--allow", "store,find")  # fmt: skip
    pacs_home.start()

    acknowledged, returncode = send_and_kill(pacs_home, transfer)
    assert KILL_AFTER_ACKS <= len(acknowledged) < NUM_INSTANCES, "the kill came too late"
    assert returncode != 0  # storescu saw the association die

    pacs_home.start()  # a new server on the same home: the lock died with the old one
    found = find_sop_uids(pacs_home)
    acknowledged_uids = {sop_uid(path) for path in acknowledged}
    assert acknowledged_uids <= found, f"lost: {sorted(acknowledged_uids - found)}"

    # every instance indexed (acknowledged or not) is whole and identical to what was sent
    sent = {sop_uid(path): path for path in transfer}
    storage = pacs_home.home / "storage"
    for uid in found:
        stored = storage / instance_relpath(uid)
        assert stored.is_file(), f"{uid} indexed without its file"
        assert dataset_bytes(stored) == dataset_bytes(sent[uid]), f"{uid} differs"
    incoming = storage / ".incoming"
    leftovers = sorted(incoming.iterdir()) if incoming.exists() else []
    assert leftovers == [], "interrupted writes left behind"
    check = pacs_home.cli("reindex", "--check", check=False)
    assert check.returncode == 0, check.stdout
    assert "missing files: 0, unindexed files: 0" in check.stdout

    # the sender retries everything: duplicates succeed and the archive is complete
    retry = pacs_home.storescu(*transfer, aet=SENDER)
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert find_sop_uids(pacs_home) == set(sent)
    assert pacs_home.cli("reindex", "--check", check=False).returncode == 0


def test_a_second_server_on_the_same_home_refuses_to_start(server):
    second = server.cli(
        "serve", "--host", "127.0.0.1", "--dicom-port", "0", "--http-port", "0",
        "--hl7-port", "0", check=False,
    )  # fmt: skip
    assert second.returncode != 0
    assert f"another 'pacscore serve' is running on {server.home}" in second.stderr
    assert "Traceback" not in second.stderr

    # the first one is unharmed
    echo = run_dcmtk("echoscu", "-aec", server.aet, "127.0.0.1", str(server.dicom_port))
    assert echo.returncode == 0, echo.stderr
    assert server.process is not None and server.process.poll() is None

    # once it stops, the home can be served again
    assert server.stop() == 0
    server.start()
    echo = run_dcmtk("echoscu", "-aec", server.aet, "127.0.0.1", str(server.dicom_port))
    assert echo.returncode == 0, echo.stderr
