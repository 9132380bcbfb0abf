"""Operator commands: organizations, API keys, WhatsApp accounts, contacts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy import select

from cli.output import SINCE, emit, fail
from models import admin
from models.db import session_scope
from models.enums import AccountStatus, KeyKind, MessageStatus, Scope, WindowPolicy
from models.keywords import WordsError, parse_words
from models.quiet_hours import DEFAULT_ZONE, window_of
from models.tables import ApiKey, Contact, Organization

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        fail(f"{field}: must be a UUID")
        raise


@click.group()
def org() -> None:
    """Organizations (tenants)."""


@org.command("create")
@click.option("--slug", required=True, help="FlowIQ tenantId, e.g. acme")
@click.option("--name", required=True)
@click.option("--provider", default="meta", show_default=True)
@json_option
def org_create(slug: str, name: str, provider: str, as_json: bool) -> None:
    try:
        with session_scope() as session:
            data = _org_data(admin.create_org(session, slug=slug, name=name, provider=provider))
    except admin.AdminError as exc:
        fail(str(exc))
    emit(data, as_json=as_json, human=f"organization {data['slug']} created: {data['id']}")


@org.command("update")
@click.option("--slug", required=True)
@click.option("--quota", type=int, help="monthly units (one per authenticated request)")
@click.option("--rate-limit", type=int, help="requests per minute per API key")
@click.option("--provider", help="whatsapp provider (meta, wati, ...)")
@click.option(
    "--window-policy",
    type=click.Choice([p.value for p in WindowPolicy]),
    help="free-form messages outside the 24-hour window: send (Meta decides) or refuse at intake",
)
@click.option("--opt-out-words", help="the whole opt-out list, comma-separated (replaces it; '' for none)")
@click.option("--add-opt-out-words", default="", help="opt-out words to add, comma-separated")
@click.option("--remove-opt-out-words", default="", help="opt-out words to remove, comma-separated")
@click.option("--opt-in-words", help="the whole opt-in list, comma-separated (replaces it; '' for none)")
@click.option("--add-opt-in-words", default="", help="opt-in words to add, comma-separated")
@click.option("--remove-opt-in-words", default="", help="opt-in words to remove, comma-separated")
@click.option("--opt-out-reply", help="text sent to confirm an opt-out by keyword")
@click.option("--clear-opt-out-reply", is_flag=True, help="send no confirmation of an opt-out")
@click.option("--opt-in-reply", help="text sent to confirm an opt-in by keyword")
@click.option("--clear-opt-in-reply", is_flag=True, help="send no confirmation of an opt-in")
@click.option(
    "--quiet-hours",
    metavar="HH:MM-HH:MM|off",
    help="hold bulk messages in this daily window of the recipient's local time (e.g. 21:00-08:00); off clears it",
)
@click.option(
    "--timezone",
    metavar="ZONE",
    help="IANA zone (e.g. Europe/Madrid) for recipients whose number spans several zones or names none (default UTC)",
)
@json_option
def org_update(
    slug: str,
    quota: int | None,
    rate_limit: int | None,
    provider: str | None,
    window_policy: str | None,
    opt_out_words: str | None,
    add_opt_out_words: str,
    remove_opt_out_words: str,
    opt_in_words: str | None,
    add_opt_in_words: str,
    remove_opt_in_words: str,
    opt_out_reply: str | None,
    clear_opt_out_reply: bool,
    opt_in_reply: str | None,
    clear_opt_in_reply: bool,
    quiet_hours: str | None,
    timezone: str | None,
    as_json: bool,
) -> None:
    """Change an organization's settings; keyword lists are edited whole (--opt-out-words) or a
    word at a time (--add-/--remove-), the whole list first."""
    for reply, cleared, name in (
        (opt_out_reply, clear_opt_out_reply, "opt-out"),
        (opt_in_reply, clear_opt_in_reply, "opt-in"),
    ):
        if reply is not None and cleared:
            fail(f"--{name}-reply and --clear-{name}-reply: choose one")
    try:
        out_edit = _words_edit("opt-out", opt_out_words, add_opt_out_words, remove_opt_out_words)
        in_edit = _words_edit("opt-in", opt_in_words, add_opt_in_words, remove_opt_in_words)
        with session_scope() as session:
            row = admin.update_org(
                session,
                slug,
                quota=quota,
                rate_limit=rate_limit,
                provider=provider,
                window_policy=window_policy,
                opt_out_words=out_edit,
                opt_in_words=in_edit,
                opt_out_reply=opt_out_reply,
                opt_in_reply=opt_in_reply,
                clear_opt_out_reply=clear_opt_out_reply,
                clear_opt_in_reply=clear_opt_in_reply,
                quiet_hours=quiet_hours,
                timezone=timezone,
            )
            data = _org_data(row)
    except (admin.AdminError, WordsError) as exc:
        fail(str(exc))
    emit(data, as_json=as_json, human=f"organization {slug}: {data}")


def _words_edit(name: str, whole: str | None, add: str, remove: str) -> admin.WordsEdit | None:
    if whole is None and not add and not remove:
        return None
    return admin.WordsEdit(
        replace=None if whole is None else parse_words(whole, f"--{name}-words"),
        add=parse_words(add, f"--add-{name}-words"),
        remove=parse_words(remove, f"--remove-{name}-words"),
    )


@org.command("list")
@json_option
def org_list(as_json: bool) -> None:
    """Every organization and its settings."""
    with session_scope() as session:
        rows = [_org_data(row) for row in admin.list_orgs(session)]
    lines = [f"{r['slug']:<24} {r['name']}" for r in rows]
    emit({"data": rows}, as_json=as_json, human="\n".join(lines) or "no organizations")


@org.command("show")
@click.option("--slug", required=True)
@json_option
def org_show(slug: str, as_json: bool) -> None:
    """An organization's settings (quota, rate limit, provider, window policy, opt-out keywords)."""
    """An organization's settings (quota, rate limit, provider, window policy, quiet hours, zone)."""
    try:
        with session_scope() as session:
            data = _org_data(admin.org_by_slug(session, slug))
    except admin.AdminError as exc:
        fail(str(exc))
    emit(data, as_json=as_json, human=f"organization {slug}: {data}")


def _org_data(row: Organization) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "slug": row.slug,
        "name": row.name,
        "provider": row.whatsapp_provider,
        "monthly_quota": row.monthly_quota,
        "rate_limit_per_minute": row.rate_limit_per_minute,
        "window_policy": row.window_policy,
        "opt_out_words": list(row.opt_out_words),
        "opt_in_words": list(row.opt_in_words),
        "opt_out_reply": row.opt_out_reply,
        "opt_in_reply": row.opt_in_reply,
        "quiet_hours": str(window) if (window := window_of(row.quiet_hours_start, row.quiet_hours_end)) else None,
        "timezone": row.default_timezone or DEFAULT_ZONE,
    }


@click.group()
def key() -> None:
    """API keys (shown once; stored as SHA-256)."""


@key.command("create")
@click.option("--org", "org_slug", required=True)
@click.option("--kind", type=click.Choice([k.value for k in KeyKind]), required=True, help="fe: fe_k_..., fiq: fiq_...")
@click.option("--scopes", default=f"{Scope.READ},{Scope.WRITE}", show_default=True)
@json_option
def key_create(org_slug: str, kind: str, scopes: str, as_json: bool) -> None:
    try:
        with session_scope() as session:
            created = admin.create_key(
                session,
                org=admin.org_by_slug(session, org_slug),
                kind=KeyKind(kind),
                scopes=[s.strip() for s in scopes.split(",") if s.strip()],
            )
            data = {"id": str(created.row.id), "key": created.key, "scopes": created.row.scopes}
    except admin.AdminError as exc:
        fail(str(exc))
    emit(data, as_json=as_json, human=f"key {data['id']} (shown once, store it now):\n{data['key']}")


@key.command("revoke")
@click.option("--id", "key_id", required=True)
@json_option
def key_revoke(key_id: str, as_json: bool) -> None:
    try:
        with session_scope() as session:
            row = admin.revoke_key(session, _uuid(key_id, "--id"))
            data = {"id": str(row.id), "revoked": True}
    except admin.AdminError as exc:
        fail(str(exc))
    emit(data, as_json=as_json, human=f"key {key_id} revoked")


@key.command("list")
@click.option("--org", "org_slug", required=True)
@json_option
def key_list(org_slug: str, as_json: bool) -> None:
    try:
        with session_scope() as session:
            org_row = admin.org_by_slug(session, org_slug)
            rows = session.scalars(select(ApiKey).where(ApiKey.org_id == org_row.id).order_by(ApiKey.created_at))
            keys: list[dict[str, Any]] = [
                {
                    "id": str(r.id),
                    "prefix": r.prefix,
                    "last4": r.last4,
                    "scopes": r.scopes,
                    "created_at": r.created_at,
                    "last_used_at": r.last_used_at,
                    "revoked_at": r.revoked_at,
                }
                for r in rows
            ]
    except admin.AdminError as exc:
        fail(str(exc))
    human = "\n".join(
        f"{k['id']}  {k['prefix']}…{k['last4']}  {','.join(k['scopes'])}  "
        f"created {_minute(k['created_at'])}  last used {_minute(k['last_used_at'])}  "
        f"{'revoked ' + _minute(k['revoked_at']) if k['revoked_at'] else 'active'}"
        for k in keys
    )
    emit({"data": keys}, as_json=as_json, human=human or "no keys")


def _minute(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%dT%H:%M") if at is not None else "never"


@click.group()
def account() -> None:
    """WhatsApp sender accounts."""


@account.command("create")
@click.option("--org", "org_slug", required=True)
@click.option("--type", "account_type", type=click.Choice(["organization", "member"]), default="organization")
@click.option("--phone", help="display number, E.164")
@click.option("--phone-number-id", help="Meta's phone-number id")
@click.option("--token", envvar="WADISPATCH_NEW_ACCOUNT_TOKEN", help="Meta access token (or the env variable)")
@click.option("--status", type=click.Choice([s.value for s in AccountStatus]), default="connected")
@click.option("--mps", type=int, default=80, show_default=True, help="messages per second Meta allows")
@json_option
def account_create(
    org_slug: str,
    account_type: str,
    phone: str | None,
    phone_number_id: str | None,
    token: str | None,
    status: str,
    mps: int,
    as_json: bool,
) -> None:
    try:
        with session_scope() as session:
            row = admin.create_account(
                session,
                org=admin.org_by_slug(session, org_slug),
                account_type=account_type,
                phone=phone,
                phone_number_id=phone_number_id,
                token=token,
                status=status,
                mps=mps,
            )
            data = {"id": str(row.id), "status": row.status, "phone_number": row.phone_number, "mps": row.mps}
    except admin.AdminError as exc:
        fail(str(exc))
    emit(data, as_json=as_json, human=f"account {data['id']} ({data['status']})")


def _set_status(account_id: str, status: AccountStatus, as_json: bool) -> None:
    from worker.pacer_wake import wake_pacers_now

    try:
        with session_scope() as session:
            waiting = admin.set_account_status(session, _uuid(account_id, "--id"), status)
    except admin.AdminError as exc:
        fail(str(exc))
    if status == AccountStatus.CONNECTED:
        wake_pacers_now()  # what waited is due now, in Postgres
    data = {"id": account_id, "status": status.value, "requeued": len(waiting)}
    emit(data, as_json=as_json, human=f"account {account_id} is {status.value}; {len(waiting)} messages re-queued")


@account.command("list")
@click.option("--org", "org_slug", required=True)
@json_option
def account_list(org_slug: str, as_json: bool) -> None:
    """The organization's sender accounts: status, halt reason, rate, and whether sends are paused
    (Meta throttled it, or the circuit breaker opened after repeated failures)."""
    from models.tables import WhatsappAccount

    try:
        with session_scope() as session:
            org_row = admin.org_by_slug(session, org_slug)
            rows = session.scalars(
                select(WhatsappAccount).where(WhatsappAccount.org_id == org_row.id).order_by(WhatsappAccount.created_at)
            ).all()
    except admin.AdminError as exc:
        fail(str(exc))
    pauses = _pauses([r.id for r in rows])
    accounts = [_account_data(r, pauses) for r in rows]
    human = "\n".join(_account_line(a) for a in accounts)
    emit({"data": accounts}, as_json=as_json, human=human or "no accounts")


@account.command("show")
@click.option("--id", "account_id", required=True)
@json_option
def account_show(account_id: str, as_json: bool) -> None:
    """One sender account: status, rate, pause, portfolio, WABA and Meta's quality report."""
    from models.tables import WhatsappAccount

    with session_scope() as session:
        row = session.get(WhatsappAccount, _uuid(account_id, "--id"))
        if row is None:
            fail(f"--id: no WhatsApp account {account_id}")
        assert row is not None
        data = _account_data(row, _pauses([row.id]))
    emit(data, as_json=as_json, human=_account_line(data))


def _account_data(r: Any, pauses: dict[uuid.UUID, dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": str(r.id),
        "org_id": str(r.org_id),
        "type": r.account_type,
        "phone_number": r.phone_number,
        "phone_number_id": r.meta_phone_number_id,
        "status": r.status,
        "halted_reason": r.halted_reason,
        "mps": r.mps,
        "portfolio_id": str(r.portfolio_id) if r.portfolio_id else None,
        "waba_id": r.waba_id,
        "quality": {
            "event": r.quality_event,
            "current_limit": r.quality_limit,
            "updated_at": r.quality_updated_at.isoformat() if r.quality_updated_at else None,
        },
        **pauses.get(r.id, {"paused_for_s": None, "breaker_openings": None}),
    }


def _account_line(a: dict[str, Any]) -> str:
    quality = a["quality"]
    return (
        f"{a['id']}  {a['phone_number'] or '-'}  {a['status']}  {a['mps']} mps"
        + (f"  halted: {a['halted_reason']}" if a["halted_reason"] else "")
        + (f"  paused {a['paused_for_s']:.1f} s" if a["paused_for_s"] else "")
        + (f"  breaker opened {a['breaker_openings']}x recently" if a["breaker_openings"] else "")
        + (f"  portfolio {a['portfolio_id']}" if a["portfolio_id"] else "")
        + (f"  waba {a['waba_id']}" if a["waba_id"] else "")
        + (
            f"  quality {quality['event']} ({quality['current_limit'] or '-'}) since {quality['updated_at']}"
            if quality["event"]
            else ""
        )
    )


def _pauses(account_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """Pause and breaker state from Redis; empty when Redis cannot be read (shown as unknown)."""
    import redis

    from models.redis_client import redis_from_url
    from models.settings import get_settings
    from worker.breaker import read_state
    from worker.rate_limit import RateLimiter

    client = redis_from_url(get_settings().redis_url, purpose="admin")
    limiter = RateLimiter(client)
    try:
        states = {account_id: read_state(client, limiter, account_id) for account_id in account_ids}
    except redis.RedisError:
        return {}
    finally:
        client.close()
    return {
        account_id: {
            "paused_for_s": round(max(state.account_paused_s, state.everyone_paused_s), 1),
            "breaker_openings": state.openings,
        }
        for account_id, state in states.items()
    }


@account.command("update")
@click.option("--id", "account_id", required=True)
@click.option("--mps", type=int, help="messages per second Meta allows this number (20, 80, 1000)")
@click.option(
    "--app-secret",
    envvar="WADISPATCH_ACCOUNT_APP_SECRET",
    help="the secret of the tenant's own Meta app, which signs this number's webhooks (or the env variable)",
)
@click.option("--clear-app-secret", is_flag=True, help="webhooks for this number are signed with the service's secret")
@click.option(
    "--status",
    type=click.Choice([AccountStatus.CONNECTED.value, AccountStatus.DISCONNECTED.value]),
    help="disconnected: intake refuses sends from it; connected: back in service, waiting messages handed over",
)
@click.option(
    "--portfolio", "portfolio", help="the business portfolio whose messaging limit it shares (none: leave it)"
)
@click.option("--waba-id", help="Meta's WhatsApp Business Account id, named by its management webhooks (none: clear)")
@json_option
def account_update(
    account_id: str,
    mps: int | None,
    app_secret: str | None,
    clear_app_secret: bool,
    status: str | None,
    portfolio: str | None,
    waba_id: str | None,
    as_json: bool,
) -> None:
    """Change an account's settings; workers pick them up at the next send, no restart."""
    from worker.pacer_wake import wake_pacers_now

    if app_secret is not None and clear_app_secret:
        fail("--app-secret and --clear-app-secret: choose one")
    waiting: list[uuid.UUID] = []
    try:
        with session_scope() as session:
            row = admin.update_account(
                session,
                _uuid(account_id, "--id"),
                mps=mps,
                app_secret=admin.CLEAR if clear_app_secret else app_secret,
                portfolio_id=_none_or(portfolio, lambda v: _uuid(v, "--portfolio")),
                waba_id=_none_or(waba_id, str),
            )
            if status is not None:
                waiting = admin.set_account_status(session, row.id, AccountStatus(status))
            data = {
                "id": str(row.id),
                "mps": row.mps,
                "status": row.status,
                "own_app_secret": row.app_secret_encrypted is not None,
                "portfolio_id": str(row.portfolio_id) if row.portfolio_id else None,
                "waba_id": row.waba_id,
                "requeued": len(waiting),
            }
    except admin.AdminError as exc:
        fail(str(exc))
    if status == AccountStatus.CONNECTED:
        wake_pacers_now()  # after the commit: what waited is due now, in Postgres
    emit(data, as_json=as_json, human=f"account {account_id}: {data['status']}, {data['mps']} mps")


def _none_or(value: str | None, parse: Any) -> Any:
    """None: not given; the word ``none``: clear it (admin.CLEAR); else the parsed value."""
    if value is None:
        return None
    return admin.CLEAR if value.strip().lower() == "none" else parse(value)


@account.command("resume")
@click.option("--id", "account_id", required=True)
@json_option
def account_resume(account_id: str, as_json: bool) -> None:
    """Put a halted (or disconnected) account back to connected and send what waited for it."""
    _set_status(account_id, AccountStatus.CONNECTED, as_json)


@account.command("halt")
@click.option("--id", "account_id", required=True)
@json_option
def account_halt(account_id: str, as_json: bool) -> None:
    """Stop sending from an account; its queued messages wait."""
    _set_status(account_id, AccountStatus.HALTED, as_json)


@click.group()
def portfolio() -> None:
    """Business portfolios: their numbers share Meta's messaging limit."""


_LIMIT_HELP = (
    "unique users reached outside their 24-hour window per moving 24 h: 250, 2000, 10000, 100000, or unlimited"
)


@portfolio.command("create")
@click.option("--org", "org_slug", required=True)
@click.option("--name", required=True)
@click.option("--messaging-limit", default="250", show_default=True, help=_LIMIT_HELP)
@json_option
def portfolio_create(org_slug: str, name: str, messaging_limit: str, as_json: bool) -> None:
    """Register a business portfolio (Meta starts a new one at 250); `account update --portfolio` joins it."""
    try:
        with session_scope() as session:
            row = admin.create_portfolio(
                session,
                org=admin.org_by_slug(session, org_slug),
                name=name,
                messaging_limit=admin.messaging_limit_or_error(messaging_limit),
            )
            data = _portfolio_data(row, [], None)
    except admin.AdminError as exc:
        fail(str(exc))
    emit(data, as_json=as_json, human=f"portfolio {data['id']} ({_limit_text(data['messaging_limit'])})")


@portfolio.command("update")
@click.argument("portfolio_id", metavar="ID")
@click.option("--messaging-limit", help=_LIMIT_HELP)
@click.option("--name")
@json_option
def portfolio_update(portfolio_id: str, messaging_limit: str | None, name: str | None, as_json: bool) -> None:
    """Change a portfolio's limit (or name); the next send reads it, no restart."""
    if messaging_limit is None and name is None:
        fail("--messaging-limit or --name: say what to change")
    try:
        with session_scope() as session:
            limit = admin.UNCHANGED if messaging_limit is None else admin.messaging_limit_or_error(messaging_limit)
            row = admin.update_portfolio(session, _uuid(portfolio_id, "ID"), name=name, messaging_limit=limit)
            released = list(session.info.get("released_messages", []))
            accounts = admin.portfolio_accounts(session, [row.id])[row.id]
            data = _portfolio_data(row, accounts, _portfolio_use([row.id]).get(row.id)) | {"released": len(released)}
    except admin.AdminError as exc:
        fail(str(exc))
    from worker.celery_app import enqueue_due

    for message_id in released:  # after the commit: they waited for a place, and there is room now
        enqueue_due(message_id)
    emit(data, as_json=as_json, human=_portfolio_line(data))


@portfolio.command("list")
@click.option("--org", "org_slug", help="only this organization's")
@json_option
def portfolio_list(org_slug: str | None, as_json: bool) -> None:
    """Each portfolio: its limit, who set it, its accounts, and its use in the moving window now."""
    try:
        with session_scope() as session:
            org_row = admin.org_by_slug(session, org_slug) if org_slug else None
            rows = admin.list_portfolios(session, org=org_row)
            accounts = admin.portfolio_accounts(session, [r.id for r in rows])
            use = _portfolio_use([r.id for r in rows])
            data = [_portfolio_data(r, accounts[r.id], use.get(r.id)) for r in rows]
    except admin.AdminError as exc:
        fail(str(exc))
    emit({"data": data}, as_json=as_json, human="\n".join(_portfolio_line(p) for p in data) or "no portfolios")


def _portfolio_use(portfolio_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Users counted in the window now, from Redis; empty when Redis cannot be read (unknown)."""
    import redis

    from models.redis_client import redis_from_url
    from models.settings import get_settings
    from worker.messaging_limit import MessagingLimits

    settings = get_settings()
    client = redis_from_url(settings.redis_url, purpose="admin")
    try:
        return MessagingLimits(client, settings.messaging_limit_window_s).used(portfolio_ids)
    except redis.RedisError:
        return {}
    finally:
        client.close()


def _portfolio_data(row: Any, accounts: list[uuid.UUID], used: int | None) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "org_id": str(row.org_id),
        "name": row.name,
        "messaging_limit": row.messaging_limit,
        "limit_source": row.limit_source,
        "limit_updated_at": row.limit_updated_at.isoformat() if isinstance(row.limit_updated_at, datetime) else None,
        "used": used,
        "accounts": [str(a) for a in accounts],
    }


def _limit_text(limit: int | None) -> str:
    return "unlimited" if limit is None else f"limit {limit:,} users / 24 h"


def _portfolio_line(p: dict[str, Any]) -> str:
    used = "?" if p["used"] is None else f"{p['used']:,}"
    return (
        f"{p['id']}  {p['name']}  {used} of {_limit_text(p['messaging_limit'])} (set by {p['limit_source']})"
        f"  {len(p['accounts'])} accounts"
    )


@click.group()
def contact() -> None:
    """Contacts (FlowEstate leads)."""


@contact.command("create")
@click.option("--org", "org_slug", required=True)
@click.option("--phone", help="E.164, e.g. +18095551234")
@click.option("--name")
@click.option("--opted-out", is_flag=True)
@json_option
def contact_create(org_slug: str, phone: str | None, name: str | None, opted_out: bool, as_json: bool) -> None:
    try:
        with session_scope() as session:
            row = admin.create_contact(
                session, org=admin.org_by_slug(session, org_slug), phone=phone, name=name, opted_out=opted_out
            )
            data = {"id": str(row.id), "phone": row.phone_e164, "name": row.name, "opted_out": opted_out}
    except admin.AdminError as exc:
        fail(str(exc))
    emit(data, as_json=as_json, human=f"contact {data['id']}")


@contact.command("update")
@click.option("--id", "contact_id", required=True)
@click.option(
    "--opted-out/--opted-in", "opted_out", default=None, help="the contact asked not to be messaged / asked again"
)
@json_option
def contact_update(contact_id: str, opted_out: bool | None, as_json: bool) -> None:
    """Opt a contact out (intake refuses sends to it; the worker re-checks before each send) or back in."""
    if opted_out is None:
        fail("--opted-out or --opted-in: say which")
    try:
        with session_scope() as session:
            row = admin.set_contact_opt_out(session, _uuid(contact_id, "--id"), opted_out=bool(opted_out))
            data = _contact_data(row)
    except admin.AdminError as exc:
        fail(str(exc))
    emit(data, as_json=as_json, human=f"contact {contact_id}: {'opted out' if opted_out else 'opted in'}")


@contact.command("list")
@click.option("--org", "org_slug", required=True)
@click.option("--phone", help="only this number (E.164)")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
def contact_list(org_slug: str, phone: str | None, limit: int, as_json: bool) -> None:
    """The organization's contacts, newest first."""
    try:
        with session_scope() as session:
            org_row = admin.org_by_slug(session, org_slug)
            rows = [_contact_data(row) for row in admin.list_contacts(session, org=org_row, phone=phone, limit=limit)]
    except admin.AdminError as exc:
        fail(str(exc))
    lines = [f"{r['id']}  {r['phone'] or '-':<16} {'opted out' if r['opted_out'] else ''}" for r in rows]
    emit({"data": rows}, as_json=as_json, human="\n".join(lines) or "no contacts")


def _contact_data(row: Contact) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "phone": row.phone_e164,
        "name": row.name,
        "opted_out": row.opted_out_at is not None,
        "opted_out_at": row.opted_out_at.isoformat() if row.opted_out_at else None,
        "last_inbound_at": row.last_inbound_at.isoformat() if row.last_inbound_at else None,
        "created_at": row.created_at.isoformat(),
    }


@click.group()
def messages() -> None:
    """Messages."""


@messages.command("retry")
@click.option("--status", default="failed", show_default=True, help="which messages (only failed)")
@click.option("--since", type=SINCE, help="failed at or after this time (UTC), e.g. 2026-11-01T00:00")
@click.option("--org", "org_slug", help="only this organization")
@click.option("--limit", type=int, default=10000, show_default=True)
@json_option
def messages_retry(status: str, since: datetime | None, org_slug: str | None, limit: int, as_json: bool) -> None:
    """Re-queue failed messages (they may reach Meta again: DELIVERY_UNCERTAIN ones included)."""
    from worker.pacer_wake import wake_pacers_now

    try:
        with session_scope() as session:
            org_row = admin.org_by_slug(session, org_slug) if org_slug else None
            since_utc = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since
            ids = admin.requeue_messages(session, status=status, since=since_utc, org=org_row, limit=limit)
    except admin.AdminError as exc:
        fail(str(exc))
    wake_pacers_now()  # after the commit: they wait in Postgres, due now
    emit({"requeued": len(ids)}, as_json=as_json, human=f"{len(ids)} messages re-queued")


@messages.command("list")
@click.option("--org", "org_slug", required=True)
@click.option("--status", type=click.Choice([s.value for s in MessageStatus]), help="only this status")
@click.option("--error-code", help="only this error code, e.g. DELIVERY_UNCERTAIN or 131047")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
def messages_list(org_slug: str, status: str | None, error_code: str | None, limit: int, as_json: bool) -> None:
    """The organization's latest messages (ids, status, error, times; never their text or phone)."""
    try:
        with session_scope() as session:
            rows = admin.list_messages(
                session, org=admin.org_by_slug(session, org_slug), status=status, error_code=error_code, limit=limit
            )
    except admin.AdminError as exc:
        fail(str(exc))
    lines = [
        f"{row['id']}  {row['status']:<9} {row['error_code'] or '-':<20} created {row['created_at']:%Y-%m-%d %H:%M:%S}"
        for row in rows
    ]
    emit({"data": rows}, as_json=as_json, human="\n".join(lines) or "no messages")
