"""Operator actions behind the CLI (and test fixtures). Each takes a session and does not commit."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, null, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import keywords, lifecycle
from models.app_secrets import announce_app_secret_change_after_commit
from models.contacts import insert_contact
from models.crypto import encrypt_token
from models.enums import AccountStatus, AccountType, KeyKind, MessageStatus, Priority, Scope, WindowPolicy
from models.keys import announce_key_change_after_commit, generate_key, hash_key
from models.opt_out import Source as OptOutSource
from models.opt_out import set_opted_out
from models.phones import normalize_e164, wa_id_of
from models.quiet_hours import QuietHoursError, parse_window, valid_zone
from models.tables import ApiKey, Contact, Message, Organization, Portfolio, WhatsappAccount
from wadispatch.signing import public_id_of_digest

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


class AdminError(ValueError):
    """A bad operator request: the message names the field and what is wrong."""


def org_by_slug(session: Session, slug: str) -> Organization:
    org = session.scalars(select(Organization).where(Organization.slug == slug)).one_or_none()
    if org is None:
        raise AdminError(f"--org: no organization with slug {slug!r}")
    return org


def create_org(session: Session, *, slug: str, name: str, provider: str = "meta") -> Organization:
    if not SLUG_RE.match(slug):
        raise AdminError("--slug: 2-63 characters of a-z, 0-9 and '-', starting with a letter or digit")
    if not name.strip():
        raise AdminError("--name: must not be empty")
    if session.scalars(select(Organization.id).where(Organization.slug == slug)).first():
        raise AdminError(f"--slug: an organization with slug {slug!r} already exists")
    org = Organization(slug=slug, name=name.strip(), whatsapp_provider=provider)
    session.add(org)
    session.flush()
    return org


@dataclass(frozen=True)
class CreatedKey:
    row: ApiKey
    key: str  # shown once, never stored


def create_key(session: Session, *, org: Organization, kind: KeyKind, scopes: list[str]) -> CreatedKey:
    known = {s.value for s in Scope}
    unknown = [s for s in scopes if s not in known]
    if unknown or not scopes:
        raise AdminError(f"--scopes: choose from {', '.join(sorted(known))} (got {', '.join(scopes) or 'none'})")
    key = generate_key(kind)
    digest = hash_key(key)
    row = ApiKey(
        org_id=org.id,
        prefix=kind.prefix,
        key_hash=digest,
        public_id=public_id_of_digest(digest),
        last4=key[-4:],
        scopes=sorted(set(scopes)),
    )
    session.add(row)
    session.flush()
    return CreatedKey(row=row, key=key)


def revoke_key(session: Session, key_id: uuid.UUID) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise AdminError(f"--id: no API key {key_id}")
    if row.revoked_at is None:
        row.revoked_at = func.now()
        session.flush()
        announce_key_change_after_commit(session)
    return row


def create_account(
    session: Session,
    *,
    org: Organization,
    account_type: str,
    phone: str | None,
    phone_number_id: str | None,
    token: str | None,
    status: str = AccountStatus.CONNECTED,
    mps: int = 80,
    member_id: uuid.UUID | None = None,
) -> WhatsappAccount:
    if account_type not in {t.value for t in AccountType}:
        raise AdminError("--type: must be organization or member")
    if status not in {s.value for s in AccountStatus}:
        raise AdminError("--status: must be connected, disconnected or halted")
    if mps < 1:
        raise AdminError("--mps: must be at least 1")
    if token is not None and not (token.isascii() and token.isprintable() and " " not in token and token):
        raise AdminError("--token: must be printable ASCII with no spaces (check for a pasted newline)")
    if phone_number_id is not None:
        phone_number_id = _phone_number_id_or_error(phone_number_id)
        _refuse_taken_phone_number_id(session, phone_number_id)
    if account_type == AccountType.MEMBER and member_id is None:
        member_id = uuid.uuid4()
    account = WhatsappAccount(
        org_id=org.id,
        account_type=account_type,
        member_id=member_id if account_type == AccountType.MEMBER else None,
        phone_number=_phone_or_error(phone, "--phone") if phone else None,
        meta_phone_number_id=phone_number_id,
        access_token_encrypted=encrypt_token(token) if token else None,
        status=status,
        mps=mps,
    )
    try:
        # A savepoint: when another `account create` took the id since the check above, the
        # session stays usable to name the account that has it.
        with session.begin_nested():
            session.add(account)
    except IntegrityError as error:
        if phone_number_id is None or PHONE_NUMBER_ID_CONSTRAINT not in str(error.orig):
            raise
        _refuse_taken_phone_number_id(session, phone_number_id)
        raise  # the holder is gone again: the constraint's error is all there is to say
    return account


PHONE_NUMBER_ID_CONSTRAINT = "uq_whatsapp_accounts_phone_number_id"


def _phone_number_id_or_error(value: str) -> str:
    value = value.strip()
    if not value or len(value) > 64 or not value.isprintable() or any(c.isspace() for c in value):
        raise AdminError("--phone-number-id: must be Meta's phone-number id, 1 to 64 characters without spaces")
    return value


def _refuse_taken_phone_number_id(session: Session, phone_number_id: str) -> None:
    """Meta's webhooks name the number by this id: a second account holding it, in any
    organization, would stop the owner's status updates. The owner is named by id only."""
    holder = session.scalars(
        select(WhatsappAccount).where(WhatsappAccount.meta_phone_number_id == phone_number_id)
    ).first()
    if holder is not None:
        raise AdminError(
            f"--phone-number-id: {phone_number_id} already belongs to account {holder.id} "
            f"(organization {holder.org_id}); each Meta phone-number id belongs to one account"
        )


def create_contact(
    session: Session, *, org: Organization, phone: str | None, name: str | None, opted_out: bool = False
) -> Contact:
    e164 = _phone_or_error(phone, "--phone") if phone else None
    inserted = insert_contact(
        session, org_id=org.id, phone_e164=e164, wa_id=wa_id_of(e164) if e164 else None, name=name, opted_out=opted_out
    )
    if not inserted.created:
        raise AdminError(f"--phone: the organization already has this number as contact {inserted.contact_id}")
    contact = session.get(Contact, inserted.contact_id)
    assert contact is not None
    return contact


def set_contact_opt_out(session: Session, contact_id: uuid.UUID, *, opted_out: bool) -> Contact:
    """Opt a contact out (from now; intake refuses it and the worker fails what was queued for it)
    or back in. Opting out again keeps the first opt-out's time. A change is reported to the
    organization's endpoints (``contact.opted_out`` / ``contact.opted_in``, source ``operator``)."""
    if set_opted_out(session, contact_id, opted_out=opted_out, source=OptOutSource.OPERATOR) is None:
        raise AdminError(f"--id: no contact {contact_id}")
    contact = session.get(Contact, contact_id)
    assert contact is not None
    session.refresh(contact)
    return contact


def list_contacts(session: Session, *, org: Organization, phone: str | None, limit: int) -> list[Contact]:
    """The organization's contacts, newest first; with ``phone``, only that number's."""
    query = select(Contact).where(Contact.org_id == org.id)
    if phone is not None:
        query = query.where(Contact.phone_e164 == _phone_or_error(phone, "--phone"))
    return list(session.scalars(query.order_by(Contact.created_at.desc(), Contact.id).limit(limit)))


def list_orgs(session: Session) -> list[Organization]:
    return list(session.scalars(select(Organization).order_by(Organization.slug)))


def set_account_status(session: Session, account_id: uuid.UUID, status: AccountStatus) -> list[uuid.UUID]:
    """Change an account's status; resuming returns the ids of its waiting messages to enqueue."""
    account = session.get(WhatsappAccount, account_id)
    if account is None:
        raise AdminError(f"--id: no WhatsApp account {account_id}")
    account.status = status
    account.halted_reason = "halted by an operator" if status == AccountStatus.HALTED else None
    session.flush()
    if status != AccountStatus.CONNECTED:
        return []
    # Everything that waited for the account — queued, and retrying (its backoff is forgiven: the
    # operator says go) — is due now; reserved slots were made for the old state. It waits in
    # Postgres for the pacers' feed (the caller wakes them): a backlog of thousands goes at the
    # account's pace, not into the broker at once (and quiet hours still hold bulk). A message
    # scheduled for later stays due at its sendAt. One handed to the broker before the halt may
    # be handed over again: only one claim can win.
    bulk = Message.priority == Priority.BULK.value
    scheduled = and_(Message.send_at.is_not(None), Message.send_at > func.now())
    waiting = session.execute(
        update(Message)
        .where(
            Message.account_id == account_id,
            Message.status.in_((MessageStatus.QUEUED, MessageStatus.RETRYING)),
        )
        .values(
            enqueued_at=null(),
            next_attempt_at=case((scheduled, Message.send_at), else_=func.now()),
            reserved_slot=None,
        )
        .returning(Message.id, Message.seq, or_(bulk, scheduled).label("later"))
    )
    # The transactional ones due now: what the operator's count reports.
    return [row.id for row in sorted(waiting, key=lambda r: r.seq) if not row.later]


def _phone_or_error(raw: str, field: str) -> str:
    try:
        return normalize_e164(raw)
    except ValueError as exc:
        raise AdminError(f"{field}: {exc}") from exc


# A value that clears the account's own app secret (its webhooks are then signed with the service's).
CLEAR = ""


def update_account(
    session: Session,
    account_id: uuid.UUID,
    *,
    mps: int | None,
    app_secret: str | None = None,
    portfolio_id: uuid.UUID | str | None = None,
    waba_id: str | None = None,
) -> WhatsappAccount:
    """``portfolio_id`` and ``waba_id``: None leaves them, CLEAR takes the account out of them."""
    account = session.get(WhatsappAccount, account_id)
    if account is None:
        raise AdminError(f"--id: no WhatsApp account {account_id}")
    if portfolio_id == CLEAR:
        account.portfolio_id = None
    elif portfolio_id is not None:
        portfolio = session.get(Portfolio, portfolio_id)
        # Another organization's portfolio is refused exactly like one that does not exist.
        if portfolio is None or portfolio.org_id != account.org_id:
            raise AdminError(f"--portfolio: the account's organization has no portfolio {portfolio_id}")
        account.portfolio_id = portfolio.id
    if waba_id is not None:
        if waba_id != CLEAR and not waba_id.isdigit():
            raise AdminError("--waba-id: Meta's WhatsApp Business Account id is digits")
        account.waba_id = waba_id or None
    if mps is not None:
        if mps < 1:
            raise AdminError("--mps: must be at least 1")
        # Workers read the rate at every claim: the change applies to the next send.
        account.mps = mps
    if app_secret is not None:
        if app_secret != CLEAR and (len(app_secret) < 16 or any(c.isspace() for c in app_secret)):
            raise AdminError("--app-secret: Meta app secrets are at least 16 characters, without spaces")
        account.app_secret_encrypted = encrypt_token(app_secret) if app_secret else None
        # API processes keep the secrets in memory: a new one must verify the very next delivery.
        announce_app_secret_change_after_commit(session)
    session.flush()
    return account


def requeue_messages(
    session: Session, *, status: str, since: datetime | None, org: Organization | None, limit: int
) -> list[uuid.UUID]:
    """Put finished messages back in the queue (an operator's retry). Their attempt history stays;
    their budgets start again."""
    if status != MessageStatus.FAILED:
        raise AdminError("--status: only failed messages can be retried")
    chosen = select(Message.id).where(Message.status == MessageStatus.FAILED)
    if since is not None:
        chosen = chosen.where(Message.failed_at >= since)
    if org is not None:
        chosen = chosen.where(Message.org_id == org.id)
    chosen = chosen.order_by(Message.seq).limit(limit)
    return lifecycle.operator_retry(session, chosen.scalar_subquery())


def update_org(
    session: Session,
    slug: str,
    *,
    quota: int | None,
    rate_limit: int | None,
    provider: str | None = None,
    window_policy: str | None = None,
    opt_out_words: WordsEdit | None = None,
    opt_in_words: WordsEdit | None = None,
    opt_out_reply: str | None = None,
    opt_in_reply: str | None = None,
    clear_opt_out_reply: bool = False,
    clear_opt_in_reply: bool = False,
    quiet_hours: str | None = None,
    timezone: str | None = None,
) -> Organization:
    """``quiet_hours``: ``HH:MM-HH:MM`` (the recipient's local time) or ``off``; ``timezone``: the
    IANA zone of recipients whose number names none (models/quiet_hours.py)."""
    org = org_by_slug(session, slug)
    if opt_out_words is not None or opt_in_words is not None:
        # Read the lists as they are now, and hold them: two edits made at once both count.
        session.refresh(org, with_for_update=True)
    if quota is not None:
        if quota < 0:
            raise AdminError("--quota: must be 0 or more units a month")
        org.monthly_quota = quota
    if rate_limit is not None:
        if rate_limit < 1:
            raise AdminError("--rate-limit: must be at least 1 request a minute")
        org.rate_limit_per_minute = rate_limit
        announce_key_change_after_commit(session)
    if provider is not None:
        org.whatsapp_provider = provider
    if window_policy is not None:
        if window_policy not in {p.value for p in WindowPolicy}:
            raise AdminError("--window-policy: must be send or refuse")
        org.window_policy = window_policy
    _update_words(org, opt_out_words, opt_in_words)
    for option, reply in (("--opt-out-reply", opt_out_reply), ("--opt-in-reply", opt_in_reply)):
        if reply is not None:
            _keywords_checked(keywords.check_reply, reply, option)
    if opt_out_reply is not None or clear_opt_out_reply:
        org.opt_out_reply = None if clear_opt_out_reply else opt_out_reply
    if opt_in_reply is not None or clear_opt_in_reply:
        org.opt_in_reply = None if clear_opt_in_reply else opt_in_reply
    if quiet_hours is not None:
        if quiet_hours.strip().lower() == QUIET_HOURS_OFF:
            org.quiet_hours_start = org.quiet_hours_end = None
        else:
            try:
                window = parse_window(quiet_hours)
            except QuietHoursError as exc:
                raise AdminError(f"--quiet-hours: {exc}") from None
            org.quiet_hours_start, org.quiet_hours_end = window.start, window.end
    if timezone is not None:
        try:
            org.default_timezone = valid_zone(timezone)
        except QuietHoursError as exc:
            raise AdminError(f"--timezone: {exc}") from None
    session.flush()
    return org


@dataclass(frozen=True)
class WordsEdit:
    """How `org update` changes one keyword list: the whole list (``replace``), then words added
    and words removed (models/keywords.py ``edit_words``)."""

    replace: list[str] | None = None
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)


def _update_words(org: Organization, opt_out_words: WordsEdit | None, opt_in_words: WordsEdit | None) -> None:
    out_words, in_words = list(org.opt_out_words), list(org.opt_in_words)
    if (edit := opt_out_words) is not None:
        out_words = keywords.edit_words(out_words, replace=edit.replace, add=edit.add, remove=edit.remove)
    if (edit := opt_in_words) is not None:
        in_words = keywords.edit_words(in_words, replace=edit.replace, add=edit.add, remove=edit.remove)
    _keywords_checked(keywords.check_lists, out_words, in_words)
    if out_words != org.opt_out_words:
        org.opt_out_words = out_words
    if in_words != org.opt_in_words:
        org.opt_in_words = in_words


def _keywords_checked(check: Callable[..., object], *args: Any) -> None:
    try:
        check(*args)
    except keywords.WordsError as error:
        raise AdminError(str(error)) from error


# What `org update --quiet-hours` takes to clear the window.
QUIET_HOURS_OFF = "off"


def list_messages(
    session: Session, *, org: Organization, status: str | None, error_code: str | None, limit: int
) -> list[dict[str, object]]:
    """An operator's view of recent messages: ids, status, error and times (no text, no phone)."""
    if limit < 1:
        raise AdminError("--limit: must be at least 1")
    query = select(Message).where(Message.org_id == org.id)
    if status is not None:
        query = query.where(Message.status == status)
    if error_code is not None:
        query = query.where(Message.error_code == error_code)
    rows = session.scalars(query.order_by(Message.created_at.desc()).limit(limit))
    return [
        {
            "id": str(m.id),
            "direction": m.direction,
            "status": m.status,
            "error_code": m.error_code,
            "error_title": m.error_title,
            "wamid": m.wamid,
            "created_at": m.created_at,
            "sent_at": m.sent_at,
            "failed_at": m.failed_at,
        }
        for m in rows
    ]


# ---- business portfolios and their messaging limit -----------------------------------------


def messaging_limit_or_error(raw: str) -> int | None:
    """``unlimited`` (None) or a positive number of unique users per 24 hours."""
    if raw.strip().lower() == "unlimited":
        return None
    try:
        limit = int(raw.replace(",", "").replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise AdminError(
            "--messaging-limit: a positive number of users (Meta's: 250, 2000, 10000, 100000) or unlimited"
        )
    return limit


def create_portfolio(session: Session, *, org: Organization, name: str, messaging_limit: int | None) -> Portfolio:
    if not name.strip():
        raise AdminError("--name: must not be empty")
    portfolio = Portfolio(org_id=org.id, name=name.strip()[:200], messaging_limit=messaging_limit)
    session.add(portfolio)
    session.flush()
    return portfolio


def portfolio_by_id(session: Session, portfolio_id: uuid.UUID) -> Portfolio:
    portfolio = session.get(Portfolio, portfolio_id)
    if portfolio is None:
        raise AdminError(f"ID: no portfolio {portfolio_id}")
    return portfolio


UNCHANGED = object()


def update_portfolio(
    session: Session, portfolio_id: uuid.UUID, *, name: str | None = None, messaging_limit: object = UNCHANGED
) -> Portfolio:
    """A limit set here is the operator's; Meta's business_capability_update sets it too."""
    portfolio = portfolio_by_id(session, portfolio_id)
    if name is not None:
        if not name.strip():
            raise AdminError("--name: must not be empty")
        portfolio.name = name.strip()[:200]
    released: list[uuid.UUID] = []
    if messaging_limit is not UNCHANGED:
        assert messaging_limit is None or isinstance(messaging_limit, int)
        before = portfolio.messaging_limit
        portfolio.messaging_limit = messaging_limit
        portfolio.limit_source = "operator"
        portfolio.limit_updated_at = func.now()
        if before is not None and (messaging_limit is None or messaging_limit > before):
            # Room for more users: what waited for a place asks again now.
            session.flush()
            released = lifecycle.release_limit_holds(session, portfolio.id)
    session.flush()
    session.refresh(portfolio)
    session.info.setdefault("released_messages", []).extend(released)
    return portfolio


def list_portfolios(session: Session, *, org: Organization | None) -> list[Portfolio]:
    query = select(Portfolio).order_by(Portfolio.created_at, Portfolio.id)
    if org is not None:
        query = query.where(Portfolio.org_id == org.id)
    return list(session.scalars(query))


def portfolio_accounts(session: Session, portfolio_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
    rows = session.execute(
        select(WhatsappAccount.portfolio_id, WhatsappAccount.id)
        .where(WhatsappAccount.portfolio_id.in_(portfolio_ids))
        .order_by(WhatsappAccount.created_at)
    ).all()
    accounts: dict[uuid.UUID, list[uuid.UUID]] = {p: [] for p in portfolio_ids}
    for portfolio_id, account_id in rows:
        if portfolio_id is not None:
            accounts[portfolio_id].append(account_id)
    return accounts
