"""The API shim application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api_shim import health, media_route, meta_webhooks, metrics_route
from api_shim.flowestate import batch as flowestate_batch
from api_shim.flowestate import cancellation as flowestate_cancellation
from api_shim.flowestate import event_endpoints, history
from api_shim.flowestate import routes as flowestate
from api_shim.flowestate import send as flowestate_send
from api_shim.flowestate import submissions as flowestate_submissions
from api_shim.flowestate.errors import install_flowestate_handlers
from api_shim.flowiq import batch as flowiq_batch
from api_shim.flowiq import cancellation as flowiq_cancellation
from api_shim.flowiq import lookup
from api_shim.flowiq import send as flowiq
from api_shim.flowiq import submissions as flowiq_submissions
from api_shim.flowiq.errors import install_flowiq_handlers
from api_shim.http_metrics import HttpMetrics
from api_shim.openapi_docs import install_docs
from api_shim.request_guard import RequestGuard
from api_shim.sync_results import ResultWaiter
from models import async_db, log_hygiene
from models.redis_client import redis_from_url
from models.settings import get_settings
from wadispatch import __version__
from worker.gauges import GaugeRefresher

DESCRIPTION = """
Queue-backed WhatsApp dispatch. Sends are validated, stored, queued and delivered through Meta's
WhatsApp Cloud API by workers.

**FlowEstate surface** (`/api/v1/whatsapp/...`, `/api/v1/webhooks/...`): `Authorization: Bearer fe_k_...`
(the FlowEstateKey scheme), scopes `whatsapp:read` / `whatsapp:write` / `webhooks:write`. Errors:
`{"error": {"code": "...", "message": "..."}}` with `code` one of VALIDATION_ERROR, BAD_REQUEST,
UNAUTHORIZED, FORBIDDEN, NOT_FOUND, OPTED_OUT, ACCOUNT_UNAVAILABLE, OUTSIDE_SERVICE_WINDOW,
IDEMPOTENCY_KEY_REUSED, IDEMPOTENCY_KEY_IN_PROGRESS, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE,
RATE_LIMITED, QUOTA_EXCEEDED, LIMIT_REACHED, NOT_CANCELLABLE, METHOD_NOT_ALLOWED, INTERNAL_ERROR.

**FlowIQ surface** (`POST /send-whatsapp?tenantId=<slug>`): `Authorization: Bearer fiq_...` (the
FlowIQKey scheme); nine message types; answers with Meta's wamid once the worker sent the message,
or 202 if it is still being sent after `WADISPATCH_SYNC_TIMEOUT_S`. Errors:
`{"error": "<title>", "message": "..."}`.

Each route lists the statuses it answers; a body or parameter that fails validation is a 400 in
its surface's envelope, never a 422. Health, media and Meta's webhook routes need no key.
"""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    waiter = ResultWaiter(settings.redis_url)
    app.state.result_waiter = waiter
    await waiter.start()
    await async_db.open_pool()
    # Offers to refresh the system-wide gauges (one process at a time does: worker/gauges.py).
    gauges = GaugeRefresher(redis_from_url(settings.redis_url, purpose="gauges"), settings.gauges_interval_s)
    gauges.start()
    try:
        yield
    finally:
        gauges.stop()
        await waiter.stop()
        await async_db.close_pool()


def create_app() -> FastAPI:
    # Also when uvicorn runs this factory itself, after it set up logging (and in each of its workers).
    log_hygiene.install()
    app = FastAPI(
        title="wadispatch",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        # Served by install_docs from local files instead (FastAPI's own pages load them from a CDN).
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    install_flowestate_handlers(app, flowestate.PREFIX)
    install_flowiq_handlers(app)

    settings = get_settings()
    app.add_middleware(
        RequestGuard, max_body_bytes=settings.max_body_bytes, max_batch_body_bytes=settings.max_batch_body_bytes
    )
    # Added last, so outermost: it counts the guard's refusals too.
    app.add_middleware(HttpMetrics)
    app.include_router(health.router)
    # Each surface's routers, in the order their routes have always been matched and documented.
    for router in (
        flowestate.router,
        flowestate_batch.router,
        history.router,
        flowestate_send.router,
        flowestate_submissions.router,
        flowestate_cancellation.router,
        flowiq.router,
        flowiq_batch.router,
        lookup.router,
        flowiq_submissions.router,
        flowiq_cancellation.router,
    ):
        app.include_router(router)
    app.include_router(media_route.router)
    app.include_router(meta_webhooks.router)
    app.include_router(event_endpoints.router)
    app.include_router(metrics_route.router)
    return app
