"""pacscore-hello on a bare PluginHost: no server, no database."""

import pacscore_hello
import pytest

from pacscore.archive import StoredInstance
from pacscore.plugins import PluginHost


class FakePacs:
    """Just what the plugin uses of :class:`pacscore.app.Pacs`."""

    def __init__(self, **settings) -> None:
        self.settings = settings

    def plugin_settings(self, name):
        return pacscore_hello.HelloSettings().load(self.settings)


def stored(sop_uid: str) -> StoredInstance:
    return StoredInstance(
        sop_uid=sop_uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_uid="1.2.3.1",
        study_uid="1.2.3",
        patient_id="PAT1",
        modality="CT",
        transfer_syntax="1.2.840.10008.1.2.1",
        path="/nowhere.dcm",
        size=1000,
        calling_ae="CT01",
        received_at="2024-01-01T00:00:00",
    )


@pytest.fixture
def host():
    host = PluginHost()
    host.register(pacscore_hello, name="hello")
    return host


def test_settings_default_to_no_log_file(host):
    assert host.settings_schema("hello").load({}) == {"log_file": None}


def test_on_store_appends_one_line_per_instance(host, tmp_path):
    log_file = tmp_path / "hello.log"
    pacs = FakePacs(log_file=str(log_file))
    for uid in ("1.2.3.1.1", "1.2.3.1.2"):
        host.call_each("on_store", pacs=pacs, instance=stored(uid))
    assert log_file.read_text() == "1.2.3.1.1 PAT1 CT\n1.2.3.1.2 PAT1 CT\n"
    assert host.failures == []


def test_nothing_is_written_without_a_log_file(host, tmp_path):
    host.call_each("on_store", pacs=FakePacs(), instance=stored("1.2.3.1.1"))
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_log_file_is_a_recorded_failure(host, tmp_path):
    pacs = FakePacs(log_file=str(tmp_path / "missing-folder" / "hello.log"))
    host.call_each("on_store", pacs=pacs, instance=stored("1.2.3.1.1"))  # does not raise
    assert [(f.plugin, f.hook) for f in host.failures] == [("hello", "on_store")]
