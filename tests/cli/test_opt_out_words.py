"""`wadispatch org update` manages an organization's opt-out and opt-in keywords and the replies
that confirm them (docs/delivery-policy.md, "Opt-out keywords"); `org show` shows them. One subprocess proves the
real command; the rest run the same click commands in-process (tests/support/admin_cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support.admin_cli import wadispatch


@pytest.fixture
def org_slug(stack) -> str:
    slug = "kw-" + str(time.monotonic_ns())[-9:]
    assert wadispatch("org", "create", "--slug", slug, "--name", "Keywords", env=stack.env).returncode == 0
    return slug


def _update(stack, slug: str, *args: str) -> dict[str, Any]:
    done = wadispatch("org", "update", "--slug", slug, *args, "--json", env=stack.env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_an_organization_starts_with_the_default_words_and_no_replies(stack, org_slug):
    shown = subprocess.run(
        [sys.executable, "-m", "cli", "org", "show", "--slug", org_slug, "--json"],
        capture_output=True,
        text=True,
        env=stack.env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["opt_out_words"] == ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"]
    assert data["opt_in_words"] == ["START", "UNSTOP"]
    assert (data["opt_out_reply"], data["opt_in_reply"]) == (None, None)


def test_words_are_replaced_added_and_removed(stack, org_slug):
    added = _update(stack, org_slug, "--add-opt-out-words", "BAJA,Alto, stop!", "--remove-opt-out-words", "Cancel")
    assert added["opt_out_words"] == ["STOP", "STOPALL", "UNSUBSCRIBE", "END", "QUIT", "BAJA", "Alto"]
    replaced = _update(stack, org_slug, "--opt-out-words", "Stop, Baja ,Arrêt", "--add-opt-in-words", "ALTA")
    assert replaced["opt_out_words"] == ["Stop", "Baja", "Arrêt"]
    assert replaced["opt_in_words"] == ["START", "UNSTOP", "ALTA"]
    # The whole list is applied first, then what is added and removed.
    both = _update(
        stack, org_slug, "--opt-in-words", "start", "--add-opt-in-words", "alta", "--remove-opt-in-words", "START"
    )
    assert both["opt_in_words"] == ["alta"]
    # Other settings are left as they were.
    assert (both["opt_out_words"], both["window_policy"]) == (["Stop", "Baja", "Arrêt"], "send")
    human = wadispatch("org", "show", "--slug", org_slug, env=stack.env).stdout
    assert "'opt_out_words': ['Stop', 'Baja', 'Arrêt']" in human


def test_replies_are_set_and_cleared(stack, org_slug):
    set_both = _update(stack, org_slug, "--opt-out-reply", "Done. Write START to come back.", "--opt-in-reply", "Hi!")
    assert (set_both["opt_out_reply"], set_both["opt_in_reply"]) == ("Done. Write START to come back.", "Hi!")
    cleared = _update(stack, org_slug, "--clear-opt-in-reply")
    assert (cleared["opt_out_reply"], cleared["opt_in_reply"]) == ("Done. Write START to come back.", None)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--add-opt-in-words", "stop"], "--opt-in-words: STOP is an opt-out word too"),
        (["--add-opt-out-words", "x" * 65], "--add-opt-out-words: 'xxxxxxxxxxxxxxxxxxxx'… is longer than 64"),
        (["--opt-out-words", "STOP,?!"], "--opt-out-words: '?!' has no letters or digits"),
        (["--opt-out-reply", "   "], "--opt-out-reply: must not be blank"),
        (["--opt-in-reply", "x" * 4097], "--opt-in-reply: at most 4096 characters"),
        (["--opt-out-reply", "Bye", "--clear-opt-out-reply"], "--opt-out-reply and --clear-opt-out-reply: choose one"),
    ],
)
def test_bad_words_and_replies_are_refused_naming_the_option(stack, org_slug, args, says):
    done = wadispatch("org", "update", "--slug", org_slug, *args, env=stack.env)
    assert done.returncode == 1 and f"Error: {says}" in done.stderr, done.stderr
    # Nothing changed.
    shown = json.loads(wadispatch("org", "show", "--slug", org_slug, "--json", env=stack.env).stdout)
    assert shown["opt_in_words"] == ["START", "UNSTOP"] and shown["opt_out_reply"] is None
