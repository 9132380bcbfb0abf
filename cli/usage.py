"""`wadispatch usage`: what Meta says an organization's messages cost in a month, per sender
account and pricing category (models/pricing.py counts each message once per category)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import click

from cli.output import emit, fail
from models import admin
from models.pricing import Usage, usage

_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")


@click.command("usage")
@click.option("--org", "org_slug", required=True)
@click.option("--month", help="YYYY-MM, UTC (default: this month)")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def usage_command(org_slug: str, month: str | None, as_json: bool) -> None:
    """Billable and non-billable messages per account and category, as Meta priced them."""
    from models.db import session_scope

    chosen = month if month is not None else datetime.now(UTC).strftime("%Y-%m")
    if not _MONTH.fullmatch(chosen):
        fail(f"--month: {chosen!r} is not a month; write it as YYYY-MM, e.g. 2026-12")
    try:
        with session_scope() as session:
            org = admin.org_by_slug(session, org_slug)
            rows = usage(session, org.id, chosen)
    except admin.AdminError as exc:
        fail(str(exc))
    data = usage_data(org_slug, chosen, rows)
    emit(data, as_json=as_json, human=human_usage(data))


def usage_data(org_slug: str, month: str, rows: list[Usage]) -> dict[str, Any]:
    accounts: dict[str, dict[str, Any]] = {}
    for row in rows:
        account = accounts.setdefault(
            str(row.account_id),
            {"id": str(row.account_id), "phone": row.phone_number, "billable": 0, "non_billable": 0, "categories": {}},
        )
        account["categories"][row.category] = {"billable": row.billable, "non_billable": row.non_billable}
        account["billable"] += row.billable
        account["non_billable"] += row.non_billable
    listed = list(accounts.values())
    return {
        "org": org_slug,
        "month": month,
        "billable": sum(a["billable"] for a in listed),
        "non_billable": sum(a["non_billable"] for a in listed),
        "accounts": listed,
    }


def human_usage(data: dict[str, Any]) -> str:
    lines = [f"{data['org']} {data['month']}: {data['billable']} billable, {data['non_billable']} not billable"]
    for account in data["accounts"]:
        lines.append(f"  account {account['id']} {account['phone'] or '-'}")
        for category, counts in account["categories"].items():
            lines.append(
                f"    {category:<28} billable {counts['billable']:>9}  not billable {counts['non_billable']:>9}"
            )
    if not data["accounts"]:
        lines.append("  no priced messages (Meta's status webhooks carry the pricing)")
    return "\n".join(lines)
