"""Test plugin: append each stored SOP Instance UID to $PACSCORE_TEST_RECORDER_FILE."""

import os

from pacscore import hookimpl


@hookimpl
def on_store(instance):
    path = os.environ.get("PACSCORE_TEST_RECORDER_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as fp:
            fp.write(instance.sop_uid + "\n")
