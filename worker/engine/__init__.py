"""The delivery engine: many calls to Meta in flight per worker process, without a thread each.

- ``runtime``: the process's event loop in its own thread; Celery tasks hand message ids to it;
- ``intake``: ids become claims in batches (one statement claims many);
- ``lane``: one sender account's claims, paced together (one limiter script hands out many send
  moments), their calls begun in groups, each request sent at its own moment;
- ``sent_writer``: Meta's "sent" answers written in batches;
- ``plain``: which messages the engine sends itself (no media, nothing refused); the others,
  and every error answer from Meta, are settled by the single-message step (worker/delivery.py);
- ``parts``: what those share; ``report``: each settled message's metrics and log line.
"""
