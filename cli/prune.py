"""`wadispatch prune`: apply the retention settings now (beat does the same every
WADISPATCH_RETENTION_INTERVAL_S); --dry-run counts what would go and changes nothing."""

from __future__ import annotations

import click

from cli.output import emit
from models.retention import Policy, PruneReport, TableReport, prune


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="count the rows each rule would remove; change nothing")
@click.option(
    "--batch", type=click.IntRange(1, 50_000), help="rows per statement (default: WADISPATCH_RETENTION_BATCH)"
)
@click.option(
    "--pause-ratio",
    type=click.FloatRange(0, 100),
    help="rest after each batch, in multiples of its statement's time "
    "(default: WADISPATCH_RETENTION_PAUSE_RATIO; 0: none)",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def prune_command(dry_run: bool, batch: int | None, pause_ratio: float | None, as_json: bool) -> None:
    """Delete what the retention settings no longer keep, in small batches (each its own short
    transaction; rows a send or a webhook holds are skipped until the next run)."""
    from models.db import get_engine
    from models.settings import get_settings

    policy = Policy.from_settings(get_settings(), batch=batch, pause_ratio=pause_ratio)
    report = prune(get_engine(), policy, dry_run=dry_run)
    emit(report.as_dict(), as_json=as_json, human=human_report(report))


def human_report(report: PruneReport) -> str:
    verb = "would go" if report.dry_run else "went"
    lines = [_line(t, verb) for t in report.tables]
    total = f"{report.rows} rows {verb}" + ("" if report.dry_run else f" (batches of {report.batch})")
    return "\n".join([*lines, total])


def _line(table: TableReport, verb: str) -> str:
    days = f"{table.retention_days:g} d"
    done = f"{table.rows:>9} {verb:<8} ({table.statements} statements, longest {table.longest_statement_ms:.0f} ms)"
    stopped = f"; stopped early: {table.stopped}" if table.stopped else ""
    return f"{table.name:<22} {days:>7}  {done}  keeps {table.keeps}{stopped}"
