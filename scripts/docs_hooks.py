"""MkDocs hooks (mkdocs.yml ``hooks:``): what the documentation takes from the code at build time.

- A page's ``<!-- generated: NAME -->`` becomes the table scripts/docs_tables.py renders from the
  code (the lifecycle's transitions, the settings), so those pages cannot drift from the code.
- The API's OpenAPI document (``api_shim.app.create_app().openapi()``, what a running API serves
  at /openapi.json) is written into the site as ``openapi.json``, with the ReDoc script the API
  serves at /docs/assets (from the fastapi-offline package), so the reference page shows the
  document with nothing loaded from the internet.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The checkout's packages, also when mkdocs runs from a virtualenv whose install points elsewhere.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import docs_tables  # noqa: E402

OPENAPI_FILE = "openapi.json"
REDOC_SCRIPT = "assets/redoc/redoc.standalone.js"


def on_page_markdown(markdown: str, **_: Any) -> str:
    return docs_tables.expand(markdown)


def openapi_document() -> dict[str, Any]:
    """The document the API serves at /openapi.json (building the app opens no connection)."""
    from api_shim.app import create_app

    return create_app().openapi()


def on_post_build(config: Any, **_: Any) -> None:
    import fastapi_offline

    site = Path(config["site_dir"])
    (site / OPENAPI_FILE).write_text(json.dumps(openapi_document(), indent=1), encoding="utf-8")
    script = site / REDOC_SCRIPT
    script.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js", script)
