"""The MLLP listener of a real ``pacscore serve`` under hostile input: frames of
10 MB, 200 connections at once, broken framing and slow drips.  It keeps
answering, and the serving process gives its memory back afterwards."""

from __future__ import annotations

import contextlib
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import db_url, pacs_home, wait_for_port  # noqa: F401 - fixtures

START, END = b"\x0b", b"\x1c\r"
MIB = 1024 * 1024

ORDER = (
    "MSH|^~\\&|HIS|HOSP|PACSCORE|RAD|20240101120000||ORM^O01|{cid}|P|2.5\r"
    "PID|1||P{cid}||Hostile^Input\r"
    "ORC|NW|PLC{cid}|FIL{cid}||SC||^^^20240102090000\r"
    "OBR|1|PLC{cid}|FIL{cid}|CT^CT^L||||||||||||1^Ref^Doc||ACC{cid}|RP{cid}|SPS{cid}||||CT\r"
)


def order(cid: str, padding: int = 0) -> bytes:
    """An ORM^O01 frame; ``padding`` bytes of NTE make it as large as wanted."""
    text = ORDER.format(cid=cid)
    if padding:
        text += "NTE|1||" + "x" * padding + "\r"
    return START + text.encode() + END


def rss_mib(pid: int) -> float:
    """VmRSS of a process, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def read_until(sock: socket.socket, marker: bytes, timeout: float = 20) -> bytes:
    """Everything received until ``marker`` is in it (the connection may close first)."""
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def send_and_ack(port: int, payload: bytes, cid: str, padding: int = 0) -> str:
    """Send ``payload`` then a valid order ``cid`` on one connection; the ACKs received."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        with contextlib.suppress(OSError):  # a refused connection is closed at once
            sock.sendall(payload + order(cid, padding))
        return read_until(sock, f"MSA|AA|{cid}".encode()).decode("latin-1")


def big_frames(port: int) -> list[str]:
    """Six frames of 10 MB and four of 6 MB at once, each followed by a valid order."""
    sizes = [10 * MIB] * 6 + [6 * MIB] * 4
    with ThreadPoolExecutor(len(sizes)) as pool:
        return list(
            pool.map(lambda n: send_and_ack(port, order(f"BIG{n}", sizes[n]), f"AFTER{n}"),
                     range(len(sizes)))
        )  # fmt: skip


def large_orders(port: int, count: int = 32) -> list[str]:
    """``count`` orders of 900 kB at once: under the limit, each applied."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda n: send_and_ack(port, b"", f"LARGE{n}", 900_000), range(count)))


def many_connections(port: int, count: int = 200) -> None:
    """``count`` connections at once, each with 256 KiB of a frame that never ends."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(count)]
    for n, sock in enumerate(socks):
        with contextlib.suppress(OSError):  # beyond the listener's limit: closed at once
            sock.sendall(order(f"MANY{n}", 256 * 1024)[:-2])
    time.sleep(0.5)
    for sock in socks:
        sock.close()


def broken_framing_and_drips(port: int) -> str:
    """Start bytes without end, ends without start, noise, a frame dripped 16 bytes at a time."""
    noise = bytearray(random.Random(20).randbytes(2 * MIB))
    for n in range(len(noise)):
        if noise[n] in b"\x0b\x1c":
            noise[n] = 0
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(START + b"x" * MIB + START + b"y" * MIB + END + b"\x1c" * 1000)
        sock.sendall(START + noise + START + noise + END + noise)
        frame = order("DRIP")
        for n in range(0, len(frame), 16):
            sock.sendall(frame[n : n + 16])
            time.sleep(0.001)
        return read_until(sock, b"MSA|AA|DRIP").decode("latin-1")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_memory_comes_back_after_a_burst_of_hostile_input(pacs_home):  # noqa: F811
    pacs_home.start()
    wait_for_port(pacs_home.hl7_port, process=pacs_home.process)
    port, pid = pacs_home.hl7_port, pacs_home.process.pid
    # warm up: an AA and an AR
    assert "MSA|AA|WARM1" in send_and_ack(port, b"", "WARM1")
    assert "MSA|AR|" in send_and_ack(port, START + b"not HL7" + END, "WARM2")
    time.sleep(0.5)
    before = rss_mib(pid)

    acks = big_frames(port)
    large = large_orders(port)
    many_connections(port)
    assert "MSA|AA|DRIP" in broken_framing_and_drips(port)
    assert "MSA|AA|LAST" in send_and_ack(port, b"", "LAST")
    time.sleep(1)
    after = rss_mib(pid)
    print(f"RSS before {before:.1f} MiB, after {after:.1f} MiB")

    assert after < before + 30 and after < 150, (before, after)
    for n, ack in enumerate(acks):
        assert f"MSA|AA|AFTER{n}" in ack, ack[:300]
        # a frame above the limit is refused with its control ID, never applied
        assert f"MSA|AR|BIG{n}|message of " in ack, ack[:300]
    assert all(f"MSA|AA|LARGE{n}" in ack for n, ack in enumerate(large)), large
    listing = pacs_home.cli("worklist", "list", "--limit", "1000").stdout
    assert "ACCBIG" not in listing and "ACCMANY" not in listing
    assert "ACCAFTER9" in listing and "ACCDRIP" in listing and "ACCLARGE31" in listing
    assert pacs_home.process.poll() is None
