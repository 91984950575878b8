"""Store policy "same ID, same name" (refuse_patient_name_mismatch): a real ``pacscore
serve`` and DCMTK storescu; the setting is off by default and shown in the console."""

from __future__ import annotations

import re
import time

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from pacscore.config import CORE_SETTINGS
from pacscore.db import connection
from pacscore.models import Instance, Patient
from tests.dicomgen import dataset_bytes, make_instance
from tests.test_dicom_services import stored_dataset_bytes
from tests.webclient import Console, add_user, store_instance, web_app


def sop_uid(path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_same_id_other_name_refused_only_when_the_setting_is_on(server, tmp_path):
    first = make_instance(tmp_path / "a", patient_id="P1", patient_name="DOE^JOHN")
    # off (the default): another name under a known ID is stored, as before the setting
    homonym = make_instance(tmp_path / "b", patient_id="P1", patient_name="SMITH^ANNA")
    assert server.storescu(first).returncode == 0
    assert server.storescu(homonym).returncode == 0

    server.cli("settings", "--set", "refuse_patient_name_mismatch=true")
    time.sleep(2.5)  # a running server reads the settings again within 2 s
    other = make_instance(tmp_path / "c", patient_id="P1", patient_name="MARTIN^PAUL")
    result = server.storescu(other, extra=("-d",))
    assert re.search(r"0xc001|CannotUnderstand", result.stderr), result.stderr
    # the Error Comment says why, naming the indexed name
    assert "PatientID P1 is indexed with another name: DOE^JOHN" in result.stderr

    # the same name written differently (case, accents, spaces, trailing ^) is the same name
    same = [
        make_instance(tmp_path / "d", patient_id="P1", patient_name="Doe^John^^"),
        make_instance(
            tmp_path / "e", patient_id="P1", patient_name="DOÉ ^ JOHN", charset="ISO_IR 192"
        ),
        make_instance(tmp_path / "f", patient_id="P2", patient_name="MARTIN^PAUL"),
    ]
    for path in same:
        result = server.storescu(path)
        assert result.returncode == 0 and "0xc001" not in result.stderr.lower(), result.stderr
    stored = set(stored_dataset_bytes(server))
    assert stored == {sop_uid(p) for p in [first, homonym, *same]}


def test_the_console_settings_page_shows_the_setting(make_pacs):
    pacs = make_pacs()
    assert pacs.settings.core["refuse_patient_name_mismatch"] is False
    admin = Console(web_app(pacs))
    add_user("boss", "system administrator")
    admin.login("boss")
    page = admin.get("/settings/").text
    assert 'name="refuse_patient_name_mismatch"' in page
    assert admin.post("/settings/", {**_current_form(pacs), "refuse_patient_name_mismatch": "on"})
    assert pacs.settings.core["refuse_patient_name_mismatch"] is True


def _current_form(pacs) -> dict:
    """The settings form as the browser posts it (checkboxes: present when checked)."""
    form = {}
    for key, value in CORE_SETTINGS.dump(pacs.settings.core).items():
        if isinstance(value, bool):
            if value:
                form[key] = "on"
        elif isinstance(value, list):
            form[key] = ", ".join(value)
        else:
            form[key] = str(value)
    return form


def test_the_archive_refuses_with_0xc001_and_keeps_nothing(make_pacs, tmp_path):
    pacs = make_pacs()
    pacs.settings.update_core({"refuse_patient_name_mismatch": True})
    store_instance(pacs, tmp_path / "a", patient_id="P7", patient_name="DUPONT^MARIE")
    path = make_instance(tmp_path / "b", patient_id="P7", patient_name="DURAND^MARIE")
    with connection():
        result = pacs.archive.store(dataset_bytes(path), ExplicitVRLittleEndian, "TEST")
        assert result.status == 0xC001 and "DUPONT^MARIE" in result.comment
        assert Instance.select().count() == 1
        assert Patient.get(Patient.patient_id == "P7").patient_name == "DUPONT^MARIE"
