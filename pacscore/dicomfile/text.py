"""Text keys of the index: what case- and accent-insensitive matching compares."""

from __future__ import annotations

import unicodedata


def normalize_text(value: str) -> str:
    """Upper-case and strip accents: the key used for case/accent-insensitive matching."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()
