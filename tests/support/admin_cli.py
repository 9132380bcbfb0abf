"""The `wadispatch` admin commands run in the test's own process (click's runner).

Tests outside tests/cli use the CLI to set things up (halt an account, add an endpoint); a
subprocess costs about a second of interpreter start-up each time. tests/cli keeps proving the
real command as a subprocess; this runs the same click commands on the same settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from unittest import mock

from click.testing import CliRunner


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def wadispatch(*args: str, env: Mapping[str, str] | None = None) -> CliResult:
    """Run ``wadispatch ARGS`` in-process, with the settings ``env`` gives (the stack's, say)
    in force for that call only."""
    from cli.main import cli
    from models.settings import get_settings

    overrides = {k: v for k, v in (env or {}).items() if k.startswith("WADISPATCH_")}
    with mock.patch.dict(os.environ, overrides):
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        finally:
            get_settings.cache_clear()
    return CliResult(result.exit_code, result.stdout, result.stderr)
