"""Every example README.md and the documentation pages mark as runnable is run, as a reader would
run it, against the stack a reader runs: `wadispatch run` (API, worker, beat and the sandbox with
its webhooks and the 24-hour window, exactly what `make run` starts), on a copy of the migrated
test database and a private redis-server (its own broker: the session's worker must not take its
tasks). Each page's examples run in order in one shell session, so a variable one example sets
(`eval "$(.venv/bin/wadispatch demo --env)"`, or an answer's value it keeps) is there for the next.
Each answer is compared with the one the page shows (tests/support/doc_examples.py says how), so
an example that breaks, or an answer that changed, fails the build.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.private_services import PrivateRedis
from tests.conftest import RUN_ID, TEST_ENV
from tests.support import doc_examples
from tests.support.database import clone_database, drop_database
from tests.support.processes import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WAIT_S = 40.0


def pages_with_examples() -> list[Path]:
    return [page for page in PAGES if doc_examples.examples_in(page, ROOT)]


@pytest.fixture(scope="module")
def reader_stack(migrated_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`wadispatch run` as `make run` starts it; yields the environment a reader's shell has."""
    if not (ROOT / ".venv" / "bin" / "wadispatch").exists():
        pytest.skip("the examples call .venv/bin/wadispatch, which `make install` creates; there is none here")
    name = f"wadispatch_test_{RUN_ID}_docs"
    database_url = clone_database(migrated_template, name)
    api_port, sandbox_port = free_port(), free_port()
    log_dir = tmp_path_factory.mktemp("docs-stack")
    with PrivateRedis() as private_redis:
        env = {
            **os.environ,
            **TEST_ENV,
            "WADISPATCH_DATABASE_URL": database_url,
            "WADISPATCH_REDIS_URL": private_redis.url,
            "WADISPATCH_API_PORT": str(api_port),
            "WADISPATCH_SANDBOX_PORT": str(sandbox_port),
            "WADISPATCH_META_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
            "WADISPATCH_MEDIA_DIR": str(log_dir / "media"),
            "WADISPATCH_WORKER_METRICS_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
        for test_only in ("WADISPATCH_MEDIA_TEST_HOSTS", "WADISPATCH_MEDIA_TEST_ALLOWED"):
            env.pop(test_only, None)  # `run` maps the example media hosts to its sandbox itself

        def ready() -> bool:
            try:
                ok = httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=2).status_code == 200
                sandbox = httpx.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/health", timeout=2).status_code
            except httpx.HTTPError:
                return False
            return ok and sandbox == 200 and " ready." in run.log_since_start()

        run = ManagedProcess("run", ["run"], env, log_dir, ready)
        run.start(timeout=90)
        try:
            yield env
        finally:
            run.stop(timeout=60)
            drop_database(database_url)


def run_example(example: doc_examples.Example, env: dict[str, str], state: Path) -> str:
    # `set -a`: every variable an example sets is exported, so `export -p` keeps it for the next
    # example, as a reader's terminal would.
    saved = shlex.quote(str(state))
    script = f"set -aeo pipefail\nsource {saved}\n{example.script}\nexport -p > {saved}\n"
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"{example} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def check(example: doc_examples.Example, env: dict[str, str], state: Path, kept: dict[str, str]) -> None:
    deadline = time.monotonic() + WAIT_S
    expected = doc_examples.substitute(example.answer, kept)
    while True:
        output = run_example(example, env, state)
        if example.setup and not example.has_answer:
            return
        assert example.has_answer, f"{example}: show its answer (<!-- answer -->) or mark it setup"
        try:
            answer = json.loads(output)
        except json.JSONDecodeError:
            pytest.fail(f"{example} did not answer JSON:\n{output}")
        problem = doc_examples.mismatch(expected, answer)
        if problem is None:
            break
        if not example.wait or time.monotonic() > deadline:
            pytest.fail(f"{example}: {problem}\nthe whole answer: {json.dumps(answer)[:2000]}")
        time.sleep(0.5)
    with state.open("a") as exports:
        for variable, path in example.keep.items():
            kept[variable] = str(doc_examples.value_at(answer, path))
            exports.write(f"export {variable}={shlex.quote(kept[variable])}\n")


@pytest.mark.parametrize("page", pages_with_examples(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_pages_examples_answer_what_the_page_shows(reader_stack: dict[str, str], page: Path, tmp_path: Path):
    state = tmp_path / "shell-state.sh"
    state.write_text("")
    kept: dict[str, str] = {}
    for example in doc_examples.examples_in(page, ROOT):
        check(example, reader_stack, state, kept)


def test_the_tour_and_the_api_pages_have_runnable_examples():
    pages = {str(page.relative_to(ROOT)) for page in pages_with_examples()}
    assert {"README.md", "docs/getting-started.md", "docs/flowestate-api.md", "docs/flowiq-api.md"} <= pages
