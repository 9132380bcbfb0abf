"""Submit WhatsApp messages to wadispatch over the broker, from any Python service running Celery.

Needs only ``celery`` (with the transport of your broker, e.g. ``celery[redis]``); nothing else of
wadispatch. Each submission is the task ``wadispatch.submit`` on the queue ``wadispatch.intake``,
with keyword arguments only, signed with the API key (wadispatch/signing.py): the key itself never
enters the broker, and the message bodies never show in Flower or in worker logs (the task's
argument summaries are masked here and again on the worker). The broker URL is the intake
credential an operator minted for your organization (``wadispatch intake-credential create``),
which may publish to the intake queue and do nothing else.

    from wadispatch.client import Submitter

    submitter = Submitter("redis://intake-acme-…:…@wadispatch-broker:6379/0", api_key="fe_k_...")
    submitter.flowestate_send(lead_id, account_id, "Your viewing is at 10:00", idempotency_key="crm-4711")
    submitter.flowiq_send("acme", {"phone_number": "+27821234567", "message_type": "text", "text": "Hi"},
                          idempotency_key="helpdesk-981")

What became of a submission: ``GET /api/v1/whatsapp/submissions/{idempotency_key}`` (FlowEstate)
or ``GET /send-whatsapp/submissions/{idempotency_key}?tenantId=`` (FlowIQ).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from wadispatch.signing import signed_submission

SUBMIT_TASK = "wadispatch.submit"
INTAKE_QUEUE = "wadispatch.intake"
BATCH_MAX = 1000

# What a task listing may show of a submission's arguments; the rest is summarised.
_SHOWN = ("api", "tenant_id", "idempotency_key")


def masked_kwargs_repr(kwargs: Mapping[str, Any]) -> str:
    """The submission's arguments as Flower and logs may show them: no key, no signature, no
    message bodies (they hold phone numbers and text), only what identifies the submission."""
    fields: Mapping[str, Any] = kwargs
    shown: dict[str, Any] = {}
    if "key_id" in kwargs:
        shown["key_id"] = kwargs["key_id"]
        fields = _payload_fields(kwargs.get("payload"))
    shown.update({name: fields[name] for name in _SHOWN if name in fields})
    if "api_key" in kwargs:
        shown["api_key"] = "<hidden>"
    if "request" in fields:
        shown["request"] = "<1 message>"
    if isinstance(fields.get("messages"), list):
        shown["messages"] = f"<{len(fields['messages'])} messages>"
    return repr(shown)


def _payload_fields(payload: Any) -> Mapping[str, Any]:
    try:
        fields = json.loads(payload) if isinstance(payload, str) else None
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


class Submitter:
    """Typed helpers over ``send_task``. ``broker_url``: the broker wadispatch's workers consume."""

    def __init__(self, broker_url: str | None = None, *, api_key: str, app: Celery | None = None) -> None:
        if app is None:
            app = Celery("wadispatch-client", broker=broker_url)
            # RabbitMQ answers a refused publish only if asked: without confirms it would be lost.
            app.conf.broker_transport_options = {"confirm_publish": True}
        self.app = app
        self.api_key = api_key

    # -- FlowEstate ----------------------------------------------------------------------

    def flowestate_send(
        self,
        lead_id: uuid.UUID | str,
        account_id: uuid.UUID | str,
        message: str,
        *,
        idempotency_key: str,
        media: Mapping[str, Any] | None = None,
        priority: str | None = None,
    ) -> AsyncResult:
        """One /whatsapp/send body: text, or ``media`` {url, type, mimetype?, fileName?} with a caption;
        ``priority``: transactional (the service's default) or bulk."""
        body: dict[str, Any] = {"leadId": str(lead_id), "whatsappAccountId": str(account_id), "message": message}
        if media is not None:
            body["media"] = dict(media)
        if priority is not None:
            body["priority"] = priority
        return self.submit("flowestate", request=body, idempotency_key=idempotency_key)

    def flowestate_template(
        self,
        lead_id: uuid.UUID | str,
        account_id: uuid.UUID | str,
        template: Mapping[str, Any],
        *,
        idempotency_key: str,
        priority: str | None = None,
    ) -> AsyncResult:
        """One /whatsapp/send-template body (``template``: name, language, components in camelCase)."""
        body: dict[str, Any] = {
            "leadId": str(lead_id),
            "whatsappAccountId": str(account_id),
            "template": dict(template),
        }
        if priority is not None:
            body["priority"] = priority
        return self.submit("flowestate", request=body, idempotency_key=idempotency_key)

    def flowestate_batch(self, bodies: Sequence[Mapping[str, Any]], *, idempotency_key: str) -> AsyncResult:
        """Up to 1,000 /whatsapp/send bodies as one submission (one key covers them all)."""
        return self.submit("flowestate", messages=[dict(b) for b in bodies], idempotency_key=idempotency_key)

    # -- FlowIQ --------------------------------------------------------------------------

    def flowiq_send(self, tenant_id: str, body: Mapping[str, Any], *, idempotency_key: str) -> AsyncResult:
        """One /send-whatsapp body (phone_number, message_type and that type's fields)."""
        return self.submit("flowiq", tenant_id=tenant_id, request=dict(body), idempotency_key=idempotency_key)

    def flowiq_batch(self, tenant_id: str, bodies: Sequence[Mapping[str, Any]], *, idempotency_key: str) -> AsyncResult:
        """Up to 1,000 /send-whatsapp bodies as one submission."""
        messages = [dict(b) for b in bodies]
        return self.submit("flowiq", tenant_id=tenant_id, messages=messages, idempotency_key=idempotency_key)

    # -- the task itself -----------------------------------------------------------------

    def submit(self, api: str, *, idempotency_key: str, **arguments: Any) -> AsyncResult:
        if not idempotency_key:
            raise ValueError("idempotency_key is required: a re-sent submission must not make a second message")
        messages = arguments.get("messages")
        if messages is not None and not 1 <= len(messages) <= BATCH_MAX:
            raise ValueError(f"messages: 1 to {BATCH_MAX} bodies")
        kwargs = signed_submission(self.api_key, {"api": api, "idempotency_key": idempotency_key, **arguments})
        return self.app.send_task(
            SUBMIT_TASK,
            kwargs=kwargs,
            **intake_route(self.app.conf.broker_url or ""),
            argsrepr="()",
            kwargsrepr=masked_kwargs_repr(kwargs),
        )


def intake_route(broker_url: str) -> dict[str, Any]:
    """Where a submission is published, without declaring anything (the service declares the
    queue; an intake credential may only push):

    - Redis: straight onto the intake queue's list. Through the intake exchange, kombu would look
      up the exchange's bindings first and, finding none (a broker the intake worker never
      started on, a Redis restart), route to no queue and raise nothing: the submission lost.
    - RabbitMQ: to the intake exchange by name (its default exchange would reach every queue),
      with publisher confirms, so a missing exchange or a refused publish raises."""
    if broker_url.split("://", 1)[0] in ("redis", "rediss", "redis+socket", "sentinel"):
        return {"queue": INTAKE_QUEUE, "declare": []}
    return {"exchange": INTAKE_QUEUE, "routing_key": INTAKE_QUEUE, "declare": []}
