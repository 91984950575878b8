"""The core's test fixtures (databases, homes) for the apicrypt plugin's tests."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.conftest import db_url, make_pacs, pacs_home  # noqa: E402, F401 - fixtures
