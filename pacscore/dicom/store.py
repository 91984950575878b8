"""Storage SCP: C-STORE requests to the archive, bytes written as received."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset

from pacscore.dicom import status
from pacscore.models import connection

log = logging.getLogger(__name__)


def status_dataset(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment and code != status.SUCCESS:
        # Error Comment is LO: at most 64 characters
        ds.ErrorComment = comment[:64]
    return ds


def handle_store(event, pacs) -> Dataset:
    calling_ae = event.assoc.requestor.ae_title
    settings = pacs.settings.core
    if settings["store_from_declared_nodes_only"] and not pacs.nodes.allows(calling_ae, "store"):
        log.warning("refused C-STORE from %s: not a declared node allowed to store", calling_ae)
        return status_dataset(status.NOT_AUTHORIZED, f"{calling_ae} may not store")
    data = event.request.DataSet.getvalue()
    with connection():
        result = pacs.archive.store(
            data,
            event.context.transfer_syntax,
            calling_ae=calling_ae,
            called_ae=event.assoc.acceptor.ae_title,
        )
    if not result.ok:
        log.warning(
            "C-STORE %s from %s failed 0x%04X: %s",
            event.request.AffectedSOPInstanceUID,
            calling_ae,
            result.status,
            result.comment,
        )
    return status_dataset(result.status, result.comment)
