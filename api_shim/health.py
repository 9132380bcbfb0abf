"""Liveness and readiness probes."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from models.db import get_engine
from models.redis_client import redis_from_url
from models.settings import get_settings

router = APIRouter(tags=["health"])


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis_from_url(get_settings().redis_url, purpose="health")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description='postgres and redis: "ok" or "unreachable: <error class>"')


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Postgres or Redis is unreachable"}},
)
def readyz() -> JSONResponse:
    """Postgres and Redis are reachable; 503 naming what is not."""
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"unreachable: {type(exc).__name__}"
    try:
        _redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )
