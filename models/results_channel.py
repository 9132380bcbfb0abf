"""Where the worker announces a message's final outcome, for API calls that wait for it (FlowIQ).

The announcement is only a wake-up call: the waiter reads the outcome from Postgres.
"""

from __future__ import annotations

import uuid

CHANNEL_PREFIX = "wadispatch:result:"
CHANNEL_PATTERN = CHANNEL_PREFIX + "*"


def channel_for(message_id: uuid.UUID | str) -> str:
    return f"{CHANNEL_PREFIX}{message_id}"


def message_id_from(channel: str) -> str:
    return channel.removeprefix(CHANNEL_PREFIX)
