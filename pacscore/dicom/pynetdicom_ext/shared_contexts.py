"""The supported presentation contexts, shared by the associations, not copied.

pynetdicom gives each new association a deep copy of the server's supported
presentation contexts (``RequestHandler._create_association``): for our 129
contexts that is about 57 ms of CPU per association, paid again by every
modality that opens an association per study or per instance.  Negotiation
only reads them (``negotiate_as_acceptor`` builds new context objects for
what it accepts) and nothing changes them once the server runs, so each
association gets a new list of the same context objects instead.
"""

from __future__ import annotations

from typing import TypeVar

import pynetdicom.transport as transport

T = TypeVar("T")
# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom.transport.RequestHandler._create_association": (  # its deepcopy replaced
        "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e"
    ),
}


def share(contexts: list[T]) -> list[T]:
    """Stands in for ``copy.deepcopy`` in pynetdicom's transport module, where it
    copies nothing but the server's contexts."""
    return list(contexts)


def install() -> None:
    transport.deepcopy = share
