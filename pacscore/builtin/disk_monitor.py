"""Built-in plugin: raise ``low_disk_space`` alerts for storage folders."""

from __future__ import annotations

import time

from pacscore.hookspecs import hookimpl
from pacscore.scheduler import PeriodicTask
from pacscore.storage import MB, free_bytes

CHECK_EVERY_SECONDS = 60
REPEAT_ALERT_SECONDS = 3600
_last_alert: dict[int, float] = {}


def check_free_space(pacs) -> None:
    threshold_mb = pacs.settings.core["low_disk_alert_mb"]
    for storage in pacs.archive.folders.all():
        if not storage.enabled:
            continue
        try:
            free_mb = free_bytes(storage.path) // MB
        except OSError as exc:
            pacs.alert(
                "storage_unavailable", f"storage {storage.name}: {exc}", storage=storage.name
            )
            continue
        recently = time.monotonic() - _last_alert.get(storage.id, -REPEAT_ALERT_SECONDS * 2)
        if free_mb < threshold_mb and recently > REPEAT_ALERT_SECONDS:
            _last_alert[storage.id] = time.monotonic()
            pacs.alert(
                "low_disk_space",
                f"storage {storage.name} has {free_mb} MB free (alert under {threshold_mb} MB)",
                storage=storage.name,
                free_mb=free_mb,
            )


@hookimpl
def periodic_tasks(pacs):
    return [PeriodicTask("check_free_space", CHECK_EVERY_SECONDS, check_free_space)]
