"""How a Celery app of the service talks to its broker: Redis (the default) or RabbitMQ.

- Redis: kombu's Redis transport. A task taken but not acknowledged comes back after the
  visibility timeout (WADISPATCH_BROKER_VISIBILITY_TIMEOUT_S); queues are lists Celery creates
  as it needs them.
- RabbitMQ (``amqp://``): every queue is declared a quorum queue (replicated, durable, messages
  on disk before they are confirmed) behind a topic exchange of its own name, and every channel
  publishes with confirms, so a publish the broker did not take raises instead of vanishing. A
  task taken but not acknowledged goes back the moment its consumer's connection closes (the
  worker died or was cut off). Topic exchanges, because Celery carries a countdown on quorum
  queues through RabbitMQ itself (its native delayed delivery: the message waits in the broker's
  delay queues, not unacknowledged in a worker's memory), and it binds those only to topic or
  fanout exchanges. Quorum queues have no global prefetch: Celery sees them and gives each
  consumer its own (worker_detect_quorum_queues).

docs/operating.md "Choosing a broker" says which to pick and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from models.redis_url import celery_broker
from models.settings import Settings, is_amqp_url

QUORUM = {"x-queue-type": "quorum"}
# Celery's native delayed delivery counts whole seconds, and refuses a countdown under one
# (kombu's calculate_routing_key: "countdown must be a positive number"): a database retry due
# in 0.4 s failed its task instead of waiting (the chaos bench found 19 in one run).
NATIVE_DELAY_MIN_S = 1.0


class BrokerCelery(Celery):
    """The service's Celery apps: on RabbitMQ a countdown shorter than a second is published as
    one second (a task is never run sooner than it asked). Every countdown goes through here:
    ours, and Celery's own retries (Task.retry publishes through send_task)."""

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        countdown = options.get("countdown")
        if countdown is not None and 0 < countdown < NATIVE_DELAY_MIN_S and is_amqp_url(self.conf.broker_url or ""):
            options["countdown"] = NATIVE_DELAY_MIN_S
        return super().send_task(name, args, kwargs, **options)


def quorum_queues(names: Iterable[str]) -> tuple[Queue, ...]:
    """The service's queues as RabbitMQ holds them: each a durable quorum queue bound to a durable
    topic exchange of the same name with its name as the routing key (so an intake credential's
    write permission names the intake exchange alone, and wadispatch.client publishes to it)."""
    return tuple(
        Queue(name, Exchange(name, type="topic", durable=True), routing_key=name, durable=True, queue_arguments=QUORUM)
        for name in names
    )


def broker_socket_options(settings: Settings) -> dict[str, Any]:
    """A Redis broker's socket limits (the sentinels' too, behind a redis+sentinel:// URL). A
    broker that stops answering without closing the connection must not hold a publish (an API
    request) or an ack forever. The consumer's BRPOP is unaffected: kombu reads its reply only
    once the socket is readable, and the server answers every BRPOP within a second anyway
    (kombu's brpop_timeout)."""
    return {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_keepalive": True,
    }


def broker_conf(url: str, settings: Settings, queues: Iterable[str]) -> dict[str, Any]:
    """The Celery settings that depend on the broker, for an app whose workers consume ``queues``."""
    if not is_amqp_url(url):
        # redis:// as it is; redis+sentinel:// in kombu's own spelling (models/redis_url.py).
        broker = celery_broker(url, broker_socket_options(settings))
        options = {
            "visibility_timeout": settings.broker_visibility_timeout_s,
            **broker_socket_options(settings),
            **broker.transport_options,
        }
        return {"broker_url": broker.url, "broker_transport_options": options}
    return {
        "broker_url": url,
        "task_queues": quorum_queues(queues),
        # A queue Celery would create on the fly (a name not listed) gets the same kind of exchange.
        "task_default_exchange_type": "topic",
        "broker_transport_options": {"confirm_publish": True},
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def publish_options(settings: Settings) -> dict[str, float]:
    """Per-publish limits for the service's broker. On RabbitMQ a publish waits for its confirm:
    a broker that stops answering (a resource alarm blocks publishers, a cut the kernel has not
    noticed) must not hold the caller (an API request's publish thread, the pacer) forever. On
    Redis the socket timeout does this (see broker_socket_options)."""
    if not settings.broker_is_amqp:
        return {}
    return {"timeout": settings.broker_publish_timeout_s, "confirm_timeout": settings.broker_publish_timeout_s}
