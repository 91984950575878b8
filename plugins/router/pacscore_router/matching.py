"""Rule filters: value patterns, DICOM keywords or tags, ANY / ALL / NONE.

A *subject* is what a rule is matched against: the header of a received
instance (or of a study's first instance), or a worklist entry.  Patterns
use ``*`` (any run of characters) and ``?`` (one character) and ignore case
and accents; a multi-valued value matches when any of its values does.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from pacscore.dicomfile.text import normalize_text

ANY, ALL, NONE = "ANY", "ALL", "NONE"
_TAG = re.compile(r"\(?([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\)?")


def parse_tag(text: str) -> int | None:
    """``PatientID``, ``(0010,0020)``, ``0010,0020`` or ``00100020`` -> the tag, else None."""
    text = text.strip()
    tag = tag_for_keyword(text)
    if tag is not None:
        return tag
    match = _TAG.fullmatch(text)
    if match:
        return int(match.group(1) + match.group(2), 16)
    return None


def known_tag(text: str) -> bool:
    return parse_tag(text) is not None


def keyword_of(text: str) -> str:
    """The keyword for a tag given as keyword or number (the number itself if private)."""
    tag = parse_tag(text)
    if tag is None:
        return text
    return keyword_for_tag(tag) or f"{tag:08X}"


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern:
    parts = []
    for char in normalize_text(pattern):
        parts.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def pattern_matches(pattern: str, value: str) -> bool:
    """Does ``value`` (or one of its backslash-separated values) match ``pattern``?"""
    compiled = _compiled(pattern.strip())
    candidates = [value.strip(), *(v.strip() for v in value.split("\\"))]
    return any(compiled.fullmatch(normalize_text(v)) for v in candidates)


@dataclass
class Subject:
    """What filters look at; ``value(keyword)`` returns the text of an attribute."""

    value: Callable[[str], str]
    calling_ae: str = ""
    called_ae: str = ""
    modalities: set[str] = field(default_factory=set)


def items_match(combine: str, items: list[dict], subject: Subject) -> bool:
    results = (pattern_matches(i["pattern"], subject.value(keyword_of(i["tag"]))) for i in items)
    if combine == ANY:
        return not items or any(results)
    if combine == NONE:
        return not any(results)
    return all(results)


def filters_match(filters: dict, subject: Subject) -> bool:
    """Every condition of a rule's filters (the time window is not one: it delays)."""
    for key, actual in (("calling_ae", subject.calling_ae), ("called_ae", subject.called_ae)):
        if filters.get(key) and not pattern_matches(filters[key], actual):
            return False
    modality = filters.get("modality")
    if modality and not any(pattern_matches(modality, m) for m in subject.modalities):
        return False
    return items_match(filters.get("combine", ALL), filters.get("items", []), subject)


# -- time windows ---------------------------------------------------------------------


def parse_time_of_day(text: str) -> time:
    """``HH:MM`` (24 h) -> time; ValueError otherwise."""
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text.strip())
    if not match:
        raise ValueError(f"invalid time of day {text!r}: use HH:MM, 00:00 to 23:59")
    return time(int(match.group(1)), int(match.group(2)))


def seconds_until_window(window: dict | None, now: datetime) -> float:
    """0 inside the window (or without one), else the seconds until it opens.

    ``now`` and the window are local times; a window whose end is before its
    start spans midnight (``20:00``-``06:00``).
    """
    if not window:
        return 0.0
    start, end = parse_time_of_day(window["start"]), parse_time_of_day(window["end"])
    current = now.time()
    inside = start <= current < end if start < end else current >= start or current < end
    if start == end or inside:
        return 0.0
    opening = datetime.combine(now.date(), start)
    if opening <= now:
        opening += timedelta(days=1)
    return (opening - now).total_seconds()
