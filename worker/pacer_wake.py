"""Waking the pacers: intake stores a message waiting in Postgres, then tells every worker's pacer
to look now rather than at its next pass (``WADISPATCH_PACER_INTERVAL_S``).

The wake is a Redis PUBLISH on one channel and says nothing but "look": the pacer reads what is
due from Postgres. So a wake that is lost (Redis away, no pacer subscribed yet) delays a message
by at most one pacer interval and loses nothing. A process rings from any thread without waiting:
rings that come while one is being published make one more publish, not one each, so a burst of
intake costs Redis a few publishes, not one a message.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import redis

from intake.store import count_accepted
from models.enums import SourceApi
from models.redis_client import redis_from_url
from models.settings import get_settings

log = logging.getLogger(__name__)

CHANNEL = "wadispatch:pacer-wake"
# A listener that lost Redis tries again this often (meanwhile its pacer runs on its interval).
RESUBSCRIBE_S = 1.0
# How long one wait for a wake blocks before it checks whether it should stop.
LISTEN_POLL_S = 0.5


class WakeBell:
    """Rings the pacers: ``ring()`` returns at once; a thread of its own publishes."""

    def __init__(self, client: Callable[[], redis.Redis]) -> None:
        self._client = client
        self._rung = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ring(self) -> None:
        self._rung.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._publish_rings, name="pacer-wake", daemon=True)
                    self._thread.start()

    def _publish_rings(self) -> None:
        client: redis.Redis | None = None
        while True:
            self._rung.wait()
            self._rung.clear()
            try:
                client = client or self._client()
                client.publish(CHANNEL, b"")
            except Exception as fault:  # the pacers find the messages at their next pass
                log.debug("pacer wake not published (%s)", type(fault).__name__)


_bell: WakeBell | None = None
_bell_pid = 0
_bell_lock = threading.Lock()


def wake_pacers() -> None:
    """Tell the pacers that messages wait in Postgres now (after their commit); never blocks."""
    global _bell, _bell_pid
    if _bell is None or _bell_pid != os.getpid():  # a forked child rings with a thread of its own
        with _bell_lock:
            if _bell is None or _bell_pid != os.getpid():
                url = get_settings().redis_url
                _bell = WakeBell(lambda: redis_from_url(url, purpose="pacer-wake"))
                _bell_pid = os.getpid()
    _bell.ring()


class WakeListener:
    """A pacer's ear: a thread subscribed to the wake channel that calls ``on_wake`` for each wake."""

    def __init__(self, client: Callable[[], redis.Redis], on_wake: Callable[[], None]) -> None:
        self._client = client
        self._on_wake = on_wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="pacer-wake-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=LISTEN_POLL_S + 1)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                pubsub = self._client().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                try:
                    while not self._stop.is_set():
                        if pubsub.get_message(timeout=LISTEN_POLL_S) is not None:
                            self._on_wake()
                finally:
                    pubsub.close()
            except Exception as fault:
                log.debug("pacer wake listener: %s; subscribing again", type(fault).__name__)
                self._stop.wait(RESUBSCRIBE_S)


def wake_pacers_now() -> None:
    """``wake_pacers`` for a short-lived process (the CLI): published before it returns, as the
    process may exit before a thread of its own would; a failure only delays the messages."""
    try:
        redis_from_url(get_settings().redis_url, purpose="pacer-wake").publish(CHANNEL, b"")
    except Exception as fault:
        log.debug("pacer wake not published (%s)", type(fault).__name__)


def stored_waiting(count: int, *, new_from: SourceApi | None) -> None:
    """``count`` messages were just committed waiting in Postgres: counted as accepted through
    ``new_from`` (None: not new, a replay), and the pacers woken. Never blocks."""
    if new_from is not None and count:
        count_accepted(new_from, count)
    wake_pacers()
