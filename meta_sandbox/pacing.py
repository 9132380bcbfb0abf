"""The limits the sandbox enforces like Meta: throughput per phone number (130429) and the pace
to one user (131056). A GCRA per key on the sandbox's own monotonic clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Gcra:
    interval_s: float
    tolerance_s: float
    _tat: dict[str, float] = field(default_factory=dict)

    def allow(self, key: str, now: float | None = None) -> bool:
        if self.interval_s <= 0:
            return True
        now = time.monotonic() if now is None else now
        tat = max(self._tat.get(key, now), now)
        if tat - now > self.tolerance_s:
            return False
        self._tat[key] = tat + self.interval_s
        return True


@dataclass
class Limits:
    """Defaults: 80 mps per number with a burst of 20; pair pacing one per 6 s with a burst of 5
    (Meta publishes no exact burst; these are lenient on purpose and settable)."""

    default_mps: float = 80.0
    throughput_burst: float = 20.0
    pair_interval_s: float = 6.0
    pair_burst: float = 5.0
    mps_by_number: dict[str, float] = field(default_factory=dict)
    _throughput: dict[str, Gcra] = field(default_factory=dict)
    _pair: Gcra | None = None

    def _number_gcra(self, phone_number_id: str) -> Gcra:
        mps = self.mps_by_number.get(phone_number_id, self.default_mps)
        gcra = self._throughput.get(phone_number_id)
        if gcra is None or abs(gcra.interval_s - 1 / mps) > 1e-12:
            gcra = Gcra(1 / mps, self.throughput_burst / mps)
            self._throughput[phone_number_id] = gcra
        return gcra

    def throughput_ok(self, phone_number_id: str) -> bool:
        return self._number_gcra(phone_number_id).allow(phone_number_id)

    def pair_ok(self, phone_number_id: str, to: str) -> bool:
        if self._pair is None or self._pair.interval_s != self.pair_interval_s:
            self._pair = Gcra(self.pair_interval_s, self.pair_interval_s * self.pair_burst)
        return self._pair.allow(f"{phone_number_id}:{to}")

    def reset(self) -> None:
        self._throughput.clear()
        self._pair = None
