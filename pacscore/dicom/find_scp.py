"""Query/Retrieve C-FIND SCP (Patient Root and Study Root), matched in SQL."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.uid import UID

from pacscore import query
from pacscore.db import connection
from pacscore.dicom.store_scp import status_dataset
from pacscore.dicomfile import status

log = logging.getLogger(__name__)

STUDY_ROOT_UIDS = {
    "1.2.840.10008.5.1.4.1.2.2.1",  # FIND
    "1.2.840.10008.5.1.4.1.2.2.2",  # MOVE
    "1.2.840.10008.5.1.4.1.2.2.3",  # GET
}
NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}


class BadIdentifier(ValueError):
    pass


def parse_identifier(event) -> tuple[str, dict, Dataset]:
    """(level, {keyword: value}, decoded identifier) or BadIdentifier."""
    try:
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        wanted = {
            elem.keyword: elem.value
            for elem in identifier
            if elem.keyword and elem.keyword not in NOT_KEYS
        }
    except Exception as exc:  # noqa: BLE001 - malformed identifiers raise anything
        raise BadIdentifier(f"cannot decode identifier: {exc}") from exc
    if level not in query.LEVELS:
        raise BadIdentifier(f"invalid QueryRetrieveLevel {level!r}")
    if level == query.PATIENT and UID(event.request.AffectedSOPClassUID) in STUDY_ROOT_UIDS:
        raise BadIdentifier("Study Root has no PATIENT level")
    return level, wanted, identifier


def response_for(identifier: Dataset, level: str, row: dict, aet: str) -> Dataset:
    rsp = Dataset()
    non_ascii = False
    for elem in identifier:
        keyword = elem.keyword
        if keyword == "SpecificCharacterSet":
            continue
        if keyword == "QueryRetrieveLevel":
            rsp.QueryRetrieveLevel = level
        elif keyword == "RetrieveAETitle":
            rsp.RetrieveAETitle = aet
        elif keyword in row:
            value = query.response_value(keyword, row[keyword])
            non_ascii = non_ascii or (isinstance(value, str) and not value.isascii())
            rsp.add_new(elem.tag, elem.VR, value)
        elif elem.VR == "SQ":
            rsp.add_new(elem.tag, "SQ", [])
        else:
            rsp.add_new(elem.tag, elem.VR, None)
    if non_ascii:
        rsp.SpecificCharacterSet = "ISO_IR 192"
    return rsp


def handle_find(event, pacs):
    try:
        level, wanted, identifier = parse_identifier(event)
    except BadIdentifier as exc:
        log.warning("C-FIND from %s refused: %s", event.assoc.requestor.ae_title, exc)
        yield status_dataset(status.IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
        return
    limit = pacs.settings.core["max_find_results"]
    try:
        with connection():
            rows = list(query.find(level, wanted, limit + 1))
    except query.QueryError as exc:
        yield status_dataset(status.UNABLE_TO_PROCESS, str(exc)), None
        return
    aet = event.assoc.acceptor.ae_title
    for row in rows[:limit]:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        yield status.PENDING, response_for(identifier, level, row, aet)
    if len(rows) > limit:
        log.warning("C-FIND result cut at %d matches", limit)
        yield status_dataset(status.TOO_MANY_MATCHES, f"too many matches: cut at {limit}"), None
