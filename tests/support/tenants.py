"""Test data made through the same admin functions the CLI uses, on the test database."""

from __future__ import annotations

import random
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import phonenumbers

from models import admin
from models.db import session_scope
from models.enums import AccountStatus, KeyKind, Scope
from models.tables import Organization

BOTH_SCOPES = [Scope.READ.value, Scope.WRITE.value]


def random_phone() -> str:
    """A valid Dominican Republic mobile-style number (+1 809 ...)."""
    while True:
        candidate = f"+1809{random.randint(2000000, 9999999)}"
        if phonenumbers.is_valid_number(phonenumbers.parse(candidate)):
            return candidate


def random_phone_number_id() -> str:
    return str(random.randint(10**14, 10**15 - 1))


@dataclass
class Account:
    id: uuid.UUID
    phone_number_id: str
    token: str


@dataclass
class Tenant:
    org_id: uuid.UUID
    slug: str
    name: str
    key: str
    account: Account
    extra_accounts: list[Account] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def new_key(self, scopes: list[str] | None = None, kind: KeyKind = KeyKind.FLOWESTATE) -> str:
        with session_scope() as s:
            org = s.get(Organization, self.org_id)
            assert org is not None
            return admin.create_key(s, org=org, kind=kind, scopes=scopes or BOTH_SCOPES).key

    def new_account(self, *, status: str = AccountStatus.CONNECTED, account_type: str = "organization") -> Account:
        phone_number_id = random_phone_number_id()
        token = "tok-" + secrets.token_urlsafe(16)
        with session_scope() as s:
            org = s.get(Organization, self.org_id)
            assert org is not None
            row = admin.create_account(
                s,
                org=org,
                account_type=account_type,
                phone=random_phone(),
                phone_number_id=phone_number_id,
                token=token,
                status=status,
            )
            return Account(row.id, phone_number_id, token)

    def new_lead(self, *, phone: str | None = "random", opted_out: bool = False) -> uuid.UUID:
        with session_scope() as s:
            org = s.get(Organization, self.org_id)
            assert org is not None
            row = admin.create_contact(
                s, org=org, phone=random_phone() if phone == "random" else phone, name="Test Lead", opted_out=opted_out
            )
            return row.id


def make_tenant(sandbox_url: str | None = None) -> Tenant:
    slug = "t-" + secrets.token_hex(5)
    with session_scope() as s:
        org = admin.create_org(s, slug=slug, name=f"Org {slug}")
        key = admin.create_key(s, org=org, kind=KeyKind.FLOWESTATE, scopes=BOTH_SCOPES).key
        org_id = org.id
    tenant = Tenant(org_id=org_id, slug=slug, name=f"Org {slug}", key=key, account=None)  # type: ignore[arg-type]
    tenant.account = tenant.new_account()
    if sandbox_url:
        # The sandbox then insists on exactly this token: proves the worker decrypts the stored one.
        httpx.post(
            f"{sandbox_url}/_sandbox/accounts",
            json={"phone_number_id": tenant.account.phone_number_id, "token": tenant.account.token},
        ).raise_for_status()
    return tenant


class Api:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def send(self, tenant: Tenant, lead_id: uuid.UUID, message: str = "Hello", **extra: Any) -> httpx.Response:
        body = {"leadId": str(lead_id), "whatsappAccountId": str(tenant.account.id), "message": message, **extra}
        return self.http.post("/api/v1/whatsapp/send", json=body, headers=tenant.auth)

    def send_template(
        self, tenant: Tenant, lead_id: uuid.UUID, template: dict[str, Any], **headers: str
    ) -> httpx.Response:
        body = {"leadId": str(lead_id), "whatsappAccountId": str(tenant.account.id), "template": template}
        return self.http.post("/api/v1/whatsapp/send-template", json=body, headers={**tenant.auth, **headers})

    def message(self, tenant: Tenant, message_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/whatsapp/messages/{message_id}", headers=tenant.auth)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def wait_for(
        self, tenant: Tenant, message_id: str, statuses: tuple[str, ...] = ("sent", "failed"), timeout: float = 20
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            data = self.message(tenant, message_id)
            if data["status"] in statuses:
                return data
            if time.monotonic() > deadline:
                raise AssertionError(f"message {message_id} still {data['status']} after {timeout}s: {data}")
            time.sleep(0.1)


class Sandbox:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def received(self, phone_number_id: str) -> list[dict[str, Any]]:
        response = self.http.get("/_sandbox/messages", params={"phone_number_id": phone_number_id})
        response.raise_for_status()
        return response.json()["data"]

    def uploads(self, phone_number_id: str) -> list[dict[str, Any]]:
        response = self.http.get("/_sandbox/media", params={"phone_number_id": phone_number_id})
        response.raise_for_status()
        return response.json()["data"]

    def calls(self, phone_number_id: str) -> int:
        response = self.http.get("/_sandbox/messages", params={"phone_number_id": phone_number_id})
        return int(response.json()["calls"])

    def fault(self, phone_number_id: str, http_status: int, code: int | None, count: int = 1, **extra: Any) -> None:
        body = {"phone_number_id": phone_number_id, "http_status": http_status, "code": code, "count": count, **extra}
        self.http.post("/_sandbox/faults", json=body).raise_for_status()

    def register_template(self, phone_number_id: str, name: str, **template: Any) -> None:
        """Make Meta (the sandbox) hold a template for this number: language en_US, approved, unless told."""
        body = {"phone_number_id": phone_number_id, "name": name, "language": "en_US", **template}
        self.http.post("/_sandbox/templates", json=body).raise_for_status()

    def set_latency(self, latency_ms: float) -> None:
        self.http.put("/_sandbox/config", json={"latency_ms": latency_ms}).raise_for_status()
