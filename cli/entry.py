"""The `wadispatch` entry point.

A worker on the gevent pool must monkey-patch the standard library before anything imports
sockets, threads or ssl (as Celery's own `celery` command does), so this module decides that
first, from the command line and the WADISPATCH_WORKER_POOL setting, and imports the CLI after.
"""

from __future__ import annotations

import os
import sys

# Kept equal to Settings.worker_pool's default (tests/cli check the two agree).
DEFAULT_WORKER_POOL = "threads"


def pool_requested(argv: list[str], environ: dict[str, str]) -> str | None:
    """The pool a `worker` command line will run, or None for any other command."""
    if "worker" not in argv[:1]:
        return None
    for index, arg in enumerate(argv):
        if arg.startswith("--pool="):
            return arg.split("=", 1)[1]
        if arg in ("--pool", "-P") and index + 1 < len(argv):
            return argv[index + 1]
    return environ.get("WADISPATCH_WORKER_POOL") or _dotenv_pool() or DEFAULT_WORKER_POOL


def _dotenv_pool() -> str | None:
    if not os.path.exists(".env"):
        return None
    from dotenv import dotenv_values

    return dotenv_values(".env").get("WADISPATCH_WORKER_POOL")


def main() -> None:
    if pool_requested(sys.argv[1:], dict(os.environ)) == "gevent":
        from gevent import monkey

        monkey.patch_all()
    from cli.main import main as cli_main

    cli_main()
