"""``python -m pacscore.dicom.pynetdicom_ext``: which pynetdicom definitions the
extensions (and the listener's accept loop, dicom/scp.py) rely on differ from the
tested version's, with their new SHA-256 (the first step of an upgrade)."""

from __future__ import annotations

import sys

import pynetdicom

from pacscore.dicom import scp
from pacscore.dicom.pynetdicom_ext import TESTED_PYNETDICOM, changed_upstream, upstream_targets


def main() -> int:
    print(f"pynetdicom {pynetdicom.__version__} (tested: {', '.join(TESTED_PYNETDICOM)})")
    changed = changed_upstream(
        [*upstream_targets(), *(("dicom/scp.py", t, d) for t, d in scp.UPSTREAM.items())]
    )
    print("\n".join(changed) if changed else "every upstream definition is as recorded")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
