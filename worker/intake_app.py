"""The Celery app of an intake broker apart from the service's own (WADISPATCH_INTAKE_BROKER_URL).

Upstream services hold publish-only credentials on that broker (`wadispatch intake-credential`);
`wadispatch intake-worker` consumes its one queue with this app and stores what it takes in
Postgres, from where the service's own broker carries the sends on. Same reliability settings as
the service's app: an acknowledgement after the task ran, and a task handed out again if its
worker dies.
"""

from __future__ import annotations

from celery import Celery

from models.redis_url import celery_broker
from models.settings import Settings, get_settings
from worker.celery_app import INTAKE_QUEUE, SUBMIT_TASK, broker_socket_options
from worker.intake_task import register_submit


def create_intake_celery(settings: Settings) -> Celery:
    broker = celery_broker(settings.intake_broker, broker_socket_options(settings))
    app = Celery("wadispatch-intake", broker=broker.url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            **broker_socket_options(settings),
            **broker.transport_options,
        },
        broker_connection_retry_on_startup=True,
        task_routes={SUBMIT_TASK: {"queue": INTAKE_QUEUE}},
        task_default_queue=INTAKE_QUEUE,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    register_submit(app)
    _only_submissions(app)
    return app


def _only_submissions(app: Celery) -> None:
    """Its worker runs ``wadispatch.submit`` and nothing else. Anyone with an intake credential
    can push any message onto the queue it consumes: with Celery's built-in tasks registered, a
    pushed ``celery.group`` made this worker, on its own full-rights connection, create queues
    and publish hundreds of messages. An unregistered name is logged and discarded."""
    app.finalize()
    for name in list(app.tasks):
        if name != SUBMIT_TASK:
            app.tasks.unregister(name)


intake_app = create_intake_celery(get_settings())
