"""The sandbox's memory: what it received, which tokens it expects, latency and injected faults."""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from meta_sandbox.pacing import Limits


@dataclass
class Fault:
    """Answer the next ``remaining`` calls (optionally for one phone number) with this error."""

    http_status: int
    code: int | None
    message: str
    remaining: int | None  # None: until cleared
    phone_number_id: str | None = None
    retry_after_s: float | None = None
    fraction: float = 1.0  # the share of matching calls that get the fault


@dataclass
class SandboxState:
    latency_ms: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    # media id -> what was uploaded under it
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    # How often each Meta error code was answered (injected or enforced), per phone number.
    answered_errors: dict[str, Counter[int]] = field(default_factory=dict)

    def count_error(self, phone_number_id: str, code: int) -> None:
        self.answered_errors.setdefault(phone_number_id, Counter())[code] += 1

    def count_call(self, phone_number_id: str) -> None:
        self.calls[phone_number_id] = self.calls.get(phone_number_id, 0) + 1

    def take_fault(self, phone_number_id: str) -> Fault | None:
        for fault in self.faults:
            if fault.phone_number_id not in (None, phone_number_id):
                continue
            if fault.fraction < 1.0 and random.random() >= fault.fraction:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
            return fault
        return None

    def record(self, phone_number_id: str, token: str, body: dict[str, Any], wamid: str) -> None:
        self.received.append(
            {
                "wamid": wamid,
                "phone_number_id": phone_number_id,
                # Enough to prove which token arrived, without keeping the token itself.
                "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                "received_at": time.time(),
                "body": body,
            }
        )
