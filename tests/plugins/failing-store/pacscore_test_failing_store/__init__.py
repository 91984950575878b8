"""Test plugin: every on_store raises (the store and the other plugins must not care)."""

from pacscore import hookimpl


@hookimpl
def on_store(instance):
    raise RuntimeError(f"failing_store refuses to handle {instance.sop_uid}")
