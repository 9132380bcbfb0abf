"""The sandbox's HTTP surface: Meta's send endpoint plus ``/_sandbox/*`` controls for tests."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from meta_sandbox import portfolios as meta_limits
from meta_sandbox.media_rules import kind_accepts, upload_problem
from meta_sandbox.sample_media import SAMPLES
from meta_sandbox.state import Fault, SandboxState
from meta_sandbox.templates import TemplateIn, TemplateRegistry
from meta_sandbox.validation import problem_with
from meta_sandbox.webhooks import NumberInfo, WebhookConfig, WebhookEmitter


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
    display_phone_number: str | None = Field(default=None, description="digits, as in webhooks' metadata")
    waba_id: str | None = Field(default=None, description="the WhatsApp Business Account id of webhooks' entry")


MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
_MEDIA_DEFAULTS = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "audio": "audio/ogg; codecs=opus",
    "document": "application/pdf",
    "sticker": "image/webp",
}


class InboundIn(BaseModel):
    """A user writes to a business number. The block of the message's type goes under its name
    (``"text": {"body": "hi"}``), as in Meta's webhooks."""

    model_config = {"extra": "allow", "populate_by_name": True}

    phone_number_id: str
    sender: str | None = Field(default=None, alias="from", pattern=r"^\d{6,20}$", description="the user's wa_id")
    user_id: str | None = Field(default=None, max_length=128, description="a business-scoped user id (2026+)")
    name: str | None = Field(default=None, max_length=200)
    type: str = Field(min_length=1, max_length=16)
    context: dict[str, Any] | None = Field(default=None, description='{"id": <wamid replied to>}')


class PortfolioIn(BaseModel):
    portfolio_id: str = Field(min_length=1, max_length=64)
    messaging_limit: int | None = Field(description="unique users per moving window; null: unlimited", gt=0)
    phone_number_ids: list[str] = Field(default_factory=list)
    window_s: float = Field(default=24 * 3600.0, gt=0, description="the moving window (24 h at Meta)")


class MarketingLimitIn(BaseModel):
    to: str = Field(pattern=r"^\d{6,20}$", description="the user's wa_id")
    phone_number_id: str | None = Field(default=None, description="only sends from this number (default: all)")
    count: int | None = Field(default=None, ge=1, description="marketing templates refused; null: until cleared")


class TemplateStatusIn(BaseModel):
    phone_number_id: str
    name: str = Field(min_length=1, max_length=512)
    language: str = Field(min_length=2, max_length=16)
    event: str = Field(min_length=1, max_length=32, description="APPROVED, PAUSED, DISABLED, REJECTED, REINSTATED, ...")
    reason: str | None = "NONE"
    category: str | None = None


class QualityIn(BaseModel):
    phone_number_id: str
    event: str = Field(min_length=1, max_length=32, description="FLAGGED, UNFLAGGED, UPGRADE, DOWNGRADE, ...")
    current_limit: str | None = Field(default=None, description="TIER_250, TIER_2K, ... TIER_UNLIMITED")


class CapabilityIn(BaseModel):
    phone_number_id: str
    messaging_limit: int = Field(description="the portfolio's new limit; -1: unlimited")


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
    # Webhooks (null turns a status delay off; leave a field out to keep it as it is).
    webhook_url: str | None = Field(default=None, description="where deliveries go; empty string: none")
    app_secret: str | None = None
    sent_delay_s: float | None = Field(default=None, ge=0)
    delivered_delay_s: float | None = Field(default=None, ge=0)
    read_delay_s: float | None = Field(default=None, ge=0)
    enforce_window: bool | None = None
    window_s: float | None = Field(default=None, gt=0)
    duplicate_fraction: float | None = Field(default=None, ge=0, le=1)
    reorder: bool | None = None
    batch_window_ms: float | None = Field(default=None, ge=0)
    batch_max: int | None = Field(default=None, ge=1, le=1000)
    default_mps: float | None = Field(default=None, gt=0)
    throughput_burst: float | None = Field(default=None, ge=0)
    pair_interval_s: float | None = Field(default=None, ge=0, description="0 turns pair pacing off")
    pair_burst: float | None = Field(default=None, ge=0)


def create_app(latency_ms: float = 0.0, webhooks: WebhookConfig | None = None) -> FastAPI:
    app = FastAPI(title="wadispatch Meta sandbox", description="A Graph API stand-in for tests and local runs")
    state = SandboxState(latency_ms=latency_ms)
    app.state.sandbox = state
    templates = TemplateRegistry()
    app.state.templates = templates
    emitter = WebhookEmitter()
    emitter.config = webhooks or WebhookConfig()
    app.state.webhooks = emitter
    limits = meta_limits.Limits()
    app.state.limits = limits

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
        if body.get("type") == "template" and (refusal := templates.check(phone_number_id, body.get("template"))):
            state.count_error(phone_number_id, refusal.code)
            return meta_error(400, refusal.code, refusal.title, details=refusal.details)
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
        if refused := _limit_refusal(phone_number_id, body):
            state.count_error(phone_number_id, _code_of(refused))
            return refused
        wamid = "wamid." + secrets.token_urlsafe(24)
        # Meta acts on a request when it arrives; the latency only delays the answer.
        state.record(phone_number_id, token, body, wamid)
        category = templates.category_of(phone_number_id, body["template"]) if body.get("type") == "template" else None
        emitter.after_send(phone_number_id, body, wamid, template_category=category)
        await _delay(state)
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"].lstrip("+")}],
                "messages": [{"id": wamid}],
            }
        )

    def _limit_refusal(phone_number_id: str, body: dict[str, Any]) -> JSONResponse | None:
        """Meta's per-user marketing limit (131049), then the portfolio's messaging limit (131048)."""
        if body.get("type") != "template":
            return None
        user = str(body.get("to", "")).lstrip("+")
        category = templates.category(phone_number_id, body.get("template"))
        if category == "MARKETING" and limits.marketing_capped(phone_number_id, user):
            return meta_error(
                400, meta_limits.MARKETING_CODE, meta_limits.MARKETING_TITLE, details=meta_limits.MARKETING_DETAILS
            )
        if emitter.window_open(phone_number_id, user):
            return None  # inside the customer service window: not business-initiated
        if (full := limits.business_initiated_ok(phone_number_id, user)) is not None:
            details = meta_limits.LIMIT_DETAILS.format(limit=full.limit)
            return meta_error(400, meta_limits.LIMIT_CODE, meta_limits.LIMIT_TITLE, details=details)
        return None

    @app.post("/_sandbox/portfolios")
    async def register_portfolio(portfolio: PortfolioIn) -> dict[str, Any]:
        """A business portfolio: these numbers share its messaging limit (131048 past it)."""
        known = limits.portfolios.get(portfolio.portfolio_id)
        limits.portfolios[portfolio.portfolio_id] = meta_limits.Portfolio(
            portfolio.portfolio_id,
            portfolio.messaging_limit,
            set(portfolio.phone_number_ids),
            portfolio.window_s,
            reached=known.reached if known is not None else {},
        )
        return portfolio.model_dump()

    @app.get("/_sandbox/portfolios")
    async def list_portfolios() -> dict[str, Any]:
        now = time.time()
        items = [
            {"portfolio_id": p.portfolio_id, "messaging_limit": p.limit, "phone_number_ids": sorted(p.numbers),
             "used": p.used(now)}
            for p in limits.portfolios.values()
        ]  # fmt: skip
        return {"data": items, "count": len(items)}

    @app.post("/_sandbox/marketing_limit")
    async def cap_user(cap: MarketingLimitIn) -> dict[str, Any]:
        """This user has had their share of marketing messages: marketing templates get 131049."""
        limits.capped[(cap.phone_number_id or "*", cap.to)] = cap.count
        return cap.model_dump()

    @app.delete("/_sandbox/marketing_limit")
    async def uncap_users() -> dict[str, int]:
        cleared = len(limits.capped)
        limits.capped.clear()
        return {"cleared": cleared}

    @app.post("/_sandbox/webhooks/template_status")
    async def template_status(update: TemplateStatusIn) -> dict[str, Any]:
        """Meta changes a template's status: the sandbox's template follows (when it holds it) and a
        message_template_status_update goes to the webhook URL."""
        event = update.event.upper()
        key = (update.phone_number_id, update.name, update.language.replace("-", "_"))
        held = templates.templates.get(key)
        status = {"APPROVED": "APPROVED", "REINSTATED": "APPROVED", "PAUSED": "PAUSED", "DISABLED": "DISABLED",
                  "REJECTED": "REJECTED", "PENDING": "PENDING"}.get(event)  # fmt: skip
        if held is not None and status is not None:
            templates.register(held.model_copy(update={"status": status}))
        value: dict[str, Any] = {
            "event": event,
            "message_template_id": int(hashlib.sha256(repr(key).encode()).hexdigest()[:12], 16),
            "message_template_name": update.name,
            "message_template_language": update.language,
            "reason": update.reason,
        }
        category = update.category or (held.category if held is not None else None)
        if category:
            value["message_template_category"] = category
        emitter.management(emitter.number(update.phone_number_id).waba_id, "message_template_status_update", value)
        return value

    @app.post("/_sandbox/webhooks/quality")
    async def quality(update: QualityIn) -> dict[str, Any]:
        """Meta reports a number's quality: a phone_number_quality_update goes to the webhook URL."""
        info = emitter.number(update.phone_number_id)
        value: dict[str, Any] = {"display_phone_number": info.display_phone_number, "event": update.event.upper()}
        if update.current_limit is not None:
            value["current_limit"] = update.current_limit
        emitter.management(info.waba_id, "phone_number_quality_update", value)
        return value

    @app.post("/_sandbox/webhooks/capability")
    async def capability(update: CapabilityIn) -> dict[str, Any]:
        """Meta changes the portfolio's messaging limit: the sandbox's portfolio of that number takes
        it, and a business_capability_update goes to the webhook URL."""
        if (portfolio := limits.portfolio_of(update.phone_number_id)) is not None:
            portfolio.limit = None if update.messaging_limit == -1 else update.messaging_limit
        value = {"max_daily_conversations_per_business": update.messaging_limit, "max_phone_numbers_per_waba": 25}
        emitter.management(emitter.number(update.phone_number_id).waba_id, "business_capability_update", value)
        return value

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
        emitter.clear()
        state.received.clear()
        state.calls.clear()
        state.answered_errors.clear()
        state.limits.reset()
        for portfolio in limits.portfolios.values():
            portfolio.reached.clear()
        return {"cleared": cleared}

    @app.post("/_sandbox/accounts")
    async def register_account(account: AccountIn) -> dict[str, Any]:
        if account.token is not None:
            state.tokens[account.phone_number_id] = account.token
        if account.mps is not None:
            state.limits.mps_by_number[account.phone_number_id] = account.mps
        info = emitter.number(account.phone_number_id)
        emitter.numbers[account.phone_number_id] = NumberInfo(
            account.display_phone_number or info.display_phone_number, account.waba_id or info.waba_id
        )
        return {"phone_number_id": account.phone_number_id, "mps": account.mps}

    @app.post("/_sandbox/inbound")
    async def inbound(message: InboundIn) -> JSONResponse:
        """A user writes to ``phone_number_id``: the window opens, and the message is delivered as a webhook."""
        if message.sender is None and message.user_id is None:
            return JSONResponse({"error": "from or user_id is required"}, status_code=422)
        extra = message.model_extra or {}
        item: dict[str, Any] = {
            "id": "wamid." + secrets.token_urlsafe(24),
            "timestamp": str(int(time.time())),
            "type": message.type,
        }
        if message.sender is not None:
            item["from"] = message.sender
        if message.user_id is not None:
            item["from_user_id"] = message.user_id
        block = extra.get(message.type)
        if message.type in MEDIA_KINDS:
            block = {
                "id": str(secrets.randbelow(10**15) + 10**15),
                "mime_type": _MEDIA_DEFAULTS[message.type],
                "sha256": secrets.token_hex(32),
                **(block if isinstance(block, dict) else {}),
            }
        if message.type == "contacts":
            item["contacts"] = extra.get("contacts", [])
        elif block is not None:
            item[message.type] = block
        if message.context and message.context.get("id"):
            item["context"] = {
                "from": emitter.number(message.phone_number_id).display_phone_number,
                "id": message.context["id"],
            }
        contact: dict[str, Any] = {"profile": {"name": message.name or "WhatsApp User"}}
        if message.sender is not None:
            contact["wa_id"] = message.sender
        if message.user_id is not None:
            contact["user_id"] = message.user_id
        emitter.inbound(message.phone_number_id, item, contact)
        return JSONResponse({"wamid": item["id"], "message": item})

    @app.post("/_sandbox/templates")
    async def register_template(template: TemplateIn) -> dict[str, Any]:
        """Register (or change: pause, disable) a template of one phone number, as Meta would hold it."""
        templates.register(template)
        return template.model_dump()

    @app.get("/_sandbox/templates")
    async def list_templates(phone_number_id: str | None = None) -> dict[str, Any]:
        items = [t.model_dump() for t in templates.listed(phone_number_id)]
        return {"data": items, "count": len(items)}

    @app.get("/_sandbox/webhooks")
    async def webhook_deliveries() -> dict[str, Any]:
        """Deliveries made to the webhook URL: updates in each, tries, the last answer."""
        items = [
            {"id": d.id, "updates": d.updates, "tries": d.tries, "status_code": d.status_code, "error": d.error,
             "copies": d.copies}
            for d in emitter.deliveries
        ]  # fmt: skip
        return {"data": items, "count": len(items), "updates": sum(d.updates for d in emitter.deliveries)}

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
    async def configure(config: ConfigIn) -> dict[str, Any]:
        if config.latency_ms is not None:
            state.latency_ms = config.latency_ms
        hooks = emitter.config
        for name in config.model_fields_set & set(WebhookConfig.__dataclass_fields__) - {"url"}:
            value = getattr(config, name)
            if value is not None or name.endswith("_delay_s"):
                setattr(hooks, name, value)
        if "webhook_url" in config.model_fields_set:
            hooks.url = config.webhook_url or None
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
            "webhooks": {**hooks.__dict__, "app_secret": "***" if hooks.app_secret else ""},
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


def _code_of(answer: JSONResponse) -> int:
    return int(json.loads(bytes(answer.body))["error"]["code"])


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
    if kind == "template" and isinstance(block, dict):
        kind, block = _template_header_media(block)
    media_id = block.get("id") if isinstance(block, dict) else None
    if media_id is None:
        return None
    upload = state.uploads.get(str(media_id))
    if upload is None or upload["phone_number_id"] != phone_number_id:
        return f"Unknown media id {media_id} for this phone number"
    if not kind_accepts(kind, upload["mime"]):
        return f"Media id {media_id} is a {upload['mime']} file; it cannot be sent as {kind}"
    return None


def _template_header_media(template: dict[str, Any]) -> tuple[str, Any]:
    """The kind and block of a template's header image, video or document ("", {} if none)."""
    for component in template.get("components") or []:
        if not isinstance(component, dict) or component.get("type") != "header":
            continue
        for parameter in component.get("parameters") or []:
            kind = parameter.get("type", "") if isinstance(parameter, dict) else ""
            if kind in ("image", "video", "document") and isinstance(parameter.get(kind), dict):
                return kind, parameter[kind]
    return "", {}


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _delay(state: SandboxState) -> None:
    if state.latency_ms > 0:
        await asyncio.sleep(state.latency_ms / 1000)
