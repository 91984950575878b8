"""Command sets encoded by pacscore/dicom/pynetdicom_ext/command_sets.py are pydicom's,
byte for byte."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.dsutils import encode as pydicom_encode

from pacscore.dicom import pynetdicom_ext
from pacscore.dicom.pynetdicom_ext import command_sets

CT = "1.2.840.10008.5.1.4.1.1.2"  # odd length
MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # even length
MPPS = "1.2.840.10008.3.1.2.3.3"
ECHO = "1.2.840.10008.1.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
INSTANCE = "1.2.826.0.1.3680043.8.498.1234567890123"


def primitive(kind: str, **fields):
    prim = getattr(dimse_primitives, kind)()
    for name, value in fields.items():
        setattr(prim, name, value)
    return prim


def data() -> BytesIO:
    return BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")


def store_rq(message_id, sop_class, sop_instance, priority, originator, originator_id):
    return "C_STORE_RQ", primitive(
        "C_STORE",
        MessageID=message_id,
        AffectedSOPClassUID=sop_class,
        AffectedSOPInstanceUID=sop_instance,
        Priority=priority,
        MoveOriginatorApplicationEntityTitle=originator,
        MoveOriginatorMessageID=originator_id,
        DataSet=data(),
    )


def store_rsp(status: int, comment: str):
    return "C_STORE_RSP", primitive(
        "C_STORE",
        MessageIDBeingRespondedTo=2,
        AffectedSOPClassUID=CT,
        AffectedSOPInstanceUID=INSTANCE,
        Status=status,
        ErrorComment=comment,
    )


MESSAGES = {
    "C-ECHO-RQ": ("C_ECHO_RQ", primitive("C_ECHO", MessageID=1, AffectedSOPClassUID=ECHO)),
    "C-ECHO-RSP": (
        "C_ECHO_RSP",
        primitive("C_ECHO", MessageIDBeingRespondedTo=1, AffectedSOPClassUID=ECHO, Status=0),
    ),
    "C-STORE-RQ of a C-MOVE": store_rq(65535, CT, INSTANCE, 2, "MOVESCU", 3),
    "C-STORE-RQ odd AE": store_rq(2, MR, INSTANCE + "1", 0, "ODD", 0),
    "C-STORE-RSP failure": store_rsp(0xC000, "cannot parse"),
    "C-STORE-RSP odd comment": store_rsp(0xA700, "full"),
    "C-FIND-RQ": (
        "C_FIND_RQ",
        primitive(
            "C_FIND", MessageID=9, AffectedSOPClassUID=STUDY_FIND, Priority=1, Identifier=data()
        ),
    ),
    "C-FIND-RSP pending": (
        "C_FIND_RSP",
        primitive(
            "C_FIND",
            MessageIDBeingRespondedTo=9,
            AffectedSOPClassUID=STUDY_FIND,
            Status=0xFF00,
            Identifier=data(),
        ),
    ),
    "C-FIND-RSP final": (
        "C_FIND_RSP",
        primitive(
            "C_FIND", MessageIDBeingRespondedTo=9, AffectedSOPClassUID=STUDY_FIND, Status=0x0000
        ),
    ),
    "C-MOVE-RQ": (
        "C_MOVE_RQ",
        primitive(
            "C_MOVE",
            MessageID=4,
            AffectedSOPClassUID=STUDY_MOVE,
            Priority=0,
            MoveDestination="STORESCP",
            Identifier=data(),
        ),
    ),
    "C-MOVE-RSP counts": (
        "C_MOVE_RSP",
        primitive(
            "C_MOVE",
            MessageIDBeingRespondedTo=4,
            AffectedSOPClassUID=STUDY_MOVE,
            Status=0xFF00,
            NumberOfRemainingSuboperations=299,
            NumberOfCompletedSuboperations=1,
            NumberOfFailedSuboperations=0,
            NumberOfWarningSuboperations=0,
        ),
    ),
    "C-GET-RSP failed UIDs": (
        "C_GET_RSP",
        primitive(
            "C_GET",
            MessageIDBeingRespondedTo=5,
            AffectedSOPClassUID=STUDY_GET,
            Status=0xB000,
            NumberOfRemainingSuboperations=0,
            NumberOfCompletedSuboperations=2,
            NumberOfFailedSuboperations=1,
            NumberOfWarningSuboperations=0,
            Identifier=data(),
        ),
    ),
    "C-CANCEL-RQ": ("C_CANCEL_RQ", primitive("C_CANCEL", MessageIDBeingRespondedTo=9)),
    "N-CREATE-RQ": (
        "N_CREATE_RQ",
        primitive(
            "N_CREATE",
            MessageID=6,
            AffectedSOPClassUID=MPPS,
            AffectedSOPInstanceUID=INSTANCE,
            AttributeList=data(),
        ),
    ),
    "N-SET-RSP failure": (
        "N_SET_RSP",
        primitive(
            "N_SET",
            MessageIDBeingRespondedTo=6,
            AffectedSOPClassUID=MPPS,
            AffectedSOPInstanceUID=INSTANCE,
            Status=0x0110,
            ErrorComment="no such step",
        ),
    ),
    "N-EVENT-REPORT-RQ": (
        "N_EVENT_REPORT_RQ",
        primitive(
            "N_EVENT_REPORT",
            MessageID=8,
            AffectedSOPClassUID="1.2.840.10008.1.20.1",
            AffectedSOPInstanceUID="1.2.840.10008.1.20.1.1",
            EventTypeID=1,
            EventInformation=data(),
        ),
    ),
}


@pytest.fixture(autouse=True)
def installed():
    # as the listener and client_ae install it: the Command Group Length is then ours too
    pynetdicom_ext.install_client()


def message_for(message_class: str, prim):
    message = getattr(dimse_messages, message_class)()
    message.primitive_to_message(prim)  # sets the Command Group Length through encode
    return message


@pytest.mark.parametrize("name", MESSAGES)
def test_command_sets_are_encoded_as_pydicom_encodes_them(name):
    command_set = message_for(*MESSAGES[name]).command_set
    expected = pydicom_encode(command_set, True, True)
    # encode_command_set itself: it raises rather than fall back to pydicom
    assert command_sets.encode_command_set(command_set) == expected
    # the group length the message carries counts those bytes
    assert command_set.CommandGroupLength == len(expected) - 12


def test_what_is_not_a_plain_command_set_goes_to_pydicom():
    command_set = message_for(*store_rsp(0xC000, "déjà")).command_set
    with pytest.raises(command_sets._Unhandled):
        command_sets.encode_command_set(command_set)
    assert command_sets.encode(command_set, True, True) == pydicom_encode(command_set, True, True)
    # explicit VR or big endian: never a command set, pydicom's as before
    assert command_sets.encode(command_set, False, True) == pydicom_encode(command_set, False, True)
