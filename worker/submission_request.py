"""The worker's view of a ``wadispatch.submit`` task: its arguments hold an API key and message
bodies (phone numbers, text), so everything the worker shows of them — the received log line,
Flower's task events, ``celery inspect active`` — is the masked summary, whatever the producer
put in its own ``kwargsrepr`` (a producer that does not use wadispatch.client sends the plain repr).
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

from wadispatch.client import masked_kwargs_repr


class SubmissionRequest(Request):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        arguments = self._kwargs if isinstance(self._kwargs, dict) else {}
        self._kwargsrepr = masked_kwargs_repr(arguments)
        self._argsrepr = f"<{len(self._args)} positional arguments>" if self._args else "()"

    def info(self, safe: bool = False) -> dict[str, Any]:
        # `inspect active` asks with safe=False, which would show the raw arguments.
        info: dict[str, Any] = super().info(safe=True)
        return info
