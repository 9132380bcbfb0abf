"""worker/broker_config.py: what the Celery apps are told about their broker (no broker needed)."""

from __future__ import annotations

from kombu import Queue

from models.settings import Settings
from worker.broker_config import broker_conf, publish_options, quorum_queues
from worker.celery_app import INTAKE_QUEUE, WORKER_QUEUES


def test_redis_keeps_its_visibility_timeout_and_socket_timeouts_and_declares_nothing_up_front():
    settings = Settings(broker_visibility_timeout_s=900, redis_socket_timeout_s=2.5)
    conf = broker_conf("redis://127.0.0.1:6379/0", settings, WORKER_QUEUES)
    assert conf["broker_transport_options"]["visibility_timeout"] == 900
    assert conf["broker_transport_options"]["socket_timeout"] == 2.5
    assert "task_queues" not in conf
    assert publish_options(settings) == {}


def test_rabbitmq_gets_quorum_queues_behind_topic_exchanges_and_confirms():
    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:5672/x", broker_publish_timeout_s=4)
    conf = broker_conf(settings.broker, settings, WORKER_QUEUES)
    queues: tuple[Queue, ...] = conf["task_queues"]
    assert [q.name for q in queues] == list(WORKER_QUEUES)
    for queue in queues:
        assert queue.durable and queue.queue_arguments == {"x-queue-type": "quorum"}
        # Celery's native delayed delivery binds only topic (or fanout) exchanges; the intake
        # credential's write permission names the exchange after the queue.
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (queue.name, "topic", queue.name)
        assert queue.exchange.durable
    assert conf["broker_transport_options"] == {"confirm_publish": True}
    assert conf["worker_detect_quorum_queues"] is True
    assert "visibility_timeout" not in conf["broker_transport_options"]
    assert publish_options(settings) == {"timeout": 4, "confirm_timeout": 4}


def test_the_intake_queue_on_rabbitmq_is_the_one_the_client_publishes_to():
    from wadispatch.client import intake_route

    (queue,) = quorum_queues([INTAKE_QUEUE])
    route = intake_route("amqp://intake.acme.1234:pw@rabbit:5672/wadispatch")
    assert (route["exchange"], route["routing_key"]) == (queue.exchange.name, queue.routing_key)
    assert route["declare"] == []


def test_a_countdown_under_a_second_is_published_as_one_second_on_rabbitmq(monkeypatch):
    """Celery's native delayed delivery refuses a countdown under a second on quorum queues; the
    service's apps publish one second instead (never sooner than asked), and leave Redis alone.
    (Celery's own send_task is replaced by a recorder: no broker is reached.)"""
    from celery import Celery

    from worker.broker_config import BrokerCelery

    published: list[float | None] = []
    monkeypatch.setattr(
        Celery, "send_task", lambda self, name, args=None, kwargs=None, **o: published.append(o.get("countdown"))
    )
    rabbit = BrokerCelery("t", broker="amqp://guest:guest@127.0.0.1:5672//")
    for countdown in (0.3, 0.99, 1.5, None, 0):
        rabbit.send_task("x", countdown=countdown)
    BrokerCelery("t", broker="redis://127.0.0.1:6379/0").send_task("x", countdown=0.3)
    assert published == [1.0, 1.0, 1.5, None, 0, 0.3]
