"""Waiting for a message's outcome without holding a server thread.

One Redis pattern subscription per API process; each waiting request holds only an asyncio
future. Notifications can be missed (Redis restarted, subscriber reconnecting), so waiters also
look at Postgres now and then: the row, not the notification, is the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from models.redis_client import SUBSCRIBER_HEALTH_CHECK_S, async_subscriber_from_url
from models.results_channel import CHANNEL_PATTERN, message_id_from
from models.settings import Settings

log = logging.getLogger(__name__)


class ResultWaiter:
    def __init__(self, redis_url: str, settings: Settings | None = None) -> None:
        self._redis_url = redis_url
        self._settings = settings
        # Times the subscription was lost (tests watch it stay at 0 through idle spells).
        self.losses = 0
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="result-waiter")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def expect(self, message_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(message_id, set()).add(future)
        return future

    def forget(self, message_id: str, future: asyncio.Future[None]) -> None:
        futures = self._waiting.get(message_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._waiting[message_id]

    def _wake(self, message_id: str) -> None:
        for future in self._waiting.get(message_id, ()):
            if not future.done():
                future.set_result(None)

    async def _listen(self) -> None:
        while True:
            client = async_subscriber_from_url(self._redis_url, purpose="api-results", settings=self._settings)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.psubscribe(CHANNEL_PATTERN)
                    self.subscribed.set()
                    while True:
                        # Waking up now and then while idle lets the client ping the server.
                        event = await pubsub.get_message(timeout=SUBSCRIBER_HEALTH_CHECK_S)
                        if event is not None and event.get("type") == "pmessage":
                            channel = event["channel"]
                            self._wake(message_id_from(channel.decode() if isinstance(channel, bytes) else channel))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                self.losses += 1
                log.warning("result subscription lost (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(1)
            finally:
                await client.aclose()
