"""``pacscore purge [--dry-run] [--scope all|rules|size] [--json]``."""

from __future__ import annotations

import argparse
import json

from pacscore_purge.planner import PlanItem, make_plan
from pacscore_purge.runner import run_purge


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="only list what would be deleted, delete nothing"
    )
    parser.add_argument(
        "--scope",
        choices=("all", "rules", "size"),
        default="all",
        help="retention rules, size thresholds, or both (default)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _line(item: PlanItem) -> str:
    return (
        f"{item.date}  {item.patient_id}  {item.modality or '-'}  {item.description or '-'}  "
        f"study={item.study_uid} series={item.series_uid}  "
        f"instances={item.instances} bytes={item.bytes}  {item.held or item.reason}"
    )


def _print(title: str, items: list[PlanItem], held: list[PlanItem], warnings, totals) -> None:
    for warning in warnings:
        print(f"warning: {warning}")
    print(title)
    for item in items:
        print(f"  {_line(item)}")
    if held:
        print("kept (held by a plugin):")
        for item in held:
            print(f"  {_line(item)}")
    print(
        f"total: {totals['series']} series in {totals['studies']} studies, "
        f"{totals['instances']} instances, {totals['bytes']} bytes"
        + (f"; {len(held)} series held" if held else "")
    )


def run(pacs, args) -> int:
    if args.dry_run:
        plan = make_plan(pacs, scope=args.scope)
        if args.json:
            print(json.dumps({"dry_run": True, **plan.as_dict()}, indent=1))
        else:
            _print("would delete (dry run):", plan.items, plan.held, plan.warnings, plan.totals)
        return 0
    report = run_purge(pacs, scope=args.scope)
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": False,
                    "deleted": [i.as_dict() for i in report.deleted],
                    "held": [i.as_dict() for i in report.held],
                    "warnings": report.plan.warnings,
                    "totals": report.totals,
                },
                indent=1,
            )
        )
    else:
        _print("deleted:", report.deleted, report.held, report.plan.warnings, report.totals)
    return 0


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "purge", help="delete studies past their retention rule or over a size threshold"
    )
    add_arguments(parser)
    parser.set_defaults(func=lambda args, pacs: run(pacs, args))
