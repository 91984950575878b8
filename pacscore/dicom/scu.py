"""SCU helpers: pacscore as a client of other DICOM nodes."""

from __future__ import annotations

import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacscore.models import Node


class EchoFailed(Exception):
    pass


def echo(node: Node, calling_aet: str, timeout: float = 10) -> float:
    """C-ECHO ``node``; return the round trip in milliseconds or raise EchoFailed."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    started = time.perf_counter()
    assoc = ae.associate(node.host, node.port, ae_title=node.aet)
    if not assoc.is_established:
        raise EchoFailed(f"association with {node.aet}@{node.host}:{node.port} failed")
    try:
        result = assoc.send_c_echo()
    finally:
        assoc.release()
    elapsed = (time.perf_counter() - started) * 1000
    if not result or result.get("Status") != 0x0000:
        raise EchoFailed(f"C-ECHO answered {result.get('Status') if result else 'nothing'}")
    return elapsed
