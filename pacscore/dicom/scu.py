"""SCU helpers: pacscore as a client of other DICOM nodes.

Public core API for plugins (a router, an archiving forwarder...): C-ECHO,
C-FIND of studies and series, C-MOVE of a study, and C-STORE of archived
instances with the transfer syntax chosen per node.  Every function opens
its own association, raises :class:`ScuError` (or :class:`EchoFailed`) with
a message naming the node when the peer is down or answers a failure, and
never leaves an association open.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacscore.dicom import pynetdicom_ext
from pacscore.dicom.pynetdicom_ext import rawsend
from pacscore.dicomfile.part10 import read_dicom_file
from pacscore.models import Node

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128
# C-STORE statuses that mean "stored" (success and the warnings of PS3.4 B.2.3)
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
PENDING_STATUSES = {0xFF00, 0xFF01}


class EchoFailed(Exception):
    pass


class ScuError(Exception):
    """The node could not be reached, refused the association or answered a failure."""


def describe(node: Node) -> str:
    return f"{node.name} ({node.aet}@{node.host}:{node.port})"


def client_ae(calling_aet: str, timeout: float) -> AE:
    """An AE for pacscore as a client, with ``timeout`` for ACSE, DIMSE and the network;
    ``pynetdicom_ext.UnsupportedPynetdicom`` if pynetdicom is not a tested version."""
    # the listener's extensions: no Nagle delay, stored bytes sent as they are, no lost
    # reply, command sets encoded directly, each message sent in one write, no PDU read
    # that waits for ever on a peer gone silent
    pynetdicom_ext.install_client()
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _associate(ae: AE, node: Node, **kwargs):
    assoc = ae.associate(node.host, node.port, ae_title=node.aet, **kwargs)
    if not assoc.is_established:
        state = "rejected" if assoc.is_rejected else "failed"
        raise ScuError(f"association with {describe(node)} {state}")
    return assoc


def echo(node: Node, calling_aet: str, timeout: float = 10) -> float:
    """C-ECHO ``node``; return the round trip in milliseconds or raise EchoFailed."""
    ae = client_ae(calling_aet, timeout)
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


# -- C-FIND ---------------------------------------------------------------------------


def find(node: Node, calling_aet: str, identifier: Dataset, timeout: float = 30) -> list[Dataset]:
    """Study Root C-FIND: return every matching identifier, or raise ScuError."""
    ae = client_ae(calling_aet, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(ae, node)
    matches = []
    try:
        for status, match in assoc.send_c_find(
            identifier, StudyRootQueryRetrieveInformationModelFind
        ):
            code = status.get("Status") if status else None
            if code in PENDING_STATUSES:
                if match is not None:
                    matches.append(match)
            elif code == 0x0000:
                return matches
            else:
                answer = f"0x{code:04X}" if code is not None else "nothing (aborted)"
                raise ScuError(f"C-FIND on {describe(node)} answered {answer}")
    finally:
        if assoc.is_established:
            assoc.release()
    raise ScuError(f"C-FIND on {describe(node)} ended without a final status")


def _identifier(level: str, keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


STUDY_RETURN_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ModalitiesInStudy",
    "StudyDescription",
    "AccessionNumber",
)


def find_studies(
    node: Node, calling_aet: str, patient_id: str, timeout: float = 30, **keys: str
) -> list[Dataset]:
    """The studies of a patient on ``node`` (date, time, modalities, description...)."""
    wanted = {key: "" for key in STUDY_RETURN_KEYS}
    wanted.update(PatientID=patient_id, **keys)
    return find(node, calling_aet, _identifier("STUDY", wanted), timeout)


def find_series(
    node: Node, calling_aet: str, study_uid: str, timeout: float = 30, **keys: str
) -> list[Dataset]:
    """The series of a study on ``node``; ``keys`` are extra matching/return keys."""
    wanted = {"SeriesInstanceUID": "", "Modality": "", "BodyPartExamined": ""}
    wanted.update(StudyInstanceUID=study_uid, **keys)
    return find(node, calling_aet, _identifier("SERIES", wanted), timeout)


# -- C-MOVE ---------------------------------------------------------------------------


@dataclass
class MoveResult:
    completed: int = 0
    failed: int = 0
    warning: int = 0


def move_study(
    node: Node, calling_aet: str, study_uid: str, destination_aet: str, timeout: float = 600
) -> MoveResult:
    """Ask ``node`` to C-MOVE a study to ``destination_aet`` (often our own AE title).

    Returns the sub-operation counts once the move is over; raises ScuError
    when the association fails, the node answers a failure, or a
    sub-operation failed.
    """
    ae = client_ae(calling_aet, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _associate(ae, node)
    result = MoveResult()
    code = None
    try:
        identifier = _identifier("STUDY", {"StudyInstanceUID": study_uid})
        for status, _ in assoc.send_c_move(
            identifier, destination_aet, StudyRootQueryRetrieveInformationModelMove
        ):
            code = status.get("Status") if status else None
            result.completed = int(status.get("NumberOfCompletedSuboperations", result.completed))
            result.failed = int(status.get("NumberOfFailedSuboperations", result.failed))
            result.warning = int(status.get("NumberOfWarningSuboperations", result.warning))
    finally:
        if assoc.is_established:
            assoc.release()
    if code not in (0x0000, 0xB000) or result.failed:
        answer = f"0x{code:04X}" if code is not None else "nothing (aborted)"
        raise ScuError(
            f"C-MOVE of study {study_uid} from {describe(node)} to {destination_aet} answered "
            f"{answer} ({result.completed} completed, {result.failed} failed)"
        )
    return result


# -- C-STORE --------------------------------------------------------------------------


@dataclass
class StoredFile:
    """An archived instance to send: its file and what the index knows of it."""

    path: Path
    sop_class_uid: str
    sop_uid: str
    transfer_syntax: str


@dataclass
class StoreReport:
    sent: list[str] = field(default_factory=list)
    # SOP Instance UID -> why it was not sent
    failed: dict[str, str] = field(default_factory=dict)


def _convertible(stored: str, target: str) -> bool:
    """Can rawsend re-encode ``stored`` as ``target`` without touching pixel data?"""
    stored_uid, target_uid = UID(stored), UID(target)
    if stored_uid == target_uid:
        return True
    return (
        not stored_uid.is_compressed
        and not target_uid.is_compressed
        and stored_uid.is_little_endian
        and target_uid.is_little_endian
    )


def _codec_available(getter, transfer_syntax: str) -> bool:
    try:
        return bool(getter(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_produce(stored: str, target: str) -> bool:
    """Can a file stored in ``stored`` be sent in ``target``?

    Without touching pixel data between uncompressed little endian syntaxes;
    otherwise by decoding (when a pydicom pixel decoder for ``stored`` is
    installed, e.g. pylibjpeg-libjpeg for JPEG) and encoding (when an encoder
    for ``target`` is: RLE Lossless, JPEG 2000 with pylibjpeg-openjpeg).
    """
    if _convertible(stored, target):
        return True
    stored_uid, target_uid = UID(stored), UID(target)
    if not target_uid.is_transfer_syntax or not target_uid.is_little_endian:
        return False
    if stored_uid.is_compressed and not _codec_available(get_decoder, stored):
        return False
    return not target_uid.is_compressed or _codec_available(get_encoder, target)


def transcoded(data: bytes, stored: str, target: str, sop_class: str, sop_uid: str) -> Dataset:
    """The data set decoded and re-encoded in ``target`` (same SOP Instance UID)."""
    dataset = rawsend.StoredFileDataset(data, stored, sop_class, sop_uid)._decoded()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = stored
    if UID(stored).is_compressed:
        dataset.decompress(generate_instance_uid=False)
    if UID(target).is_compressed:
        dataset.compress(target, generate_instance_uid=False)
    dataset.file_meta.TransferSyntaxUID = target
    return dataset


def store_contexts(files: Iterable[StoredFile], preferred: str = "") -> list:
    """Per SOP class: the stored syntaxes, the node's preferred one when we can produce
    it, and both little endian syntaxes as a fallback."""
    syntaxes: dict[str, set[str]] = defaultdict(set)
    for item in files:
        syntaxes[item.sop_class_uid].add(item.transfer_syntax)
    contexts = []
    for sop_class, stored in sorted(syntaxes.items()):
        offered = set(stored)
        if preferred and any(can_produce(ts, preferred) for ts in stored):
            offered.add(preferred)
        contexts += [build_context(sop_class, [ts]) for ts in sorted(offered)]
        # always offered: a conversion that is impossible is then reported per file
        # instead of as an association without any accepted context
        contexts.append(build_context(sop_class, list(UNCOMPRESSED)))
    return contexts[:MAX_CONTEXTS]


def choose_syntaxes(
    item: StoredFile, accepted: set[tuple[str, str]], preferred: str = ""
) -> list[str]:
    """The syntaxes to try for ``item``, best first, or raise ScuError saying why none works.

    The node's preferred syntax, then the stored one (sent byte for byte),
    then an uncompressed one; each only if the node accepted it and we can
    produce it.
    """
    candidates = ([preferred] if preferred else []) + [item.transfer_syntax, *UNCOMPRESSED]
    usable = [
        target
        for target in dict.fromkeys(candidates)
        if (item.sop_class_uid, target) in accepted and can_produce(item.transfer_syntax, target)
    ]
    if usable:
        return usable
    offered = sorted(UID(ts).name for sop, ts in accepted if sop == item.sop_class_uid)
    stored = UID(item.transfer_syntax).name
    if not offered:
        raise ScuError(f"the node accepts no transfer syntax for {UID(item.sop_class_uid).name}")
    raise ScuError(
        f"cannot convert {stored} to a syntax the node accepts ({', '.join(offered)}): "
        f"no pixel data decoder for {stored} is installed"
    )


def _prepared(item: StoredFile, data: bytes, stored: str, targets: list[str]) -> Dataset:
    """The data set to send: as stored when possible, else the first conversion that works."""
    errors = []
    for target in targets:
        if _convertible(stored, target):
            return rawsend.StoredFileDataset(
                data, stored, item.sop_class_uid, item.sop_uid
            ).send_as(target)
        try:
            return transcoded(data, stored, target, item.sop_class_uid, item.sop_uid)
        except Exception as exc:  # noqa: BLE001 - codecs raise anything on odd data
            errors.append(f"to {UID(target).name}: {exc}")
    raise ScuError(f"cannot convert {UID(stored).name} " + "; ".join(errors))


def store_files(
    node: Node,
    calling_aet: str,
    files: list[StoredFile],
    timeout: float = 60,
    max_pdu: int = 0,
) -> StoreReport:
    """C-STORE archived files to ``node`` on one association, as stored when possible.

    Each file goes in the node's ``preferred_transfer_syntax`` when the node
    accepts it and it can be produced (see :func:`can_produce`), else in its
    stored syntax (byte for byte), else in an uncompressed syntax the node
    accepts (decoded when stored compressed).  Raises ScuError
    when the association cannot be established; per-file refusals are in the
    report.  An association lost midway fails the files not yet sent.
    """
    report = StoreReport()
    if not files:
        return report
    preferred = getattr(node, "preferred_transfer_syntax", "") or ""
    ae = client_ae(calling_aet, timeout)
    ae.maximum_pdu_size = max_pdu
    assoc = _associate(ae, node, contexts=store_contexts(files, preferred))
    try:
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for item in files:
            if not assoc.is_established:
                report.failed[item.sop_uid] = f"association with {describe(node)} was lost"
                continue
            try:
                data, stored_syntax = read_dicom_file(item.path)
                item.transfer_syntax = stored_syntax
                dataset = _prepared(
                    item, data, stored_syntax, choose_syntaxes(item, accepted, preferred)
                )
            except (ScuError, OSError, ValueError) as exc:
                report.failed[item.sop_uid] = str(exc)
                continue
            answer = assoc.send_c_store(dataset)
            code = answer.get("Status") if answer else None
            if code in STORED_STATUSES:
                report.sent.append(item.sop_uid)
            else:
                comment = answer.get("ErrorComment", "") if answer else ""
                what = f"0x{code:04X}" if code is not None else "no answer (association lost)"
                report.failed[item.sop_uid] = f"C-STORE answered {what} {comment}".strip()
    finally:
        if assoc.is_established:
            assoc.release()
    return report
