"""Publish-only broker credentials for upstream services, one set per organization.

A credential may push a submission onto the intake queue and do nothing else: not read the queue
(another tenant's submissions), not touch any other key or queue (the service's tasks, pacing
state, pauses), not declare or delete anything. Submissions are signed with an API key
(wadispatch/signing.py), so the credential only decides who may reach the queue, not who a
submission speaks for.

- Redis: an ACL user allowed PING, SELECT, MULTI/EXEC and LPUSH on the intake queue's keys
  (kombu's priority steps included) — what a Celery producer needs that pushes onto the queue
  without declaring it (`send_task(..., queue="wadispatch.intake", declare=[])`, as
  wadispatch.client does). Reading or adding a binding is refused: a binding could route other
  tenants' submissions to a queue they may not push to.
- RabbitMQ: a user with no configure and no read permission and write permission on the intake
  exchange only, set with `rabbitmqctl` (which must run where it can reach the node).

The user's name says whose it is: ``intake.<org slug>.<8 hex>``.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import redis

from models.redis_client import redis_from_url
from worker.celery_app import INTAKE_QUEUE

NAME_PREFIX = "intake"
# kombu's Redis transport keeps messages of priority 3, 6 and 9 in keys of their own: the queue's
# name, this separator, the step.
_PRIORITY_SEPARATOR = "\x06\x16"
REDIS_COMMANDS = ["-@all", "+ping", "+select", "+multi", "+exec", "+lpush"]
REDIS_KEYS = [f"%W~{INTAKE_QUEUE}", f"%W~{INTAKE_QUEUE}{_PRIORITY_SEPARATOR}?"]


@dataclass(frozen=True)
class IntakeCredential:
    name: str
    org: str
    url: str  # with the password when just created; without it in a listing


class CredentialStore(Protocol):
    def create(self, org: str) -> IntakeCredential: ...

    def list(self, org: str | None) -> list[IntakeCredential]: ...

    def revoke(self, name: str) -> bool: ...


def store_for(broker_url: str) -> CredentialStore:
    scheme = urlsplit(broker_url).scheme
    if scheme in ("redis", "rediss"):
        return RedisCredentials(broker_url)
    if scheme in ("amqp", "amqps", "pyamqp"):
        return RabbitCredentials(broker_url)
    if scheme == "redis+sentinel":
        # ACL users live on one server: Redis replicates no ACL change, so a user made on the
        # primary would be gone after a failover.
        raise ValueError(
            "intake credentials: a redis+sentinel:// broker keeps no ACL users across a failover; "
            "give upstream services an intake broker of its own (redis:// or amqp://)"
        )
    raise ValueError(f"intake credentials: no support for {scheme!r} brokers (redis:// or amqp://)")


def new_name(org: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", org):
        raise ValueError("org: an organization slug (letters, digits, '-' and '_')")
    return f"{NAME_PREFIX}.{org}.{secrets.token_hex(4)}"


def _org_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == NAME_PREFIX else None


def _with_user(broker_url: str, user: str, password: str | None) -> str:
    """The broker's URL with another user (and password, when it is shown)."""
    parts = urlsplit(broker_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
    netloc += f"@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class RedisCredentials:
    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.client = redis_from_url(broker_url, purpose="intake-credentials")

    def create(self, org: str) -> IntakeCredential:
        name, password = new_name(org), secrets.token_urlsafe(32)
        self.client.acl_setuser(
            name,
            enabled=True,
            reset=True,
            passwords=[f"+{password}"],
            commands=REDIS_COMMANDS,
            keys=REDIS_KEYS,
            reset_keys=True,
            reset_channels=True,
        )
        self._save()
        return IntakeCredential(name, org, _with_user(self.broker_url, name, password))

    def list(self, org: str | None) -> list[IntakeCredential]:
        users: list[bytes | str] = self.client.acl_users()  # type: ignore[assignment]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in users]
        found = [(n, o) for n in names if (o := _org_of(n)) is not None and (org is None or o == org)]
        return [IntakeCredential(n, o, _with_user(self.broker_url, n, None)) for n, o in sorted(found)]

    def revoke(self, name: str) -> bool:
        if _org_of(name) is None:
            return False  # never a user this command did not make
        removed = bool(self.client.acl_deluser(name))
        if removed:
            # ACL DELUSER closes the user's connections; the saved file must forget it too.
            self._save()
        return removed

    def _save(self) -> None:
        """Keep the change across a Redis restart when the server has an ACL file (else Redis
        keeps users in memory only, and docs/batches-and-broker.md says to configure one)."""
        with contextlib.suppress(redis.ResponseError):  # no aclfile configured: nothing to save to
            self.client.acl_save()


class RabbitCredentials:
    """RabbitMQ users through `rabbitmqctl` (the broker's own tool; the management plugin may be off)."""

    def __init__(self, broker_url: str, rabbitmqctl: str = "rabbitmqctl") -> None:
        self.broker_url = broker_url
        self.rabbitmqctl = rabbitmqctl
        path = urlsplit(broker_url).path.lstrip("/")
        self.vhost = path or "/"

    def create(self, org: str) -> IntakeCredential:
        name, password = new_name(org), secrets.token_urlsafe(32)
        self._run("add_user", name, stdin=password)  # from stdin: never in a process listing
        # configure: nothing (no declare, no delete); write: the intake exchange (Celery names it
        # after the queue); read: nothing (no consuming, no basic.get).
        self._run("set_permissions", "-p", self.vhost, name, "^$", f"^{re.escape(INTAKE_QUEUE)}$", "^$")
        return IntakeCredential(name, org, _with_user(self.broker_url, name, password))

    def list(self, org: str | None) -> list[IntakeCredential]:
        listing = self._run("list_users", "--quiet", "--no-table-headers")
        names = [line.split("\t", 1)[0].strip() for line in listing.splitlines() if line.strip()]
        found = [(n, o) for n in names if (o := _org_of(n)) is not None and (org is None or o == org)]
        return [IntakeCredential(n, o, _with_user(self.broker_url, n, None)) for n, o in sorted(found)]

    def revoke(self, name: str) -> bool:
        if _org_of(name) is None or name not in {c.name for c in self.list(None)}:
            return False
        self._run("delete_user", name)  # closes its connections too
        return True

    def _run(self, *args: str, stdin: str | None = None) -> str:
        command = [self.rabbitmqctl, *args]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            # rabbitmqctl's own message; a password is never in it (add_user does not echo it).
            raise RuntimeError(f"rabbitmqctl {args[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout
