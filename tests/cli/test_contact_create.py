"""`wadispatch contact create` with a number the organization already has: a one-line error naming
the contact that has it, however the number is written, and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.support.admin_cli import CliResult
from tests.support.admin_cli import wadispatch as in_process


def wadispatch(*args: str) -> subprocess.CompletedProcess[str]:
    # The test database's settings are in this process's environment (tests/conftest.py).
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=dict(os.environ), timeout=60
    )


@pytest.fixture
def org_slug(database: str) -> str:
    slug = "cc-" + uuid.uuid4().hex[:8]
    assert in_process("org", "create", "--slug", slug, "--name", "Contacts").returncode == 0
    return slug


def _create(slug: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return wadispatch("contact", "create", "--org", slug, *extra, "--json")


def _create_in_process(slug: str, *extra: str) -> CliResult:
    """The same command without a subprocess (a second each), where only its effect is checked."""
    return in_process("contact", "create", "--org", slug, *extra, "--json")


def _listed(slug: str) -> list[dict[str, object]]:
    return json.loads(in_process("contact", "list", "--org", slug, "--json").stdout)["data"]


def test_a_number_the_organization_has_is_refused_naming_its_contact(org_slug):
    """Only that is refused: another organization may have the number, and contacts without a
    number are not limited."""
    first = _create(org_slug, "--phone", "+18095550199", "--name", "Ana")
    assert first.returncode == 0, first.stderr
    existing = json.loads(first.stdout)["id"]

    again = _create(org_slug, "--phone", "1 (809) 555-0199", "--name", "Ana again")

    assert again.returncode == 1, again.stdout
    errors = [line for line in again.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--phone" in errors[0] and existing in errors[0], again.stderr
    assert "Traceback" not in again.stderr and "IntegrityError" not in again.stderr
    assert "5550199" not in again.stderr  # the operator's terminal (and its logs) get the id, not the number
    assert [row["id"] for row in _listed(org_slug)] == [existing]

    other = "cc-" + uuid.uuid4().hex[:8]
    assert in_process("org", "create", "--slug", other, "--name", "Other").returncode == 0
    assert _create_in_process(other, "--phone", "+18095550199").returncode == 0
    for _ in range(2):
        assert _create_in_process(org_slug, "--name", "No number yet").returncode == 0
    assert len(_listed(org_slug)) == 3 and len(_listed(other)) == 1
