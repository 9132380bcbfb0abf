"""The chaos bench's load: sends at a steady rate, each with its own Idempotency-Key, and a client
that insists: no answer (connection refused or reset, timeout, 5xx, "still in progress") means the
SAME request with the SAME key again, with backoff, until an answer comes or the deadline passes."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

SEND_PATH = "/api/v1/whatsapp/send"
CANCEL_PATH = "/api/v1/whatsapp/messages/{id}"
# Every message of the dispatch-policy mix carries this campaign label.
MIX_CAMPAIGN = "chaos-mix"

# Answers that are not an answer: the request may or may not have been acted on, ask again.
_TRY_AGAIN_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_IN_PROGRESS = "IDEMPOTENCY_KEY_IN_PROGRESS"


class Kind(StrEnum):
    """What a send asks for beyond "now" (the dispatch-policy mix, ``--mix``)."""

    PLAIN = "plain"
    SCHEDULED = "scheduled"  # sendAt a few seconds after the request
    EXPIRING = "expiring"  # ttlSeconds short enough that some expire under the faults
    CANCELLED = "cancelled"  # scheduled, then DELETEd while it may or may not have started
    BULK = "bulk"  # priority bulk: waits in Postgres, fed by the pacer


@dataclass(frozen=True)
class SendRequest:
    key: str
    headers: dict[str, str]
    body: dict[str, Any]
    kind: Kind = Kind.PLAIN


@dataclass
class SendRecord:
    """What the client learned about one request."""

    key: str
    message_id: str | None = None  # the answer was 200 with this id
    refused: str | None = None  # the answer was a final error: "<status> <code>"
    kind: Kind = Kind.PLAIN
    # A cancel's answer: "cancelled", or the status a 409 NOT_CANCELLABLE named; None: no answer.
    cancel_answer: str | None = None
    cancel_tries: int = 0
    tries: int = 0
    last_problem: str | None = None  # why the last try did not count as an answer

    @property
    def answered(self) -> bool:
        return self.message_id is not None or self.refused is not None


@dataclass
class LoadResult:
    records: list[SendRecord]
    seconds: float
    problems: Counter[str] = field(default_factory=Counter)  # every try that got no answer, by reason

    @property
    def accepted_ids(self) -> set[str]:
        return {r.message_id for r in self.records if r.message_id is not None}

    @property
    def unanswered(self) -> list[SendRecord]:
        return [r for r in self.records if not r.answered]

    @property
    def refused(self) -> Counter[str]:
        return Counter(r.refused for r in self.records if r.refused is not None)


def build_requests(
    api_key: str, pairs: list[tuple[uuid.UUID, uuid.UUID]], *, mix: float = 0.0, seed: int = 0
) -> list[SendRequest]:
    """One request per (account, lead); a ``mix`` share of them split evenly over the policy kinds."""
    chooser = random.Random(seed)
    policy = [Kind.SCHEDULED, Kind.EXPIRING, Kind.CANCELLED, Kind.BULK]
    requests = []
    for n, (account, lead) in enumerate(pairs):
        kind = chooser.choice(policy) if chooser.random() < mix else Kind.PLAIN
        body: dict[str, Any] = {"leadId": str(lead), "whatsappAccountId": str(account), "message": f"chaos {n}"}
        if kind == Kind.BULK:
            body["priority"] = "bulk"
        if kind != Kind.PLAIN:
            body["campaign"] = MIX_CAMPAIGN
        requests.append(
            SendRequest(
                key=f"chaos-{uuid.uuid4().hex}", headers={"Authorization": f"Bearer {api_key}"}, body=body, kind=kind
            )
        )
    return requests


def stamp_times(request: SendRequest) -> None:
    """Times relative to the first try, fixed for every retry (the same key must carry the same
    body): a scheduled send 2-8 s ahead, a cancelled one 3-10 s ahead, an expiring one 1-3 s of life."""
    if "sendAt" in request.body or "ttlSeconds" in request.body:
        return
    now = datetime.now(UTC)
    if request.kind == Kind.SCHEDULED:
        request.body["sendAt"] = (now + timedelta(seconds=random.uniform(2, 8))).isoformat()
    elif request.kind == Kind.CANCELLED:
        request.body["sendAt"] = (now + timedelta(seconds=random.uniform(3, 10))).isoformat()
    elif request.kind == Kind.EXPIRING:
        request.body["ttlSeconds"] = random.randint(1, 3)


async def _error_code(response: Any) -> str:
    try:
        data = await response.json(content_type=None)
    except Exception:
        return ""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return str(error.get("code", ""))
        if isinstance(error, str):
            return error
        return str(data.get("code", ""))
    return ""


async def send_until_answered(
    http: Any,
    api_urls: list[str],
    request: SendRequest,
    record: SendRecord,
    *,
    deadline_s: float,
    try_timeout_s: float,
    problems: Counter[str],
    gate: asyncio.Semaphore,
) -> None:
    """One logical send: tries spread over the API processes, same key every time. The gate
    bounds requests in flight; a send waiting out its backoff does not hold it."""
    import aiohttp

    headers = {**request.headers, "Idempotency-Key": request.key}
    stamp_times(request)
    give_up_at = time.monotonic() + deadline_s
    start = random.randrange(len(api_urls))
    while True:
        url = api_urls[(start + record.tries) % len(api_urls)] + SEND_PATH
        record.tries += 1
        try:
            async with (
                gate,
                http.post(
                    url, json=request.body, headers=headers, timeout=aiohttp.ClientTimeout(total=try_timeout_s)
                ) as response,
            ):
                if response.status == 200:
                    record.message_id = str((await response.json())["messageId"])
                    return
                code = await _error_code(response)
                if response.status in _TRY_AGAIN_STATUSES or code == _IN_PROGRESS:
                    record.last_problem = f"{response.status} {code}".strip()
                else:
                    record.refused = f"{response.status} {code}".strip()
                    return
        except (TimeoutError, aiohttp.ClientError) as exc:
            record.last_problem = type(exc).__name__
        problems[record.last_problem or "?"] += 1
        pause = min(5.0, 0.2 * 2 ** min(record.tries, 6)) * random.uniform(0.5, 1.0)
        if time.monotonic() + pause > give_up_at:
            return
        await asyncio.sleep(pause)


async def cancel_until_answered(
    http: Any, api_urls: list[str], request: SendRequest, record: SendRecord, *, deadline_s: float, gate: Any
) -> None:
    """DELETE the message a while after it was accepted (before or after its sendAt: the answer
    may be either), repeating it until an answer comes; a repeat of a cancel that was done answers
    409 naming ``cancelled``."""
    import aiohttp

    await asyncio.sleep(random.uniform(0.5, 6.0))
    url_path = CANCEL_PATH.format(id=record.message_id)
    give_up_at = time.monotonic() + deadline_s
    while True:
        url = api_urls[record.cancel_tries % len(api_urls)] + url_path
        record.cancel_tries += 1
        try:
            async with (
                gate,
                http.delete(url, headers=request.headers, timeout=aiohttp.ClientTimeout(total=15)) as response,
            ):
                data = await response.json(content_type=None) if response.status in (200, 409) else None
                if response.status == 200 and isinstance(data, dict):
                    record.cancel_answer = str(data["data"]["status"])
                    return
                if response.status == 409 and isinstance(data, dict):
                    record.cancel_answer = str(data["error"].get("messageStatus"))
                    return
        except (TimeoutError, aiohttp.ClientError, ValueError):
            pass
        pause = min(5.0, 0.2 * 2 ** min(record.cancel_tries, 6)) * random.uniform(0.5, 1.0)
        if time.monotonic() + pause > give_up_at:
            return
        await asyncio.sleep(pause)


async def run_load(
    api_urls: list[str],
    requests: list[SendRequest],
    *,
    seconds: float,
    deadline_s: float,
    try_timeout_s: float = 15.0,
    concurrency: int = 256,
) -> LoadResult:
    """Start the requests evenly over ``seconds`` (open loop) and wait for every one to end."""
    import aiohttp

    records = [SendRecord(key=r.key, kind=r.kind) for r in requests]
    problems: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)
    rate = len(requests) / max(seconds, 0.001)

    async def one(http: Any, at: float, request: SendRequest, record: SendRecord) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        await send_until_answered(
            http,
            api_urls,
            request,
            record,
            deadline_s=deadline_s,
            try_timeout_s=try_timeout_s,
            problems=problems,
            gate=gate,
        )
        if request.kind == Kind.CANCELLED and record.message_id is not None:
            await cancel_until_answered(http, api_urls, request, record, deadline_s=deadline_s, gate=gate)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.monotonic()
        pairs = enumerate(zip(requests, records, strict=True))
        await asyncio.gather(*(one(http, started + n / rate, req, rec) for n, (req, rec) in pairs))
        elapsed = time.monotonic() - started
    return LoadResult(records, elapsed, problems)
