"""The documentation's tables come from the code (scripts/docs_tables.py, put in place at build
time by scripts/docs_hooks.py), so they cannot drift: these tests say every transition and every
setting is there, that every setting explains itself, and that no page names a setting the code
does not have. Pure: no stack, no build."""

from __future__ import annotations

import re
from pathlib import Path

from models.lifecycle.transitions import TRANSITIONS
from models.settings import Settings
from scripts import docs_tables

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# WADISPATCH_* names the documentation may use that are not settings of models/settings.py.
NOT_SETTINGS = {
    "WADISPATCH_TEST_REDIS_DB",  # the test suite's Redis database base (tests/conftest.py)
    "WADISPATCH_NEW_ACCOUNT_TOKEN",  # `account create`'s --token from the environment (cli/admin.py)
    "WADISPATCH_ACCOUNT_APP_SECRET",  # `account update`'s --app-secret from the environment
}


def rendered(page: str) -> str:
    return docs_tables.expand((DOCS / page).read_text(encoding="utf-8"))


def table_rows(markdown: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split(" | ")]
        for line in markdown.splitlines()
        if line.startswith("| ")
    ]


def test_the_lifecycle_page_shows_every_transition_of_the_code():
    page = DOCS / "lifecycle.md"
    assert docs_tables.marker("lifecycle-transitions") in page.read_text(encoding="utf-8")
    rows = {row[0]: row for row in table_rows(rendered("lifecycle.md")) if len(row) == 4}
    for transition in TRANSITIONS:
        assert transition.name in rows, transition.name
        name, moves, who, guard = rows[transition.name]
        for status in (*transition.sources, *transition.targets):
            assert f"`{status.value}`" in moves or moves.endswith("the same"), (name, moves)
        assert who == transition.who and guard == " ".join(transition.guard.split())


def test_the_table_says_the_same_when_a_status_stays():
    (row,) = [r for r in table_rows(docs_tables.transitions_markdown()) if r[0] == "release hold"]
    assert row[1] == "`queued`/`retrying` → the same"
    (accept,) = [r for r in table_rows(docs_tables.transitions_markdown()) if r[0] == "accept"]
    assert accept[1] == "— → `queued`"


def test_every_setting_has_a_meaning():
    missing = [name for name, info in Settings.model_fields.items() if not (info.description or "").strip()]
    assert missing == [], f"add a description= to these settings (docs/configuration.md shows it): {missing}"


def test_the_configuration_page_lists_every_setting_with_its_default():
    page = DOCS / "configuration.md"
    assert docs_tables.marker("settings") in page.read_text(encoding="utf-8")
    rows = {row[0].strip("`"): row for row in table_rows(rendered("configuration.md")) if len(row) == 3}
    for name, info in Settings.model_fields.items():
        env = "WADISPATCH_" + name.upper()
        assert env in rows, env
        assert rows[env][2] == " ".join((info.description or "").split()).replace("|", "\\|")
    assert rows["WADISPATCH_LEASE_S"][1] == "`120`"
    assert rows["WADISPATCH_RETENTION_MESSAGE_CONTENT_DAYS"][1] == "unset"
    assert rows["WADISPATCH_SECRET_KEY"][1] == "a development value (production refuses it)"
    assert rows["WADISPATCH_CALLBACK_RETRY_SCHEDULE_S"][1] == "`[5, 300, 1800, 7200, 18000, 36000, 36000]`"


def test_no_page_names_a_setting_the_code_does_not_have():
    known = {"WADISPATCH_" + name.upper() for name in Settings.model_fields} | NOT_SETTINGS
    pages = [*DOCS.glob("*.md"), ROOT / "README.md"]
    unknown = set()
    for page in pages:
        for name in re.findall(r"WADISPATCH_[A-Z0-9_]*[A-Z0-9]", page.read_text(encoding="utf-8")):
            # `WADISPATCH_S3_*` and `WADISPATCH_BULK_FEED_S` / `_MIN` style families name their first member.
            if name not in known and not any(k.startswith(name + "_") for k in known):
                unknown.add(f"{page.name}: {name}")
    assert unknown == set()


def test_the_event_callbacks_page_documents_every_event_type():
    from models.events import EVENT_TYPES

    page = (DOCS / "event-callbacks.md").read_text(encoding="utf-8")
    rows = " ".join(row[0] for row in table_rows(page))
    assert [event for event in EVENT_TYPES if f"`{event}`" not in rows] == []


def test_readme_and_changelog_point_only_inside_the_repository():
    """Their relative links name files of the checkout (the site checks its own links when built)."""
    for name in ("README.md", "CHANGELOG.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
        local = [t for t in targets if not re.match(r"^[a-z]+:", t)]
        assert [t for t in local if not (ROOT / t).is_file()] == [], name
        assert "DESIGN.md" not in text
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_nothing_in_the_repository_cites_the_design_notes_it_does_not_hold():
    """The architecture page replaced them (docs/architecture.md)."""
    skip = {".venv", "node_modules", "site", "wadispatch.egg-info", ".git", ".mypy_cache", ".ruff_cache"}
    suffixes = {".py", ".md", ".yml", ".yaml", ".toml", ".sh", ".json", ".ini", ".cfg", ".txt"}
    citing = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if skip & set(relative.parts) or not path.is_file() or path == Path(__file__):
            continue
        readable = path.suffix in suffixes or path.name in ("Makefile", "Dockerfile")
        if readable and "DESIGN" + ".md" in path.read_text(encoding="utf-8", errors="replace"):
            citing.append(str(relative))
    assert citing == []
