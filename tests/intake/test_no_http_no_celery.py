"""intake/ knows neither HTTP nor Celery: importing every module of it loads neither."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("fastapi", "starlette", "celery", "kombu")


def test_importing_intake_loads_no_web_or_task_framework() -> None:
    modules = sorted(f"intake.{p.stem}" for p in (ROOT / "intake").glob("*.py") if p.stem != "__init__")
    assert modules, "intake/ has modules"
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
