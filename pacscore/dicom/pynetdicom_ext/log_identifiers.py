"""pynetdicom's identifier logs only when they are read.

pynetdicom formats every C-FIND, C-MOVE and C-GET request and response
identifier for its log, even when nobody reads that level: the formatting is
kept for DEBUG.  Installed at every ``install_all`` (it follows the log level
of the moment), not once per process.
"""

from __future__ import annotations

import logging

from pynetdicom import _config

log = logging.getLogger(__name__)
# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom._config.LOG_REQUEST_IDENTIFIERS": (  # set
        "3f3129565519dd5a7989b155adb433ad8b2ad7358701d73684e31e662bf428b9"
    ),
    "pynetdicom._config.LOG_RESPONSE_IDENTIFIERS": (  # set
        "c3430a85eaf34621f59d4788353963c48d4f92a1dcaba87a271df50b988582c4"
    ),
}


def install() -> None:
    debug = log.isEnabledFor(logging.DEBUG)
    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = debug
