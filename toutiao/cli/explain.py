"""``flask stats explain``: each counter's query plan and the index that would help it."""

import click
from flask.cli import with_appcontext

from common.cache.plan import explain
from common.cache.statistic import select_counters
from common.exceptions import UnknownCounter
from toutiao.cli.connect import connect_database
from toutiao.cli.table import table


@click.command("explain")
@click.option("--only", "only", multiple=True, metavar="KEY", help="Only this counter (repeatable).")
@with_appcontext
def explain_counters(only):
    """Print each counter's query plan and the optional covering index that makes it index-only.

    The indexes are suggestions for a DBA: nothing here creates one.
    """
    try:
        counters = select_counters(only)
    except UnknownCounter as exc:
        raise click.BadParameter(str(exc), param_hint="'--only'") from None
    engine = connect_database(require_tables=True)
    for counter in counters:
        plan = explain(engine, counter)
        click.echo(f"{counter.key}: {counter.describe()}")
        click.echo(f"  {plan.sql.replace(chr(10), ' ')}")
        for line in table(plan.columns, plan.rows):
            click.echo(f"  {line}")
        if plan.index_only:
            click.echo("  index-only scan: yes")
        elif plan.covering_index_exists:
            click.echo("  index-only scan: no (the covering index exists; the planner chose otherwise)")
        else:
            click.echo(f"  index-only scan: no; optional covering index: {plan.suggestion};")
        click.echo("")
