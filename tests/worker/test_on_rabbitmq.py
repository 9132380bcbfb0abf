"""The core paths again, with RabbitMQ as the broker (docs/operating.md "Choosing a broker").

This module's ``stack`` is a second stack: its own API, worker and beat, on its own copy of the
test database and its own redis-server (pacing, caches, results), with a private virtual host of
the machine's RabbitMQ as the broker (made for the module, deleted after it). The Redis suite's
own tests of delivery, broker submissions (one retried after its database connection died: a
countdown under a second, which RabbitMQ's delay queues cannot carry as such), per-conversation
order and stopping or killing a worker are imported below and run unchanged against it; the
sweeper's tests are RabbitMQ's own (its queues are read differently: worker/broker_head.py).
While the module runs, this process's own reads (the tests' database and Redis helpers) point at
that stack too.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator

import kombu
import pytest
from amqp.exceptions import ChannelError
from celery import Celery

from bench.private_services import PrivateRedis
from models.redis_client import redis_from_url
from models.settings import get_settings
from tests.conftest import DB_NAME, RUN_ID, Stack, running_stack
from tests.support import rabbitmq
from tests.support.database import clone_database, drop_database
from tests.support.viewing import viewing
from tests.worker.test_broker_intake import (  # noqa: F401
    test_a_submission_past_its_request_rate_waits_and_runs_again,
    test_a_submission_whose_database_connection_dies_is_retried_and_accepted_once,
    test_submitter_sends_and_a_resubmission_makes_no_second_message,
)
from tests.worker.test_delivery import test_transient_errors_retry_with_backoff_then_send  # noqa: F401
from tests.worker.test_order import test_ordering_across_four_worker_processes_with_transient_failures  # noqa: F401
from tests.worker.test_resilience import (  # noqa: F401
    accept_batch,
    sent_counts,
    slow_meta,
    test_killed_worker_loses_nothing_and_sends_nothing_twice,
    test_warm_shutdown_mid_batch_delivers_each_exactly_once,
    wait_all_final,
)
from worker.broker_config import broker_conf
from worker.broker_head import AmqpHead, record_mark
from worker.celery_app import DUE_QUEUE, MARK_TASK, SEND_QUEUE, SEND_QUEUES, WORKER_QUEUES


@pytest.fixture(scope="module")
def stack(migrated_template, media_server, hook_receiver, tmp_path_factory) -> Iterator[Stack]:
    """The RabbitMQ stack (see the module's docstring), in place of the session's Redis one."""
    if (reason := rabbitmq.unavailable()) is not None:
        pytest.skip(reason)
    database = clone_database(migrated_template, f"{DB_NAME}_amqp")
    try:
        with rabbitmq.private_vhost(f"wadispatch-test-{RUN_ID}") as broker, PrivateRedis() as state:
            overrides = {
                "WADISPATCH_DATABASE_URL": database,
                "WADISPATCH_REDIS_URL": state.url,
                "WADISPATCH_BROKER_URL": broker,
            }
            node = f"amqp-{RUN_ID}@{socket.gethostname()}"
            with running_stack(overrides, media_server, hook_receiver, tmp_path_factory, node=node) as s:
                s.control = Celery("wadispatch-test-control", broker=broker)
                with viewing(overrides):
                    yield s
                s.control.close()
    finally:
        drop_database(database)


def test_the_stack_runs_on_rabbitmq_quorum_queues(stack):
    """Every queue the worker consumes is a quorum queue in the stack's own vhost (the worker
    declared them: asking for a classic one of the same name is refused, naming the type it has),
    and the stack's Redis holds no Celery queue."""
    for queue in WORKER_QUEUES:
        with kombu.Connection(stack.broker_url) as connection:
            classic = kombu.Queue(queue, durable=True, queue_arguments={"x-queue-type": "classic"})
            with pytest.raises(ChannelError, match="current is 'quorum'"):
                classic(connection.default_channel).declare()
    state = redis_from_url(stack.env["WADISPATCH_REDIS_URL"], purpose="test")
    assert not state.exists(SEND_QUEUE) and not state.keys("_kombu*")


def test_a_long_queue_is_not_mistaken_for_a_lost_one_and_a_purged_one_is_refilled(stack, api, sandbox, tenant):
    """Tasks waiting in a RabbitMQ queue past the re-enqueue grace (as behind a long backlog) are
    not enqueued again: the sweeper (beat, every second here) cannot see the queue's head, and no
    mark it sent down the queue has come through. Once the broker loses them (purged), the queue is
    empty and each is handed over again, once. (The pacers hand new messages over, to the due
    queue, however paused the send queues are; the sweeper's hand-over goes to the send queue.)"""
    url = stack.broker_url
    with stack.paused(SEND_QUEUES):
        # As many as the feed hands over at once (at least WADISPATCH_FEED_MIN), no call beginning.
        ids = accept_batch(api, tenant, n=5)
        rabbitmq.wait_until_each_waits_once(url, DUE_QUEUE, ids)
        time.sleep(get_settings().requeue_after_s + 2)  # past the grace, and two sweeps more
        tasks = rabbitmq.wait_until_each_waits_once(url, DUE_QUEUE, ids)  # each still once
        # The sweeper has sent its mark down the backlog, to learn when the queue has moved past.
        assert tasks[MARK_TASK] >= 1, tasks
        since = len(stack.worker.log_since_start())
        assert rabbitmq.purge(url, DUE_QUEUE) > 1
        rabbitmq.wait_until_each_waits_once(url, SEND_QUEUE, ids, timeout=15)
    final = wait_all_final(ids)
    assert set(final.values()) == {"sent"}
    counts = sent_counts(sandbox, tenant.account.phone_number_id)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)
    # The sweeps (run by the stack's worker) say so: each task the broker lost, over one or more passes.
    lost = re.findall(r"re-enqueued (\d+) tasks the broker lost", stack.worker.log_since_start()[since:])
    assert sum(int(n) for n in lost) >= len(ids), lost


def test_a_mark_tells_how_far_a_backlogged_queue_has_moved(stack):
    """worker/broker_head.py against the real broker: a queue of its own (nothing consumes it),
    read and marked the sweeper's way, consumed here by hand."""
    queue = f"wadispatch.test-mark-{uuid.uuid4().hex[:8]}"
    app = Celery("wadispatch-test-marks")
    app.conf.update(**broker_conf(stack.broker_url, get_settings(), [queue]))
    state = redis_from_url(stack.env["WADISPATCH_REDIS_URL"], purpose="test")
    head = AmqpHead(app, state, mark_task=MARK_TASK, resend_after_s=60)
    try:
        assert head.oldest_waiting([queue]) is None  # never declared: nothing waits
        for n in range(2):
            app.send_task("wadispatch.test-task", args=[n], queue=queue)
        # A backlog and no mark through it yet: nothing in it may be judged lost.
        assert head.oldest_waiting([queue]) == 0.0
        head.after_sweep()
        head.oldest_waiting([queue])
        head.after_sweep()  # the first mark is still on its way: no second one
        app.send_task("wadispatch.test-task", args=[2], queue=queue)
        assert rabbitmq.ready(stack.broker_url, queue) == 4

        # A worker takes the two tasks and the mark (first in, first out) and runs the mark.
        with app.connection_for_write() as connection:
            channel = connection.channel()
            taken = [channel.message_to_python(channel.basic_get(queue, no_ack=True)) for _ in range(3)]
            channel.close()
        assert [m.headers["task"] for m in taken] == ["wadispatch.test-task"] * 2 + [MARK_TASK]
        marked_queue, published_at = taken[2].decode()[0]
        assert marked_queue == queue and record_mark(state, queue, published_at)
        assert not record_mark(state, queue, published_at - 1)  # an older one never moves it back
        # The third task still waits: everything enqueued before the mark has left the queue.
        assert head.oldest_waiting([queue]) == published_at
    finally:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
            connection.default_channel.exchange_delete(queue)
        app.close()
