"""Periodic tasks contributed by plugins through the ``periodic_tasks`` hook."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pacscore.db import connection

if TYPE_CHECKING:
    from pacscore.app import Pacs

log = logging.getLogger(__name__)


@dataclass
class PeriodicTask:
    """``func(pacs)`` is called every ``interval`` seconds in the scheduler thread."""

    name: str
    interval: float
    func: Callable[[Pacs], None]
    plugin: str = ""


class Scheduler(threading.Thread):
    def __init__(self, pacs: Pacs) -> None:
        super().__init__(name="pacscore-scheduler", daemon=True)
        self.pacs = pacs
        self._stop_event = threading.Event()
        self.tasks: list[PeriodicTask] = []

    def collect(self) -> None:
        for plugin, tasks in self.pacs.hooks.relay.periodic_tasks(pacs=self.pacs):
            for task in tasks:
                task.plugin = task.plugin or plugin
                self.tasks.append(task)

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        due = {id(t): time.monotonic() + t.interval for t in self.tasks}
        while not self._stop_event.is_set():
            now = time.monotonic()
            for task in self.tasks:
                if due[id(task)] <= now:
                    self._run(task)
                    due[id(task)] = time.monotonic() + task.interval
            next_due = min(due.values(), default=now + 1.0)
            self._stop_event.wait(max(0.05, min(1.0, next_due - time.monotonic())))

    def _run(self, task: PeriodicTask) -> None:
        try:
            with connection():
                task.func(self.pacs)
        except Exception as exc:  # noqa: BLE001 - a task failure is the plugin's
            self.pacs.hooks.record_failure(task.plugin, f"periodic:{task.name}", exc)
