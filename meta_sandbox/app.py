"""The sandbox's HTTP surface: Meta's send endpoint plus ``/_sandbox/*`` controls for tests."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from meta_sandbox.media_rules import kind_accepts, upload_problem
from meta_sandbox.sample_media import SAMPLES
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
    token: str | None = None
    mps: float | None = Field(default=None, gt=0, description="this number's throughput limit")


class FaultIn(BaseModel):
    http_status: int = Field(ge=400, le=599)
    code: int | None = None
    message: str = "Injected fault"
    count: int | None = Field(default=1, ge=1, description="null: until DELETE /_sandbox/faults")
    fraction: float = Field(default=1.0, gt=0, le=1, description="share of matching calls that fail")
    phone_number_id: str | None = None
    retry_after_s: float | None = None


class ConfigIn(BaseModel):
    latency_ms: float | None = Field(default=None, ge=0)
    default_mps: float | None = Field(default=None, gt=0)
    throughput_burst: float | None = Field(default=None, ge=0)
    pair_interval_s: float | None = Field(default=None, ge=0, description="0 turns pair pacing off")
    pair_burst: float | None = Field(default=None, ge=0)


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
            if fault.code is not None:
                state.count_error(phone_number_id, fault.code)
            return _fault_response(fault)
        if problem := problem_with(body) or _media_id_problem(state, phone_number_id, body):
            state.count_error(phone_number_id, 100)
            return meta_error(400, 100, "(#100) Invalid parameter", details=problem)
        # Meta's limits: throughput per number, then the pace to one user.
        if not state.limits.throughput_ok(phone_number_id):
            state.count_error(phone_number_id, 130429)
            return meta_error(400, 130429, "Rate limit hit", details="Cloud API message throughput has been reached")
        if not state.limits.pair_ok(phone_number_id, body["to"]):
            state.count_error(phone_number_id, 131056)
            return meta_error(
                400, 131056, "(Business Account, Consumer Account) pair rate limit hit",
                details="Too many messages sent from this phone number to the same phone number in a short period",
            )  # fmt: skip
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

    @app.post("/{version}/{phone_number_id}/media")
    async def upload_media(version: str, phone_number_id: str, request: Request) -> JSONResponse:
        state.count_call(phone_number_id)
        if (token := _bearer(request)) is None:
            return meta_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        expected = state.tokens.get(phone_number_id)
        if expected is not None and not secrets.compare_digest(expected, token):
            return meta_error(401, 190, "Error validating access token: The session is invalid")
        if fault := state.take_fault(phone_number_id):
            return _fault_response(fault)
        try:
            form = await request.form()
        except Exception:
            return meta_error(400, 100, "(#100) Invalid parameter", details="Expected a multipart form")
        upload = form.get("file")
        if form.get("messaging_product") != "whatsapp":
            return meta_error(400, 100, "(#100) Invalid parameter", details="messaging_product must be 'whatsapp'")
        if upload is None or isinstance(upload, str):
            return meta_error(400, 100, "(#100) Invalid parameter", details="file is required")
        data = await upload.read()
        mime = (upload.content_type or "").split(";")[0].strip()
        if problem := upload_problem(mime, len(data)):
            return meta_error(400, 131053, "Media upload error", details=problem)
        media_id = str(secrets.randbelow(10**15) + 10**15)
        state.uploads[media_id] = {
            "id": media_id,
            "phone_number_id": phone_number_id,
            "mime": mime,
            "size": len(data),
            "filename": upload.filename,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        return JSONResponse({"id": media_id})

    @app.get("/_sandbox/media")
    async def list_media(phone_number_id: str | None = None) -> dict[str, Any]:
        items = [u for u in state.uploads.values() if phone_number_id in (None, u["phone_number_id"])]
        return {"data": items, "count": len(items)}

    @app.delete("/_sandbox/media")
    async def forget_media() -> dict[str, int]:
        # Like Meta dropping media ids: later sends by those ids are refused.
        forgotten = len(state.uploads)
        state.uploads.clear()
        return {"forgotten": forgotten}

    @app.get("/_sandbox/messages")
    async def list_messages(phone_number_id: str | None = None, include_data: bool = True) -> dict[str, Any]:
        """What was received (``include_data=false``: only the counts, cheap enough to poll)."""
        items = [m for m in state.received if phone_number_id in (None, m["phone_number_id"])]
        calls = state.calls.get(phone_number_id, 0) if phone_number_id else sum(state.calls.values())
        errors: Counter[int] = Counter()
        for number, counted in state.answered_errors.items():
            if phone_number_id in (None, number):
                errors.update(counted)
        answer = {"count": len(items), "calls": calls, "errors": {str(k): v for k, v in errors.items()}}
        return {"data": items, **answer} if include_data else answer

    @app.delete("/_sandbox/messages")
    async def clear_messages() -> dict[str, int]:
        cleared = len(state.received)
        state.received.clear()
        state.calls.clear()
        state.answered_errors.clear()
        state.limits.reset()
        return {"cleared": cleared}

    @app.post("/_sandbox/accounts")
    async def register_account(account: AccountIn) -> dict[str, Any]:
        if account.token is not None:
            state.tokens[account.phone_number_id] = account.token
        if account.mps is not None:
            state.limits.mps_by_number[account.phone_number_id] = account.mps
        return {"phone_number_id": account.phone_number_id, "mps": account.mps}

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
                fraction=fault.fraction,
            )
        )
        return {"pending_faults": len(state.faults)}

    @app.delete("/_sandbox/faults")
    async def clear_faults() -> dict[str, int]:
        state.faults.clear()
        return {"pending_faults": 0}

    @app.put("/_sandbox/config")
    async def configure(config: ConfigIn) -> dict[str, float]:
        if config.latency_ms is not None:
            state.latency_ms = config.latency_ms
        limits = state.limits
        for name in ("default_mps", "throughput_burst", "pair_interval_s", "pair_burst"):
            if (value := getattr(config, name)) is not None:
                setattr(limits, name, value)
        limits.reset()
        return {
            "latency_ms": state.latency_ms,
            "default_mps": limits.default_mps,
            "throughput_burst": limits.throughput_burst,
            "pair_interval_s": limits.pair_interval_s,
            "pair_burst": limits.pair_burst,
        }

    @app.get("/{filename}", include_in_schema=False)
    async def sample_file(filename: str) -> Response:
        # Plays the web for local runs: `make run` maps the seed's example hosts here, so
        # https://cdn.example.com/brochure.pdf has something to fetch with no internet.
        extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if extension not in SAMPLES:
            return JSONResponse({"error": "no sample file of that type"}, status_code=404)
        data, mime = SAMPLES[extension]
        return Response(data, media_type=mime)

    @app.get("/_sandbox/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _fault_response(fault: Fault) -> JSONResponse:
    headers = {"Retry-After": str(fault.retry_after_s)} if fault.retry_after_s is not None else None
    if fault.code is None:
        return JSONResponse({"error": "injected"}, status_code=fault.http_status, headers=headers)
    return meta_error(fault.http_status, fault.code, fault.message, details=fault.message, headers=headers)


def _media_id_problem(state: SandboxState, phone_number_id: str, body: dict[str, Any]) -> str | None:
    """A media id must have been uploaded for this phone number, as a file of the message's kind."""
    kind = body.get("type", "")
    block: Any = body.get(kind) if isinstance(body.get(kind), dict) else {}
    if kind == "interactive" and isinstance(block, dict):
        header = block.get("header") or {}
        kind = header.get("type", "")
        block = header.get(kind) if isinstance(header.get(kind), dict) else {}
    media_id = block.get("id") if isinstance(block, dict) else None
    if media_id is None:
        return None
    upload = state.uploads.get(str(media_id))
    if upload is None or upload["phone_number_id"] != phone_number_id:
        return f"Unknown media id {media_id} for this phone number"
    if not kind_accepts(kind, upload["mime"]):
        return f"Media id {media_id} is a {upload['mime']} file; it cannot be sent as {kind}"
    return None


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _delay(state: SandboxState) -> None:
    if state.latency_ms > 0:
        await asyncio.sleep(state.latency_ms / 1000)
