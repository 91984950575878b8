#!/usr/bin/env python3
"""One store cell, pacscore versions and Orthanc taking turns on the same data.

    .venv/bin/python bench/paired.py --kind large --associations 1 --count 1000 \\
        --rounds 3 --version HEAD~2 --version work

The machine's disk and CPU speed drift from minute to minute; comparing two
versions of pacscore in separate bench runs mixes their difference with
that drift.  Here each round stores the same instances once with every
version and with Orthanc, one after the other, each on a fresh server.
``--version REV`` is a git revision, checked out in a worktree under
``--out``; ``work`` is the working tree.  Per server and round it prints
the rate and the server's user and system CPU per instance.  Reuses
``bench/run.py``'s servers and clients (and its private network namespace).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARM = 5  # instances stored before each timed cell
sys.path.insert(0, str(HERE))

import gen  # noqa: E402
import run as bench  # noqa: E402


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) in seconds of the server's processes."""
    user = system = 0
    for each in bench.server_pids(pid):
        with open(f"/proc/{each}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / bench.CLK_TCK, system / bench.CLK_TCK


def worktree(out: Path, rev: str) -> Path | None:
    """A checkout of ``rev`` whose ``pacscore`` package shadows the installed one."""
    if rev == "work":
        return None
    sha = subprocess.run(
        ["git", "-C", str(bench.REPO), "rev-parse", "--short", rev],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    path = out / "versions" / sha
    if not path.exists():
        subprocess.run(
            ["git", "-C", str(bench.REPO), "worktree", "add", "--detach", str(path), sha],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return path


def one_cell(
    kind: str, version: str, source: Path | None, dirs: list[Path], count: int, out: Path, tag: str
) -> None:
    """Store ``dirs`` on a fresh server of ``kind``; print the rate and CPU."""
    if source is not None:  # the server and its children import the checkout's pacscore
        os.environ["PYTHONPATH"] = str(source)
    try:
        server = bench.fresh_server(kind, out, tag)
    finally:
        os.environ.pop("PYTHONPATH", None)
    try:
        bench.store(server, [out / "data" / "warm"])
        time.sleep(2)  # every listener process is up
        bench.settle_deletions()
        before = cpu_split(server.pid)
        elapsed = bench.store(server, dirs)
        stored = bench.wait_count(server, count + WARM)
        after = cpu_split(server.pid)
    finally:
        server.destroy()
    if stored != count + WARM:
        raise RuntimeError(f"{version}: {stored - WARM} of {count} instances stored")
    user, system = ((b - a) * 1000 / count for a, b in zip(before, after, strict=True))
    rate = count / elapsed
    print(f"{version:>12}  {rate:7.1f} inst/s  user {user:.2f}  system {system:.2f} ms/inst")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--kind", choices=["large", "small"], default="large")
    ap.add_argument("--associations", type=int, choices=[1, 4], default=1)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--version", action="append", help="git revision, or 'work' (repeatable)")
    ap.add_argument("--no-orthanc", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "paired")
    args = ap.parse_args()
    if os.environ.get("PACSCORE_BENCH_NETNS") != "1":
        env = dict(os.environ, PACSCORE_BENCH_NETNS="1")
        command = ["unshare", "--net", "--", sys.executable, str(Path(__file__).resolve())]
        return subprocess.call([*command, *sys.argv[1:]], env=env)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

    out = args.out.resolve()
    data = out / "data"
    bench.remove_tree(data)
    bench.remove_tree(out / "homes")  # an earlier run's
    parts = gen.generate(data / "cell", "large" if args.kind == "large" else "small",
                         args.kind, args.count)  # fmt: skip
    gen.generate(data / "warm", f"warm-{args.kind}", args.kind, WARM, parts=1)
    dirs = [data / "cell"] if args.associations == 1 else parts
    versions = [(v, worktree(out, v)) for v in args.version or ["work"]]
    print(f"{args.kind} instances, {args.associations} association(s), {args.count} per cell")
    for round_number in range(args.rounds):
        for version, source in versions:
            tag = f"r{round_number}-{version.replace('/', '_')}"  # each home its own
            one_cell("pacscore", version, source, dirs, args.count, out, tag)
        if not args.no_orthanc:
            one_cell("Orthanc", "Orthanc", None, dirs, args.count, out, f"r{round_number}")
    bench.remove_tree(out / "homes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
