"""The API shim application."""

from __future__ import annotations

from fastapi import FastAPI

from api_shim import flowestate, health
from api_shim.errors import install_flowestate_handlers

DESCRIPTION = """
Queue-backed WhatsApp dispatch. Sends are validated, stored, queued and delivered through Meta's
WhatsApp Cloud API by workers.

**FlowEstate surface** (`/api/v1/whatsapp/...`): `Authorization: Bearer fe_k_...`, scopes
`whatsapp:read` / `whatsapp:write`. Errors: `{"error": {"code": "...", "message": "..."}}` with
`code` one of VALIDATION_ERROR, BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, OPTED_OUT,
ACCOUNT_UNAVAILABLE, METHOD_NOT_ALLOWED, INTERNAL_ERROR.
"""


def create_app() -> FastAPI:
    app = FastAPI(title="wadispatch", version="0.1.0", description=DESCRIPTION)
    install_flowestate_handlers(app, flowestate.PREFIX)
    app.include_router(health.router)
    app.include_router(flowestate.router)
    return app
