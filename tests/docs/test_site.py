"""The documentation site as `make docs` builds it (`mkdocs build --strict`): it builds without a
warning (no broken link, anchor or page outside the nav), every page works offline (nothing it
loads comes from another host: no web fonts, no CDN), and what it takes from the code is there
(the OpenAPI document, the generated tables)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from models.lifecycle.transitions import TRANSITIONS
from models.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# What a page loads (not what it links to: a link to another site is the reader's choice).
LOADING = {"link": "href", "script": "src", "img": "src", "iframe": "src", "source": "src", "audio": "src"}


class Loads(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attribute = LOADING.get(tag)
        for name, value in attrs:
            if name == attribute and value:
                self.urls.append(value)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    yield out


def test_no_page_loads_anything_from_another_host(site: Path):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 15
    remote = []
    for page in pages:
        parser = Loads()
        parser.feed(page.read_text(encoding="utf-8"))
        remote += [f"{page.name}: {url}" for url in parser.urls if re.match(r"^([a-z]+:)?//", url)]
    assert remote == []
    assert "fonts.googleapis" not in (site / "index.html").read_text(encoding="utf-8")


def test_the_reference_shows_the_openapi_document_the_api_serves(site: Path):
    from api_shim.app import create_app

    document = json.loads((site / "openapi.json").read_text(encoding="utf-8"))
    assert document == json.loads(json.dumps(create_app().openapi()))
    reference = (site / "reference.html").read_text(encoding="utf-8")
    assert 'spec-url="openapi.json"' in reference and (site / "assets/redoc/redoc.standalone.js").stat().st_size > 0
    assert 'href="reference.html"' in (site / "api-reference.html").read_text(encoding="utf-8")


def test_the_generated_tables_are_on_their_pages(site: Path):
    lifecycle = (site / "lifecycle.html").read_text(encoding="utf-8")
    assert "generated:" not in lifecycle
    for transition in TRANSITIONS:
        assert f"<td>{transition.name}</td>" in lifecycle, transition.name
    configuration = (site / "configuration.html").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"<code>WADISPATCH_{name.upper()}</code>" in configuration, name


def test_the_changelog_is_a_page_and_names_the_current_version(site: Path):
    from wadispatch import __version__

    changelog = (site / "changelog.html").read_text(encoding="utf-8")
    release = __version__.split(".dev")[0]
    assert f"[{release}]" in changelog and "Keep a Changelog" in changelog
    assert f"## [{release}]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
