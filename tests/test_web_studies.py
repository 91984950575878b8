"""Studies in the console and the API: search, view, ZIP, delete, send; service filters."""

from __future__ import annotations

import io
import subprocess
import zipfile

import pytest

from pacscore import hookimpl
from pacscore.db import connection
from pacscore.models import AuditEvent, Instance, Node, Study
from tests.conftest import dcmtk, free_port, wait_for_port
from tests.webclient import Console, add_user, basic, store_instance, web_app


class DeleteRecorder:
    def __init__(self):
        self.deleted = []

    @hookimpl
    def on_delete(self, instance):
        self.deleted.append(instance.sop_uid)


@pytest.fixture
def recorder():
    return DeleteRecorder()


@pytest.fixture
def pacs(make_pacs, recorder):
    return make_pacs(recorder)


@pytest.fixture
def app(pacs):
    return web_app(pacs)


def admin(app) -> Console:
    add_user("root", "system administrator")
    console = Console(app)
    console.login("root")
    return console


def test_service_filters_apply_to_pages_api_and_zip(app, pacs, tmp_path):
    cardio = store_instance(pacs, tmp_path / "a", patient_id="C1", institution="CARDIO")
    neuro = store_instance(pacs, tmp_path / "b", patient_id="N1", requesting_service="NEURO")
    other = store_instance(pacs, tmp_path / "c", patient_id="O1", institution="ELSEWHERE")
    add_user("card", "radiologist", services=["cardio"])
    add_user("neur", "radiologist", services=["NEURO"])
    add_user("all", "radiologist")
    expected = {"card": [cardio], "neur": [neuro], "all": [cardio, neuro, other]}
    for login, visible in expected.items():
        console = Console(app)
        console.login(login)
        listed = console.get("/studies/").text
        assert [uid for uid in (cardio, neuro, other) if f"/studies/{uid}" in listed] == visible
        found = console.client.get("/api/v1/studies", headers=basic(login)).json
        assert sorted(s["study_uid"] for s in found["studies"]) == sorted(visible)
        assert found["total"] == len(visible)
        for uid in (cardio, neuro, other):
            status = 200 if uid in visible else 404
            assert console.get(f"/studies/{uid}").status_code == status
            assert console.get(f"/studies/{uid}/download").status_code == status
            api = console.client.get(f"/api/v1/studies/{uid}/download", headers=basic(login))
            assert api.status_code == status


def test_search_wildcards_modalities_dates_birth_date_and_paging(app, pacs, tmp_path):
    doe = store_instance(pacs, tmp_path, patient_name="DOE^JANE", patient_id="P1",
                         accession="ACC1", modality="MR", study_date="20240110",
                         birth_date="19800202")  # fmt: skip
    smith = store_instance(pacs, tmp_path, patient_name="SMITH^JOHN", patient_id="P2",
                           accession="ACC2", modality="CT", study_date="20240320")  # fmt: skip
    console = admin(app)

    def found(**query) -> list[str]:
        response = console.client.get("/api/v1/studies", query_string=query, headers={})
        assert response.status_code == 200, response.json
        return sorted(s["study_uid"] for s in response.json["studies"])

    assert found(patient_name="doe*") == [doe]
    assert found(patient_id="P?") == sorted([doe, smith])
    assert found(accession="ACC2") == [smith]
    assert found(modalities=["MR"]) == [doe]
    assert found(modalities=["MR", "CT"]) == sorted([doe, smith])
    assert found(date_preset="exact", date="2024-03-20") == [smith]
    assert found(date_preset="interval", date_from="20240101", date_to="20240131") == [doe]
    assert found(date_preset="today") == []
    assert found(birth_date="1980-02-02") == [doe]
    page1 = console.client.get("/api/v1/studies?page_size=1&sort=name").json
    page2 = console.client.get("/api/v1/studies?page_size=1&sort=name&page=2").json
    assert page1["total"] == 2
    assert [page1["studies"][0]["study_uid"], page2["studies"][0]["study_uid"]] == [doe, smith]
    # the console page runs the same search
    page = console.get("/studies/?patient_name=SMITH*&date_preset=any").text
    assert f"/studies/{smith}" in page and f"/studies/{doe}" not in page


def test_study_page_lists_series_and_the_zip_holds_the_stored_files(app, pacs, tmp_path):
    from pydicom.uid import generate_uid

    study_uid, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    for series, count in ((series_a, 2), (series_b, 1)):
        for number in range(count):
            store_instance(pacs, tmp_path, study_uid=study_uid, series_uid=series,
                           instance_number=number + 1)  # fmt: skip
    console = admin(app)
    page = console.get(f"/studies/{study_uid}").text
    assert series_a in page and series_b in page
    detail = console.client.get(f"/api/v1/studies/{study_uid}").json
    counts = {s["series_uid"]: s["num_instances"] for s in detail["series"]}
    assert counts == {series_a: 2, series_b: 1}

    response = console.get(f"/studies/{study_uid}/download")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert response.is_streamed
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    with connection():
        stored = {
            f"{i.series.series_uid}/{i.sop_uid}.dcm": pacs.archive.path_of(i).read_bytes()
            for i in Instance.select()
        }
    assert {name: archive.read(name) for name in archive.namelist()} == stored
    series_zip = console.get(f"/studies/{study_uid}/series/{series_b}/download")
    assert len(zipfile.ZipFile(io.BytesIO(series_zip.data)).namelist()) == 1
    with connection():
        assert AuditEvent.select().where(AuditEvent.action == "export").count() == 2


def test_delete_asks_for_confirmation_then_deletes_and_fires_on_delete(app, pacs, recorder,
                                                                       tmp_path):  # fmt: skip
    uid = store_instance(pacs, tmp_path)
    console = admin(app)
    confirm = console.get(f"/studies/{uid}/delete")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.text
    assert console.post(f"/studies/{uid}/delete").status_code == 200  # no confirm=yes: asks
    with connection():
        assert Study.select().count() == 1
        instance = Instance.get()
        path = pacs.archive.path_of(instance)
    assert console.post(f"/studies/{uid}/delete", {"confirm": "yes"}).status_code == 302
    with connection():
        assert Study.select().count() == 0
        assert AuditEvent.select().where(AuditEvent.action == "delete").count() == 1
    assert not path.exists()
    with connection():
        pacs.outbox.drain()
    assert recorder.deleted == [instance.sop_uid]
    assert console.get(f"/studies/{uid}").status_code == 404


def test_api_delete_series(app, pacs, tmp_path):
    from pydicom.uid import generate_uid

    study_uid, keep, drop = generate_uid(), generate_uid(), generate_uid()
    store_instance(pacs, tmp_path, study_uid=study_uid, series_uid=keep)
    store_instance(pacs, tmp_path, study_uid=study_uid, series_uid=drop)
    console = admin(app)
    response = console.api("DELETE", f"/api/v1/studies/{study_uid}/series/{drop}")
    assert response.json == {"deleted_instances": 1}
    detail = console.client.get(f"/api/v1/studies/{study_uid}").json
    assert [s["series_uid"] for s in detail["series"]] == [keep]


@pytest.fixture
def storescp(tmp_path):
    port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    process = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "DEST", "+xa", "-od", str(received), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process=process)
    yield port, received
    process.terminate()
    process.wait(timeout=10)


def run_due_jobs(pacs):
    while (job := pacs.jobs.take(["send_study"], "test")) is not None:
        pacs.jobs.run(job)


def test_send_to_a_node_is_a_job_whose_outcome_shows_on_the_jobs_page(app, pacs, tmp_path,
                                                                      storescp):  # fmt: skip
    port, received = storescp
    uid = store_instance(pacs, tmp_path)
    with connection():
        Node.create(name="dest", aet="DEST", host="127.0.0.1", port=port)
        Node.create(name="down", aet="DOWN", host="127.0.0.1", port=free_port())
    console = admin(app)
    assert console.post(f"/studies/{uid}/send", {"node": "dest"}).status_code == 302
    response = console.api("POST", f"/api/v1/studies/{uid}/send", json={"node": "down"})
    assert response.status_code == 202 and response.json["state"] == "pending"
    run_due_jobs(pacs)
    assert len(list(received.iterdir())) == 1
    jobs = {j.payload: j for j in pacs.jobs.list()}
    states = sorted((j.state, "down" in p) for p, j in jobs.items())
    assert states == [("done", False), ("pending", True)]
    page = console.get("/jobs/").text
    assert "association with DOWN" in page
    bad = console.api("POST", f"/api/v1/studies/{uid}/send", json={"node": "nowhere"})
    assert bad.status_code == 400 and bad.json["errors"] == {"node": ["no such node"]}


def test_zip_lists_an_unreadable_file_instead_of_failing(app, pacs, tmp_path):
    from pydicom.uid import generate_uid

    study_uid = generate_uid()
    for number in range(2):
        store_instance(pacs, tmp_path, study_uid=study_uid, instance_number=number + 1)
    with connection():
        lost, kept = list(Instance.select().order_by(Instance.id))
        pacs.archive.path_of(lost).unlink()
    response = admin(app).get(f"/studies/{study_uid}/download")
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    assert sorted(n.split("/")[-1] for n in archive.namelist()) == sorted(
        ["ERRORS.txt", f"{kept.sop_uid}.dcm"]
    )
    assert lost.sop_uid in archive.read("ERRORS.txt").decode()
