"""The worker is stopping: messages claimed but not yet called go back instead of being sent.

Celery's warm shutdown (SIGTERM) stops taking tasks and waits for the running ones. A send task
may be holding a claim while it waits for its send moment, its recipient's pace or its media;
once the worker is stopping, such a task gives its claim back at once (no attempt counted; its
reserved slot kept; the next worker's pacer hands the message over), and only calls already
under way are waited for. A call is never cut off by us: its answer is written, so nothing
becomes DELIVERY_UNCERTAIN unless the process is killed before the call returns (docs/operating.md,
"Stopping a worker").

The flag is a plain boolean, set from a signal handler: no lock is taken there (under the solo
pool the task itself runs on the main thread, and a signal landing inside a lock the handler
also wants would hang the worker). Naps poll it in short slices instead of waiting on an Event.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

# How soon a napping task notices the stop.
POLL_S = 0.05

_stopping = False


class Stopping(Exception):
    """Raised at a point before the call when the worker has begun to stop."""

    def __init__(self, slot: float | None = None) -> None:
        super().__init__("the worker is stopping")
        self.slot = slot  # the send slot (Redis time) the message had reserved, kept for it


def begin() -> None:
    global _stopping
    _stopping = True


def reset() -> None:
    """For tests that run a delivery in-process."""
    global _stopping
    _stopping = False


def stopping() -> bool:
    return _stopping


def check(slot: float | None = None) -> None:
    if _stopping:
        raise Stopping(slot)


def nap(seconds: float, *, slot: float | None = None) -> None:
    """Sleep before the call, waking (and raising Stopping) soon after the worker starts to stop."""
    deadline = time.monotonic() + seconds
    while True:
        check(slot)
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, POLL_S))


Handler = Callable[[int, FrameType | None], Any]


def stop_first_on(signum: int) -> None:
    """Set the flag before the signal's own handler runs. Celery's cold shutdown (SIGQUIT) first
    sleeps out its soft-shutdown wait inside its handler, and only then says the worker is
    stopping: claims would be sent, not given back, all that while."""
    previous = signal.getsignal(signum)
    if not callable(previous):
        return

    def first_stop(number: int, frame: FrameType | None) -> Any:
        begin()
        return previous(number, frame)

    signal.signal(signum, first_stop)
