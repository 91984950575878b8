"""AUTO FETCHING and PRE FETCHING against a real storescp, with a patient holding
several MG, US and CT studies of different dates: exactly the priors chosen by
the syntax arrive.  Priors come from the local archive, and from a second
pacscore process (the remote archive) by C-FIND then C-MOVE."""

from __future__ import annotations

from pathlib import Path

import pytest
from pacscore_router.matching import Subject, pattern_matches, seconds_until_window
from pacscore_router.priors import Candidate, choose_priors, parse_priors
from pydicom import dcmread
from router_fixtures import DEST_AET, make_study, wait_until

from pacscore.db import connection
from pacscore.models import Study
from tests.conftest import PacsProcess

pytestmark = pytest.mark.timeout(120)

# (label, modality, date, body part); the patient's history
HISTORY = [
    ("mg-2024", "MG", "20240110", ""),
    ("mg-2023", "MG", "20230110", ""),
    ("mg-2022", "MG", "20220110", ""),
    ("mg-2021", "MG", "20210110", ""),
    ("us-2024", "US", "20240201", ""),
    ("us-2023", "US", "20230201", ""),
    ("us-2022", "US", "20220201", ""),
    ("ct-2024-lung", "CT", "20240301", "LUNG"),
    ("ct-2023-head", "CT", "20230301", "HEAD"),
    ("ct-2022-lung", "CT", "20220301", "LUNG"),
    ("ct-2021-lung", "CT", "20210301", "LUNG"),
    ("us-2026-later", "US", "20260601", ""),  # after the reference: never a prior
]
PRIORS = "3 MG ; 2 US ; 2 CT BodyPartExamined=LUNG"
CHOSEN = {"mg-2024", "mg-2023", "mg-2022", "us-2024", "us-2023", "ct-2024-lung", "ct-2022-lung"}


def write_history(folder: Path, labels=None) -> dict[str, Path]:
    """One instance per study of PAT1; returns label -> file."""
    files = {}
    for label, modality, date, body_part in HISTORY:
        if labels is None or label in labels:
            files[label] = make_study(
                folder / label, 1, modality=modality, study_date=date, body_part=body_part
            )[0]
    return files


def study_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def received_studies(scp) -> set[str]:
    return {study_of(p) for p in scp.files()}


def labels_of(study_uids: set[str], files: dict[str, Path]) -> set[str]:
    by_study = {study_of(path): label for label, path in files.items()}
    return {by_study.get(uid, uid) for uid in study_uids}


def fetch_rule(kind: str, **filters) -> dict:
    return {
        "name": kind.lower(),
        "filters": filters,
        "actions": [{"type": kind, "node": "dest", "priors": PRIORS}],
    }


def all_sent(router) -> bool:
    deliveries = router.deliveries()
    return bool(deliveries) and all(d.state == "sent" for d in deliveries) and router.idle()


def test_auto_fetching_sends_exactly_the_chosen_local_priors(router_pacs, storescp, tmp_path):
    dest = storescp()
    router = router_pacs()
    router.add_node("dest", DEST_AET, dest.port)
    # only studies sent by the mammograph trigger the rule (not the migrated history)
    router.configure(rules=[fetch_rule("AUTO_FETCHING", calling_ae="MG1")])
    router.start()
    files = write_history(tmp_path / "history")
    for path in files.values():
        router.store(path, calling_ae="MIGRATION")
    wait_until(router.idle, what="history stable")
    assert router.jobs("router.priors") == []

    current = make_study(tmp_path / "current", 1, modality="MG", study_date="20250110")[0]
    router.store(current, calling_ae="MG1")
    wait_until(lambda: router.jobs("router.priors"), what="the priors job")
    wait_until(lambda: all_sent(router), what="priors delivered")
    assert labels_of(received_studies(dest), files) == CHOSEN
    assert len(dest.files()) == len(CHOSEN)


def test_pre_fetching_on_a_new_worklist_entry(router_pacs, storescp, tmp_path):
    dest = storescp()
    router = router_pacs()
    router.add_node("dest", DEST_AET, dest.port)
    router.start()
    files = write_history(tmp_path / "history")
    for path in files.values():
        router.store(path)
    wait_until(router.idle, what="history stable")
    router.configure(rules=[fetch_rule("PRE_FETCHING", modality="MG")])

    entry = {
        "patient_id": "PAT1",
        "accession_number": "ACC9",
        "study_uid": "1.2.826.0.1.3680043.10.1523.99",
        "steps": [{"modality": "MG", "start_date": "2025-01-10", "station_aet": "MG1"}],
    }
    ct_entry = {**entry, "steps": [{"modality": "CT", "start_date": "2025-01-10"}]}
    with connection():
        router.pacs.outbox.enqueue("on_worklist_change", before=None, after=ct_entry)
        router.pacs.outbox.enqueue("on_worklist_change", before=None, after=entry)
        router.pacs.outbox.enqueue("on_worklist_change", before=entry, after=entry)  # an update
    router.pacs.outbox.wake()
    wait_until(lambda: all_sent(router), what="priors delivered")
    assert len(router.jobs("router.priors")) == 1  # the MG creation only
    assert labels_of(received_studies(dest), files) == CHOSEN


def test_priors_come_from_the_remote_archive_by_find_and_move(router_pacs, storescp, tmp_path):
    dest = storescp()
    router = router_pacs()
    router.start(dicom=True)
    # the remote archive: a second pacscore process holding the older studies
    remote_labels = {"mg-2022", "mg-2021", "ct-2024-lung", "ct-2023-head", "ct-2022-lung"}
    remote_files = write_history(tmp_path / "remote-history", remote_labels)
    remote = PacsProcess(tmp_path / "remote", "sqlite:///index.db", aet="REMOTE").init()
    remote.cli("import", "--quiet", str(tmp_path / "remote-history"))
    our_port = str(router.pacs.config.dicom_port)
    remote.cli("node", "add", "us", "--aet", "PACSCORE", "--host", "127.0.0.1", "--port",
               our_port, "--allow", "store,find,move")  # fmt: skip
    remote.start()
    try:
        router.add_node("dest", DEST_AET, dest.port)
        router.add_node("archive", "REMOTE", remote.dicom_port, allow_store=True)
        local_files = write_history(
            tmp_path / "local-history", {x[0] for x in HISTORY} - remote_labels
        )
        for path in local_files.values():
            router.store(path)
        wait_until(router.idle, what="history stable")
        router.configure(
            remote_archive_node="archive", rules=[fetch_rule("AUTO_FETCHING", modality="MG")]
        )
        current = make_study(tmp_path / "current", 1, modality="MG", study_date="20250110")[0]
        router.store(current, calling_ae="MG1")
        wait_until(lambda: router.jobs("router.priors"), what="the priors job")
        wait_until(
            lambda: len(router.deliveries("sent")) == len(CHOSEN) and router.idle(),
            timeout=60,
            what="priors delivered",
        )
    finally:
        remote.stop()
    files = {**remote_files, **local_files}
    assert labels_of(received_studies(dest), files) == CHOSEN
    assert len(dest.files()) == len(CHOSEN)
    # the chosen remote priors were moved here; the others stayed there
    with connection():
        here = {s.study_uid for s in Study.select()}
    assert study_of(remote_files["mg-2022"]) in here
    assert study_of(remote_files["ct-2023-head"]) not in here
    assert [j.state for j in router.jobs("router.priors")] == ["done"]


# -- the pieces -----------------------------------------------------------------------


def test_prior_choice_and_patterns():
    items = parse_priors(" 2 mg;1 CT BodyPartExamined=L*G ")
    assert [str(i) for i in items] == ["2 MG", "1 CT BodyPartExamined=L*G"]
    candidates = [
        Candidate("a", "20240101", "", [("MG", {})]),
        Candidate("b", "20230101", "", [("MG", {}), ("CT", {"BodyPartExamined": "lung"})]),
        Candidate("c", "20220101", "", [("MG", {})]),
        Candidate("ref", "20250101", "", [("MG", {})]),
    ]
    chosen = choose_priors(items, candidates, "ref", "20250101")
    assert [c.study_uid for c in chosen] == ["a", "b"]
    assert pattern_matches("*écho?", "ECHOS") and pattern_matches("CT", "MR\\CT")
    assert not pattern_matches("CT?", "CT")
    subject = Subject(lambda keyword: "", modalities={"MG"})
    assert subject.modalities == {"MG"}


def test_time_window_seconds():
    from datetime import datetime

    night = {"start": "20:00", "end": "06:00"}
    assert seconds_until_window(night, datetime(2025, 1, 1, 23, 0)) == 0
    assert seconds_until_window(night, datetime(2025, 1, 1, 5, 59)) == 0
    assert seconds_until_window(night, datetime(2025, 1, 1, 19, 0)) == 3600
    day = {"start": "08:00", "end": "18:00"}
    assert seconds_until_window(day, datetime(2025, 1, 1, 18, 0)) == 14 * 3600
    assert seconds_until_window(None, datetime(2025, 1, 1, 18, 0)) == 0
