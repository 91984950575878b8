"""pacscore-hello against a real pacscore, in-process, with pacscore.testing."""

import pacscore_hello
import pytest

from pacscore.testing import (
    console_client,
    deliver_events,
    fire_stable_studies,
    make_dataset,
    make_pacs,
    store,
)


@pytest.fixture
def pacs(tmp_path):
    pacs = make_pacs(tmp_path, plugins=[pacscore_hello])  # registered as "hello"
    yield pacs
    pacs.database.close_all()


def test_on_store_appends_one_line_per_instance(pacs, tmp_path):
    log_file = tmp_path / "hello.log"
    pacs.save_plugin_settings("hello", {"log_file": str(log_file)})
    first = store(pacs, make_dataset(PatientID="PAT1", Modality="CT"))
    second = store(pacs, make_dataset(PatientID="PAT2", Modality="MR"))
    assert deliver_events(pacs) == 2  # what the dispatcher thread does in a server
    assert log_file.read_text() == f"{first.sop_uid} PAT1 CT\n{second.sop_uid} PAT2 MR\n"
    assert pacs.hooks.failures == []  # a raising hook would be recorded here, not raised


def test_settings_default_to_no_log_file(pacs):
    assert pacs.plugin_settings("hello") == {"log_file": None}


def test_nothing_is_written_without_a_log_file(pacs, tmp_path):
    store(pacs, make_dataset())
    assert deliver_events(pacs) == 1
    assert not list(tmp_path.glob("*.log"))


def test_a_quiet_study_gets_its_stable_line(pacs, tmp_path):
    log_file = tmp_path / "hello.log"
    pacs.save_plugin_settings("hello", {"log_file": str(log_file)})
    first = store(pacs, make_dataset())
    store(pacs, make_dataset(StudyInstanceUID=first.study_uid))
    assert fire_stable_studies(pacs) == 1  # as if study_stable_seconds had passed
    assert log_file.read_text() == f"# study {first.study_uid} stable with 2 instance(s)\n"


def test_an_unwritable_log_file_is_a_recorded_failure(pacs, tmp_path):
    pacs.save_plugin_settings("hello", {"log_file": str(tmp_path / "missing" / "hello.log")})
    store(pacs, make_dataset())
    deliver_events(pacs)  # does not raise
    assert [(f.plugin, f.hook) for f in pacs.hooks.failures] == [("hello", "on_store")]
    page = console_client(pacs).get("/plugins/").text  # the administrator sees it
    assert "on_store" in page and "FileNotFoundError" in page


def test_the_console_edits_the_settings(pacs, tmp_path):
    admin = console_client(pacs)
    form = admin.get("/plugins/hello/settings")
    assert form.status_code == 200 and "file to append to" in form.text  # the field's help
    log_file = str(tmp_path / "hello.log")
    assert admin.post("/plugins/hello/settings", {"log_file": log_file}).status_code == 302
    assert pacs.plugin_settings("hello") == {"log_file": log_file}
