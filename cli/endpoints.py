"""`wadispatch endpoint ...`: an organization's event callback endpoints (Standard Webhooks)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import click

from cli.output import SINCE, emit, fail
from models import admin, endpoints
from models.db import session_scope
from models.events import EVENT_TYPES

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def endpoint() -> None:
    """Event callbacks to upstream services (message.sent, message.failed, message.received, ...)."""


@endpoint.command("add")
@click.option("--org", "org_slug", required=True)
@click.option("--url", required=True, help="https URL that receives the signed events")
@click.option("--events", help=f"comma-separated (default: all): {', '.join(EVENT_TYPES)}")
@json_option
def endpoint_add(org_slug: str, url: str, events: str | None, as_json: bool) -> None:
    """Add an endpoint; prints its whsec_ signing secret once."""
    chosen = [e.strip() for e in events.split(",") if e.strip()] if events is not None else None
    try:
        with session_scope() as session:
            org = admin.org_by_slug(session, org_slug)
            created = endpoints.create_endpoint(session, org_id=org.id, url=url, events=chosen)
            data = {**endpoints.view(session, created.row), "secret": created.secret}
    except (admin.AdminError, endpoints.EndpointError) as exc:
        fail(str(exc))
    human = (
        f"endpoint {data['id']} for {data['url']} ({', '.join(data['events'])})\n"
        f"signing secret (shown once; verify webhook-signature with it): {data['secret']}"
    )
    emit(data, as_json=as_json, human=human)


@endpoint.command("list")
@click.option("--org", "org_slug", required=True)
@json_option
def endpoint_list(org_slug: str, as_json: bool) -> None:
    """The organization's endpoints: status (disabled, and why), last success, deliveries."""
    try:
        with session_scope() as session:
            org = admin.org_by_slug(session, org_slug)
            rows = [endpoints.view(session, row) for row in endpoints.endpoints_of(session, org.id)]
    except admin.AdminError as exc:
        fail(str(exc))
    lines = [
        f"{r['id']}  {r['status']:<8} {r['url']}  delivered {r['deliveries']['delivered']}, pending "
        f"{r['deliveries']['pending']}, failed {r['deliveries']['failed']}"
        + (f"  ({r['disabledReason']})" if r["disabledReason"] else "")
        for r in rows
    ]
    emit({"data": rows}, as_json=as_json, human="\n".join(lines) or "no endpoints")


@endpoint.command("remove")
@click.option("--org", "org_slug", required=True)
@click.option("--id", "endpoint_id", required=True)
@json_option
def endpoint_remove(org_slug: str, endpoint_id: str, as_json: bool) -> None:
    """Remove an endpoint (its pending events are not sent)."""
    try:
        with session_scope() as session:
            org = admin.org_by_slug(session, org_slug)
            endpoints.remove_endpoint(session, org.id, _uuid(endpoint_id))
    except (admin.AdminError, endpoints.EndpointError) as exc:
        fail(str(exc))
    emit({"removed": endpoint_id}, as_json=as_json, human=f"endpoint {endpoint_id} removed")


@endpoint.command("enable")
@click.option("--org", "org_slug", required=True)
@click.option("--id", "endpoint_id", required=True)
@json_option
def endpoint_enable(org_slug: str, endpoint_id: str, as_json: bool) -> None:
    """Enable a disabled endpoint again (its pending events are tried again)."""
    try:
        with session_scope() as session:
            org = admin.org_by_slug(session, org_slug)
            data = endpoints.view(session, endpoints.enable_endpoint(session, org.id, _uuid(endpoint_id)))
    except (admin.AdminError, endpoints.EndpointError) as exc:
        fail(str(exc))
    emit(data, as_json=as_json, human=f"endpoint {endpoint_id} active")


@endpoint.command("replay")
@click.option("--org", "org_slug", required=True)
@click.option("--id", "endpoint_id", required=True)
@click.option("--since", required=True, type=SINCE, help="UTC, e.g. 2026-12-02T09:00")
@json_option
def endpoint_replay(org_slug: str, endpoint_id: str, since: datetime, as_json: bool) -> None:
    """Deliver again every event of the endpoint since a time (same webhook-id: receivers dedupe)."""
    try:
        with session_scope() as session:
            org = admin.org_by_slug(session, org_slug)
            count = endpoints.replay(session, org.id, _uuid(endpoint_id), since.replace(tzinfo=UTC))
    except (admin.AdminError, endpoints.EndpointError) as exc:
        fail(str(exc))
    emit({"replayed": count}, as_json=as_json, human=f"{count} events will be delivered again")


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise endpoints.EndpointError("--id: must be a UUID") from None
