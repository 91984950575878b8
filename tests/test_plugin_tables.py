"""Plugins own their tables (hooks ``database_models`` and ``database_migrations``).

A database created when the core still declared the bundled plugins' five
tables keeps their rows once opened by the plugins that declare them now; a
third-party plugin gets its table created, its columns added and its steps
run once, each step recorded under the plugin's name; a plugin whose tables
cannot be prepared is marked failed without stopping anything else.
"""

from __future__ import annotations

import logging
from datetime import datetime

import pytest
from cryptography.x509 import load_pem_x509_certificate
from pacscore_apicrypt import directory
from pacscore_apicrypt.models import ApicryptCertificate, ApicryptIdentity
from pacscore_email.models import MailAlertSent
from pacscore_hl7.models import Hl7Message
from pacscore_hl7.service import process_text
from pacscore_router.models import RouterDelivery
from peewee import CharField, DateTimeField, IntegerField, TextField, fn

from pacscore import hookimpl
from pacscore.app import open_pacs
from pacscore.config import Config
from pacscore.db import bind_database, connection, db, utcnow
from pacscore.migrations import create_tables
from pacscore.models import AppliedMigration, BaseModel, Job, PluginFailureRecord, User
from pacscore.secrets import SecretBox
from tests.conftest import db_url, make_pacs  # noqa: F401 - fixtures
from tests.pki import TestCA
from tests.webclient import Console, add_user, web_app

pytestmark = pytest.mark.timeout(120)

ORDER = (
    "MSH|^~\\&|HIS|HOSP|PACSCORE|RAD|20240101120000||ORM^O01|{cid}|P|2.5\r"
    "PID|1||P1^^^HOSP||DOE^JOHN||19700102|M\r"
    "ORC|NW|PLC{cid}|FIL{cid}||SC||^^^20240102090000\r"
    "OBR|1|PLC{cid}|FIL{cid}|CT^CT Thorax^L||||||||||||1^Ref^Doc||ACC{cid}|RP1|SPS1||||CT\r"
)


def models_of_main_106d42e() -> list[type[BaseModel]]:
    """The five tables as the core declared them in pacscore/models.py at commit 106d42e,
    copied unchanged: what every database created before the move holds."""

    class Hl7Message(BaseModel):
        """An HL7 v2 message received (by a plugin), its outcome and the ACK sent."""

        # few indexes: each one is written by every message of a feed
        received_at = DateTimeField(default=utcnow)
        peer = CharField(max_length=64, default="")
        message_type = CharField(max_length=32, default="")  # e.g. ORM^O01
        control_id = CharField(max_length=64, default="", index=True)
        charset = CharField(max_length=32, default="")
        text = TextField()  # the decoded message, segments separated by CR
        outcome = CharField(max_length=2, default="")  # AA, AE, AR
        detail = TextField(default="")  # what was done, or why not
        ack = TextField(default="")
        replay_of = IntegerField(null=True)

    class RouterDelivery(BaseModel):
        rule = CharField(max_length=128)
        node = CharField(max_length=64)
        sop_uid = CharField(max_length=64)
        study_uid = CharField(max_length=64, index=True)
        state = CharField(max_length=16, default="queued")
        job_id = IntegerField(default=0, index=True)
        updated = DateTimeField(default=utcnow)

        class Meta:
            indexes = ((("rule", "node", "sop_uid"), True),)

    class MailAlertSent(BaseModel):
        key = CharField(max_length=255, unique=True)
        last_sent = DateTimeField(default=utcnow)
        suppressed = IntegerField(default=0)  # occurrences not mailed since last_sent

    class ApicryptIdentity(BaseModel):
        email = CharField(max_length=255, default="")
        name = CharField(max_length=324, default="")
        fingerprint = CharField(max_length=64)  # SHA-256 of our certificate, hex
        not_after = DateTimeField()
        cert_pem = TextField()  # our certificate, then its chain
        key = TextField()  # PKCS#8 PEM, encrypted with pacs.secrets
        imported = DateTimeField(default=utcnow)

    class ApicryptCertificate(BaseModel):
        email = CharField(max_length=255, index=True)  # lower-case
        name = CharField(max_length=324, default="")
        subject = TextField(default="")
        issuer = TextField(default="")
        serial = CharField(max_length=128, default="")
        fingerprint = CharField(max_length=64, index=True)  # SHA-256, hex
        not_before = DateTimeField()
        not_after = DateTimeField(index=True)
        pem = TextField()
        imported = DateTimeField(default=utcnow)

        class Meta:
            indexes = ((("fingerprint", "email"), True),)

    return [Hl7Message, RouterDelivery, MailAlertSent, ApicryptIdentity, ApicryptCertificate]


MOVED = [Hl7Message, RouterDelivery, MailAlertSent, ApicryptIdentity, ApicryptCertificate]


def naive(when: datetime) -> datetime:
    return when.replace(tzinfo=None)  # UTC, as the tables keep it


def schema_sql(model: type[BaseModel]) -> list[str]:
    """The statements that create the model's table and indexes on the bound database."""
    statements = [model._schema._create_table(safe=True)]
    statements += model._schema._create_indexes(safe=True)
    return [db.obj.get_sql_context().sql(statement).query()[0] for statement in statements]


# -- a database of main: its rows survive the move ------------------------------------------


def test_a_database_of_main_keeps_its_plugin_rows(tmp_path, db_url, caplog):  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    Config(home=home, db_url=db_url).save()
    person = TestCA("old database CA").person("Centre Imagerie", "imagerie@centre.apicrypt.org")
    correspondent = TestCA("correspondents CA").person("Jean Dupont", "dupont@x.apicrypt.org")

    # the database as main's `pacscore init` left it, then used: core tables, the five
    old = {model.__name__: model for model in models_of_main_106d42e()}
    database = bind_database(db_url, home)
    create_tables()
    with connection():
        db.create_tables(list(old.values()))
        old["Hl7Message"].create(
            peer="10.0.0.1:5000", message_type="ORM^O01", control_id="OLD1",
            text=ORDER.format(cid="OLD1"), outcome="AA", detail="entry created",
            ack="MSH|...\rMSA|AA|OLD1\r",
        )  # fmt: skip
        job = Job.create(kind="router.send", payload="{}")  # pending: the study is held
        old["RouterDelivery"].create(
            rule="to-review", node="REVIEW", sop_uid="1.2.3.4.1", study_uid="1.2.3.4", job_id=job.id
        )
        old["MailAlertSent"].create(key="storage_full:default", suppressed=3)
        ours, theirs = (load_pem_x509_certificate(p.cert_pem()) for p in (person, correspondent))
        old["ApicryptIdentity"].create(  # as main's import_identity wrote it
            email="imagerie@centre.apicrypt.org", name="Centre Imagerie",
            fingerprint=directory.fingerprint(ours), not_after=naive(ours.not_valid_after_utc),
            cert_pem=person.cert_pem().decode(), key=SecretBox(home).encrypt(person.key_pem()),
        )  # fmt: skip
        old["ApicryptCertificate"].create(
            email="dupont@x.apicrypt.org", name="Jean Dupont",
            fingerprint=directory.fingerprint(theirs), pem=correspondent.cert_pem().decode(),
            not_before=naive(theirs.not_valid_before_utc),
            not_after=naive(theirs.not_valid_after_utc),
        )  # fmt: skip
    database.close_all()

    with caplog.at_level(logging.WARNING, logger="pacscore.migrations"):
        pacs = open_pacs(home)  # the new code's start-up: core, plugins, their tables
    try:
        assert "schema upgrade" not in caplog.text  # the same tables: nothing to change
        with connection():
            for model in MOVED:  # the same table names, columns and indexes
                assert schema_sql(model) == schema_sql(old[model.__name__])
            assert not [m.name for m in AppliedMigration.select() if ":" in m.name]

            # read through the plugins' models
            logged = Hl7Message.get(Hl7Message.control_id == "OLD1")
            assert (logged.peer, logged.outcome) == ("10.0.0.1:5000", "AA")
            sent = RouterDelivery.get()
            assert (sent.rule, sent.node, sent.state) == ("to-review", "REVIEW", "queued")
            assert MailAlertSent.get().suppressed == 3
            me = directory.identity(pacs)  # the key decrypts: the row is whole
            assert me is not None and me.row.email == "imagerie@centre.apicrypt.org"
            assert [c.email for c in ApicryptCertificate.select()] == ["dupont@x.apicrypt.org"]

            # and through what users see: the purge hold, the log page, the API
            assert pacs.archive.retention_holds(["1.2.3.4"]) == {
                "1.2.3.4": f"router: router: send to REVIEW is pending (job {job.id})"
            }
            add_user("root", "system administrator")
        console = Console(web_app(pacs))
        assert console.login("root").status_code == 302
        page = console.get("/hl7/").text
        assert "OLD1" in page and "MSA|AA|OLD1" in page
        identity = console.get("/api/v1/apicrypt/identity")
        assert identity.status_code == 200, identity.text
        assert identity.json["email"] == "imagerie@centre.apicrypt.org"
        listed = console.get("/api/v1/apicrypt/certificates").json["certificates"]
        assert [c["email"] for c in listed] == ["dupont@x.apicrypt.org"]

        # and the plugins go on writing to them
        assert process_text(pacs, ORDER.format(cid="NEW1"), "10.0.0.2:5000").code == "AA"
        with connection():
            assert Hl7Message.select().count() == 2
    finally:
        pacs.database.close_all()


# -- a third-party plugin ---------------------------------------------------------------------


class NoteV1(BaseModel):
    text = TextField()

    class Meta:
        table_name = "notes_note"


class NoteV2(BaseModel):  # the plugin's next release: a new column, filled in by a step
    text = TextField()
    title = CharField(max_length=64, default="")

    class Meta:
        table_name = "notes_note"


class Notes:
    """A plugin keeping notes in a table of its own, in some release."""

    def __init__(self, models, steps=()) -> None:
        self.models, self.steps = models, list(steps)
        self.alerts: list[str] = []

    @hookimpl
    def database_models(self):
        return self.models

    @hookimpl
    def database_migrations(self):
        return self.steps

    @hookimpl
    def on_alert(self, kind):
        self.alerts.append(kind)


def applied() -> list[str]:
    with connection():
        return sorted(m.name for m in AppliedMigration.select() if m.name.startswith("notes:"))


def test_a_plugin_table_is_created_then_upgraded_and_each_step_runs_once(make_pacs):  # noqa: F811
    ran: list[str] = []

    def seed() -> None:
        ran.append("seed")

    def titles() -> None:
        ran.append("titles")
        NoteV2.update(title=fn.UPPER(NoteV2.text)).execute()

    make_pacs(Notes([NoteV1], [("seed", seed)]))
    with connection():
        NoteV1.insert_many([{"text": "ab"}, {"text": "cd"}]).execute()
    # a new table has the shape its steps produce: recorded, not run
    assert ran == [] and applied() == ["notes:seed"]

    # the next release, at the next start: its column added, its new step run
    make_pacs(Notes([NoteV2], [("seed", seed), ("titles", titles)]))
    assert ran == ["titles"] and applied() == ["notes:seed", "notes:titles"]
    with connection():
        assert sorted((n.text, n.title) for n in NoteV2.select()) == [("ab", "AB"), ("cd", "CD")]

    make_pacs(Notes([NoteV2], [("seed", seed), ("titles", titles)]))  # and again: once only
    assert ran == ["titles"]


def test_a_plugin_whose_tables_fail_is_marked_failed_and_others_go_on(make_pacs):  # noqa: F811
    class Broken(Notes):
        @hookimpl
        def database_models(self):
            raise RuntimeError("no tables today")

    class Greedy(Notes):  # claims a core table
        pass

    broken, greedy, notes = Broken([]), Greedy([User]), Notes([NoteV1])
    pacs = make_pacs(broken, greedy, notes)
    states = {info.name: info for info in pacs.hooks.list()}
    assert states["broken"].state == "failed" and "no tables today" in states["broken"].error
    assert states["greedy"].state == "failed" and "'user' is the core's" in states["greedy"].error
    assert states["notes"].state == "loaded"
    with connection():
        assert db.table_exists("notes_note")
        recorded = {(r.plugin, r.hook) for r in PluginFailureRecord.select()}
    assert {("broken", "database_models"), ("greedy", "database_models")} <= recorded
    pacs.alert("low_disk_space", "test")  # the failed plugins' hooks are not called
    assert notes.alerts == ["low_disk_space"] and broken.alerts == greedy.alerts == []


def test_a_failing_step_is_rolled_back_and_tried_again_at_the_next_start(make_pacs):  # noqa: F811
    make_pacs(Notes([NoteV1]))
    with connection():
        NoteV1.create(text="ab")

    def fails() -> None:
        NoteV2.update(title="half done").execute()
        raise ValueError("step broken")

    pacs = make_pacs(Notes([NoteV2], [("titles", fails)]))
    assert {i.name: i.state for i in pacs.hooks.list()}["notes"] == "failed"
    assert applied() == []
    with connection():
        assert NoteV2.get().title == ""  # rolled back

    def works() -> None:
        NoteV2.update(title=fn.UPPER(NoteV2.text)).execute()

    pacs = make_pacs(Notes([NoteV2], [("titles", works)]))
    assert {i.name: i.state for i in pacs.hooks.list()}["notes"] == "loaded"
    assert applied() == ["notes:titles"]
    with connection():
        assert NoteV2.get().title == "AB"


def test_a_plugin_switched_on_while_running_gets_its_tables(make_pacs):  # noqa: F811
    pacs = make_pacs()
    pacs.hooks.load_entry_points(disabled={"hl7"})  # disabled when this process started
    pacs.prepare_plugin_tables()
    with connection():
        assert not db.table_exists(Hl7Message._meta.table_name)
        assert db.table_exists(RouterDelivery._meta.table_name)
    pacs.follow_plugin_states()  # the database has it enabled (no PluginState row)
    with connection():
        assert db.table_exists(Hl7Message._meta.table_name)
    assert process_text(pacs, ORDER.format(cid="C1"), "").code == "AA"
    with connection():
        assert Hl7Message.get().control_id == "C1"
