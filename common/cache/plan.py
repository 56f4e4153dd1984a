"""Query plans of the counters' source queries, for ``flask stats explain``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from sqlalchemy import inspect, text


@dataclass
class Plan:
    """How the database runs one counter's query, and the index that would help."""

    counter: str
    sql: str
    columns: list
    rows: list
    index_only: bool
    covering_index_exists: bool
    suggestion: str = ""
    notes: list = field(default_factory=list)


def compile_query(engine, stmt) -> str:
    """Render a statement as the SQL the database receives, with literal values."""
    return str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))


def covering_index_ddl(counter) -> str:
    table, columns = counter.covering_index
    return f"CREATE INDEX ix_{table}_{'_'.join(columns)} ON {table} ({', '.join(columns)})"


def has_index(conn, table, columns) -> bool:
    """Tell whether some index of ``table`` starts with ``columns`` in that order."""
    return index_starting_with(conn, table, columns) is not None


def index_starting_with(conn, table, columns) -> Optional[str]:
    """Return the name of an index of ``table`` that starts with ``columns``, or None."""
    for index in inspect(conn).get_indexes(table) + inspect(conn).get_unique_constraints(table):
        if list(index["column_names"][: len(columns)]) == list(columns):
            return index["name"] or ""  # SQLite's unnamed unique constraints have none
    return None


def explain(engine, counter) -> Plan:
    """EXPLAIN the counter's query exactly as the repair streams it."""
    mysql = engine.dialect.name in ("mysql", "mariadb")
    with engine.connect() as conn:
        table, index_columns = counter.covering_index
        exists = has_index(conn, table, index_columns)
        sql = compile_query(engine, counter.stream_query(exists))
        result = conn.execute(text(("EXPLAIN " if mysql else "EXPLAIN QUERY PLAN ") + sql))
        columns, rows = list(result.keys()), [tuple(r) for r in result]
    if mysql:
        extra = [str(dict(zip(columns, r)).get("Extra") or "") for r in rows]
        index_only = all("Using index" in e for e in extra)
    else:
        index_only = all("COVERING INDEX" in str(r[-1]) for r in rows)
    plan = Plan(counter.key, sql, columns, rows, index_only, exists)
    if not index_only and not exists:
        plan.suggestion = covering_index_ddl(counter)
    return plan
