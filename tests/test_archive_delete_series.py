"""Core APIs for automatic deletions: ``Archive.delete_series`` (set-based,
crash-safe, audited), ``Archive.retention_holds`` (the hook's combined
answer) and the ``cli_commands`` hook."""

from __future__ import annotations

import argparse
import json
import os
from datetime import timedelta

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from pacscore.cli import add_plugin_commands
from pacscore.db import connection, utcnow
from pacscore.hookspecs import hookimpl
from pacscore.importer import check_index
from pacscore.models import AuditEvent, Instance, Patient, Series, Study, TrashedFile
from pacscore.plugins import PluginHost
from tests.dicomgen import dataset_bytes, make_instance

pytestmark = pytest.mark.timeout(60)


class Recorder:
    def __init__(self) -> None:
        self.deleted = []

    @hookimpl
    def on_delete(self, instance):
        self.deleted.append(instance)


def store(pacs, folder, **attributes):
    path = make_instance(folder, **attributes)
    with connection():
        result = pacs.archive.store(dataset_bytes(path), ExplicitVRLittleEndian)
    assert result.ok
    return result.instance


def test_delete_series_removes_rows_and_files_fires_on_delete_and_audits(make_pacs, tmp_path):
    recorder = Recorder()
    pacs = make_pacs(recorder)
    a = [store(pacs, tmp_path, patient_id="A", study_uid="1.2.1", series_uid="1.2.1.1")
         for _ in range(3)]  # fmt: skip
    other = store(pacs, tmp_path, patient_id="A", study_uid="1.2.1", series_uid="1.2.1.2")
    store(pacs, tmp_path, patient_id="B", study_uid="1.2.2", series_uid="1.2.2.1")
    with connection():
        report = pacs.archive.delete_series(
            ["1.2.1.1", "1.2.2.1", "1.9.9"], reason="purge rule X", actor="system:test", rule="X"
        )
        while pacs.outbox.drain():
            pass
        study = Study.get(Study.study_uid == "1.2.1")
        events = {e.target: e for e in AuditEvent.select().where(AuditEvent.action == "delete")}
        assert not Study.select().where(Study.study_uid == "1.2.2").exists()
        assert not Patient.select().where(Patient.patient_id == "B").exists()
        assert not TrashedFile.select().exists()
        assert [s.series_uid for s in Series.select()] == ["1.2.1.2"]
    assert report.instances == 4 and report.series == 2
    assert report.bytes == sum(i.size for i in a) + report.studies["1.2.2"]["bytes"]
    assert (study.num_instances, study.num_series, study.size) == (1, 1, other.size)
    assert not any(os.path.exists(i.path) for i in a)
    assert sorted(d.sop_uid for d in recorder.deleted if d.study_uid == "1.2.1") == sorted(
        i.sop_uid for i in a
    )
    assert {d.reason for d in recorder.deleted} == {"purge rule X"}
    assert set(events) == {"1.2.1", "1.2.2"}
    details = json.loads(events["1.2.1"].details)
    assert events["1.2.1"].actor == "system:test"
    assert details == {
        "reason": "purge rule X",
        "patient_id": "A",
        "series": ["1.2.1.1"],
        "instances": 3,
        "bytes": sum(i.size for i in a),
        "rule": "X",
    }
    assert check_index(pacs).consistent


def test_delete_series_keeps_instances_received_after_the_cutoff(make_pacs, tmp_path):
    pacs = make_pacs()
    store(pacs, tmp_path, study_uid="1.3.1", series_uid="1.3.1.1")
    late = store(pacs, tmp_path, study_uid="1.3.1", series_uid="1.3.1.1")
    with connection():
        Instance.update(received_at=utcnow() + timedelta(hours=1)).where(
            Instance.sop_uid == late.sop_uid
        ).execute()
        report = pacs.archive.delete_series(["1.3.1.1"], "r", "system:test", utcnow())
        series = Series.get(Series.series_uid == "1.3.1.1")
    assert report.instances == 1
    assert series.num_instances == 1 and series.size == late.size
    assert check_index(pacs).consistent


class Holds:
    def __init__(self, answer) -> None:
        self.answer = answer

    @hookimpl
    def retention_holds(self, study_uids):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_retention_holds_combines_answers_and_a_failure_holds_all(make_pacs):
    pacs = make_pacs()
    assert pacs.archive.retention_holds(["1", "2"]) == {}
    pacs.hooks.register(Holds({"1": "pending send", "9": "not asked"}), name="router")
    pacs.hooks.register(Holds(None), name="quiet")
    assert pacs.archive.retention_holds(["1", "2"]) == {"1": "router: pending send"}
    pacs.hooks.register(Holds(RuntimeError("down")), name="broken")
    assert pacs.archive.retention_holds(["1", "2"]) == {
        "1": "router: pending send",
        "2": "broken: failed to answer, held",
    }
    assert [(f.plugin, f.hook) for f in pacs.hooks.failures] == [("broken", "retention_holds")]


def test_retention_holds_answer_that_is_not_a_dict_holds_all(make_pacs):
    pacs = make_pacs(Holds(["1"]))
    assert pacs.archive.retention_holds(["1", "2"]) == {
        "1": "holds: failed to answer, held",
        "2": "holds: failed to answer, held",
    }


class Greeter:
    @hookimpl
    def cli_commands(self, subparsers):
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("--loud", action="store_true")
        parser.set_defaults(func=lambda args, pacs: 0)


class Copycat:
    @hookimpl
    def cli_commands(self, subparsers):
        subparsers.add_parser("hello", help="again")


def test_cli_commands_adds_subcommands_and_skips_taken_names():
    host = PluginHost()
    host.register(Greeter(), name="greeter")
    host.register(Copycat(), name="copycat")
    parser = argparse.ArgumentParser(prog="pacscore")
    commands = parser.add_subparsers(dest="command")
    add_plugin_commands(commands, host)
    args = parser.parse_args(["hello", "--loud"])
    assert args.loud and callable(args.func)
    assert args.plugin_command == "greeter"
    assert list(commands.choices) == ["hello"]
