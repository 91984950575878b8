"""Test plugin: its module cannot be imported."""

raise RuntimeError("pacscore_test_broken_import is broken on purpose")
