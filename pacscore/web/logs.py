"""Console page of the server log: latest lines, level at run time, download."""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from flask import Blueprint, abort, flash, redirect, render_template, request, send_file, url_for

from pacscore.web.common import get_pacs, record
from pacscore.web.security import require_right

bp = Blueprint("logs", __name__, url_prefix="/log")

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_NAME = "pacscore.log"
MAX_LINES = 2000


def log_files() -> dict[str, Path]:
    """The rotated log files, by name: downloads are chosen from this list only."""
    folder = get_pacs().config.log_dir
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.glob(f"{LOG_NAME}*")) if p.is_file()}


def tail(path: Path, count: int) -> list[str]:
    with path.open(errors="replace") as fp:
        return list(deque(fp, maxlen=count))


@bp.get("/")
@require_right("view_audit")
def index():
    try:
        count = min(MAX_LINES, max(1, int(request.args.get("lines", 200))))
    except ValueError:
        abort(400, "lines must be an integer")
    files = log_files()
    lines = tail(files[LOG_NAME], count) if LOG_NAME in files else []
    level = logging.getLevelName(logging.getLogger().level)
    return render_template(
        "log.html", lines=lines, files=sorted(files), level=level, levels=LEVELS, count=count
    )


@bp.post("/level")
@require_right("configure")
def set_level():
    level = request.form.get("level", "")
    if level not in LEVELS:
        abort(400, f"unknown level {level!r}: one of {', '.join(LEVELS)}")
    logging.getLogger().setLevel(level)
    record("log_level", target=level)
    flash(f"Log level set to {level} (until the next restart).", "success")
    return redirect(url_for("logs.index"))


@bp.get("/download/<name>")
@require_right("view_audit")
def download(name: str):
    path = log_files().get(name)
    if path is None:
        abort(404, "no such log file")
    record("log_download", target=name)
    return send_file(path, mimetype="text/plain", as_attachment=True, download_name=name)
