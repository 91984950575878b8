"""Send stored instances byte for byte.

pynetdicom's C-MOVE/C-GET machinery wants a :class:`Dataset` from the
handler and re-encodes it, which drops trailing padding and normalises
some encodings.  :class:`StoredFileDataset` carries the data set bytes read
from disk; the patched ``encode`` returns them unchanged whenever the
negotiated transfer syntax has the stored encoding, and decodes/re-encodes
only when the peer asked for another uncompressed syntax.  ``send_as``
steers pynetdicom's choice of presentation context (it prefers an exact
match of the data set's transfer syntax) while keeping the stored bytes.
"""

from __future__ import annotations

import zlib
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom import association

_pynetdicom_encode = association.encode
# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom.dsutils.encode": (  # replaced (association.encode)
        "0d29ffd5d358c45a6b20436a9a45ec4ea003631dd4323e827c87365624c71cf0"
    ),
    "pynetdicom.association.Association.send_c_store": (  # encodes through it
        "fa5a8127f349f8e75698f4cdf2b4dbe3f38e3e9e320a8cf45c15bf8333f9c283"
    ),
}


class StoredFileDataset(Dataset):
    def __init__(self, data: bytes, transfer_syntax: str, sop_class_uid: str, sop_uid: str):
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_uid
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = transfer_syntax
        self._stored_bytes = data
        self._stored_syntax = transfer_syntax

    def send_as(self, transfer_syntax: str) -> StoredFileDataset:
        """Ask for ``transfer_syntax`` (an uncompressed one, or the stored one)."""
        self.file_meta.TransferSyntaxUID = transfer_syntax
        return self

    def _decoded(self) -> Dataset:
        ts = UID(self._stored_syntax)
        data = self._stored_bytes
        if ts.is_deflated:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        return read_dataset(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)

    def encoded_as(self, implicit_vr: bool, little_endian: bool, deflated: bool) -> bytes | None:
        ts = UID(self._stored_syntax)
        if (ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated) == (
            implicit_vr,
            little_endian,
            deflated,
        ):
            # a deflated stream may have an odd length: PDV fragments must be even
            if len(self._stored_bytes) % 2:
                return self._stored_bytes + b"\x00"
            return self._stored_bytes
        return _pynetdicom_encode(self._decoded(), implicit_vr, little_endian, deflated)


def _encode(ds, is_implicit_vr, is_little_endian, deflated=False):
    if isinstance(ds, StoredFileDataset):
        return ds.encoded_as(is_implicit_vr, is_little_endian, deflated)
    return _pynetdicom_encode(ds, is_implicit_vr, is_little_endian, deflated)


def install() -> None:
    association.encode = _encode
