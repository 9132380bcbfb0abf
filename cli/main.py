"""`wadispatch`: run the service's processes and administer it."""

from __future__ import annotations

import atexit
import json
import os
import shlex
import shutil
import sys
import tempfile

import click
from pydantic import ValidationError

from cli import admin as admin_commands
from cli import endpoints as endpoint_commands
from cli import intake_credentials as intake_credential_commands
from cli import prune as prune_commands
from cli import usage as usage_commands
from models import log_format, log_hygiene
from models.settings import get_settings
from wadispatch import __version__

# Hosts of the media URLs in the two API documents; `run` serves them from the sandbox.
SEED_MEDIA_HOSTS = ("example.com", "cdn.example.com")


# `wadispatch run`'s worker serves its /metrics here (unless WADISPATCH_WORKER_METRICS_PORT says otherwise).
DEV_WORKER_METRICS_PORT = 9101

# Connections per worker process by default (a hard cap, see models/db.py).
WORKER_DB_POOL_CAP = 36


def worker_db_pool_size(threads: int) -> int:
    """One connection per thread plus the pacer's and the sweep's, up to WORKER_DB_POOL_CAP."""
    return min(threads + 4, WORKER_DB_POOL_CAP)


@click.group()
@click.version_option(__version__, prog_name="wadispatch")
def cli() -> None:
    """wadispatch: queue-backed WhatsApp message dispatch."""
    # Every process started from here (api, worker, beat, sandbox, flower) logs no URL query strings.
    log_hygiene.install()
    try:
        settings = get_settings()
    except ValidationError:
        return  # the command itself says what is wrong
    log_format.configure(settings.log_format, settings.log_level)


@cli.command()
def migrate() -> None:
    """Create the database if needed and apply every migration."""
    from models.migrate import MigrationRefused, ensure_database, upgrade_to_head

    url = get_settings().database_url
    try:
        if ensure_database(url):
            click.echo("created the database")
        upgrade_to_head(url)
    except MigrationRefused as refused:
        # Postgres is fine: the data needs the operator (the message says what to do).
        raise click.ClickException(str(refused)) from None
    except Exception as exc:
        raise click.ClickException(
            f"migration failed: {type(exc).__name__}: {exc}\n"
            "Is Postgres running? Start it with: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        ) from exc
    click.echo("database is at the latest migration")


@cli.command()
@click.option("--host", default=None, help="default: WADISPATCH_API_HOST")
@click.option("--port", type=int, default=None, help="default: WADISPATCH_API_PORT")
@click.option("--workers", type=int, default=1, show_default=True)
def api(host: str | None, port: int | None, workers: int) -> None:
    """Run the HTTP API shim."""
    import uvicorn

    # Before anything imports prometheus_client: /metrics sums every uvicorn process.
    use_metrics_dir("api")
    settings = get_settings()
    uvicorn.run(
        "api_shim.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level=settings.log_level.lower(),
        log_config=log_format.uvicorn_log_config(settings.log_format, settings.log_level),
    )


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--pool", default=None, help="threads|prefork|gevent|solo (default: WADISPATCH_WORKER_POOL)")
@click.option("--concurrency", type=int, default=None, help="default: WADISPATCH_WORKER_CONCURRENCY")
@click.option(
    "--queues",
    default=None,
    help="comma-separated queues to consume (default: all of them; e.g. wadispatch.intake to run intake apart)",
)
@click.pass_context
def worker(ctx: click.Context, pool: str | None, concurrency: int | None, queues: str | None) -> None:
    """Run a Celery worker (extra arguments go to `celery worker`)."""
    settings = get_settings()
    if (pool or settings.worker_pool) == "prefork":
        # The tasks run in child processes: the worker's /metrics sums them (worker/metrics_server.py).
        use_metrics_dir("worker")
    else:
        # One process: its own figures, not multiprocess mode inherited from the environment.
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    threads = concurrency or settings.worker_concurrency
    # The Celery app sizes its broker connections from the setting: make it the one in use.
    os.environ["WADISPATCH_WORKER_CONCURRENCY"] = str(threads)
    get_settings.cache_clear()
    if "WADISPATCH_DATABASE_POOL_SIZE" not in os.environ:
        # One connection per thread (sharing fewer cost 7 % of the delivery rate in
        # bench/throughput.py), plus the pacer's and the sweep's; the cap keeps two default
        # workers and two API processes within Postgres's default max_connections (100).
        os.environ["WADISPATCH_DATABASE_POOL_SIZE"] = str(worker_db_pool_size(threads))
        get_settings.cache_clear()
    from worker.celery_app import INTAKE_QUEUE, WORKER_QUEUES, app

    # With an intake broker of its own, `wadispatch intake-worker` takes the submissions there.
    mine = [q for q in WORKER_QUEUES if not (settings.intake_apart and q == INTAKE_QUEUE)]
    app.worker_main(
        [
            *_quiet_if_json(),
            "worker",
            *_default_node_name(ctx.args),
            f"--pool={pool or settings.worker_pool}",
            f"--concurrency={threads}",
            f"--queues={queues or ','.join(mine)}",
            f"--loglevel={settings.log_level}",
            *ctx.args,
        ]
    )


@cli.command("intake-worker", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", type=int, default=4, show_default=True, help="threads taking submissions")
@click.pass_context
def intake_worker(ctx: click.Context, concurrency: int) -> None:
    """Take upstream submissions from WADISPATCH_INTAKE_BROKER_URL (when it is not the service's
    own broker, whose workers take them otherwise) and store them; extra arguments go to `celery worker`."""
    settings = get_settings()
    if not settings.intake_apart:
        raise click.ClickException(
            "WADISPATCH_INTAKE_BROKER_URL is the service's own broker: `wadispatch worker` takes submissions there"
        )
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from worker.celery_app import INTAKE_QUEUE
    from worker.intake_app import intake_app

    intake_app.worker_main(
        [
            *_quiet_if_json(),
            "worker",
            *_default_node_name(ctx.args),
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--queues={INTAKE_QUEUE}",
            f"--loglevel={settings.log_level}",
            *ctx.args,
        ]
    )


def _quiet_if_json() -> list[str]:
    """Celery prints its banner to stdout, past logging: a JSON log has no place for it."""
    return ["--quiet"] if get_settings().log_format == "json" else []


def use_metrics_dir(role: str) -> str:
    """Point prometheus_client's multiprocess mode at a new, empty directory of this process
    group's own (inside PROMETHEUS_MULTIPROC_DIR when the operator set one, so that an API and a
    worker given the same variable neither sum nor delete each other's figures), removed at exit."""
    parent = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    if parent:
        os.makedirs(parent, exist_ok=True)
    made = tempfile.mkdtemp(prefix=f"wadispatch-{role}-{os.getpid()}-", dir=parent)
    atexit.register(shutil.rmtree, made, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made


def default_node_name(pid: int) -> str:
    """Celery names a worker celery@<host> by default, so two on one host were one node to Flower
    and `celery inspect`. The process id tells workers on a host apart (Celery expands %h)."""
    return f"wadispatch-{pid}@%h"


def _default_node_name(args: list[str]) -> list[str]:
    given = any(a in ("-n", "--hostname") or a.startswith(("--hostname=", "-n")) for a in args)
    return [] if given else [f"--hostname={default_node_name(os.getpid())}"]


@cli.command()
def beat() -> None:
    """Run Celery beat (the sweeper's clock). Its schedule lives in memory: nothing to lose."""
    from worker.celery_app import app

    app.start(
        [*_quiet_if_json(), "beat", "--scheduler=celery.beat:Scheduler", f"--loglevel={get_settings().log_level}"]
    )


@cli.command()
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5555, show_default=True)
def flower(address: str, port: int) -> None:
    """Run Flower, the Celery monitoring UI, behind basic auth (WADISPATCH_FLOWER_BASIC_AUTH); its
    API answers the same users."""
    from models.settings import DEV_FLOWER_BASIC_AUTH
    from worker.celery_app import app

    settings = get_settings()
    if not settings.flower_basic_auth:
        raise click.ClickException("WADISPATCH_FLOWER_BASIC_AUTH: set user:password (Flower never runs open)")
    if settings.env == "production" and settings.flower_basic_auth == DEV_FLOWER_BASIC_AUTH:
        raise click.ClickException("WADISPATCH_FLOWER_BASIC_AUTH: production refuses the development password")
    # Through Flower's own environment variable, not an argument: arguments show in `ps`.
    os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    app.start(["flower", f"--port={port}", f"--address={address}"])


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=None, help="default: WADISPATCH_SANDBOX_PORT (8090)")
@click.option("--latency-ms", type=float, default=0.0, show_default=True, help="delay before each answer")
@click.option("--mps", type=float, default=80.0, show_default=True, help="throughput per phone number (130429)")
@click.option("--pair-interval-s", type=float, default=6.0, show_default=True, help="pace to one user (131056); 0=off")
@click.option("--webhook-url", default=None, help="where Meta's webhooks go (statuses, inbound); none by default")
@click.option("--app-secret", default=None, help="signs the webhooks (default: WADISPATCH_META_APP_SECRET)")
@click.option("--sent-delay-s", type=float, default=0.05, show_default=True, help="send → `sent` status")
@click.option("--delivered-delay-s", type=float, default=0.2, show_default=True, help="send → `delivered`; -1: never")
@click.option("--read-delay-s", type=float, default=-1, show_default=True, help="send → `read`; -1: never")
@click.option("--enforce-window/--no-enforce-window", default=False, show_default=True,
              help="free-form messages outside the recipient's 24-hour window fail with 131047")  # fmt: skip
@click.option("--duplicate-fraction", type=float, default=0.0, show_default=True, help="deliveries sent twice")
@click.option("--reorder", is_flag=True, help="deliver each batch's updates in reverse order")
@click.option("--batch-window-ms", type=float, default=0.0, show_default=True, help="collect updates into one POST")
def sandbox(
    host: str,
    port: int | None,
    latency_ms: float,
    mps: float,
    pair_interval_s: float,
    webhook_url: str | None,
    app_secret: str | None,
    sent_delay_s: float,
    delivered_delay_s: float,
    read_delay_s: float,
    enforce_window: bool,
    duplicate_fraction: float,
    reorder: bool,
    batch_window_ms: float,
) -> None:
    """Run the Meta Graph API sandbox (and, with --webhook-url, Meta's webhooks)."""
    import uvicorn

    from meta_sandbox.app import create_app
    from meta_sandbox.webhooks import WebhookConfig

    def delay(value: float) -> float | None:
        return None if value < 0 else value

    hooks = WebhookConfig(
        url=webhook_url or None,
        app_secret=app_secret or get_settings().meta_app_secret,
        sent_delay_s=delay(sent_delay_s),
        delivered_delay_s=delay(delivered_delay_s),
        read_delay_s=delay(read_delay_s),
        enforce_window=enforce_window,
        duplicate_fraction=duplicate_fraction,
        reorder=reorder,
        batch_window_ms=batch_window_ms,
    )
    app = create_app(latency_ms=latency_ms, webhooks=hooks)
    app.state.sandbox.limits.default_mps = mps
    app.state.sandbox.limits.pair_interval_s = pair_interval_s
    uvicorn.run(
        app,
        host=host,
        port=port or get_settings().sandbox_port,
        log_level="warning",
        log_config=log_format.uvicorn_log_config(get_settings().log_format, "warning"),
        timeout_keep_alive=30,
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--walkthrough",
    is_flag=True,
    help="with `wadispatch run` going: a lead writes, you answer, watch sent → delivered → read and the thread",
)
@click.option(
    "--env",
    "as_env",
    is_flag=True,
    help='print shell exports for the documentation\'s examples: eval "$(wadispatch demo --env)"',
)
def demo(as_json: bool, walkthrough: bool, as_env: bool) -> None:
    """Create a demo organization, key, connected account and two leads; print curl commands."""
    from cli.demo import create_demo, curl_examples, env_exports, register_demo_template, walk_through

    try:
        data = create_demo()
    except Exception as exc:
        raise click.ClickException(f"demo failed ({type(exc).__name__}: {exc}); did `wadispatch migrate` run?") from exc
    if walkthrough:
        try:
            walk_through(data, get_settings(), click.echo)
        except Exception as exc:
            raise click.ClickException(f"walkthrough stopped: {exc} (is `wadispatch run` going?)") from exc
        return
    note = register_demo_template(get_settings())
    if as_env:
        # Only the exports on stdout (it is eval'd); how the template went goes to stderr.
        click.echo(note, err=True)
        click.echo(env_exports(data, get_settings()), nl=False)
        return
    click.echo(json.dumps(data, indent=2) if as_json else curl_examples(data, get_settings(), note))


@cli.command()
@click.option("--sandbox/--no-sandbox", default=True, show_default=True, help="also run the Meta sandbox")
@click.option("--flower", is_flag=True, help="also run Flower on 127.0.0.1:5555 (WADISPATCH_FLOWER_BASIC_AUTH)")
def run(sandbox: bool, flower: bool) -> None:
    """Migrate, then run the API, a worker, beat and the sandbox in the foreground (Ctrl-C or
    SIGTERM stops them all, also with the output piped)."""
    from cli import supervise

    ctx = click.get_current_context()
    ctx.invoke(migrate)
    me = shlex.join([sys.executable, "-m", "cli"])
    settings = get_settings()
    # A stopping worker may wait for its calls to Meta to return: give it that long before SIGKILL.
    manager = supervise.supervisor(grace_s=settings.worker_shutdown_grace_s + 5)
    env = dict(os.environ)
    # The worker's own /metrics (the API serves its /metrics on its port).
    env.setdefault("WADISPATCH_WORKER_METRICS_PORT", str(DEV_WORKER_METRICS_PORT))
    if sandbox:
        # It plays Meta's webhooks too: statuses a second or a few apart (visible in the API), the
        # 24-hour window enforced (a contact must write first: `wadispatch demo` shows how).
        api_host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host
        webhook_url = f"http://{api_host}:{settings.api_port}/webhooks/whatsapp"
        manager.add_process(
            "sandbox",
            f"{me} sandbox --port {settings.sandbox_port} --webhook-url {shlex.quote(webhook_url)} "
            "--sent-delay-s 1 --delivered-delay-s 3 --read-delay-s 6 --enforce-window",
            env=env | {"WADISPATCH_META_APP_SECRET": settings.meta_app_secret},
        )
        # The sandbox also plays the web: the seed's example media hosts are fetched from it.
        origin = f"http://127.0.0.1:{settings.sandbox_port}"
        env.setdefault("WADISPATCH_MEDIA_TEST_HOSTS", json.dumps(dict.fromkeys(SEED_MEDIA_HOSTS, origin)))
    manager.add_process("api", f"{me} api", env=env)
    manager.add_process("worker", f"{me} worker", env=env)
    if settings.intake_apart:
        manager.add_process("intake", f"{me} intake-worker", env=env)
    manager.add_process("beat", f"{me} beat", env=env)
    if flower:
        manager.add_process("flower", f"{me} flower", env=env)
    click.echo(
        f"API on http://{settings.api_host}:{settings.api_port} (docs at /docs, metrics at /metrics), "
        f"Meta at {settings.meta_base_url}"
        + (", Flower at http://127.0.0.1:5555" if flower else "")
        + ". In another terminal: `.venv/bin/wadispatch demo`"
    )
    sys.exit(supervise.loop(manager))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """Where the system stands: queue depths, messages by status, the oldest waiting message,
    halted accounts, workers online."""
    from cli.output import emit
    from models.db import session_scope
    from worker.system_status import read_status

    with session_scope() as session:
        now = read_status(session)
    oldest = "none waiting" if now.oldest_waiting_s is None else f"{now.oldest_waiting_s:.1f} s"
    human = "\n".join(
        [
            "queues        : " + ", ".join(f"{q} {n}" for q, n in now.queue_depths.items()),
            "messages      : " + (", ".join(f"{s} {n}" for s, n in now.messages_by_status.items()) or "none"),
            f"oldest waiting: {oldest}",
            "halted        : " + (", ".join(a["id"] for a in now.halted_accounts) or "none"),
            "workers online: " + (", ".join(now.workers_online) or "none answered"),
            "portfolios    : " + (", ".join(_portfolio_use(p) for p in now.portfolios) or "none"),
            "quality       : "
            + (
                ", ".join(f"{a['id']} {a['event']} ({a['current_limit'] or '-'})" for a in now.account_quality)
                or "none reported"
            ),
        ]
    )
    emit(now.as_dict(), as_json=as_json, human=human)


def _portfolio_use(p: dict[str, object]) -> str:
    used = "?" if p["used"] is None else p["used"]
    limit = "unlimited" if p["limit"] is None else p["limit"]
    return f"{p['id']} {used}/{limit}"


cli.add_command(admin_commands.org)
cli.add_command(admin_commands.key)
cli.add_command(admin_commands.account)
cli.add_command(admin_commands.portfolio)
cli.add_command(admin_commands.contact)
cli.add_command(admin_commands.messages)
cli.add_command(endpoint_commands.endpoint)
cli.add_command(intake_credential_commands.intake_credential)
cli.add_command(prune_commands.prune_command)
cli.add_command(usage_commands.usage_command)


def main() -> None:
    cli()
