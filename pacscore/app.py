"""The application object: configuration, database, plugins and core services.

One :class:`Pacs` per process (or per test); nothing here is a module global,
so tests build as many as they need, each with its own plugin host.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from marshmallow import ValidationError
from peewee import DatabaseError

from pacscore import migrations, sql
from pacscore.archive import Archive
from pacscore.config import CORE_SETTINGS, Config
from pacscore.db import bind_database, connection
from pacscore.jobs import Jobs
from pacscore.models import Node, PluginFailureRecord, PluginState, Setting, Storage
from pacscore.outbox import Outbox
from pacscore.patients import Patients
from pacscore.plugins import PluginFailure, PluginHost
from pacscore.rights import ensure_default_profiles
from pacscore.secrets import SecretBox, is_encrypted
from pacscore.storage import recover_incoming
from pacscore.worklist import Worklist

log = logging.getLogger(__name__)

CORE_SETTINGS_KEY = "core"


class Settings:
    """Run-time settings stored in the database, re-read every few seconds so
    that a change made by another process (CLI, console) takes effect."""

    CACHE_SECONDS = 2.0

    def __init__(self) -> None:
        self._core: dict[str, Any] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    @property
    def core(self) -> dict[str, Any]:
        with self._lock:
            if self._core is None or time.monotonic() - self._loaded_at > self.CACHE_SECONDS:
                row = Setting.get_or_none(Setting.key == CORE_SETTINGS_KEY)
                stored = json.loads(row.value) if row else {}
                self._core = CORE_SETTINGS.load(stored)
                self._loaded_at = time.monotonic()
            return self._core

    def update_core(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate and persist changes; raises ``ValidationError``."""
        merged = {**CORE_SETTINGS.dump(self.core), **changes}
        validated = CORE_SETTINGS.load(merged)
        value = json.dumps(CORE_SETTINGS.dump(validated))
        Setting.insert(key=CORE_SETTINGS_KEY, value=value).on_conflict(
            conflict_target=[Setting.key], update={Setting.value: value}
        ).execute()
        with self._lock:
            self._core = validated
            self._loaded_at = time.monotonic()
        return validated


class Nodes:
    """Declared DICOM peers and their rights, looked up by AE title."""

    CACHE_SECONDS = 2.0

    def __init__(self) -> None:
        self._by_aet: dict[str, list[Node]] = {}
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def _load(self, refresh: bool = False) -> dict[str, list[Node]]:
        with self._lock:
            if refresh or time.monotonic() - self._loaded_at > self.CACHE_SECONDS:
                by_aet: dict[str, list[Node]] = {}
                for node in Node.select().where(Node.enabled):
                    by_aet.setdefault(node.aet.strip(), []).append(node)
                self._by_aet = by_aet
                self._loaded_at = time.monotonic()
            return self._by_aet

    def by_aet(self, aet: str) -> list[Node]:
        # a miss re-reads the table: a node declared a moment ago is known at once
        return self._load().get(aet.strip()) or self._load(refresh=True).get(aet.strip(), [])

    def allows(self, aet: str, right: str) -> bool:
        def granted(nodes: dict[str, list[Node]]) -> bool:
            return any(getattr(node, f"allow_{right}") for node in nodes.get(aet.strip(), []))

        return granted(self._load()) or granted(self._load(refresh=True))

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = 0.0


class Pacs:
    def __init__(self, config: Config, hooks: PluginHost | None = None) -> None:
        self.config = config
        self.database = bind_database(config.db_url, config.home)
        self.hooks = hooks or PluginHost(on_failure=self._persist_failure)
        self.settings = Settings()
        self.nodes = Nodes()
        self.archive = Archive(self)
        self.outbox = Outbox(self)
        self.jobs = Jobs(self)
        self.secrets = SecretBox(config.home)
        self.worklist = Worklist(self)
        self.patients = Patients(self)
        # plugin name -> (stored settings text, validated settings)
        self._settings_cache: dict[str, tuple[str | None, dict[str, Any]]] = {}
        self._plugin_states_unread = False  # the last follow_plugin_states() failed
        self._tables_ready: set[str] = set()  # plugins whose tables are prepared
        self._tables_lock = threading.Lock()

    # -- start-up ----------------------------------------------------------

    def prepare(self) -> None:
        """Create or upgrade the tables (the core's, then those of the plugins
        registered), and the default storage folder."""
        migrations.create_tables()
        self.prepare_plugin_tables()
        with connection():
            ensure_default_profiles()
            if not Storage.select().exists():
                default = self.config.home / "storage"
                default.mkdir(parents=True, exist_ok=True)
                Storage.create(name="default", path=str(default))

    def recover(self) -> None:
        """Finish the writes and deletions a crash interrupted (server start)."""
        with connection():
            recover_incoming(list(Storage.select()), self.archive.recover_ready)
            self.archive.empty_trash()

    def load_plugins(self) -> None:
        self.hooks.load_builtins()
        with connection():
            disabled = {p.name for p in PluginState.select().where(~PluginState.enabled)}
        self.hooks.load_entry_points(disabled)
        self.prepare_plugin_tables()

    def prepare_plugin_tables(self) -> None:
        """Create or upgrade the tables of the plugins registered since the last call
        (hooks ``database_models`` and ``database_migrations``); free when none is new.

        Runs once the plugins are loaded and whenever this process follows a plugin
        switched on; tests and embedding applications call it after ``hooks.register``.
        A plugin whose tables cannot be prepared is marked failed and unregistered.
        """
        with self._tables_lock:
            registered = {name for name, plugin in self.hooks.pm.list_name_plugin() if plugin}
            new = registered - self._tables_ready
            if new:
                self._tables_ready |= new - migrations.prepare_plugins(self.hooks, new)

    def follow_plugin_states(self) -> None:
        """Apply here the plugins enabled or disabled since in the database (by the
        console in another process, or by ``pacscore plugins``); the server's
        processes call it every half second."""
        try:
            with connection():
                states = dict(PluginState.select(PluginState.name, PluginState.enabled).tuples())
        except DatabaseError as exc:
            if not self._plugin_states_unread:  # once per outage, not twice a second
                log.warning("cannot read the plugins' states: %s", exc)
            self._plugin_states_unread = True
            return
        self._plugin_states_unread = False
        self.hooks.follow(states)
        self.prepare_plugin_tables()  # a plugin switched on gets its tables before its events

    # -- services for plugins ----------------------------------------------

    def alert(self, kind: str, message: str, **details: Any) -> None:
        """Raise an administrator alert: logged, then ``on_alert`` for every plugin."""
        log.error("alert %s: %s", kind, message)
        self.hooks.relay.on_alert(pacs=self, kind=kind, message=message, details=details)

    def send_mail(
        self,
        to: list[str],
        subject: str,
        text: str,
        html: str | None = None,
        kind: str = "",
        reply_to: str | None = None,
    ) -> int:
        """Enqueue an e-mail (a durable ``mail`` job); return the job id.

        See :func:`pacscore.mail.send_mail`.  Raises ``ValueError`` on an
        invalid address.  Delivery needs a plugin implementing ``deliver_mail``.
        """
        from pacscore.mail import send_mail

        return send_mail(self, to, subject, text, html=html, kind=kind, reply_to=reply_to)

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """A plugin's settings, validated by its schema (defaults filled in).

        Read on every call (a change made by another process applies at once);
        only the validation is cached, per stored text: hooks such as
        ``on_store`` ask for their settings once per event.  A shallow copy:
        do not mutate nested values.
        """
        raw = sql.select_value(PluginState, "settings", "name", name)
        cached = self._settings_cache.get(name)
        if cached is None or cached[0] != raw:
            cached = self._settings_cache[name] = (raw, self._load_settings(name, raw))
        return dict(cached[1])

    def _load_settings(self, name: str, raw: str | None) -> dict[str, Any]:
        stored = json.loads(raw) if raw else {}
        schema = self.hooks.settings_schema(name)
        if schema is None:
            return stored
        try:
            return schema.load(stored)
        except ValidationError as exc:
            log.error("stored settings of %s are invalid (%s): using defaults", name, exc)
            return schema.load({})

    def save_plugin_settings(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate ``changes`` with the plugin's schema and persist them.

        The values of fields with ``metadata={"secret": True}`` are encrypted
        with ``self.secrets`` before they are stored (and returned, and read
        back by :meth:`plugin_settings`, encrypted: ``self.secrets.decrypt``).
        """
        schema = self.hooks.settings_schema(name)
        if schema is None:
            raise ValidationError({"_schema": [f"plugin {name} has no settings"]})
        row = PluginState.get_or_none(PluginState.name == name)
        current = json.loads(row.settings) if row else {}
        validated = self._encrypt_secret_fields(schema, schema.load({**current, **changes}))
        value = json.dumps(schema.dump(validated))
        PluginState.insert(name=name, settings=value).on_conflict(
            conflict_target=[PluginState.name], update={PluginState.settings: value}
        ).execute()
        return validated

    def _encrypt_secret_fields(self, schema, values: dict[str, Any]) -> dict[str, Any]:
        """Encrypt the fields declared ``metadata={"secret": True}`` (passwords): plugin
        settings never hold a secret in clear; the plugin calls ``pacs.secrets.decrypt``."""
        encrypted = dict(values)
        for name, field in schema.fields.items():
            value = encrypted.get(name)
            if field.metadata.get("secret") and value and not is_encrypted(value):
                encrypted[name] = self.secrets.encrypt(value)
        return encrypted

    def _persist_failure(self, failure: PluginFailure) -> None:
        with connection():
            PluginFailureRecord.create(
                plugin=failure.plugin, hook=failure.hook, error=failure.error[:4000]
            )


def open_pacs(home: Path, load_plugins: bool = True) -> Pacs:
    pacs = Pacs(Config.load(home))
    pacs.prepare()
    if load_plugins:
        pacs.load_plugins()
    return pacs
