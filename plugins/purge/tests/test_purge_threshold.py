"""Size thresholds: on a tmpfs of 8 MB, the oldest series go first until the
free space is back above the threshold plus the margin, and not one more;
series kept forever by a 0-day rule are never taken."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from pacscore_purge import make_plan, run_purge
from pacscore_purge.schedule import tick
from purge_testlib import configure, purge_pacs, store_files, study_date

from pacscore.db import connection
from pacscore.models import Job, Storage, Study
from tests.conftest import db_url, make_pacs  # noqa: F401 - fixtures
from tests.dicomgen import make_instance

MB = 1024 * 1024


@pytest.fixture
def small_fs(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def use_storage(pacs, path: Path) -> None:
    with connection():
        Storage.update(path=str(path), min_free_mb=0).execute()
    pacs.archive.folders.invalidate()


def archive_by_age(pacs, folder: Path, ages: list[int], protected_age: int) -> dict[str, int]:
    """One ~130 KB CT study per age, plus one DX chest (kept forever) older than all."""
    files = [
        make_instance(folder, study_date=study_date(age), modality="CT", rows=256, columns=256)
        for age in ages
    ]
    files.append(
        make_instance(
            folder,
            study_date=study_date(protected_age),
            modality="DX",
            study_description="Chest",
            rows=256,
            columns=256,
        )
    )
    store_files(pacs, files)
    with connection():
        return {s.study_uid: s.study_date for s in Study.select()}


AGES = [100 * n + 7 for n in range(16)]  # 16 studies, one every ~100 days


def test_free_space_threshold_frees_oldest_first_and_stops_at_the_margin(
    make_pacs,  # noqa: F811
    small_fs,
    tmp_path,
):
    pacs = purge_pacs(make_pacs)
    use_storage(pacs, small_fs)
    dates = archive_by_age(pacs, tmp_path / "src", AGES, protected_age=5000)
    before = free(small_fs)
    threshold = (before + 1 * MB) / MB  # a little more than one MB must go
    configure(
        pacs,
        rules=["DX Chest 0"],
        thresholds=[{"storage": "default", "min_free_mb": threshold, "margin_mb": 0.25}],
        schedule_time="",
    )
    target = int((threshold + 0.25) * MB)
    with connection():
        # the periodic check notices it and enqueues one size-only job
        job_id = tick(pacs)
        assert json.loads(Job.get_by_id(job_id).payload)["scope"] == "size"
        assert tick(pacs) is None
        plan = make_plan(pacs)
        report = run_purge(pacs)
    after = free(small_fs)

    deleted = [i.study_uid for i in report.deleted]
    assert [i.study_uid for i in plan.items] == deleted  # the dry run said exactly this
    assert after >= target
    # oldest first: exactly the oldest studies, skipping the DX chest kept forever
    by_age = [uid for _, uid in sorted((d, uid) for uid, d in dates.items())]
    protected = by_age[0]
    assert protected not in deleted
    assert deleted == by_age[1 : 1 + len(deleted)]
    # and stopped at the margin: before the last one went, the target was not reached
    last_disk = -(-report.deleted[-1].bytes // 4096) * 4096
    assert after - last_disk < target


def test_archive_size_threshold(make_pacs, tmp_path):  # noqa: F811
    pacs = purge_pacs(make_pacs)
    dates = archive_by_age(pacs, tmp_path / "src", AGES, protected_age=5000)
    configure(
        pacs,
        rules=["DX Chest 0"],
        thresholds=[{"storage": "default", "max_size_mb": 1.0, "margin_mb": 0.25}],
    )
    with connection():
        report = run_purge(pacs)
        kept = {s.study_uid: s.size for s in Study.select()}
    block = os.statvfs(tmp_path).f_frsize
    on_disk = sum(-(-size // block) * block for size in kept.values())
    assert on_disk <= 0.75 * MB
    by_age = [uid for _, uid in sorted((d, uid) for uid, d in dates.items())]
    assert by_age[0] in kept  # protected
    assert [i.study_uid for i in report.deleted] == by_age[1 : 1 + len(report.deleted)]
    # not one more: the newest deleted study would have fitted under the target
    last = report.deleted[-1]
    assert on_disk + -(-last.bytes // block) * block > 0.75 * MB


def test_no_threshold_crossed_means_nothing_to_delete(make_pacs, tmp_path):  # noqa: F811
    pacs = purge_pacs(make_pacs)
    archive_by_age(pacs, tmp_path / "src", AGES[:3], protected_age=5000)
    configure(pacs, thresholds=[{"storage": "default", "min_free_mb": 1, "max_size_mb": 100}])
    with connection():
        assert make_plan(pacs).items == []
