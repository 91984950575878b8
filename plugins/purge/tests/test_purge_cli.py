"""End to end: studies sent with DCMTK's storescu to a real ``pacscore serve``,
then ``pacscore purge --dry-run`` and ``pacscore purge``; and a purge killed
with SIGKILL leaves an index that ``pacscore reindex --check`` finds consistent
once the server restarted."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from purge_testlib import RULES, configure, purge_pacs, store_files, ten_year_archive
from pydicom import dcmread

from pacscore.db import connection
from pacscore.models import AuditEvent, Instance
from tests.conftest import PacsProcess, db_url, make_pacs, pacs_home, run_dcmtk, server  # noqa: F401


def purge_json(home: PacsProcess, *args: str) -> dict:
    return json.loads(home.cli("purge", "--json", *args).stdout)


def stored_study_uids(home: PacsProcess, folder) -> set[str]:
    """The Study Instance UIDs a C-FIND (DCMTK findscu, answers saved with -X) returns."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("rsp*.dcm"):
        old.unlink()
    result = run_dcmtk(
        "findscu", "-S", "-X", "-aet", "FINDER", "-aec", home.aet,
        "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
        "127.0.0.1", str(home.dicom_port), cwd=folder,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {str(dcmread(path).StudyInstanceUID) for path in folder.glob("rsp*.dcm")}


def test_dicom_archive_dry_run_then_purge(server, tmp_path):  # noqa: F811
    server.cli("node", "add", "finder", "--aet", "FINDER", "--host", "127.0.0.1", "--port", "1",
               "--allow", "find")  # fmt: skip
    specs, files = ten_year_archive(tmp_path / "src")
    sent = server.storescu(*files)
    assert sent.returncode == 0, sent.stderr
    assert stored_study_uids(server, tmp_path / "find") == {s.study_uid for s in specs}
    server.cli("plugins", "configure", "purge", "--set", f"rules={json.dumps(RULES)}")

    text = server.cli("purge", "--dry-run").stdout
    dry = purge_json(server, "--dry-run")
    expired = {s.study_uid for s in specs if s.expired}
    assert {i["study_uid"] for i in dry["items"]} == expired
    assert dry["totals"]["studies"] == len(expired) == dry["totals"]["instances"]
    assert f"total: {len(expired)} series in {len(expired)} studies" in text
    assert stored_study_uids(server, tmp_path / "find") == {
        s.study_uid for s in specs
    }  # nothing deleted yet

    done = purge_json(server)
    assert sorted(i["series_uid"] for i in done["deleted"]) == sorted(
        i["series_uid"] for i in dry["items"]
    )
    assert done["totals"] == dry["totals"]
    assert stored_study_uids(server, tmp_path / "find") == {s.study_uid for s in specs} - expired
    assert server.cli("reindex", "--check").returncode == 0


def test_purge_command_refused_when_the_plugin_is_disabled(pacs_home):  # noqa: F811
    pacs_home.cli("plugins", "disable", "purge")
    result = pacs_home.cli("purge", "--dry-run", check=False)
    assert result.returncode == 1
    assert "plugin purge is disabled" in result.stderr


def deletions_audited() -> int:
    with connection():
        return AuditEvent.select().where(AuditEvent.action == "delete").count()


def test_killed_purge_leaves_no_dangling_row_nor_orphan_file(make_pacs, db_url, tmp_path):  # noqa: F811
    pacs = purge_pacs(make_pacs)
    specs, files = ten_year_archive(tmp_path / "src")
    for _ in range(3):
        more, more_files = ten_year_archive(tmp_path / "src")
        specs += more
        files += more_files
    store_files(pacs, files)
    # one series per transaction: many commits to interrupt
    configure(pacs, rules=["* * 30"], batch_series=1)
    total = len(specs)
    home = tmp_path / "home"

    purge = subprocess.Popen(
        [sys.executable, "-m", "pacscore", "--home", str(home), "purge"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while deletions_audited() < 5 and time.monotonic() < deadline and purge.poll() is None:
        time.sleep(0.005)
    purge.kill()
    purge.wait()
    with connection():
        left = Instance.select().count()
    if left == 0:
        pytest.fail("the purge finished before it could be killed: make the archive larger")
    assert left < total

    restarted = PacsProcess(home, db_url)
    restarted.start()  # start-up recovery empties the trash of the killed run
    restarted.stop()
    check = restarted.cli("reindex", "--check", check=False)
    assert check.returncode == 0, check.stdout
    assert "missing files: 0, unindexed files: 0" in check.stdout
    # and the purge finishes the job when run again
    assert purge_json(restarted)["totals"]["instances"] == left - sum(
        1 for s in specs if s.age <= 30
    )
