"""Blocking waits instead of pynetdicom's 1 ms polling loops.

Each association has two threads that poll: the DUL reactor sleeps 1 ms
whenever it found nothing to do, and the acceptor's ``_run_reactor`` sleeps
1 ms between checks of its queues.  Per association that is two thousand
wake-ups a second, a quarter of the server's CPU while it receives small
instances, and up to a millisecond of latency at each hand-over.

Both sleeps become waits that end as soon as there is work:

* the DUL thread waits on its socket and on a wake-up socket pair written to
  whenever a primitive is queued for it to send (``to_provider_queue``);
* the association thread waits on an event set whenever something is queued
  for it (a complete DIMSE message in ``dimse.msg_queue``, a release or abort
  primitive in ``dul.to_user_queue``) and whenever its reactor checkpoint is
  cleared or set.  A ``send_*`` from another thread (the C-STOREs of our
  C-MOVE sub-associations, the SCU helpers) clears the checkpoint, then waits
  until the loop reaches its pause point: with pynetdicom's 1 ms sleep that
  wait was up to a millisecond per message sent.

Both still wake every ``MAX_WAIT`` seconds, so timers (ARTIM, idle timeout)
and flags set without a queue (``kill()``) keep working.  The loops
themselves are pynetdicom's, unchanged: the modules' ``time`` is replaced by
a proxy whose ``sleep`` waits as above when called from those two loops and
sleeps as before anywhere else.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import sys
import threading
import time
from typing import Any

import pynetdicom.association as association_module
import pynetdicom.dul as dul_module
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider

from pacscore.dicom.pynetdicom_ext import per_association

MAX_WAIT = 0.05
# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom.association.Association.__init__": (  # wrapped
        "eb07516b8009ad8fa338201dea39578380fbf9f2c59fa5e368e20250eb97c4ea"
    ),
    "pynetdicom.association.Association._run_reactor": (  # its sleep replaced
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee"
    ),
    "pynetdicom.dul.DULServiceProvider.__init__": (  # wrapped
        "c82dafa9438ddf70685917cb15d2bfbc814aa0ad5233ffb0ae650faedc7570f0"
    ),
    "pynetdicom.dul.DULServiceProvider.run_reactor": (  # wrapped, its sleep replaced
        "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803"
    ),
    "pynetdicom.dimse.DIMSEServiceProvider.__init__": (  # wrapped
        "bbecd186810e77006d189aff29c42e76d226cd6b34cbb12066c56300a8280ef4"
    ),
}


class NotifyingQueue(queue.Queue):
    """A queue that calls ``notify()`` after every put."""

    def __init__(self, notify) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


class _WakingCheckpoint(threading.Event):
    """An association's reactor checkpoint that wakes the loop when it changes.

    A ``send_*`` clears it, then waits for the loop to say it is paused; the
    loop says so at the start of its next turn, which this brings forward.
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self._wake_loop = _assoc_event(assoc).set

    def set(self) -> None:
        super().set()
        self._wake_loop()

    def clear(self) -> None:
        super().clear()
        self._wake_loop()


def _assoc_event(assoc: Association) -> threading.Event:
    return per_association(assoc, "_pacs_wakeup", threading.Event)


class _DulWakeup:
    """A socket pair the DUL thread selects on with its connection."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def notify(self) -> None:
        # full: a wake-up is pending anyway; closed: the thread has ended
        with contextlib.suppress(OSError):
            self.writer.send(b"\x00")

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _dul_sleep(dul: DULServiceProvider, seconds: float) -> None:
    wakeup: _DulWakeup | None = getattr(dul, "_pacs_wakeup", None)
    sock = getattr(dul.socket, "socket", None) if dul.socket is not None else None
    if wakeup is None or sock is None:
        time.sleep(seconds)
        return
    try:
        select.select([sock, wakeup.reader], [], [], MAX_WAIT)
    except (OSError, ValueError):  # the connection closed meanwhile
        time.sleep(seconds)
    wakeup.drain()


class _WaitingTime:
    """``time`` for pynetdicom's dul and association modules (see the module doc)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        caller = sys._getframe(1).f_code
        if isinstance(thread, DULServiceProvider) and caller is _DUL_LOOP:
            _dul_sleep(thread, seconds)
        elif isinstance(thread, Association) and caller is _ASSOC_LOOP:
            event = _assoc_event(thread)
            event.wait(MAX_WAIT)
            event.clear()
        else:
            time.sleep(seconds)


_DUL_LOOP = DULServiceProvider.run_reactor.__code__
_ASSOC_LOOP = Association._run_reactor.__code__


def install() -> None:
    dul_init, dimse_init = DULServiceProvider.__init__, DIMSEServiceProvider.__init__
    assoc_init = Association.__init__

    def init_assoc(self: Association, *args: Any, **kwargs: Any) -> None:
        assoc_init(self, *args, **kwargs)
        self._reactor_checkpoint = _WakingCheckpoint(self)
        self._reactor_checkpoint.set()

    run_reactor = DULServiceProvider.run_reactor

    def init_dul(self: DULServiceProvider, assoc: Association) -> None:
        dul_init(self, assoc)
        wake_assoc = _assoc_event(assoc).set
        self.to_user_queue = NotifyingQueue(wake_assoc)
        self.to_provider_queue = NotifyingQueue(lambda: _notify_dul(self))

    def init_dimse(self: DIMSEServiceProvider, assoc: Association) -> None:
        dimse_init(self, assoc)
        self.msg_queue = NotifyingQueue(_assoc_event(assoc).set)

    def run_dul(self: DULServiceProvider) -> None:
        self._pacs_wakeup = _DulWakeup()
        try:
            run_reactor(self)
        finally:
            self._pacs_wakeup.close()

    Association.__init__ = init_assoc
    DULServiceProvider.__init__ = init_dul
    DIMSEServiceProvider.__init__ = init_dimse
    DULServiceProvider.run_reactor = run_dul
    dul_module.time = association_module.time = _WaitingTime()


def _notify_dul(dul: DULServiceProvider) -> None:
    wakeup = getattr(dul, "_pacs_wakeup", None)
    if wakeup is not None:
        wakeup.notify()
