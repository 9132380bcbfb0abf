"""GET /metrics: Prometheus's text format. No API key; with WADISPATCH_METRICS_TOKEN set, only
`Authorization: Bearer <token>` (Prometheus's `authorization` setting). In multiprocess mode it
sums every uvicorn process; the system-wide gauges come from the snapshot one process refreshes
(worker/gauges.py)."""

from __future__ import annotations

from functools import lru_cache

import redis
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from models.metrics import bearer_matches, exposition
from models.redis_client import redis_from_url
from models.settings import get_settings
from worker.gauges import SnapshotCollector

router = APIRouter()


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis_from_url(get_settings().redis_url, purpose="metrics")


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    token = get_settings().metrics_token
    if token and not bearer_matches(request.headers.get("authorization", ""), token):
        return PlainTextResponse(
            "metrics: send Authorization: Bearer <WADISPATCH_METRICS_TOKEN>\n",
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    body, content_type = exposition(SnapshotCollector(_redis()))
    return Response(content=body, media_type=content_type)
