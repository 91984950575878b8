"""Query/Retrieve C-MOVE and C-GET SCP: send the matching instances.

Files are sent as stored (see :mod:`pacscore.dicom.pynetdicom_ext.rawsend`).  An instance
whose file cannot be read becomes a failed sub-operation listed in Failed
SOP Instance UID List, and the others go on.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context

from pacscore import query
from pacscore.db import connection
from pacscore.dicom.find_scp import BadIdentifier, parse_identifier
from pacscore.dicom.pynetdicom_ext.rawsend import StoredFileDataset
from pacscore.dicom.store_scp import status_dataset
from pacscore.dicomfile import status
from pacscore.dicomfile.part10 import read_dicom_file
from pacscore.models import Instance

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _matches(event) -> tuple[list[Instance] | None, Dataset | None]:
    try:
        level, wanted, _ = parse_identifier(event)
        with connection():
            return list(query.matching_instances(level, wanted)), None
    except (BadIdentifier, query.QueryError) as exc:
        log.warning("retrieve from %s refused: %s", event.assoc.requestor.ae_title, exc)
        return None, status_dataset(status.IDENTIFIER_DOES_NOT_MATCH, str(exc))


def presentation_contexts(instances: list[Instance]) -> list:
    """Per SOP class: one context per stored syntax (sent as stored when accepted),
    plus one offering both little endian syntaxes as a fallback for uncompressed data."""
    syntaxes: dict[str, set[str]] = defaultdict(set)
    for instance in instances:
        syntaxes[instance.sop_class_uid].add(instance.transfer_syntax)
    contexts = []
    for sop_class, stored in syntaxes.items():
        contexts += [build_context(sop_class, [ts]) for ts in sorted(stored)]
        if stored & set(UNCOMPRESSED):
            contexts.append(build_context(sop_class, list(UNCOMPRESSED)))
    return contexts[:MAX_CONTEXTS]


def _unreadable(instance: Instance) -> Dataset:
    # No file meta: pynetdicom's send fails and records this UID as failed.
    ds = Dataset()
    ds.SOPClassUID = instance.sop_class_uid
    ds.SOPInstanceUID = instance.sop_uid
    return ds


def _datasets(event, pacs, instances: list[Instance]):
    for instance in instances:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        path = pacs.archive.path_of(instance)
        try:
            data, transfer_syntax = read_dicom_file(path)
            dataset = StoredFileDataset(
                data, transfer_syntax, instance.sop_class_uid, instance.sop_uid
            )
        except (OSError, ValueError) as exc:
            log.error("cannot read %s for retrieve: %s", instance.sop_uid, exc)
            yield status.PENDING, _unreadable(instance)
            continue
        yield status.PENDING, dataset


def handle_move(event, pacs):
    destination = event.move_destination
    destination = destination.decode() if isinstance(destination, bytes) else destination
    nodes = pacs.nodes.by_aet(destination.strip())
    if not nodes:
        log.warning("C-MOVE to unknown destination %r refused", destination)
        yield None, None
        return
    instances, failure = _matches(event)
    node = nodes[0]
    contexts = presentation_contexts(instances or [])
    yield node.host, node.port, ({"contexts": contexts} if contexts else {})
    if failure is not None:
        yield 1
        yield failure, None
        return
    yield len(instances)
    yield from _datasets(event, pacs, instances)


def handle_get(event, pacs):
    instances, failure = _matches(event)
    if failure is not None:
        yield 1
        yield failure, None
        return
    yield len(instances)
    yield from _datasets(event, pacs, instances)
