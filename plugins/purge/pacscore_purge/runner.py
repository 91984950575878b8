"""Running a purge: the plan's series deleted batch by batch through the core
archive (rows and trash in one transaction, files after the commit), each
batch asked to ``retention_holds`` again just before it goes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import groupby
from typing import TYPE_CHECKING

from pacscore_purge.planner import Plan, PlanItem, make_plan
from pacscore_purge.settings import PLUGIN_NAME

if TYPE_CHECKING:
    from pacscore.app import Pacs

log = logging.getLogger(__name__)

ACTOR = "system:purge"
MAX_SIZE_PASSES = 3


@dataclass
class RunReport:
    plan: Plan
    deleted: list[PlanItem] = field(default_factory=list)
    held: list[PlanItem] = field(default_factory=list)
    instances: int = 0
    bytes: int = 0

    @property
    def totals(self) -> dict[str, int]:
        return {
            "series": len(self.deleted),
            "studies": len({i.study_uid for i in self.deleted}),
            "instances": self.instances,
            "bytes": self.bytes,
        }


def run_purge(
    pacs: Pacs,
    scope: str = "all",
    settings: dict | None = None,
    now: datetime | None = None,
    today: date | None = None,
) -> RunReport:
    """Purge now: build the plan (exactly the dry run) and delete its series.

    The trash left by an interrupted deletion is emptied first.  When a size
    threshold is still not met after the plan (files written meanwhile, a
    file system that freed less than expected), the size part is planned and
    run again, a few times at most.
    """
    settings = settings or pacs.plugin_settings(PLUGIN_NAME)
    pacs.archive.empty_trash()
    report = RunReport(plan=make_plan(pacs, settings, now, today, scope))
    report.held += report.plan.held
    _execute(pacs, report, report.plan.items, settings)
    if scope in ("all", "size") and report.plan.items:
        for _ in range(MAX_SIZE_PASSES):
            extra = make_plan(pacs, settings, now, today, scope="size")
            if not extra.items:
                break
            _execute(pacs, report, extra.items, settings)
    log.info(
        "purge: %d series of %d studies deleted (%d instances, %d bytes), %d held",
        *report.totals.values(),
        len(report.held),
    )
    return report


def _execute(pacs: Pacs, report: RunReport, items: list[PlanItem], settings: dict) -> None:
    batch_size = settings["batch_series"]
    ask_holds = not settings["purge_undelivered"]
    by_reason = sorted(items, key=lambda i: i.reason)  # stable: oldest first within a reason
    for reason, group in groupby(by_reason, key=lambda i: i.reason):
        group = list(group)
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            if ask_holds:
                holds = pacs.archive.retention_holds(sorted({i.study_uid for i in batch}))
                for item in batch:
                    item.held = holds.get(item.study_uid, "")
                report.held += [i for i in batch if i.held]
                batch = [i for i in batch if not i.held]
            if not batch:
                continue
            deletion = pacs.archive.delete_series(
                [i.series_uid for i in batch],
                reason=f"purge {reason}",
                actor=ACTOR,
                received_before=report.plan.made_at,
                rule=reason,
            )
            gone = {uid for study in deletion.studies.values() for uid in study["series"]}
            report.deleted += [i for i in batch if i.series_uid in gone]
            report.instances += deletion.instances
            report.bytes += deletion.bytes
