"""pacscore with experimental patches, to check a diagnosis without editing pacscore/.

    PACSCORE_EXP=nodelay,outbox,pn python bench/experiments/patched.py --home H serve ...
    PACSCORE_BENCH_CMD="/work/main/.venv/bin/python bench/experiments/patched.py" \\
        PACSCORE_EXP=nodelay /work/main/.venv/bin/python bench/run.py ...

nodelay  TCP_NODELAY on every DICOM socket (accepted and outgoing)
outbox   Outbox.drain deletes the delivered batch in one statement, in one
         transaction with the reads, instead of one autocommit (one WAL fsync
         with synchronous=full) per event
pn       query._values: a PersonName is one value, not an iterable of characters
"""

from __future__ import annotations

import os
import socket
import sys

PATCHES = {p.strip() for p in os.environ.get("PACSCORE_EXP", "").split(",") if p.strip()}


def nodelay() -> None:
    from pynetdicom import transport

    get_request = transport.AssociationServer.get_request

    def patched_get_request(self):
        sock, address = get_request(self)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    transport.AssociationServer.get_request = patched_get_request
    create_socket = transport.AssociationSocket._create_socket

    def patched_create_socket(self, address):
        sock = create_socket(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    transport.AssociationSocket._create_socket = patched_create_socket


def outbox() -> None:
    import json

    from pacscore import outbox as ob
    from pacscore.models import OutboxEvent, connection, write_transaction

    def drain(self) -> int:
        with connection():
            events = list(OutboxEvent.select().order_by(OutboxEvent.id).limit(self.BATCH))
            for event in events:
                kwargs = {k: ob._decode(v) for k, v in json.loads(event.payload).items()}
                self.pacs.hooks.call_each(event.hook, pacs=self.pacs, **kwargs)
            if events:
                with write_transaction():
                    OutboxEvent.delete().where(OutboxEvent.id.in_([e.id for e in events])).execute()
        return len(events)

    ob.Outbox.drain = drain


def pn() -> None:
    from pydicom.valuerep import PersonName

    from pacscore import query

    values = query._values

    def patched_values(value):
        if isinstance(value, PersonName):
            value = str(value)
        return values(value)

    query._values = patched_values


if __name__ == "__main__":
    for name in sorted(PATCHES):
        globals()[name]()
    from pacscore.cli import main

    sys.exit(main())
