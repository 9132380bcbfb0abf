"""FlowEstate's pre-checks of a send: one function for the ORM send, the batch and the lean statements,
so every path refuses the same sends with the same errors, in the documented order."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from intake.errors import ApiError, ErrorCode
from intake.service_window import window_refusal
from models.enums import AccountStatus
from models.outbound import AnyOutbound
from models.phones import is_valid_e164
from models.settings import get_settings


class LeadFacts(Protocol):
    """What the send checks of a lead (a Contact, or the lean path's row)."""

    @property
    def opted_out_at(self) -> datetime | None: ...
    @property
    def phone_e164(self) -> str | None: ...
    @property
    def wa_id(self) -> str | None: ...
    @property
    def last_inbound_at(self) -> datetime | None: ...


class AccountFacts(Protocol):
    """What the send checks of a sending account (a WhatsappAccount, or the lean path's row)."""

    @property
    def status(self) -> str | None: ...
    @property
    def meta_phone_number_id(self) -> str | None: ...


def send_refusal(
    lead: LeadFacts | None, account: AccountFacts | None, message: AnyOutbound, *, window_policy: str, now: datetime
) -> ApiError | None:
    """Why a send to ``lead`` from ``account`` is refused, in the order the checks are documented."""
    if lead is None:
        return ApiError(ErrorCode.NOT_FOUND, "Lead not found")
    if lead.opted_out_at is not None:
        return ApiError(ErrorCode.OPTED_OUT, "The lead opted out of WhatsApp and cannot be messaged")
    if account is None or account.status != AccountStatus.CONNECTED or not account.meta_phone_number_id:
        return ApiError(ErrorCode.ACCOUNT_UNAVAILABLE, "The WhatsApp account was not found or is not connected")
    if not is_valid_e164(lead.phone_e164) or not lead.wa_id:
        return ApiError(ErrorCode.BAD_REQUEST, "The lead has no valid phone number")
    closed = window_refusal(
        window_policy, message, last_inbound_at=lead.last_inbound_at, now=now, window_h=get_settings().service_window_h
    )
    return ApiError(ErrorCode.OUTSIDE_SERVICE_WINDOW, closed.describe()) if closed is not None else None
