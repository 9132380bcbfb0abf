"""`wadispatch account create` with a Meta phone-number id another account already holds, in any
organization: a one-line error naming the account that has it, a non-zero exit, nothing written
(Meta's webhooks name the number by this id; two holders would stop the owner's updates)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import func, select

from models.db import session_scope
from models.tables import WhatsappAccount
from tests.support.admin_cli import wadispatch as in_process
from tests.support.tenants import random_phone_number_id

TOKEN = "tok-secret-" + uuid.uuid4().hex


def wadispatch(*args: str) -> subprocess.CompletedProcess[str]:
    # The test database's settings are in this process's environment (tests/conftest.py).
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=dict(os.environ), timeout=60
    )


def _org(name: str) -> str:
    slug = "ac-" + uuid.uuid4().hex[:8]
    assert in_process("org", "create", "--slug", slug, "--name", name).returncode == 0
    return slug


def _holders(number_id: str) -> int:
    with session_scope() as s:
        query = select(func.count()).where(WhatsappAccount.meta_phone_number_id == number_id)
        return s.scalar(query) or 0


@pytest.fixture
def two_orgs(database: str) -> tuple[str, str]:
    return _org("Owner"), _org("Mistyped")


def test_a_phone_number_id_held_in_another_organization_is_refused_naming_its_account(two_orgs):
    owner, other = two_orgs
    number_id = random_phone_number_id()
    first = in_process("account", "create", "--org", owner, "--phone-number-id", number_id, "--token", "t", "--json")
    assert first.returncode == 0, first.stderr
    existing = json.loads(first.stdout)["id"]

    again = wadispatch(
        "account", "create", "--org", other, "--phone-number-id", f" {number_id} ", "--token", TOKEN, "--json"
    )

    assert again.returncode == 1, again.stdout
    errors = [line for line in again.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, again.stderr
    assert "--phone-number-id" in errors[0] and existing in errors[0] and number_id in errors[0], errors
    assert "Traceback" not in again.stderr and "IntegrityError" not in again.stderr
    assert TOKEN not in again.stderr + again.stdout
    assert _holders(number_id) == 1


def test_the_same_organization_is_refused_too_and_accounts_without_an_id_are_not_limited(two_orgs):
    owner, _ = two_orgs
    number_id = random_phone_number_id()
    base = ("account", "create", "--org", owner, "--token", "t")
    assert in_process(*base, "--phone-number-id", number_id).returncode == 0
    refused = in_process(*base, "--phone-number-id", number_id)
    assert refused.returncode == 1 and "--phone-number-id" in refused.stderr
    for _ in range(2):
        assert in_process(*base).returncode == 0
    assert _holders(number_id) == 1


@pytest.mark.parametrize("bad", ["", "   ", "12 34", "9" * 65])
def test_a_malformed_phone_number_id_is_refused_naming_the_rule(two_orgs, bad):
    owner, _ = two_orgs
    refused = in_process("account", "create", "--org", owner, "--phone-number-id", bad, "--token", "t")
    assert refused.returncode == 1, refused.stdout
    assert "--phone-number-id: must be Meta's phone-number id, 1 to 64 characters without spaces" in refused.stderr
