"""Retention rules: (modality, study description, days), matched without case or accents.

``*`` or an empty value matches anything; ``days = 0`` keeps forever.  The
most specific matching rule wins: modality and description, then modality
only, then description only, then the catch-all; between rules of the same
specificity the first one listed wins.  A description may also hold ``*`` and
``?`` wildcards (``CHEST*``).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from fnmatch import fnmatchcase

ANY = ""


def normalize(value: str) -> str:
    """Upper-case, accent-free, single-spaced: "  Épaule  g " -> "EPAULE G"."""
    decomposed = unicodedata.normalize("NFKD", value or "")
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.upper().split())


def _pattern(value: str) -> str:
    key = normalize(value)
    return ANY if key in ("", "*") else key


@dataclass(frozen=True)
class Rule:
    modality: str  # normalized pattern, ANY for every modality
    description: str  # normalized pattern, ANY for every description
    days: int  # 0: keep forever

    @classmethod
    def from_settings(cls, item: dict) -> Rule:
        return cls(_pattern(item["modality"]), _pattern(item["description"]), item["days"])

    @property
    def text(self) -> str:
        """The rule as an administrator writes it: ``MG * 1825``."""
        return f"{self.modality or '*'} {self.description or '*'} {self.days}"

    @property
    def specificity(self) -> int:
        return (2 if self.modality else 0) + (1 if self.description else 0)

    def matches(self, modality_key: str, description_key: str) -> bool:
        return _field_matches(self.modality, modality_key) and _field_matches(
            self.description, description_key
        )


def _field_matches(pattern: str, key: str) -> bool:
    if pattern == ANY:
        return True
    if "*" in pattern or "?" in pattern:
        return fnmatchcase(key, pattern)
    return key == pattern


def winning_rule(rules: list[Rule], modality: str, description: str) -> Rule | None:
    """The rule that governs a series, or ``None`` (no rule: never purged by age)."""
    modality_key, description_key = normalize(modality), normalize(description)
    best: Rule | None = None
    for rule in rules:
        if rule.matches(modality_key, description_key) and (
            best is None or rule.specificity > best.specificity
        ):
            best = rule
    return best
