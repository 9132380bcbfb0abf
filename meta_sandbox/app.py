"""The sandbox's HTTP surface: Meta's send endpoint plus ``/_sandbox/*`` controls for tests."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from meta_sandbox.state import Fault, SandboxState
from meta_sandbox.validation import problem_with


def meta_error(
    http_status: int, code: int, message: str, *, details: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": secrets.token_urlsafe(12),
    }
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return JSONResponse({"error": error}, status_code=http_status, headers=headers)


class AccountIn(BaseModel):
    phone_number_id: str
    token: str


class FaultIn(BaseModel):
    http_status: int = Field(ge=400, le=599)
    code: int | None = None
    message: str = "Injected fault"
    count: int = Field(default=1, ge=1)
    phone_number_id: str | None = None
    retry_after_s: float | None = None


class ConfigIn(BaseModel):
    latency_ms: float = Field(ge=0)


def create_app(latency_ms: float = 0.0) -> FastAPI:
    app = FastAPI(title="wadispatch Meta sandbox", description="A Graph API stand-in for tests and local runs")
    state = SandboxState(latency_ms=latency_ms)
    app.state.sandbox = state

    @app.post("/{version}/{phone_number_id}/messages")
    async def send(version: str, phone_number_id: str, request: Request) -> JSONResponse:
        state.count_call(phone_number_id)
        token = _bearer(request)
        if token is None:
            return meta_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        expected = state.tokens.get(phone_number_id)
        if expected is not None and not secrets.compare_digest(expected, token):
            return meta_error(401, 190, "Error validating access token: The session is invalid")
        try:
            body = await request.json()
        except ValueError:
            return meta_error(400, 100, "(#100) Invalid parameter", details="The request body is not valid JSON")
        if fault := state.take_fault(phone_number_id):
            await _delay(state)
            headers = {"Retry-After": str(fault.retry_after_s)} if fault.retry_after_s is not None else None
            if fault.code is None:
                return JSONResponse({"error": "injected"}, status_code=fault.http_status, headers=headers)
            return meta_error(fault.http_status, fault.code, fault.message, details=fault.message, headers=headers)
        if problem := problem_with(body):
            return meta_error(400, 100, "(#100) Invalid parameter", details=problem)
        wamid = "wamid." + secrets.token_urlsafe(24)
        # Meta acts on a request when it arrives; the latency only delays the answer.
        state.record(phone_number_id, token, body, wamid)
        await _delay(state)
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"].lstrip("+")}],
                "messages": [{"id": wamid}],
            }
        )

    @app.get("/_sandbox/messages")
    async def list_messages(phone_number_id: str | None = None) -> dict[str, Any]:
        items = [m for m in state.received if phone_number_id in (None, m["phone_number_id"])]
        calls = state.calls.get(phone_number_id, 0) if phone_number_id else sum(state.calls.values())
        return {"data": items, "count": len(items), "calls": calls}

    @app.delete("/_sandbox/messages")
    async def clear_messages() -> dict[str, int]:
        cleared = len(state.received)
        state.received.clear()
        state.calls.clear()
        return {"cleared": cleared}

    @app.post("/_sandbox/accounts")
    async def register_account(account: AccountIn) -> dict[str, str]:
        state.tokens[account.phone_number_id] = account.token
        return {"phone_number_id": account.phone_number_id}

    @app.post("/_sandbox/faults")
    async def add_fault(fault: FaultIn) -> dict[str, int]:
        state.faults.append(
            Fault(
                http_status=fault.http_status,
                code=fault.code,
                message=fault.message,
                remaining=fault.count,
                phone_number_id=fault.phone_number_id,
                retry_after_s=fault.retry_after_s,
            )
        )
        return {"pending_faults": len(state.faults)}

    @app.delete("/_sandbox/faults")
    async def clear_faults() -> dict[str, int]:
        state.faults.clear()
        return {"pending_faults": 0}

    @app.put("/_sandbox/config")
    async def configure(config: ConfigIn) -> dict[str, float]:
        state.latency_ms = config.latency_ms
        return {"latency_ms": state.latency_ms}

    @app.get("/_sandbox/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _delay(state: SandboxState) -> None:
    if state.latency_ms > 0:
        await asyncio.sleep(state.latency_ms / 1000)
