"""The DICOM listener (pacscore as the SCP): one AE title, every storage SOP class,
Q/R, worklist, MPPS and echo.  Each service's handler is in its ``*_scp`` module;
pynetdicom's extensions (``pynetdicom_ext``) are installed before the AE is built."""

from __future__ import annotations

import logging
import socket
import threading

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from pacscore.dicom import connections, pynetdicom_ext
from pacscore.dicom.find_scp import handle_find
from pacscore.dicom.mpps_scp import handle_n_create, handle_n_set
from pacscore.dicom.mwl_scp import handle_worklist_find
from pacscore.dicom.retrieve_scp import handle_get, handle_move
from pacscore.dicom.store_scp import handle_store

log = logging.getLogger(__name__)

QUERY_RETRIEVE = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)
# The acceptor's order decides which syntax of a proposed context is taken.  Explicit
# VR first: what modalities send and we mostly store, so that a C-GET's sub-operations
# (negotiated before anything is chosen) send the stored bytes instead of re-encoding
# them, and incoming data keeps its VRs (pynetdicom's list starts with implicit VR)
STORAGE_SYNTAXES = [
    ExplicitVRLittleEndian,
    *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian),
]
# what we receive per PDU: large enough to read big instances in few reads
MAX_PDU = 128 * 1024
# how long stopping the accept loop may wait
ACCEPT_POLL_SECONDS = 0.05
# pynetdicom's accept loop runs a full gc.collect() every 60 turns, every 30 s at its
# own 0.5 s poll; at ours that would be every 3 s, each holding the GIL for tens of ms
FULL_COLLECT_SECONDS = 30
# pynetdicom internals the accept loop relies on (not extensions: nothing is rebound),
# with the SHA-256 of their source in the tested version (see pynetdicom_ext)
UPSTREAM = {
    "pynetdicom.transport.AssociationServer.service_actions": (  # its _gc counter set
        "0a0853a3615ac7c5260a57dcdc8b0e9908d655919b7d64737c89534869758873"
    ),
    "pynetdicom.ae.ApplicationEntity.start_server": (  # its _servers.append repeated
        "d3868a2df83d3cc08966b575dd8663ee18f101b03ec8d2766639c621b2d58841"
    ),
    "pynetdicom.ae.ApplicationEntity.shutdown": (  # stops the servers in _servers
        "3084723b79cf471ee5866c61327fc3a7af8f3976791a3c946baec4b15f5c6d49"
    ),
}


def build_ae(pacs) -> AE:
    ae = AE(ae_title=pacs.config.aet)
    ae.pacs = pacs  # read by the guarded Query/Retrieve service class
    ae.maximum_pdu_size = MAX_PDU
    ae.maximum_associations = 64
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 120
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    # scp_role for C-GET: the peer is the Storage SCP on the same association
    for context in StoragePresentationContexts:
        ae.add_supported_context(
            context.abstract_syntax, STORAGE_SYNTAXES, scp_role=True, scu_role=False
        )
    for sop_class in QUERY_RETRIEVE:
        ae.add_supported_context(sop_class)
    ae.add_supported_context(ModalityWorklistInformationFind)
    ae.add_supported_context(ModalityPerformedProcedureStep)
    return ae


def find_by_model(event, pacs):
    """One C-FIND event for every information model: the worklist has its own handler."""
    if event.request.AffectedSOPClassUID == ModalityWorklistInformationFind:
        return handle_worklist_find(event, pacs)
    return handle_find(event, pacs)


def handlers(pacs) -> list:
    bound = [
        (evt.EVT_C_STORE, handle_store),
        (evt.EVT_C_FIND, find_by_model),
        (evt.EVT_N_CREATE, handle_n_create),
        (evt.EVT_N_SET, handle_n_set),
        (evt.EVT_C_MOVE, handle_move),
        (evt.EVT_C_GET, handle_get),
    ]
    # no database connection kept between messages (dicom/connections.py)
    return [(event, connections.per_message(handler), [pacs]) for event, handler in bound]


def start_dicom_server(pacs, host: str, port: int, listen_socket: socket.socket | None = None):
    """Start listening in background threads; returns the pynetdicom server.

    ``listen_socket``: the listening socket shared by the listener processes
    (dicom/pynetdicom_ext/shared_listener.py), instead of binding ``host:port``.
    """
    server = make_dicom_server(pacs, host, port, listen_socket)
    start_accepting(server)
    return server


def make_dicom_server(pacs, host: str, port: int, listen_socket: socket.socket | None = None):
    """The pynetdicom server, bound (or on ``listen_socket``) but not accepting yet:
    :func:`start_accepting` starts it; one never started is closed with
    ``server.server_close()`` (its ``shutdown()`` would wait for an accept loop)."""
    pynetdicom_ext.install_all(pacs.config.lean_store)
    ae = build_ae(pacs)
    ae.listen_socket = listen_socket
    server = ae.make_server(
        (host, port), evt_handlers=handlers(pacs), server_class=ThreadedAssociationServer
    )
    server._gc[1] = round(FULL_COLLECT_SECONDS / ACCEPT_POLL_SECONDS) - 1
    return server


def start_accepting(server) -> None:
    """Run the accept loop of a server made by :func:`make_dicom_server`."""
    # start_server(block=False) polls every 0.5 s: each stop of a server would wait that long
    accept_loop = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": ACCEPT_POLL_SECONDS},
        name="pacscore-dicom-accept",
        daemon=True,
    )
    accept_loop.start()
    server.ae._servers.append(server)  # so that ae.shutdown() stops it, as start_server does
    bound_host, bound_port = server.server_address[:2]
    log.info("DICOM listening on %s:%d as %s", bound_host, bound_port, server.ae.ae_title)
