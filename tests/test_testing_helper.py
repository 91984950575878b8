"""pacscore.testing, the helpers plugins test themselves with, does what the
plugin guide says: a Pacs with only the given plugins and their tables, the
real store pipeline, the server's background work on demand, a logged-in
console; and the guide's testing example is the example plugin's test file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Blueprint
from peewee import CharField
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacscore import hookimpl
from pacscore.db import connection
from pacscore.dicomfile import status
from pacscore.jobs import DONE, PENDING, JobHandler
from pacscore.models import BaseModel, Instance, Patient, PluginFailureRecord
from pacscore.testing import (
    StoreFailed,
    console_client,
    deliver_events,
    fire_stable_studies,
    make_dataset,
    make_pacs,
    plugin_name,
    run_jobs,
    store,
)
from pacscore.web.security import require_right

ROOT = Path(__file__).resolve().parent.parent


class Remark(BaseModel):
    study_uid = CharField(max_length=64)

    class Meta:
        table_name = "testinghelper_remark"


class Recorder:
    """Records the events it gets, keeps a table, refuses patient REFUSE."""

    def __init__(self) -> None:
        self.stored, self.stable, self.jobs = [], [], []

    @hookimpl
    def database_models(self):
        return [Remark]

    @hookimpl
    def filter_store(self, instance):
        return "no REFUSE here" if instance.header.patient_id == "REFUSE" else None

    @hookimpl
    def on_store(self, instance):
        self.stored.append(instance)
        Remark.create(study_uid=instance.study_uid)

    @hookimpl
    def on_study_stable(self, study_uid, num_instances):
        self.stable.append((study_uid, num_instances))

    @hookimpl
    def job_handlers(self):
        def note(pacs, payload):
            if payload.get("fail"):
                raise RuntimeError("cannot note")
            self.jobs.append(payload["n"])

        return {"note": JobHandler(note, retry_schedule=[3600])}

    @hookimpl
    def register_blueprints(self, app):
        bp = Blueprint("recorder", __name__, url_prefix="/recorder")

        @bp.route("/", methods=["GET", "POST"])
        @require_right("manage_plugins")
        def index():
            return f"{len(self.stored)} stored"

        app.register_blueprint(bp)


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def pacs(tmp_path, db_url, recorder):
    pacs = make_pacs(tmp_path, plugins=[recorder], db_url=db_url)
    yield pacs
    pacs.database.close_all()


# -- make_pacs ------------------------------------------------------------------------------------


def test_only_the_given_plugins_are_registered_with_their_tables(pacs, recorder):
    # the bundled plugins are installed in this environment: none is loaded
    assert [info.name for info in pacs.hooks.list()] == ["recorder"]
    with connection():
        assert Remark.select().count() == 0  # the plugin's table exists


def test_builtins_and_names(tmp_path):
    import pacscore_hl7

    pacs = make_pacs(tmp_path, plugins={"mine": Recorder()}, builtins=True)
    builtins = {"store_policies", "disk_monitor", "mail", "send", "worklist_timeout"}
    assert {info.name: info.builtin for info in pacs.hooks.list()} == {
        **dict.fromkeys(builtins, True),
        "mine": False,
    }
    assert "mail" in pacs.jobs.handlers() and "note" in pacs.jobs.handlers()
    assert plugin_name(pacscore_hl7) == "hl7" and plugin_name(Recorder()) == "recorder"
    again = make_pacs(tmp_path, plugins=[pacscore_hl7])  # the same home and database
    assert again.config.home == pacs.config.home
    assert [info.name for info in again.hooks.list()] == ["hl7"]
    again.database.close_all()
    pacs.database.close_all()


def test_a_plugin_whose_tables_fail_is_an_error(tmp_path):
    class NoTables:
        @hookimpl
        def database_models(self):
            raise RuntimeError("schema broken")

    with pytest.raises(RuntimeError, match=r"notables failed: .*schema broken"):
        make_pacs(tmp_path, plugins=[NoTables()])


# -- data sets and the store pipeline ------------------------------------------------------


def test_store_goes_through_the_pipeline_and_on_store_gets_the_instance(pacs, recorder):
    dataset = make_dataset(PatientID="P7", Modality="MR", InstitutionName="Clinic")
    stored = store(pacs, dataset, calling_ae="MODALITY1")
    assert (stored.sop_uid, stored.patient_id, stored.modality) == (
        dataset.SOPInstanceUID, "P7", "MR"
    )  # fmt: skip
    assert stored.calling_ae == "MODALITY1"
    written = dcmread(stored.path)
    assert written.InstitutionName == "Clinic"
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    with connection():
        assert Instance.get(Instance.sop_uid == stored.sop_uid).calling_ae == "MODALITY1"
        assert Patient.get().patient_id == "P7"
    assert recorder.stored == []  # an event of the outbox, until delivered
    assert deliver_events(pacs) == 1 and deliver_events(pacs) == 0
    assert recorder.stored == [stored]
    with connection():
        assert [r.study_uid for r in Remark.select()] == [stored.study_uid]


def test_store_takes_bytes_and_paths_in_their_transfer_syntax(pacs, tmp_path):
    dataset = make_dataset()
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "implicit.dcm"
    dataset.save_as(path, enforce_file_format=True)
    from_path = store(pacs, path)
    assert from_path.transfer_syntax == ImplicitVRLittleEndian
    from_bytes = store(pacs, make_dataset_bytes(tmp_path))
    assert from_bytes.transfer_syntax == ExplicitVRLittleEndian
    with pytest.raises(ValueError, match="Part 10"):
        store(pacs, b"not DICOM")
    with pytest.raises(TypeError):
        store(pacs, 42)


def make_dataset_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "explicit.dcm"
    make_dataset().save_as(path, enforce_file_format=True)
    return path.read_bytes()


def test_store_raises_with_the_status_when_nothing_new_is_stored(pacs, recorder):
    with pytest.raises(StoreFailed) as refused:
        store(pacs, make_dataset(PatientID="REFUSE"))
    assert refused.value.result.status == status.REFUSED_BY_FILTER
    assert refused.value.result.comment == "no REFUSE here"
    assert isinstance(refused.value, AssertionError)  # pytest shows it as a failure
    first = make_dataset()
    store(pacs, first)
    with pytest.raises(StoreFailed, match="duplicate"):
        store(pacs, first)
    assert deliver_events(pacs) == 1


def test_make_dataset_sets_and_removes_attributes():
    dataset = make_dataset(PatientName="ROE^JANE", Rows=4, Columns=2, AccessionNumber=None)
    assert dataset.PatientName == "ROE^JANE" and "AccessionNumber" not in dataset
    assert len(dataset.PixelData) == 4 * 2 * 2
    assert make_dataset().SOPInstanceUID != make_dataset().SOPInstanceUID
    with pytest.raises(ValueError, match="PatientIdentifier"):
        make_dataset(PatientIdentifier="P1")


def test_the_callers_dataset_is_left_alone(pacs):
    dataset = make_dataset()
    del dataset.file_meta.TransferSyntaxUID
    store(pacs, dataset)
    assert "TransferSyntaxUID" not in dataset.file_meta
    assert "MediaStorageSOPInstanceUID" not in dataset.file_meta


# -- the server's background work ----------------------------------------------------------


def test_fire_stable_studies_fires_each_study_once(pacs, recorder):
    first = store(pacs, make_dataset())
    store(pacs, make_dataset(StudyInstanceUID=first.study_uid))
    other = store(pacs, make_dataset())
    assert fire_stable_studies(pacs) == 2
    assert sorted(recorder.stable) == sorted([(first.study_uid, 2), (other.study_uid, 1)])
    assert fire_stable_studies(pacs) == 0


def test_run_jobs_runs_what_is_due_and_leaves_failures_to_their_schedule(pacs, recorder):
    ok = pacs.jobs.enqueue("note", {"n": 1})
    failing = pacs.jobs.enqueue("note", {"fail": True})
    later = pacs.jobs.enqueue("note", {"n": 2}, delay=3600)
    assert run_jobs(pacs) == 2
    assert recorder.jobs == [1]
    assert pacs.jobs.get(ok).state == DONE
    assert pacs.jobs.get(failing).state == PENDING  # due again in an hour
    assert "cannot note" in pacs.jobs.get(failing).last_error
    assert pacs.jobs.get(later).state == PENDING
    assert run_jobs(pacs) == 0


# -- the console ---------------------------------------------------------------------------


def test_console_client_is_logged_in_with_rights_and_csrf(pacs):
    store(pacs, make_dataset())
    deliver_events(pacs)
    admin = console_client(pacs)
    assert admin.login == "admin"
    assert admin.get("/recorder/").text == "1 stored"  # the plugin's page
    assert admin.post("/recorder/").status_code == 200  # the CSRF token is sent
    assert admin.client.post("/recorder/").status_code == 400  # the raw client sends none
    plugins = admin.api("GET", "/api/v1/plugins")
    assert [p["name"] for p in plugins.json] == ["recorder"]
    changed = admin.api("PATCH", "/api/v1/plugins/recorder", json={"enabled": False})
    assert changed.status_code == 200, changed.text

    doctor = console_client(pacs, "radiologist", login="doctor", app=admin.app)
    assert doctor.get("/recorder/").status_code == 403
    with pytest.raises(ValueError, match="no profile named 'wizard'"):
        console_client(pacs, "wizard")


def test_a_failure_is_recorded_not_raised(pacs, recorder):
    class Broken:
        @hookimpl
        def on_store(self, instance):
            raise RuntimeError(f"cannot handle {instance.sop_uid}")

    pacs.hooks.register(Broken(), name="broken")
    stored = store(pacs, make_dataset())
    assert deliver_events(pacs) == 1
    assert [(f.plugin, f.hook) for f in pacs.hooks.failures] == [("broken", "on_store")]
    with connection():
        assert PluginFailureRecord.get().error == f"RuntimeError: cannot handle {stored.sop_uid}"


# -- the guide -----------------------------------------------------------------------------


def test_the_guides_testing_example_is_the_example_plugins_test_file():
    guide = (ROOT / "docs" / "plugin-guide.md").read_text()
    section = guide[guide.index("## Testing a plugin") :]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    source = (ROOT / "docs" / "example-plugin" / "tests" / "test_hello.py").read_text()
    assert example in source, "the guide's testing example differs from test_hello.py"
    assert "FakePacs" not in guide and "stored(" not in guide
