"""CPU seconds spent by each part of the system, read from /proc (Linux), to show where time goes."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), in seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 0, utime field 11, stime field 12.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class CpuMeter:
    """Snapshots CPU per named group of processes; ``since()`` gives what each spent in between."""

    def __init__(self, groups: dict[str, list[int]] | None = None) -> None:
        self.groups = groups or {}
        self._start: dict[str, dict[int, float]] = {}

    def snapshot_groups(self) -> dict[str, list[int]]:
        # Postgres backends come and go with connections: take whichever exist now.
        return {**self.groups, "postgres": pids_named("postgres"), "redis": pids_named("redis-server")}

    def start(self) -> None:
        self._start = {g: {p: cpu_seconds(p) for p in pids} for g, pids in self.snapshot_groups().items()}

    def since(self) -> dict[str, float]:
        spent: dict[str, float] = {}
        for group, pids in self.snapshot_groups().items():
            before = self._start.get(group, {})
            spent[group] = sum(max(0.0, cpu_seconds(p) - before.get(p, 0.0)) for p in pids)
        return spent
