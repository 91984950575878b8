"""A reply the association's reactor takes during a send goes back to the sender.

pynetdicom's ``send_c_store`` (and ``send_c_echo``, ``send_c_find``...) pause
the association's reactor loop before sending, so that the reply is read by
the waiting ``send_*`` and not by the loop: they clear ``_reactor_checkpoint``
and wait until the loop says it is paused.  The pause has a window.  When the
previous ``send_*`` has just set the checkpoint again, the loop is woken but
may not yet have said that it is running; the next ``send_*`` sees the stale
"paused", sends, and the loop, now running, takes the reply off the queue,
logs "Received unexpected C-STORE service message" and drops it.  The sender
then waits out the DIMSE timeout and aborts the association (pynetdicom issue
#875).  It takes back-to-back requests to a fast peer on a busy machine: it
lost one C-STORE-RSP in a CI run of our tests, and would fail a routed or
moved study the same way.

Here a reply that the loop takes while a ``send_*`` waits (the checkpoint is
cleared) is put back at the head of the queue, where the sender's blocking
read finds it; the loop reads at most one message per turn and the cleared
checkpoint stops it before the next.  A reply nobody waits for is still
dropped, with pynetdicom's warning.
"""

from __future__ import annotations

import queue
from typing import Any

from pynetdicom.association import Association

# what this extension replaces, wraps or relies on in pynetdicom, with the SHA-256
# of its source in the tested version (pynetdicom_ext.upstream_source)
UPSTREAM = {
    "pynetdicom.association.Association._serve_request": (  # wrapped
        "2f24c1759cdf6c8c433094f2a8dd8144f76f5547f03daed7b94e0f78bc12f877"
    ),
    "pynetdicom.association.Association._run_reactor": (  # the loop that takes replies
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee"
    ),
}


def _put_back(messages: queue.Queue, item: Any) -> None:
    with messages.not_empty:
        messages.queue.appendleft(item)
        messages.not_empty.notify()


def install() -> None:
    serve_request = Association._serve_request

    def serve_or_hand_back(self: Association, msg, context_id: int) -> None:
        sender_waiting = not self._reactor_checkpoint.is_set()
        if sender_waiting and msg.is_valid_response and not msg.is_valid_request:
            _put_back(self.dimse.msg_queue, (context_id, msg))
            return
        serve_request(self, msg, context_id)

    Association._serve_request = serve_or_hand_back
