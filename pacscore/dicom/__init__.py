"""DICOM network services: the SCP (echo, store, find, move, get) and SCU helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def per_association(assoc: Any, name: str, factory: Callable[[], T]) -> T:
    """The object ``name`` that the extensions keep on a pynetdicom association,
    created on first use (``setdefault``: two threads asking first get the same one)."""
    value = assoc.__dict__.get(name)
    if value is None:
        value = assoc.__dict__.setdefault(name, factory())
    return value
