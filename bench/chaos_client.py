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
from typing import Any

SEND_PATH = "/api/v1/whatsapp/send"

# Answers that are not an answer: the request may or may not have been acted on, ask again.
_TRY_AGAIN_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_IN_PROGRESS = "IDEMPOTENCY_KEY_IN_PROGRESS"


@dataclass(frozen=True)
class SendRequest:
    key: str
    headers: dict[str, str]
    body: dict[str, str]


@dataclass
class SendRecord:
    """What the client learned about one request."""

    key: str
    message_id: str | None = None  # the answer was 200 with this id
    refused: str | None = None  # the answer was a final error: "<status> <code>"
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


def build_requests(api_key: str, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> list[SendRequest]:
    return [
        SendRequest(
            key=f"chaos-{uuid.uuid4().hex}",
            headers={"Authorization": f"Bearer {api_key}"},
            body={"leadId": str(lead), "whatsappAccountId": str(account), "message": f"chaos {n}"},
        )
        for n, (account, lead) in enumerate(pairs)
    ]


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

    records = [SendRecord(key=r.key) for r in requests]
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

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.monotonic()
        pairs = enumerate(zip(requests, records, strict=True))
        await asyncio.gather(*(one(http, started + n / rate, req, rec) for n, (req, rec) in pairs))
        elapsed = time.monotonic() - started
    return LoadResult(records, elapsed, problems)
