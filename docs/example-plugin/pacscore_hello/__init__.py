"""pacscore-hello: append one line per stored instance to a file.

The smallest useful pacscore plugin: a settings schema (``log_file``) and an
``on_store`` hook, plus ``on_study_stable`` to show a second event.
"""

from __future__ import annotations

from marshmallow import Schema, fields

from pacscore import hookimpl


class HelloSettings(Schema):
    log_file = fields.String(
        load_default=None, allow_none=True, metadata={"help": "file to append to (off if empty)"}
    )


def _append(pacs, line: str) -> None:
    path = pacs.plugin_settings("hello")["log_file"]
    if path:
        with open(path, "a", encoding="utf-8") as fp:
            fp.write(line + "\n")


@hookimpl
def settings_schema():
    return HelloSettings()


@hookimpl
def on_store(pacs, instance):
    # at-least-once delivery: a line may repeat after a crash, never be lost
    _append(pacs, f"{instance.sop_uid} {instance.patient_id} {instance.modality}")


@hookimpl
def on_study_stable(pacs, study_uid, num_instances):
    _append(pacs, f"# study {study_uid} stable with {num_instances} instance(s)")
