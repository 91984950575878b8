"""Hook events in process: the outbox, its delivery guarantees, and the hooks
the archive calls inline (``filter_store``, ``on_alert``).

Each test builds a :class:`pacscore.app.Pacs` on a fresh home and database
(SQLite and PostgreSQL), registers recording plugins, stores with
``pacs.archive.store`` and delivers with ``pacs.outbox.drain()`` (the
dispatcher thread's work, called here directly to control the timing).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pacscore.app import Pacs
from pacscore.archive import DeletedInstance, StoredInstance
from pacscore.db import connection
from pacscore.dicomfile import status
from pacscore.dicomfile.part10 import read_dicom_file
from pacscore.hookspecs import hookimpl
from pacscore.models import (
    Instance,
    OutboxEvent,
    Patient,
    PluginFailureRecord,
    PluginState,
    Series,
    Storage,
    Study,
    TrashedFile,
)
from pacscore.storage import instance_relpath
from tests.dicomgen import make_instance

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A plugin that remembers every event it receives."""

    def __init__(self) -> None:
        self.stored: list[StoredInstance] = []
        self.deleted: list[DeletedInstance] = []
        self.stable: list[tuple[str, str, int]] = []
        self.alerts: list[tuple[str, str, dict]] = []

    @hookimpl
    def on_store(self, instance):
        self.stored.append(instance)

    @hookimpl
    def on_delete(self, instance):
        self.deleted.append(instance)

    @hookimpl
    def on_study_stable(self, study_uid, patient_id, num_instances):
        self.stable.append((study_uid, patient_id, num_instances))

    @hookimpl
    def on_alert(self, kind, message, details):
        self.alerts.append((kind, message, details))


class Broken:
    """A plugin whose ``on_store`` always raises."""

    @hookimpl(tryfirst=True)  # called before the recorder: it must not stop it
    def on_store(self, instance):
        raise RuntimeError("broken plugin: cannot forward " + instance.sop_uid)


class Refuser:
    @hookimpl
    def filter_store(self, instance):
        if instance.header.patient_id == "REFUSED":
            return "refused by test policy"
        return None


def store(pacs: Pacs, path: Path, calling_ae: str = "TESTSCU"):
    data, ts = read_dicom_file(path)
    with connection():
        return pacs.archive.store(data, ts, calling_ae=calling_ae)


def drain_all(pacs: Pacs) -> int:
    delivered = total = pacs.outbox.drain()
    while delivered:
        delivered = pacs.outbox.drain()
        total += delivered
    return total


def storage_files(pacs: Pacs) -> list[Path]:
    """Every file under the storage folder, the incoming area included (once the store
    journal is flushed: its entries are second links of stored files)."""
    pacs.archive.folders.flush()
    return sorted(p for p in (pacs.config.home / "storage").rglob("*") if p.is_file())


def test_on_store_is_delivered_by_the_outbox_with_the_stored_instance(make_pacs, tmp_path):
    recorder = Recorder()
    pacs = make_pacs(recorder)
    path = make_instance(
        tmp_path / "in",
        patient_id="OUT1",
        study_uid="1.2.3.40",
        series_uid="1.2.3.40.1",
        sop_uid="1.2.3.40.1.1",
        modality="MR",
    )

    result = store(pacs, path, calling_ae="MODALITY1")
    assert result.ok and not result.duplicate
    assert recorder.stored == []  # not in the storing thread: the dispatcher delivers

    assert pacs.outbox.drain() == 1
    (event,) = recorder.stored
    stored_path = pacs.config.home / "storage" / instance_relpath("1.2.3.40.1.1")
    assert event.sop_uid == "1.2.3.40.1.1"
    assert event.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert (event.series_uid, event.study_uid) == ("1.2.3.40.1", "1.2.3.40")
    assert (event.patient_id, event.modality) == ("OUT1", "MR")
    assert event.transfer_syntax == "1.2.840.10008.1.2.1"
    assert event.calling_ae == "MODALITY1"
    assert Path(event.path) == stored_path
    assert event.size == stored_path.stat().st_size
    # the file is in place, holding the data set sent
    assert read_dicom_file(stored_path)[0] == read_dicom_file(path)[0]
    received = datetime.fromisoformat(event.received_at)
    assert abs((datetime.now(UTC).replace(tzinfo=None) - received).total_seconds()) < 60

    # delivered once: nothing left, and a duplicate store owes no new event
    assert pacs.outbox.drain() == 0
    again = store(pacs, path)
    assert again.ok and again.duplicate
    assert pacs.outbox.drain() == 0
    assert len(recorder.stored) == 1


class Choosy(Recorder):
    """A recorder that says whether it wants events, and raises when told to."""

    def __init__(self, wanted: bool | None) -> None:
        super().__init__()
        self.wanted = wanted
        self.asked: list[str] = []

    @hookimpl
    def event_wanted(self, hook):
        self.asked.append(hook)
        if self.wanted == "raise":
            raise RuntimeError("cannot tell")
        return self.wanted


def outbox_rows() -> int:
    with connection():
        return OutboxEvent.select().count()


def test_events_no_plugin_wants_are_not_recorded(make_pacs, tmp_path):
    choosy = Choosy(wanted=False)
    pacs = make_pacs(choosy)
    first, second, third = (make_instance(tmp_path / "in", patient_id="CH1") for _ in range(3))

    assert store(pacs, first).ok
    assert choosy.asked == ["on_store"]
    assert outbox_rows() == 0  # not even recorded

    choosy.wanted = None  # "may": recorded and delivered
    assert store(pacs, second).ok
    assert outbox_rows() == 1
    drain_all(pacs)
    assert [event.sop_uid for event in choosy.stored] == [second.stem]

    choosy.wanted = "raise"  # an error counts as wanted, and is recorded
    assert store(pacs, third).ok
    drain_all(pacs)
    assert [event.sop_uid for event in choosy.stored] == [second.stem, third.stem]
    assert any(f.hook == "event_wanted" for f in pacs.hooks.failures)

    with connection():  # deletions ask too
        pacs.archive.delete(Instance.select().where(Instance.sop_uid == first.stem), reason="test")
    assert choosy.asked[-1] == "on_delete"


def test_a_plugin_switched_in_another_process_is_followed(make_pacs):
    """The console's switch acts in the web process, ``pacscore plugins`` in none: each
    server process follows the database, so a listener calls the hooks of a plugin
    enabled since it started (and asks it which events it wants), and no more once
    disabled.  Plugins registered as objects are not the database's to switch."""
    pacs = make_pacs(Choosy(wanted=False))
    pacs.hooks.load_entry_points(disabled={"email"})  # a bundled plugin, as installed

    def alert_plugins() -> set[str]:
        return set(pacs.hooks.plugins_implementing("on_alert"))

    assert "email" not in alert_plugins()
    with connection():
        PluginState.create(name="email", enabled=True)  # the switch, in another process
        PluginState.create(name="choosy", enabled=False)  # not an installed plugin
    pacs.follow_plugin_states()
    assert "email" in alert_plugins()
    assert pacs.hooks.pm.get_plugin("choosy") is not None

    with connection():
        PluginState.update(enabled=False).where(PluginState.name == "email").execute()
    pacs.follow_plugin_states()
    assert "email" not in alert_plugins()
    assert not [p for p in pacs.hooks.list() if p.name == "email" and p.enabled]


def test_an_event_one_plugin_wants_reaches_every_implementation(make_pacs, tmp_path):
    choosy, recorder = Choosy(wanted=False), Recorder()
    pacs = make_pacs(choosy, recorder)  # the recorder does not say: it wants everything
    path = make_instance(tmp_path / "in", patient_id="CH2")
    assert store(pacs, path).ok
    drain_all(pacs)
    # the hint only spares the outbox: the hook itself is still called
    assert [e.sop_uid for e in recorder.stored] == [e.sop_uid for e in choosy.stored] == [path.stem]


def test_events_of_a_crashed_process_are_delivered_once_by_the_next(make_pacs, tmp_path):
    crashed = make_pacs(Recorder())
    paths = [make_instance(tmp_path / "in", patient_id="CRASH") for _ in range(3)]
    for path in paths:
        assert store(crashed, path).ok
    # the process dies before its dispatcher ran: the events are in the database
    crashed.database.close_all()

    recorder = Recorder()
    restarted = make_pacs(recorder)
    assert drain_all(restarted) == 3
    assert drain_all(restarted) == 0
    # make_instance names a file after its SOP Instance UID
    assert sorted(e.sop_uid for e in recorder.stored) == sorted(p.stem for p in paths)
    for event in recorder.stored:
        assert Path(event.path).is_file()


def test_a_raising_plugin_is_recorded_and_does_not_stop_the_others(make_pacs, tmp_path):
    recorder = Recorder()
    pacs = make_pacs(Broken(), recorder)
    paths = [make_instance(tmp_path / "in") for _ in range(2)]
    for path in paths:
        assert store(pacs, path).ok

    assert pacs.outbox.drain() == 2
    assert sorted(e.sop_uid for e in recorder.stored) == sorted(p.stem for p in paths)
    with connection():
        failures = list(PluginFailureRecord.select().where(PluginFailureRecord.hook == "on_store"))
        assert [f.plugin for f in failures] == ["broken", "broken"]
        assert {f.error for f in failures} == {
            f"RuntimeError: broken plugin: cannot forward {p.stem}" for p in paths
        }
    # a failure is not redelivered
    assert pacs.outbox.drain() == 0
    assert len(recorder.stored) == 2


def test_study_stable_fires_once_per_quiet_period(make_pacs, tmp_path):
    recorder = Recorder()
    pacs = make_pacs(recorder)
    with connection():
        pacs.settings.update_core({"study_stable_seconds": 1})
    study = "1.2.3.41"
    for _ in range(2):
        assert store(pacs, make_instance(tmp_path / "in", patient_id="QUIET",
                                         study_uid=study, series_uid="1.2.3.41.1")).ok  # fmt: skip
    assert pacs.outbox.fire_stable_studies() == 0  # still receiving
    assert recorder.stable == []

    time.sleep(1.3)
    assert pacs.outbox.fire_stable_studies() == 1
    assert recorder.stable == [(study, "QUIET", 2)]
    time.sleep(1.3)
    assert pacs.outbox.fire_stable_studies() == 0  # once per quiet period
    assert len(recorder.stable) == 1

    # a late instance: unstable again, then stable again after another quiet period
    assert store(pacs, make_instance(tmp_path / "in", patient_id="QUIET", study_uid=study)).ok
    assert pacs.outbox.fire_stable_studies() == 0
    time.sleep(1.3)
    assert pacs.outbox.fire_stable_studies() == 1
    assert recorder.stable == [(study, "QUIET", 2), (study, "QUIET", 3)]
    assert pacs.outbox.fire_stable_studies() == 0


def test_filter_store_refusal_stores_nothing(make_pacs, tmp_path):
    recorder = Recorder()
    pacs = make_pacs(Refuser(), recorder)
    refused = make_instance(tmp_path / "in", patient_id="REFUSED")

    result = store(pacs, refused)
    assert result.status == status.REFUSED_BY_FILTER == 0xC001
    assert result.comment == "refused by test policy"
    assert storage_files(pacs) == []  # no file, not even in .incoming
    with connection():
        for model in (Instance, Series, Study, Patient, OutboxEvent):
            assert not model.select().exists(), model.__name__
    assert pacs.outbox.drain() == 0 and recorder.stored == []

    # the filter refuses that patient only
    assert store(pacs, make_instance(tmp_path / "in", patient_id="WELCOME")).ok
    assert len(storage_files(pacs)) == 1


def test_truncated_data_set_is_refused_and_stores_nothing(make_pacs, tmp_path):
    pacs = make_pacs(Recorder())
    data, ts = read_dicom_file(make_instance(tmp_path / "in", rows=64, columns=64))
    with connection():
        result = pacs.archive.store(data[: len(data) // 2], ts, calling_ae="TESTSCU")
    assert result.status == status.CANNOT_UNDERSTAND
    assert "truncated" in result.comment
    assert storage_files(pacs) == []
    with connection():
        assert not Instance.select().exists()


def test_delete_fires_on_delete_and_removes_the_files(make_pacs, tmp_path):
    recorder = Recorder()
    pacs = make_pacs(recorder)
    doomed = [make_instance(tmp_path / "in", patient_id="DEL1", study_uid="1.2.3.42",
                            series_uid="1.2.3.42.1") for _ in range(2)]  # fmt: skip
    kept = make_instance(tmp_path / "in", patient_id="DEL2", study_uid="1.2.3.43")
    for path in (*doomed, kept):
        assert store(pacs, path).ok
    drain_all(pacs)
    home_storage = pacs.config.home / "storage"

    with connection():
        deleted = pacs.archive.delete(
            Instance.select().where(Instance.sop_uid.in_([p.stem for p in doomed])),
            reason="test",
        )
    assert deleted == 2
    assert drain_all(pacs) == 2
    assert sorted(recorder.deleted, key=lambda d: d.sop_uid) == sorted(
        (DeletedInstance(p.stem, "1.2.3.42.1", "1.2.3.42", "DEL1", "test") for p in doomed),
        key=lambda d: d.sop_uid,
    )
    for path in doomed:
        assert not (home_storage / instance_relpath(path.stem)).exists()
    assert (home_storage / instance_relpath(kept.stem)).is_file()
    with connection():
        assert not TrashedFile.select().exists()
        assert not Study.select().where(Study.study_uid == "1.2.3.42").exists()
        assert not Patient.select().where(Patient.patient_id == "DEL1").exists()
        assert [i.sop_uid for i in Instance.select()] == [kept.stem]


def test_storage_full_alerts_and_refuses(make_pacs, tmp_path):
    recorder = Recorder()
    pacs = make_pacs(recorder)
    path = make_instance(tmp_path / "in")
    with connection():
        Storage.update(min_free_mb=10**9).execute()
    pacs.archive.folders.invalidate()

    result = store(pacs, path)
    assert result.status == status.OUT_OF_RESOURCES
    assert [kind for kind, _, _ in recorder.alerts] == ["storage_full"]
    _, message, details = recorder.alerts[0]
    assert "no storage folder has room" in message
    assert details["sop_uid"] == path.stem
    assert storage_files(pacs) == []
    with connection():
        assert not Instance.select().exists()

    # room again: the same instance is stored
    with connection():
        Storage.update(min_free_mb=0).execute()
    pacs.archive.folders.invalidate()
    assert store(pacs, path).ok
    assert len(recorder.alerts) == 1
