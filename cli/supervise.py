"""`wadispatch run`'s process supervisor: honcho, made safe to stop.

Two things went wrong with honcho as it is, both with the output piped (`make run | tee run.log`):
Ctrl-C ends the reader too, and honcho's signal handler first prints "SIGINT received" to the dead
pipe; the BrokenPipeError leaves the handler before it signals anybody, and every child (each in
its own session, so the terminal's Ctrl-C never reached them) runs on. The same happens as soon
as any child prints a line after the reader has gone.

Here the printer stops printing once its reader has gone, and the supervisor stops every child
on SIGINT, SIGTERM and SIGHUP (a closed terminal). Children get a grace period before SIGKILL:
long enough for a worker's soft shutdown (in-flight calls to Meta finish; see docs/operating.md, "Stopping a worker").
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, TextIO

import honcho.manager
from honcho.manager import Manager
from honcho.printer import Printer


class ReaderSafePrinter(Printer):  # type: ignore[misc]
    """Prints like honcho's printer until its output's reader goes away, then drops lines."""

    def __init__(self, output: TextIO) -> None:
        super().__init__(output)
        self.reader_gone = False

    def write(self, message: Any) -> None:
        if self.reader_gone:
            return
        try:
            super().write(message)
        except (BrokenPipeError, ValueError):
            # The reader has gone (ValueError: the stream was closed). Nothing more can be
            # shown; stopping the children matters more.
            self.reader_gone = True
            _silence_stdout()
        except OSError:
            pass  # a full or non-blocking output (EAGAIN): this line is lost, the next may go


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so Python's flush at exit finds no dead pipe either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def supervisor(grace_s: float) -> Manager:
    """A honcho Manager that survives a dead pipe and waits ``grace_s`` before SIGKILL."""
    # honcho reads the wait from its module at each pass of its loop.
    honcho.manager.KILL_WAIT = grace_s
    manager = Manager(printer=ReaderSafePrinter(sys.stdout))
    return manager


def loop(manager: Manager) -> int:
    """Run until every child has stopped; SIGHUP stops them like SIGTERM. Returns the exit code."""
    # honcho installs its own SIGINT and SIGTERM handlers in loop(); a closed terminal is one more.
    signal.signal(signal.SIGHUP, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    manager.loop()
    return int(manager.returncode or 0)
