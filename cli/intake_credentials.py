"""`wadispatch intake-credential`: publish-only broker credentials for upstream services."""

from __future__ import annotations

import click

from cli.output import emit, fail
from models.settings import get_settings

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group("intake-credential")
def intake_credential() -> None:
    """Credentials that may only publish submissions to the intake queue (WADISPATCH_INTAKE_BROKER_URL)."""


def _store():  # type: ignore[no-untyped-def]
    from worker.intake_credentials import store_for

    try:
        return store_for(get_settings().intake_broker)
    except ValueError as exc:
        fail(str(exc))


@intake_credential.command("create")
@click.option("--org", "org_slug", required=True, help="the organization's slug (its name is in the user's)")
@json_option
def create(org_slug: str, as_json: bool) -> None:
    """Mint one; its URL (with the password) is shown once."""
    try:
        made = _store().create(org_slug)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    except Exception as exc:  # the broker refused (e.g. the service's own user may not manage users)
        fail(f"the broker refused to make the credential ({type(exc).__name__}: {exc})")
    data = {"name": made.name, "org": made.org, "url": made.url}
    human = f"intake credential {made.name} (shown once, hand it to the upstream):\n{made.url}"
    emit(data, as_json=as_json, human=human)


@intake_credential.command("list")
@click.option("--org", "org_slug", default=None, help="only this organization's")
@json_option
def list_(org_slug: str | None, as_json: bool) -> None:
    """The credentials that exist (their URLs without passwords)."""
    found = _store().list(org_slug)
    rows = [{"name": c.name, "org": c.org, "url": c.url} for c in found]
    human = "\n".join(f"{c.name}  {c.url}" for c in found) or "no intake credentials"
    emit({"credentials": rows}, as_json=as_json, human=human)


@intake_credential.command("revoke")
@click.option("--name", required=True, help="the credential's name (intake.<org>.<id>)")
@json_option
def revoke(name: str, as_json: bool) -> None:
    """Remove one; its connections are closed."""
    if not _store().revoke(name):
        fail(f"no intake credential named {name!r}")
    emit({"name": name, "revoked": True}, as_json=as_json, human=f"intake credential {name} revoked")
