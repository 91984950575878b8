"""What a purge would delete now: the retention rules and size thresholds
evaluated in SQL over the index (no file is opened, no instance row read).

Retention: the distinct (modality, study description) pairs of the archive
are few, so each pair is given its winning rule in Python, then one query
per rule selects the expired series of its pairs.  Size: per storage, the
series ordered oldest first with their block-rounded size on that storage,
taken until the threshold plus the margin is reached.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peewee import fn

from pacscore.db import utcnow
from pacscore.models import Instance, Patient, Series, Storage, Study
from pacscore_purge.rules import Rule, winning_rule
from pacscore_purge.settings import PLUGIN_NAME, rule_warnings

if TYPE_CHECKING:
    from pacscore.app import Pacs

CHUNK = 400  # values per IN list: well under SQLite's parameter limit
MB = 1024 * 1024  # the settings' *_mb, as the core counts a storage's min_free_mb


@dataclass
class PlanItem:
    """One series to delete, and why."""

    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    description: str
    date: str  # YYYYMMDD the age is measured from
    instances: int
    bytes: int
    reason: str
    held: str = ""  # why a plugin keeps it ("" if it goes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    made_at: datetime
    items: list[PlanItem] = field(default_factory=list)
    held: list[PlanItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {
            "series": len(self.items),
            "studies": len({i.study_uid for i in self.items}),
            "instances": sum(i.instances for i in self.items),
            "bytes": sum(i.bytes for i in self.items),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "made_at": self.made_at.isoformat(),
            "items": [i.as_dict() for i in self.items],
            "held": [i.as_dict() for i in self.held],
            "warnings": self.warnings,
            "totals": self.totals,
        }


def _chunks(items: list, size: int = CHUNK):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _series_columns():
    return (
        Series.id,
        Series.series_uid,
        Study.study_uid,
        Patient.patient_id,
        Series.modality,
        Study.description,
        Study.study_date,
        Study.last_received,
        Series.num_instances,
        Series.size,
    )


def _age_date(study_date: str, last_received: datetime, date_source: str) -> str:
    if date_source == "study_date" and len(study_date) == 8 and study_date.isdigit():
        return study_date
    return last_received.strftime("%Y%m%d")


# -- retention ------------------------------------------------------------------------


def _pairs_by_rule(rules: list[Rule]) -> tuple[dict[Rule, list], list[tuple[str, str]]]:
    """(pairs governed by each rule that expires, pairs kept forever by a 0-day rule)."""
    by_rule: dict[Rule, list[tuple[str, str]]] = defaultdict(list)
    forever = []
    pairs = Series.select(Series.modality, Study.description).join(Study).distinct().tuples()
    for modality, description in pairs:
        rule = winning_rule(rules, modality, description)
        if rule is None:
            continue
        if rule.days == 0:
            forever.append((modality, description))
        else:
            by_rule[rule].append((modality, description))
    return by_rule, forever


def _pairs_condition(pairs: list[tuple[str, str]]):
    """``(modality = m AND description IN (...)) OR ...`` for a chunk of pairs."""
    by_modality: dict[str, list[str]] = defaultdict(list)
    for modality, description in pairs:
        by_modality[modality].append(description)
    condition = None
    for modality, descriptions in by_modality.items():
        term = (Series.modality == modality) & Study.description.in_(descriptions)
        condition = term if condition is None else (condition | term)
    return condition


def _expired_condition(days: int, date_source: str, today: date, now: datetime):
    received_cutoff = now - timedelta(days=days)
    if date_source == "last_received":
        return Study.last_received < received_cutoff
    date_cutoff = (today - timedelta(days=days)).strftime("%Y%m%d")
    dated = fn.LENGTH(Study.study_date) == 8
    return (dated & (Study.study_date < date_cutoff)) | (
        ~dated & (Study.last_received < received_cutoff)
    )


def retention_items(
    rules: list[Rule], date_source: str, today: date, now: datetime
) -> list[PlanItem]:
    by_rule, _ = _pairs_by_rule(rules)
    items = []
    for rule, pairs in by_rule.items():
        reason = f"rule {rule.text}"
        expired = _expired_condition(rule.days, date_source, today, now)
        for chunk in _chunks(pairs):
            query = (
                Series.select(*_series_columns())
                .join(Study)
                .join(Patient)
                .where(_pairs_condition(chunk) & expired)
                .tuples()
            )
            for _, s_uid, st_uid, pid, mod, desc, sdate, last, count, size in query:
                items.append(
                    PlanItem(
                        s_uid,
                        st_uid,
                        pid,
                        mod,
                        desc,
                        _age_date(sdate, last, date_source),
                        count,
                        size,
                        reason,
                    )  # fmt: skip
                )
    items.sort(key=lambda i: (i.date, i.study_uid, i.series_uid))
    return items


def protected_pairs(rules: list[Rule]) -> set[tuple[str, str]]:
    return set(_pairs_by_rule(rules)[1])


# -- size -----------------------------------------------------------------------------


@dataclass
class SizeNeed:
    storage: Storage
    bytes_needed: int  # disk bytes (block-rounded) still to free
    block: int
    why: str


def _block_rounded(block: int):
    return fn.SUM(((Instance.size + (block - 1)) / block) * block)


def size_needs(pacs: Pacs, thresholds: list[dict], warnings: list[str]) -> list[SizeNeed]:
    """Per configured storage, how many bytes must go (0 when it is within its thresholds)."""
    storages = {s.name: s for s in Storage.select()}
    needs = []
    for threshold in thresholds:
        storage = storages.get(threshold["storage"])
        if storage is None:
            warnings.append(f"threshold for unknown storage {threshold['storage']!r} ignored")
            continue
        try:
            st = os.statvfs(Path(storage.path))
        except OSError as exc:
            warnings.append(f"storage {storage.name} unavailable: {exc.strerror}")
            continue
        block = st.f_frsize or 4096
        free = st.f_bavail * st.f_frsize
        margin = int(threshold["margin_mb"] * MB)
        needed, whys = 0, []
        min_free = int(threshold["min_free_mb"] * MB)
        if min_free and free < min_free:
            needed = max(needed, min_free + margin - free)
            whys.append(f"free space under {threshold['min_free_mb']:g} MB")
        max_size = int(threshold["max_size_mb"] * MB)
        if max_size:
            used = (
                Instance.select(_block_rounded(block)).where(Instance.storage == storage).scalar()
                or 0
            )
            if used > max_size:
                needed = max(needed, used - max(max_size - margin, 0))
                whys.append(f"archive over {threshold['max_size_mb']:g} MB")
        if needed > 0:
            why = f"size: storage {storage.name} {' and '.join(whys)}"
            why += f" (+{threshold['margin_mb']:g} MB margin)"
            needs.append(SizeNeed(storage, int(needed), block, why))
    return needs


def size_candidates(need: SizeNeed, date_source: str) -> list[tuple[PlanItem, int]]:
    """Every series with files on the storage, oldest first, with its disk bytes there."""
    query = (
        Instance.select(*_series_columns(), _block_rounded(need.block).alias("disk"))  # fmt: skip
        .join(Series)
        .join(Study)
        .join(Patient)
        .where(Instance.storage == need.storage)
        .group_by(*_series_columns())
        .tuples()
    )
    rows = []
    for _, s_uid, st_uid, pid, mod, desc, sdate, last, count, size, disk in query:
        item = PlanItem(
            s_uid, st_uid, pid, mod, desc, _age_date(sdate, last, date_source), count, size,
            need.why,
        )  # fmt: skip
        rows.append((item, int(disk)))
    rows.sort(key=lambda r: (r[0].date, r[0].study_uid, r[0].series_uid))
    return rows


# -- the plan ---------------------------------------------------------------------------


class HoldCache:
    """Answers of ``retention_holds``, asked per batch of studies and remembered."""

    def __init__(self, pacs: Pacs, enabled: bool) -> None:
        self.pacs, self.enabled = pacs, enabled
        self.answers: dict[str, str] = {}

    def ask(self, study_uids) -> None:
        new = [uid for uid in dict.fromkeys(study_uids) if uid not in self.answers]
        if not self.enabled or not new:
            return
        for chunk in _chunks(new, 200):
            holds = self.pacs.archive.retention_holds(chunk)
            for uid in chunk:
                self.answers[uid] = holds.get(uid, "")

    def reason(self, study_uid: str) -> str:
        return self.answers.get(study_uid, "") if self.enabled else ""


def make_plan(
    pacs: Pacs,
    settings: dict | None = None,
    now: datetime | None = None,
    today: date | None = None,
    scope: str = "all",
) -> Plan:
    """What a purge run would delete now; ``scope`` is ``all``, ``rules`` or ``size``.

    This is the dry run (the console's page and ``pacscore purge --dry-run``
    show it); :func:`pacscore_purge.runner.run_purge` deletes exactly its
    items, asking the holds again right before each batch.
    """
    settings = settings or pacs.plugin_settings(PLUGIN_NAME)
    now = now or utcnow()
    today = today or date.today()
    # made_at is the real clock: instances received after it are never deleted by this plan
    plan = Plan(made_at=utcnow(), warnings=rule_warnings(settings["rules"]))
    rules = [Rule.from_settings(r) for r in settings["rules"]]
    holds = HoldCache(pacs, enabled=not settings["purge_undelivered"])
    chosen: set[str] = set()
    if scope in ("all", "rules"):
        candidates = retention_items(rules, settings["date_source"], today, now)
        holds.ask(i.study_uid for i in candidates)
        for item in candidates:
            _take(plan, item, holds, chosen)
    if scope in ("all", "size"):
        _plan_size(pacs, plan, settings, rules, holds, chosen)
    return plan


def _take(plan: Plan, item: PlanItem, holds: HoldCache, chosen: set[str]) -> bool:
    item.held = holds.reason(item.study_uid)
    if item.held:
        plan.held.append(item)
        return False
    plan.items.append(item)
    chosen.add(item.series_uid)
    return True


def _plan_size(pacs, plan: Plan, settings, rules, holds: HoldCache, chosen: set[str]) -> None:
    needs = size_needs(pacs, settings["thresholds"], plan.warnings)
    if not needs:
        return
    forever = protected_pairs(rules)
    for need in needs:
        candidates = size_candidates(need, settings["date_source"])
        remaining = need.bytes_needed
        # what the retention part of this run already frees on this storage
        remaining -= sum(disk for item, disk in candidates if item.series_uid in chosen)
        position = 0
        while remaining > 0 and position < len(candidates):
            window = candidates[position : position + 200]
            position += len(window)
            holds.ask(item.study_uid for item, _ in window)
            for item, disk in window:
                if remaining <= 0:
                    break
                if item.series_uid in chosen:
                    continue
                if (item.modality, item.description) in forever:
                    continue
                if _take(plan, item, holds, chosen):
                    remaining -= disk
        if remaining > 0:
            plan.warnings.append(
                f"storage {need.storage.name}: {remaining // MB} MB more should go, "
                "but every other series is protected or held"
            )
