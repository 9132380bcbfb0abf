"""The API's own documentation: Swagger UI and ReDoc served by this process (no CDN, so /docs works
on a network without the internet), the bearer-key schemes, and an OpenAPI document without the 422
FastAPI documents by default (api_shim/flowestate/errors.py answers validation errors 400, in each surface's
envelope)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
# fastapi-offline ships Swagger UI 5 (swagger-ui-bundle.js, swagger-ui.css), redoc.standalone.js and
# favicon.png; only its files are used, not its app factory.
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"

# Declared as router dependencies, so the OpenAPI document puts them on every keyed route. They only
# read the header: the key is checked by api_shim/auth.py, which answers in the surface's envelope.
FLOWESTATE_BEARER = HTTPBearer(
    scheme_name="FlowEstateKey",
    bearerFormat="fe_k_...",
    description="`Authorization: Bearer fe_k_...` — a FlowEstate key; its scopes decide what it may do",
    auto_error=False,
)
FLOWIQ_BEARER = HTTPBearer(
    scheme_name="FlowIQKey",
    bearerFormat="fiq_...",
    description="`Authorization: Bearer fiq_...` — a FlowIQ key of the organization named by `tenantId`",
    auto_error=False,
)

# FastAPI's 422 body, and what it refers to (in this order: the second is unused once the first is gone).
_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def install_docs(app: FastAPI) -> None:
    """/docs and /redoc with their assets from ``ASSETS_URL``; create the app with
    ``docs_url=None, redoc_url=None`` (FastAPI's own pages load them from a CDN)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API docs",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=None,
            # Swagger UI would send the document to validator.swagger.io for its badge. A key given to
            # "Authorize" is kept for the page only (persistAuthorization would leave it in localStorage).
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API reference",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_422(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def without_422(document: dict[str, Any]) -> dict[str, Any]:
    """Drop the 422 FastAPI adds to every route with parameters or a body: no route answers it (the
    validation handler answers 400 in the surface's envelope, which each route documents)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in _VALIDATION_SCHEMAS:
        if f'"#/components/schemas/{name}"' not in json.dumps(document):
            schemas.pop(name, None)
    return document
