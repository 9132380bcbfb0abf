"""Accepting a send, with no HTTP and no Celery in it.

Callers (key lookup and auth rules), usage and quota, idempotency, the surfaces' body schemas,
check-and-store (the ORM path and the lean statements), batches and broker submissions. Everything
here refuses with one error type (``intake.errors.Refusal``, a code, a message and details) or
returns a typed result; the HTTP routes, the broker task and the CLI translate those, each surface
rendering its own envelope in one place.
"""
