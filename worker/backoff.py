"""Retry delays: exponential backoff with full jitter, capped, never shorter than Retry-After."""

from __future__ import annotations

import random


def compute_backoff(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None = None,
    rand: random.Random | None = None,
) -> float:
    """Delay before try number ``attempt + 1`` (``attempt`` counts tries made so far, from 1).

    Full jitter (a uniform draw from 0 to the exponential ceiling) spreads retries of many messages
    that failed together, so they do not all come back at once.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(cap_s, base_s * (2 ** (attempt - 1)))
    delay = (rand or random).uniform(0, ceiling)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, cap_s))
    return delay
