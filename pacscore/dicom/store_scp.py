"""Storage SCP: C-STORE requests to the archive, bytes written as received."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset

from pacscore.db import connection
from pacscore.dicomfile import status

log = logging.getLogger(__name__)


def status_dataset(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment and code != status.SUCCESS:
        # Error Comment is LO: at most 64 characters
        ds.ErrorComment = comment[:64]
    return ds


def store_dataset(
    pacs,
    data: bytes,
    transfer_syntax: str,
    calling_ae: str,
    called_ae: str,
    sop_instance_uid: str = "",
) -> tuple[int, str]:
    """Check the caller's right, then store; return the (status, comment) to answer."""
    # one connection for the rights and the store, given back before answering: this
    # runs in the DUL thread of an association that may stay open (dicom/connections.py)
    with connection():
        settings = pacs.settings.core
        if settings["store_from_declared_nodes_only"] and not pacs.nodes.allows(
            calling_ae, "store"
        ):
            log.warning("refused C-STORE from %s: not a declared node allowed to store", calling_ae)
            return status.NOT_AUTHORIZED, f"{calling_ae} may not store"
        result = pacs.archive.store(
            data, transfer_syntax, calling_ae=calling_ae, called_ae=called_ae
        )
    if not result.ok:
        log.warning(
            "C-STORE %s from %s failed 0x%04X: %s",
            sop_instance_uid,
            calling_ae,
            result.status,
            result.comment,
        )
    return result.status, result.comment


def handle_store(event, pacs) -> Dataset:
    """pynetdicom's EVT_C_STORE: the requests the lean path did not take
    (pynetdicom_ext/lean_store.py)."""
    code, comment = store_dataset(
        pacs,
        event.request.DataSet.getvalue(),
        event.context.transfer_syntax,
        calling_ae=event.assoc.requestor.ae_title,
        called_ae=event.assoc.acceptor.ae_title,
        sop_instance_uid=event.request.AffectedSOPInstanceUID,
    )
    return status_dataset(code, comment)
