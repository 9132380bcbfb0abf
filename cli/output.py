"""How admin commands print: a readable line by default, JSON with --json; errors on one line."""

from __future__ import annotations

import json
from typing import Any

import click


def emit(data: dict[str, Any], *, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, default=str, indent=2) if as_json else human)


def fail(message: str) -> None:
    raise click.ClickException(message)


# Every --since takes the documentation's spelling (docs/operating.md, "The CLI": 2026-12-02T09:00),
# with seconds or a space, or a date.
SINCE = click.DateTime(["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"])
