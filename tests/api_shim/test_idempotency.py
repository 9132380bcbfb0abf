"""The Idempotency-Key belongs to the message it created: key row and message commit together.

Through HTTP on the real stack, except the last test, which calls each surface's send function
on the real database with a failure injected between taking the key and writing the message.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select, text, update

from intake.usage import current_month
from models.db import get_engine, session_scope
from models.enums import KeyKind
from models.tables import IdempotencyKey, Message, OrgUsage

PHONE = "+27123456789"


def messages_of(tenant) -> list[Message]:
    with session_scope() as s:
        return list(s.scalars(select(Message).where(Message.org_id == tenant.org_id)))


def key_rows(tenant) -> list[IdempotencyKey]:
    with session_scope() as s:
        return list(s.scalars(select(IdempotencyKey).where(IdempotencyKey.org_id == tenant.org_id)))


def units_used(tenant) -> int:
    """The organization's monthly units spent so far."""
    with session_scope() as s:
        used = s.scalar(
            select(OrgUsage.used).where(OrgUsage.org_id == tenant.org_id, OrgUsage.month == current_month())
        )
    return used or 0


def wait_for_log(process, needle: str, timeout: float = 20.0) -> list[str]:
    """The process's log lines holding ``needle``, once there is one."""
    deadline = time.monotonic() + timeout
    while not (lines := [line for line in process.log_since_start().splitlines() if needle in line]):
        assert time.monotonic() < deadline, f"no log line with {needle!r}:\n{process.tail(30)}"
        time.sleep(0.05)
    return lines


def fe_send(http: httpx.Client, tenant, lead: uuid.UUID, key: str, message: str = "Hello") -> httpx.Response:
    body = {"leadId": str(lead), "whatsappAccountId": str(tenant.account.id), "message": message}
    return http.post("/api/v1/whatsapp/send", json=body, headers={**tenant.auth, "Idempotency-Key": key})


def test_flowiq_uncertain_send_retried_with_its_key_reaches_meta_once(live, api, sandbox, tenant):
    """Meta's answer is lost (read timeout): the message fails DELIVERY_UNCERTAIN and FlowIQ says
    500. Retries with the same key answer that same message; none is a new send."""
    tenant.new_lead(phone=PHONE)
    headers = {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}", "Idempotency-Key": "fiq-lost"}
    body = {"phone_number": PHONE, "message_type": "text", "text": "Answer lost"}
    sandbox.set_latency(3000)  # longer than WADISPATCH_META_READ_TIMEOUT_S=2 in tests
    try:
        answers = [
            api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, json=body, headers=headers)
            for _ in range(3)
        ]
    finally:
        sandbox.set_latency(0)
    assert [a.status_code for a in answers] == [500, 500, 500], [a.text for a in answers]
    assert all(a.json()["error"] == "Delivery uncertain" for a in answers)
    (message,) = messages_of(tenant)
    assert {a.json()["message_id"] for a in answers} == {str(message.id)}
    # The send task has finished (it logs its outcome) before "one call" is judged; a retry that
    # had handed the message over again would show a second outcome line.
    outcomes = wait_for_log(live.worker, f"message {message.id}: ")
    assert len(outcomes) == 1 and outcomes[0].endswith(f"message {message.id}: uncertain:UNCERTAIN"), outcomes
    assert sandbox.calls(tenant.account.phone_number_id) == 1


def test_flowiq_retry_answers_the_messages_current_outcome(stack, api, sandbox, tenant):
    """While the message waits, a retry waits like the first request did (up to the sync timeout,
    then 202 with the same id); once it is sent, the same key answers 200 with its wamid."""
    tenant.new_lead(phone=PHONE)
    headers = {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}", "Idempotency-Key": "fiq-later"}
    body = {"phone_number": PHONE, "message_type": "text", "text": "Sent later"}

    def post() -> httpx.Response:
        return api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, json=body, headers=headers)

    with stack.paused():  # nothing is sent: the message stays queued
        first, second = post(), post()
    (message,) = messages_of(tenant)
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert first.json()["data"]["id"] == second.json()["data"]["id"] == str(message.id)
    api.wait_for(tenant, str(message.id), statuses=("sent",))
    third = post()
    assert third.status_code == 200, third.text
    (message,) = messages_of(tenant)
    assert third.json()["data"]["message_id"] == message.wamid is not None
    assert sandbox.calls(tenant.account.phone_number_id) == 1


class MessageInsertTrigger:
    """A trigger on this tenant's message INSERTs running ``action`` (PL/pgSQL), dropped on exit."""

    def __init__(self, tenant, action: str) -> None:
        self.name = f"t_{uuid.uuid4().hex[:12]}"
        self.org_id = tenant.org_id
        self.action = action
        self.dropped = False

    def __enter__(self) -> MessageInsertTrigger:
        function = f"CREATE FUNCTION {self.name}() RETURNS trigger AS $$ BEGIN {self.action} END $$ LANGUAGE plpgsql"
        trigger = (
            f"CREATE TRIGGER {self.name} BEFORE INSERT ON messages FOR EACH ROW "
            f"WHEN (NEW.org_id = '{self.org_id}') EXECUTE FUNCTION {self.name}()"
        )
        with get_engine().begin() as conn:
            conn.execute(text(function))
            conn.execute(text(trigger))
        return self

    def drop(self) -> None:
        if not self.dropped:
            with get_engine().begin() as conn:
                conn.execute(text(f"DROP TRIGGER {self.name} ON messages"))
                conn.execute(text(f"DROP FUNCTION {self.name}()"))
            self.dropped = True

    def __exit__(self, *_exc: object) -> None:
        self.drop()


@pytest.fixture
def slow_message_insert(tenant) -> Iterator[MessageInsertTrigger]:
    """Holds this tenant's message INSERTs for 2 s: a window between taking the key and writing
    the message wide enough to kill the API process in."""
    with MessageInsertTrigger(tenant, "PERFORM pg_sleep(2); RETURN NEW;") as trigger:
        yield trigger


def wait_until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def backends_sleeping_in_insert() -> int:
    with get_engine().connect() as conn:
        return conn.scalar(
            text(
                # Only the trigger sleeps in this database (the lean send's statement is longer
                # than pg_stat_activity keeps of a query, so its text cannot be matched).
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
            )
        )


def test_api_killed_between_key_and_message_leaves_the_key_free(live, api, tenant, slow_message_insert):
    """SIGKILL while the message INSERT runs: nothing of the request is kept, so the retry with
    the same key and body creates the one message (the old code answered 409 in progress for 24 h)."""
    lead = tenant.new_lead()
    died: list[BaseException] = []

    def first() -> None:
        try:
            with httpx.Client(base_url=live.api_url, timeout=30) as client:
                fe_send(client, tenant, lead, "dies-midway")
        except httpx.HTTPError as error:
            died.append(error)

    request = threading.Thread(target=first)
    request.start()
    try:
        wait_until(lambda: backends_sleeping_in_insert() == 1)
        live.api.kill()
        request.join(30)
        assert died, "the first request should have lost its connection"
        # The orphaned transaction ends (rolled back) once its backend sees the client gone.
        wait_until(lambda: backends_sleeping_in_insert() == 0)
        slow_message_insert.drop()
    finally:
        if not live.api.running:
            live.api.start()
    retry = fe_send(api.http, tenant, lead, "dies-midway")
    assert retry.status_code == 200, retry.text
    (message,) = messages_of(tenant)
    assert retry.json() == {"messageId": str(message.id)}
    (row,) = key_rows(tenant)
    assert row.message_id == message.id


def test_message_insert_failure_keeps_nothing_and_the_retry_succeeds(live, api, tenant):
    """The database refuses the message (a trigger raising, a real error inside the request's
    transaction): the answer is 500, no key row is left, and the same key then sends once."""
    lead = tenant.new_lead()
    units = units_used(tenant)
    with MessageInsertTrigger(tenant, "RAISE EXCEPTION 'refused';"):
        failed = fe_send(api.http, tenant, lead, "db-refused")
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "INTERNAL_ERROR"
    assert key_rows(tenant) == [] and messages_of(tenant) == []
    # docs/flowestate-api.md: a single send the service fails with a 5xx costs no unit.
    assert units_used(tenant) == units
    # A fresh connection: the server may close the one that carried an unhandled error.
    with httpx.Client(base_url=api.http.base_url, timeout=10) as fresh:
        retry = fe_send(fresh, tenant, lead, "db-refused")
    assert retry.status_code == 200, retry.text
    assert [m.id for m in messages_of(tenant)] == [uuid.UUID(retry.json()["messageId"])]
    assert units_used(tenant) == units + 1  # the send that succeeded costs its one


@pytest.mark.parametrize("surface", ["flowestate", "flowiq"])
def test_key_and_message_are_written_by_one_transaction(stack, api, tenant, surface):
    """The message carries its key and the key row its message, and Postgres says one transaction
    wrote both (xmin: the transaction that wrote the row's current version; the message is
    scheduled an hour ahead so that no pacer hands it over, which would update it)."""
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with stack.paused():
        if surface == "flowestate":
            body = {"leadId": str(tenant.new_lead()), "whatsappAccountId": str(tenant.account.id), "message": "Hi"}
            headers = {**tenant.auth, "Idempotency-Key": "together"}
            answer = api.http.post("/api/v1/whatsapp/send", json={**body, "sendAt": later}, headers=headers)
            assert answer.status_code == 200, answer.text
        else:
            tenant.new_lead(phone=PHONE)
            headers = {"Authorization": f"Bearer {tenant.new_key(kind=KeyKind.FLOWIQ)}", "Idempotency-Key": "together"}
            body = {"phone_number": PHONE, "message_type": "text", "text": "Together", "send_at": later}
            answer = api.http.post("/send-whatsapp", params={"tenantId": tenant.slug}, json=body, headers=headers)
            assert answer.status_code == 202, answer.text
        with get_engine().connect() as conn:
            message = conn.execute(
                text("SELECT id, idempotency_key, source_api, xmin::text AS tx FROM messages WHERE org_id = :org"),
                {"org": tenant.org_id},
            ).one()
            key = conn.execute(
                text("SELECT message_id, state, surface, xmin::text AS tx FROM idempotency_keys WHERE org_id = :org"),
                {"org": tenant.org_id},
            ).one()
    assert (message.idempotency_key, message.source_api) == ("together", surface)
    assert (key.message_id, key.state, key.surface) == (message.id, "done", surface)
    assert key.tx == message.tx


def test_a_key_held_by_a_running_request_answers_in_progress_after_a_bounded_wait(stack, api, tenant):
    """A request that cannot get the key (another transaction holds it, uncommitted) waits a
    bounded time, then answers 409 IDEMPOTENCY_KEY_IN_PROGRESS; once the holder rolls back, the
    key is free."""
    lead = tenant.new_lead()
    with get_engine().connect() as holder:
        holder.execute(
            text(
                "INSERT INTO idempotency_keys (org_id, surface, key, request_sha256) "
                "VALUES (:org, 'flowestate', 'held', 'x')"
            ),
            {"org": tenant.org_id},
        )
        started = time.monotonic()
        busy = fe_send(api.http, tenant, lead, "held")
        waited = time.monotonic() - started
        holder.rollback()
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_PROGRESS"
    assert waited < 9
    assert fe_send(api.http, tenant, lead, "held").status_code == 200


def test_a_legacy_in_progress_row_answers_in_progress(stack, api, tenant):
    lead = tenant.new_lead()
    from intake.flowestate_request import SendIn
    from intake.idempotency import fingerprint

    body = SendIn(leadId=lead, whatsappAccountId=tenant.account.id, message="Hello").model_dump(mode="json")
    with session_scope() as s:
        s.add(IdempotencyKey(org_id=tenant.org_id, surface="flowestate", key="old", request_sha256=fingerprint(body)))
    answer = fe_send(api.http, tenant, lead, "old")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_PROGRESS"
    assert messages_of(tenant) == []


def test_an_expired_key_is_taken_over_and_moves_to_the_new_message(live, api, tenant):
    lead = tenant.new_lead()
    first = fe_send(api.http, tenant, lead, "reused-later")
    assert first.status_code == 200
    with session_scope() as s:
        s.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.org_id == tenant.org_id)
            .values(created_at=datetime.now(UTC) - timedelta(hours=25))
        )
    second = fe_send(api.http, tenant, lead, "reused-later")
    assert second.status_code == 200 and second.json() != first.json()
    keys = {m.id: m.idempotency_key for m in messages_of(tenant)}
    assert keys == {uuid.UUID(first.json()["messageId"]): None, uuid.UUID(second.json()["messageId"]): "reused-later"}
    (row,) = key_rows(tenant)
    assert row.message_id == uuid.UUID(second.json()["messageId"])
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Message).where(Message.org_id == tenant.org_id)) == 2


@pytest.mark.parametrize("surface", ["flowestate", "flowiq"])
def test_no_key_row_is_committed_before_its_message(stack, tenant, monkeypatch, surface):
    """Unit level, real database: a failure injected just where the message would be written. At
    that moment no other connection may see the key row (nothing committed it alone), and after
    the failure none is left."""
    from starlette.requests import Request

    from api_shim.flowiq import send as flowiq
    from intake import flowestate_send, flowiq_send
    from intake.callers import Caller
    from intake.flowestate_request import SendIn
    from models.db import get_sessionmaker

    seen_at_failure: list[int] = []

    def fail_at_the_message(*_args: object, **_kwargs: object) -> uuid.UUID:
        seen_at_failure.append(len(key_rows(tenant)))
        raise RuntimeError("injected between the key and the message")

    if surface == "flowestate":
        monkeypatch.setattr(flowestate_send, "persist_message", fail_at_the_message)
        body = SendIn(leadId=tenant.new_lead(), whatsappAccountId=tenant.account.id, message="Hi")
        caller = Caller(tenant.org_id, tenant.slug, tenant.name, uuid.uuid4(), frozenset())
        session = get_sessionmaker()()
        with pytest.raises(RuntimeError, match="injected"):
            try:
                flowestate_send.send_once(body, session, caller, "unit-key")
            finally:
                session.close()
    else:
        monkeypatch.setattr(flowiq_send, "_persist", fail_at_the_message)
        tenant.new_lead(phone=PHONE)
        key = tenant.new_key(kind=KeyKind.FLOWIQ)
        request = Request({"type": "http", "method": "POST", "path": "/send-whatsapp", "query_string": b"",
                           "headers": [(b"authorization", f"Bearer {key}".encode())]})  # fmt: skip
        raw = b'{"phone_number": "+27123456789", "message_type": "text", "text": "Hi"}'
        with pytest.raises(RuntimeError, match="injected"):
            flowiq._accept(request, tenant.slug, raw, "unit-key")
    assert seen_at_failure == [0]
    assert key_rows(tenant) == [] and messages_of(tenant) == []


def test_a_message_whose_wake_nobody_heard_is_still_sent_once(stack, api, sandbox, tenant):
    # Intake commits the message waiting in Postgres and wakes the pacers; here none listens (the
    # worker is stopped), as when the request's process dies between its commit and its wake. The
    # retry with the same key answers the same message, and the pacers' own pass sends it, once.
    stack.worker.stop()
    try:
        lead = tenant.new_lead()
        first = fe_send(api.http, tenant, lead, "never-announced")
        assert first.status_code == 200, first.text
        again = fe_send(api.http, tenant, lead, "never-announced")
        assert again.json() == first.json()
    finally:
        stack.worker.start()
    message_id = first.json()["messageId"]
    assert api.wait_for(tenant, message_id)["status"] == "sent"
    sent = [
        m
        for m in sandbox.received(tenant.account.phone_number_id)
        if m["body"]["biz_opaque_callback_data"] == message_id
    ]
    assert len(sent) == 1
