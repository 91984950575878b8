"""The prior selection syntax and the choice of prior studies.

``3 MG ; 2 US ; 2 CT BodyPartExamined=LUNG``: items separated by ``;``, each
``COUNT MODALITY [KEYWORD=PATTERN ...]``: the COUNT most recent studies of
the patient (other than the reference study, dated no later than it) that
hold a series of MODALITY and, when conditions are given, whose matching
series have every KEYWORD matching its PATTERN (``*`` and ``?``, case and
accents ignored).  Items are chosen independently and their union is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pacscore_router.matching import known_tag, pattern_matches

MAX_COUNT = 100
_TOKEN = re.compile(r"\S+")
_MODALITY = re.compile(r"[A-Za-z0-9_]{1,16}")


class PriorSyntaxError(ValueError):
    """A prior syntax that cannot be parsed; ``position`` is 1-based."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at character {position}")
        self.message = message
        self.position = position


@dataclass(frozen=True)
class Condition:
    keyword: str
    pattern: str


@dataclass(frozen=True)
class PriorItem:
    count: int
    modality: str
    conditions: tuple[Condition, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        extra = "".join(f" {c.keyword}={c.pattern}" for c in self.conditions)
        return f"{self.count} {self.modality}{extra}"


def parse_priors(text: str) -> list[PriorItem]:
    """Parse a prior syntax; raise PriorSyntaxError with the position of the fault."""
    items = []
    start = 0
    for part in text.split(";"):
        if part.strip():
            items.append(_parse_item(part, start))
        elif text.strip():
            raise PriorSyntaxError("empty item", start + 1)
        start += len(part) + 1
    if not items:
        raise PriorSyntaxError("expected at least one item like '3 MG'", 1)
    return items


def _parse_item(part: str, offset: int) -> PriorItem:
    tokens = [(m.group(), offset + m.start() + 1) for m in _TOKEN.finditer(part)]
    count_text, count_at = tokens[0]
    if not count_text.isdigit():
        raise PriorSyntaxError(f"expected a number of studies, found {count_text!r}", count_at)
    count = int(count_text)
    if not 1 <= count <= MAX_COUNT:
        raise PriorSyntaxError(f"the number of studies must be 1 to {MAX_COUNT}", count_at)
    if len(tokens) < 2:
        raise PriorSyntaxError("expected a modality after the number", count_at + len(count_text))
    modality, modality_at = tokens[1]
    if not _MODALITY.fullmatch(modality):
        raise PriorSyntaxError(f"invalid modality {modality!r}", modality_at)
    conditions = []
    for token, at in tokens[2:]:
        keyword, equals, pattern = token.partition("=")
        if not equals:
            raise PriorSyntaxError(f"expected KEYWORD=VALUE, found {token!r}", at)
        if not known_tag(keyword):
            raise PriorSyntaxError(f"unknown DICOM keyword or tag {keyword!r}", at)
        if not pattern:
            raise PriorSyntaxError(f"empty value for {keyword}", at + len(keyword) + 1)
        conditions.append(Condition(keyword, pattern))
    return PriorItem(count, modality.upper(), tuple(conditions))


# -- choosing ----------------------------------------------------------------------------


@dataclass
class Candidate:
    """A study of the patient, local or on the remote archive."""

    study_uid: str
    study_date: str
    study_time: str
    # modality -> the values of each series of that modality, by condition keyword
    series: list[tuple[str, dict[str, str]]]
    local: bool = True

    def sort_key(self) -> tuple[str, str]:
        return (self.study_date, self.study_time)

    def satisfies(self, item: PriorItem) -> bool:
        for modality, values in self.series:
            if modality.upper() != item.modality:
                continue
            if all(pattern_matches(c.pattern, values.get(c.keyword, "")) for c in item.conditions):
                return True
        return False


def choose_priors(
    items: list[PriorItem],
    candidates: list[Candidate],
    reference_uid: str,
    reference_date: str,
) -> list[Candidate]:
    """The union of each item's most recent matching studies, most recent first."""
    eligible = [
        c
        for c in candidates
        if c.study_uid != reference_uid
        and (not reference_date or not c.study_date or c.study_date <= reference_date)
    ]
    eligible.sort(key=Candidate.sort_key, reverse=True)
    chosen: dict[str, Candidate] = {}
    for item in items:
        for candidate in [c for c in eligible if c.satisfies(item)][: item.count]:
            chosen.setdefault(candidate.study_uid, candidate)
    return sorted(chosen.values(), key=Candidate.sort_key, reverse=True)
