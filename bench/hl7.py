#!/usr/bin/env python3
"""HL7 feed throughput: ORM^O01 messages applied and acknowledged per second.

    .venv/bin/python bench/hl7.py [--messages N] [--db URL] [--profile FILE.svg]

Starts a fresh ``pacscore serve`` (hl7 plugin installed) on free 127.0.0.1
ports, then sends N new orders over one MLLP connection (each message waits
for its ACK, as a feed does), then N other orders over four connections in
parallel.  Every ACK must be AA; the worklist must hold all the orders.
With ``--profile``, py-spy records the server during the one-connection run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
ORDER = (
    "MSH|^~\\&|HIS|HOSP|PACSCORE|RAD|20240101120000||ORM^O01|{tag}{n}|P|2.5\r"
    "PID|1||{tag}P{n}^^^HOSP^MR||Dupont^Jean^{n}||19700102|M\r"
    "PV1|1|O|||||||||||||||||ADM{n}\r"
    "ORC|NW|{tag}PLC{n}|{tag}FIL{n}||SC||^^^20240102090000\r"
    "OBR|1|{tag}PLC{n}|{tag}FIL{n}|CT-THX^CT Thorax^LOCAL||||||||||||1234^Martin^Paul||"
    "{tag}ACC{n}|RP{n}|SPS{n}||||CT\r"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def send_all(port: int, tag: str, numbers: range, errors: list[str]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for n in numbers:
            sock.sendall(b"\x0b" + ORDER.format(tag=tag, n=n).encode() + b"\x1c\r")
            ack = b""
            while not ack.endswith(b"\x1c\r"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                ack += chunk
            if b"MSA|AA|" not in ack:
                errors.append(ack.decode(errors="replace"))


def run_cell(port: int, tag: str, count: int, connections: int) -> float:
    errors: list[str] = []
    share = count // connections
    threads = [
        threading.Thread(target=send_all, args=(port, tag, range(i * share, (i + 1) * share),
                                                errors))
        for i in range(connections)
    ]  # fmt: skip
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} message(s) not accepted, first: {errors[0]!r}")
    return share * connections / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="orders per cell")
    parser.add_argument("--db", default="sqlite:///index.db", help="database URL")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy profile of the 1-connection run (.svg flame graph, else raw stacks)",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="pacscore-bench-hl7-"))
    pacscore = [str(VENV_BIN / "pacscore"), "--home", str(home)]
    subprocess.run([*pacscore, "init", "--db", args.db], check=True, capture_output=True)
    ports = {name: free_port() for name in ("dicom", "http", "hl7")}
    server = subprocess.Popen(
        [*pacscore, "--log-level", "WARNING", "serve", "--host", "127.0.0.1",
         "--dicom-port", str(ports["dicom"]), "--http-port", str(ports["http"]),
         "--hl7-port", str(ports["hl7"])],
        stdout=subprocess.DEVNULL, stderr=open(home / "serve.err", "wb"),  # noqa: SIM115
    )  # fmt: skip
    try:
        wait_for(ports["hl7"])
        run_cell(ports["hl7"], "WARM", 50, 1)
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                [str(VENV_BIN / "py-spy"), "record", "-o", str(args.profile),
                 *(["--format", "raw"] if args.profile.suffix != ".svg" else []),
                 "--pid", str(server.pid), "--rate", "200", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1)
        one = run_cell(ports["hl7"], "ONE", args.messages, 1)
        if spy:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        four = run_cell(ports["hl7"], "FOUR", args.messages, 4)
        listed = subprocess.run(
            [*pacscore, "worklist", "list", "--limit", str(args.messages * 3)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        expected = 50 + 2 * args.messages
        if listed.count("\n") != expected:
            raise SystemExit(f"worklist holds {listed.count(chr(10))} steps, not {expected}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    print(f"| HL7 ORM^O01, {args.messages} messages, {args.db.split(':')[0]} | messages/s |")
    print("|---|---|")
    print(f"| 1 connection | {one:.0f} |")
    print(f"| 4 connections | {four:.0f} |")
    print(f"(cpus: {os.cpu_count()}, python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
