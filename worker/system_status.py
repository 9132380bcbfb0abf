"""Where the system stands, in one reading: what an on-call operator asks first (`wadispatch
status`), and what an autoscaler watches. Each figure is one cheap query: broker queue lengths,
messages by status, the age of the oldest message still waiting, halted accounts, workers online.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.enums import CLAIMABLE, AccountStatus, status_in
from models.lifecycle import PENDING
from models.redis_client import redis_from_url
from models.settings import get_settings
from models.tables import Message, Portfolio, WhatsappAccount
from worker.broker_head import ready_counts
from worker.celery_app import WORKER_QUEUES, app
from worker.messaging_limit import MessagingLimits

# How long `celery inspect ping` waits for workers to answer.
PING_TIMEOUT_S = 1.0
# Portfolios and accounts with a quality report shown (the gauges read as many).
MAX_LISTED = 5000


@dataclass(frozen=True)
class SystemStatus:
    queue_depths: dict[str, int]  # tasks waiting in each broker queue
    messages_by_status: dict[str, int]
    oldest_waiting_s: float | None  # the oldest queued or retrying message's age (None: none waits)
    halted_accounts: list[dict[str, Any]]  # id, organization, reason
    workers_online: list[str]  # node names that answered a ping
    # Each portfolio's messaging limit (None: unlimited) and the users counted in the window now
    # (None: Redis could not say).
    portfolios: list[dict[str, Any]] = field(default_factory=list)
    # Accounts Meta sent a phone_number_quality_update for: its event and limit.
    account_quality: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue_depths": self.queue_depths,
            "messages_by_status": self.messages_by_status,
            "oldest_waiting_s": self.oldest_waiting_s,
            "halted_accounts": self.halted_accounts,
            "workers_online": self.workers_online,
            "portfolios": self.portfolios,
            "account_quality": self.account_quality,
        }


def read_status(session: Session) -> SystemStatus:
    client = redis_from_url(get_settings().redis_url, purpose="status")
    try:
        portfolios = portfolio_use(session, client)
    finally:
        client.close()
    return SystemStatus(
        queue_depths=queue_depths(),
        messages_by_status=messages_by_status(session),
        oldest_waiting_s=oldest_waiting_s(session),
        halted_accounts=halted_accounts(session),
        workers_online=workers_online(),
        portfolios=portfolios,
        account_quality=account_quality(session),
    )


def portfolio_use(session: Session, client: redis.Redis) -> list[dict[str, Any]]:
    """Each portfolio's limit against the unique users counted in the moving window now."""
    rows = session.execute(
        select(Portfolio.id, Portfolio.org_id, Portfolio.name, Portfolio.messaging_limit)
        .order_by(Portfolio.created_at, Portfolio.id)
        .limit(MAX_LISTED)
    ).all()
    try:
        used = MessagingLimits(client, get_settings().messaging_limit_window_s).used([r.id for r in rows])
    except redis.RedisError:
        used = {}
    return [
        {"id": str(r.id), "org_id": str(r.org_id), "name": r.name, "limit": r.messaging_limit, "used": used.get(r.id)}
        for r in rows
    ]


def account_quality(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        select(
            WhatsappAccount.id,
            WhatsappAccount.org_id,
            WhatsappAccount.quality_event,
            WhatsappAccount.quality_limit,
            WhatsappAccount.quality_updated_at,
        )
        .where(WhatsappAccount.quality_event.is_not(None))
        .order_by(WhatsappAccount.quality_updated_at.desc())
        .limit(MAX_LISTED)
    ).all()
    return [
        {
            "id": str(r.id),
            "org_id": str(r.org_id),
            "event": r.quality_event,
            "current_limit": r.quality_limit,
            "updated_at": r.quality_updated_at.isoformat() if r.quality_updated_at else None,
        }
        for r in rows
    ]


def queue_depths() -> dict[str, int]:
    """Tasks waiting in each of the workers' queues, not yet handed to a worker (Redis: kombu
    counts every priority level; RabbitMQ: the messages ready)."""
    return ready_counts(app, WORKER_QUEUES)


def messages_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Message.status, func.count()).group_by(Message.status)).all()
    return {status: int(count) for status, count in sorted(rows)}


def unsent_by_status(session: Session) -> dict[str, int]:
    """Messages not yet sent (queued, retrying, sending), read from their partial index: cheap
    however many messages the table holds (counting every status scans the whole table)."""
    rows = session.execute(
        select(Message.status, func.count()).where(status_in(Message.status, PENDING)).group_by(Message.status)
    ).all()
    counts = dict.fromkeys(sorted(s.value for s in PENDING), 0)
    counts.update({status: int(count) for status, count in rows})
    return counts


def oldest_waiting_s(session: Session) -> float | None:
    oldest = session.scalar(
        select(func.extract("epoch", func.now() - func.min(Message.created_at))).where(Message.status.in_(CLAIMABLE))
    )
    return None if oldest is None else round(float(oldest), 1)


def halted_accounts(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        select(WhatsappAccount.id, WhatsappAccount.org_id, WhatsappAccount.halted_reason)
        .where(WhatsappAccount.status == AccountStatus.HALTED)
        .order_by(WhatsappAccount.created_at)
    ).all()
    return [{"id": str(r.id), "org_id": str(r.org_id), "reason": r.halted_reason} for r in rows]


def workers_online() -> list[str]:
    replies = app.control.ping(timeout=PING_TIMEOUT_S) or []
    return sorted(name for reply in replies for name in reply)
