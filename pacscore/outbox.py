"""At-least-once delivery of hook events, off the threads that produced them.

Producers call :meth:`Outbox.enqueue` inside the transaction that changes the
data (so the event and the change commit together).  The dispatcher thread
calls the hook for each event, then deletes it; an event in flight when the
process dies is delivered again at the next start.  The same thread fires
``on_study_stable`` for studies that received nothing for a while.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pacscore import sql
from pacscore.archive import DeletedInstance, StoredInstance
from pacscore.db import connection, utcnow
from pacscore.models import OutboxEvent, Patient, Study

if TYPE_CHECKING:
    from pacscore.app import Pacs

log = logging.getLogger(__name__)

# dataclasses that may travel in an event, by name
PAYLOAD_TYPES = {cls.__name__: cls for cls in (StoredInstance, DeletedInstance)}


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        # the payloads are flat: no need for asdict's recursive copy (27 us against 4)
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"__type__": type(value).__name__, **fields}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and value.get("__type__") in PAYLOAD_TYPES:
        fields = {k: v for k, v in value.items() if k != "__type__"}
        return PAYLOAD_TYPES[value["__type__"]](**fields)
    return value


class Outbox:
    BATCH = 200

    def __init__(self, pacs: Pacs) -> None:
        self.pacs = pacs
        self._wakeup = threading.Event()

    def enqueue(self, hook: str, **kwargs: Any) -> None:
        """Record a hook call owed to plugins; call it inside the data's transaction.

        Nothing is recorded for a hook no loaded plugin implements (plugins
        are loaded at start, so none could receive it in this process), nor
        for one whose implementations all say they do not want it now
        (the ``event_wanted`` hook).
        """
        if not self.pacs.hooks.wanted(hook, self.pacs):
            return
        payload = json.dumps({k: _encode(v) for k, v in kwargs.items()})
        sql.insert(OutboxEvent, {"hook": hook, "payload": payload})

    def enqueue_many(self, hook: str, calls: list[dict[str, Any]]) -> None:
        """Record several calls of one hook (each a dict of arguments) in one statement."""
        if not calls or not self.pacs.hooks.wanted(hook, self.pacs):
            return
        rows = [
            {"hook": hook, "payload": json.dumps({k: _encode(v) for k, v in call.items()})}
            for call in calls
        ]
        for start in range(0, len(rows), 500):
            OutboxEvent.insert_many(rows[start : start + 500]).execute()

    def wake(self) -> None:
        self._wakeup.set()

    def wait(self, timeout: float) -> None:
        self._wakeup.wait(timeout)
        self._wakeup.clear()

    def drain(self) -> int:
        """Deliver up to one batch of pending events; return how many were delivered."""
        with connection():
            events = list(OutboxEvent.select().order_by(OutboxEvent.id).limit(self.BATCH))
            for event in events:
                kwargs = {k: _decode(v) for k, v in json.loads(event.payload).items()}
                self.pacs.hooks.call(event.hook, pacs=self.pacs, **kwargs)
            # one commit per batch: a crash redelivers the batch (at least once)
            if events:
                OutboxEvent.delete().where(OutboxEvent.id.in_([e.id for e in events])).execute()
        return len(events)

    def fire_stable_studies(self) -> int:
        """Fire ``on_study_stable`` for studies quiet for ``study_stable_seconds``."""
        quiet = timedelta(seconds=self.pacs.settings.core["study_stable_seconds"])
        fired = 0
        with connection():
            # a list, not a lazy cursor: on SQLite an open read statement keeps an old
            # snapshot, and the writes below (and the hooks') could not commit after
            # another thread's write
            studies = list(
                Study.select(Study, Patient.patient_id)
                .join(Patient)
                .where(~Study.stable & (Study.last_received < utcnow() - quiet))
                .limit(self.BATCH)
            )
            for study in studies:
                self.pacs.hooks.relay.on_study_stable(
                    pacs=self.pacs,
                    study_uid=study.study_uid,
                    patient_id=study.patient.patient_id,
                    num_instances=study.num_instances,
                )
                # unchanged last_received: nothing arrived while the hook ran
                Study.update(stable=True).where(
                    (Study.id == study.id) & (Study.last_received == study.last_received)
                ).execute()
                fired += 1
        return fired


class Dispatcher(threading.Thread):
    """Drains the outbox and fires stable-study events until stopped."""

    IDLE_SECONDS = 1.0
    # after a wake-up, let a burst of stores accumulate into one batch
    COALESCE_SECONDS = 0.05
    # quiet periods are tens of seconds: looking for quiet studies at every wake-up
    # (20 times a second while storing) cost a C-STORE about 3% of its CPU
    STABLE_CHECK_SECONDS = 1.0

    def __init__(self, pacs: Pacs) -> None:
        super().__init__(name="pacscore-dispatcher", daemon=True)
        self.pacs = pacs
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.pacs.outbox.wake()

    def run(self) -> None:
        outbox = self.pacs.outbox
        next_stable_check = 0.0
        while not self._stop_event.is_set():
            try:
                delivered = outbox.drain()
                if time.monotonic() >= next_stable_check:
                    more = outbox.fire_stable_studies() == outbox.BATCH
                    next_stable_check = time.monotonic() + (
                        0 if more else self.STABLE_CHECK_SECONDS
                    )
            except Exception:  # the dispatcher must outlive a database hiccup
                log.exception("dispatcher iteration failed")
                delivered = 0
            if delivered < outbox.BATCH:
                outbox.wait(self.IDLE_SECONDS)
                self._stop_event.wait(self.COALESCE_SECONDS)
