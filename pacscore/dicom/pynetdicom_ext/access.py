"""Per-node rights for query, retrieve, worklist and MPPS, checked before any handler runs.

pynetdicom calls the bound handler only after it has committed to a
response shape (a C-MOVE handler must first yield a destination), so a
refusal could not carry the right status from there.  Small subclasses of
its Query/Retrieve, Basic Worklist Management and Procedure Step service
classes check the calling AE first (rights ``find``/``move``/``get``, and
``worklist`` for MWL C-FIND and MPPS) and answer ``0x0124 Refused: Not
authorized`` with an Error Comment.
"""

from __future__ import annotations

import logging

from pynetdicom import association
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE
from pynetdicom.service_class import BasicWorklistManagementServiceClass, QueryRetrieveServiceClass
from pynetdicom.service_class_n import ProcedureStepServiceClass
from pynetdicom.sop_class import uid_to_service_class

from pacscore.db import connection
from pacscore.dicomfile import status

log = logging.getLogger(__name__)

# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom.sop_class.uid_to_service_class": (  # wrapped
        "88fa4636b8cbaacdefe698cc3dbfc527849b9f3d2621777843d08e36eb32c6e8"
    ),
    "pynetdicom.association.Association._serve_request": (  # looks up the replaced name
        "2f24c1759cdf6c8c433094f2a8dd8144f76f5547f03daed7b94e0f78bc12f877"
    ),
    "pynetdicom.service_class.QueryRetrieveServiceClass.SCP": (  # subclassed
        "e59ba54b9071ffc378d9bc75ff4dcf151860e48c9e01b5fdbb4903880e2d85e4"
    ),
    "pynetdicom.service_class.BasicWorklistManagementServiceClass.SCP": (  # subclassed
        "e34e6118c2ba502e14f2795280a8562f196a2dce26cae1c04ebf786d41b56343"
    ),
    "pynetdicom.service_class_n.ProcedureStepServiceClass.SCP": (  # subclassed
        "3ea7cf12a1a2059abe64e52221ce77fa2d1f4b636d9ac3689f56bf362819b5c9"
    ),
}

RIGHT_BY_REQUEST = {C_FIND: "find", C_MOVE: "move", C_GET: "get"}


def _allows(pacs, aet: str, right: str) -> bool:
    # the rights are cached: a connection only when they are read, given back at once
    # (an association thread must not keep one: dicom/connections.py)
    with connection(lazy=True):
        return pacs.nodes.allows(aet, right)


def refusal_response(req, comment: str):
    rsp = type(req)()
    rsp.MessageIDBeingRespondedTo = req.MessageID
    # N-SET requests name the class in RequestedSOPClassUID
    rsp.AffectedSOPClassUID = getattr(req, "AffectedSOPClassUID", None) or getattr(
        req, "RequestedSOPClassUID", None
    )
    rsp.Status = status.NOT_AUTHORIZED
    rsp.ErrorComment = comment[:64]
    return rsp


class GuardedQueryRetrieveServiceClass(QueryRetrieveServiceClass):
    """Query/Retrieve that refuses calling AEs without the matching node right."""

    def SCP(self, req, context) -> None:  # noqa: N802 - pynetdicom's name
        pacs = getattr(self.assoc.ae, "pacs", None)
        right = RIGHT_BY_REQUEST.get(type(req))
        aet = self.assoc.requestor.ae_title
        if pacs is not None and right and not _allows(pacs, aet, right):
            log.warning(
                "refused C-%s from %s: not a declared node with that right", right.upper(), aet
            )
            self.dimse.send_msg(refusal_response(req, f"{aet} may not {right}"), context.context_id)
            return
        super().SCP(req, context)


def _refused(service, req, context, right: str) -> bool:
    """Answer ``Not authorized`` and return True when the calling AE lacks ``right``."""
    pacs = getattr(service.assoc.ae, "pacs", None)
    aet = service.assoc.requestor.ae_title
    if pacs is None or _allows(pacs, aet, right):
        return False
    request = type(req).__name__
    log.warning("refused %s from %s: not a declared node with the %s right", request, aet, right)
    service.dimse.send_msg(refusal_response(req, f"{aet} may not {right}"), context.context_id)
    return True


class GuardedWorklistServiceClass(BasicWorklistManagementServiceClass):
    """Modality Worklist C-FIND, for nodes with the ``worklist`` right only."""

    def SCP(self, req, context) -> None:  # noqa: N802 - pynetdicom's name
        if not _refused(self, req, context, "worklist"):
            super().SCP(req, context)


class GuardedProcedureStepServiceClass(ProcedureStepServiceClass):
    """MPPS N-CREATE/N-SET, for nodes with the ``worklist`` right only (a modality
    that reads the worklist is the one that reports on it)."""

    def SCP(self, req, context) -> None:  # noqa: N802 - pynetdicom's name
        if not _refused(self, req, context, "worklist"):
            super().SCP(req, context)


GUARDED = {
    QueryRetrieveServiceClass: GuardedQueryRetrieveServiceClass,
    BasicWorklistManagementServiceClass: GuardedWorklistServiceClass,
    ProcedureStepServiceClass: GuardedProcedureStepServiceClass,
}


def _guarded_service_class(uid):
    service_class = uid_to_service_class(uid)
    return GUARDED.get(service_class, service_class)


def install() -> None:
    """Route Query/Retrieve, Worklist and MPPS requests through the guarded classes."""
    association.uid_to_service_class = _guarded_service_class
