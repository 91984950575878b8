"""Database connections of the DICOM threads: none kept between two messages.

pynetdicom runs each association in threads of its own: the association
thread runs the event handlers, the DUL thread reads the socket (and, with
:mod:`pacscore.dicom.pynetdicom_ext.lean_store`, stores).  An association may stay open for
minutes, idle or dripping bytes, and end in any way (release, abort, reset,
timeout).  A thread that kept the connection its last message took, for
instance by a cached rights or settings read outside ``connection()``
(peewee connects on the first query), held it all that time: 64 idle peers
emptied the pool, and every store, query and HL7 message failed.

So every handler pacscore binds runs through :func:`per_message`: a
connection only if it queries (``connection(lazy=True)``), given back before
its response goes out; a generator handler gets one per step, none while it
is suspended at a ``yield`` (pynetdicom sends that response, or the peer
aborts and the generator is dropped).  The rights checks of
:mod:`pacscore.dicom.pynetdicom_ext.access` and :func:`pacscore.dicom.store_scp.store_dataset`
(the DUL thread's only database work) scope theirs the same way.  Whatever
still escapes goes back when its thread ends (``db.ThreadBoundPool``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from types import GeneratorType
from typing import Any

from pacscore.db import connection


def per_message(handler: Callable) -> Callable:
    """``handler`` (a pynetdicom event handler) holding a connection only while it runs."""

    @functools.wraps(handler)
    def run(event, *args: Any) -> Any:
        with connection(lazy=True):
            result = handler(event, *args)
        if isinstance(result, GeneratorType):
            return _step_by_step(result)
        return result

    return run


def _step_by_step(steps: Iterator) -> Iterator:
    """The items of a generator handler, each computed in its own connection scope."""
    try:
        while True:
            with connection(lazy=True):
                try:
                    item = next(steps)
                except StopIteration:
                    return
            yield item
    finally:
        # dropped early (an abort, a cancel): its own clean-up may query too
        with connection(lazy=True):
            steps.close()
