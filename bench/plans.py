"""Study the query plans of the eleven counter queries on the bench database.

Each counter's query is taken as the repair engine issues it (the counter's GROUP BY plus
``ORDER BY member``, see ``RepairEngine._ordered``), then EXPLAINed and timed (streamed
to the client and discarded, like the engine's server-side cursor) three ways:

- default: the plan MariaDB picks with the app's indexes;
- scan: ``IGNORE INDEX (...)`` naming every secondary index, forcing a table scan (and
  a sort for the ORDER BY); and the same with the session's in-memory temporary table
  raised to ``BIG_TMP_TABLE`` (``tmp_table_size`` and ``max_heap_table_size``), so the
  GROUP BY does not spill to an on-disk table;
- covering: with a candidate covering index created on the bench database only (the
  plan the optimizer then picks, or ``FORCE INDEX`` if it ignores the index); the
  index is dropped afterwards.

Writes the measurements to ``bench/data/plans-DATABASE.json`` and prints a Markdown table;
``bench/PLANS.md`` holds the findings.

    .venv/bin/python -m bench.plans [--only KEY ...]
"""

from __future__ import annotations

import argparse
import json
import re
import time

import pymysql
import pymysql.cursors
from sqlalchemy.dialects import mysql

from bench.generate import DATA, DATABASE
from common.cache import engine as repair_engine
from common.cache.statistic import COUNTERS, select_counters

# The session tmp table size the repair engine sets on its streaming connection, if any.
ENGINE_TMP_TABLE = getattr(repair_engine, "TMP_TABLE_BYTES", 0)

# Session size of in-memory temporary tables for the "scan, big tmp" variant.
BIG_TMP_TABLE = 128 << 20

# Candidate covering indexes: counter key -> [(table, index name, columns)].
COVERING = {
    "count:user:arts": [("news_article_basic", "bench_status_user", "status, user_id")],
    "count:user:followings": [("user_relation", "bench_relation_user", "relation, user_id")],
    "count:user:followers": [("user_relation", "bench_relation_target", "relation, target_user_id")],
    "count:art:collecting": [("news_collection", "bench_deleted_article", "is_deleted, article_id")],
    "count:user:art:collecting": [("news_collection", "bench_deleted_user", "is_deleted, user_id")],
    "count:art:liking": [("news_attitude", "bench_attitude_article", "attitude, article_id")],
    "count:art:dislike": [("news_attitude", "bench_attitude_article", "attitude, article_id")],
    # Attitudes read in article order make the primary-key lookups into articles sequential.
    "count:user:liked": [("news_attitude", "bench_attitude_article", "attitude, article_id")],
    "count:comm:liking": [("news_comment_liking", "bench_deleted_comment", "is_deleted, comment_id")],
    "count:art:comm": [("news_comment", "bench_status_article", "status, article_id")],
    "count:art:reply": [("news_comment", "bench_status_parent", "status, parent_id")],
}

# Rewrites worth timing beside the counter's own query: counter key -> (label, SQL).
# Queries timed beside the counter's own, for comparison: counter key -> (label, SQL, member).
# {where} is empty for the stream and an IN list of member ids for the re-read.
ALTERNATIVES = {
    "count:user:liked": (
        "the original join, before likes were grouped per article",
        "SELECT a.user_id, COUNT(*) FROM news_attitude AS t JOIN news_article_basic AS a"
        " ON a.article_id = t.article_id WHERE t.attitude = 1 {where} GROUP BY a.user_id ORDER BY a.user_id",
        "a.user_id",
    ),
}


def compiled(stmt) -> str:
    return str(stmt.compile(dialect=mysql.dialect(), compile_kwargs={"literal_binds": True})).replace("\n", " ")


def engine_sql(counter) -> str:
    """Return the counter's query in member order, without any hint: MariaDB's own choice."""
    return compiled(counter.query.order_by(counter.member_column()))


def streamed_sql(counter) -> str:
    """Return the SQL the repair engine streams today when no covering index exists."""
    if hasattr(counter, "stream_query"):
        return compiled(counter.stream_query(False))
    return engine_sql(counter)


def session_tmp(conn, size):
    with conn.cursor() as cur:
        if size:
            cur.execute(f"SET SESSION tmp_table_size = {size}, max_heap_table_size = {size}")
        else:
            cur.execute("SET SESSION tmp_table_size = DEFAULT, max_heap_table_size = DEFAULT")


def recheck_sql(counter, ids) -> str:
    """Return the SQL of the engine's re-read of some members (``RepairEngine._db_counts``)."""
    stmt = counter.query.where(counter.member_column().in_(ids))
    return str(stmt.compile(dialect=mysql.dialect(), compile_kwargs={"literal_binds": True})).replace("\n", " ")


def sample_ids(conn, counter, size=1000) -> list:
    """Return ``size`` member ids spread over the counter's id range."""
    member = counter.member_column()
    with conn.cursor() as cur:
        cur.execute(f"SELECT MAX({member.name}) FROM {member.table.name}")
        top = int(cur.fetchone()[0] or 1)
    step = max(1, top // size)
    return list(range(1, top + 1, step))[:size]


def tables_of(sql: str) -> list:
    return re.findall(r"(?:FROM|JOIN) (\w+)", sql)


def with_hint(sql: str, hints: dict) -> str:
    """Put an index hint after each table named in ``hints`` ({table: hint})."""
    for table, hint in hints.items():
        sql = re.sub(rf"((?:FROM|JOIN) {table})\b", rf"\1 {hint}", sql, count=1)
    return sql


def secondary_indexes(cur, table) -> list:
    cur.execute(f"SHOW INDEX FROM `{table}`")
    names = []
    for row in cur.fetchall():
        if row[2] != "PRIMARY" and row[2] not in names:
            names.append(row[2])
    return names


def explain(cur, sql) -> list:
    cur.execute("EXPLAIN " + sql)
    columns = [d[0] for d in cur.description]
    return [dict(zip(columns, row)) for row in cur.fetchall()]


def summary(plan: list) -> str:
    """One line per table: access type, index, and the interesting Extra notes."""
    parts = []
    for row in plan:
        access = {"ALL": "table scan", "index": "full index scan", "range": "range", "ref": "ref"}.get(
            row["type"], row["type"]
        )
        key = f" `{row['key']}`" if row["key"] else ""
        extra = row["Extra"] or ""
        notes = []
        if "Using index" in extra and "condition" not in extra:
            notes.append("covering")
        elif row["type"] in ("index", "range", "ref", "eq_ref"):
            notes.append("row lookups")
        if "temporary" in extra:
            notes.append("temporary")
        if "filesort" in extra:
            notes.append("filesort")
        parts.append(f"{row['table']}: {access}{key}" + (f" ({', '.join(notes)})" if notes else ""))
    return "; ".join(parts)


def timed(conn, sql) -> dict:
    """Stream the query's rows and discard them; return seconds to first row and in all."""
    started = time.monotonic()
    first = None
    rows = 0
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(sql)
        while True:
            chunk = cur.fetchmany(10_000)
            if first is None:
                first = time.monotonic() - started
            if not chunk:
                break
            rows += len(chunk)
    return {"seconds": round(time.monotonic() - started, 2), "first_row": round(first, 2), "rows": rows}


def study(conn, counter, log) -> dict:
    key = counter.key
    sql = engine_sql(counter)
    out = {"counter": key, "sql": sql}
    with conn.cursor() as cur:
        tables = tables_of(sql)
        ignore = {t: f"IGNORE INDEX ({', '.join(secondary_indexes(cur, t))})" for t in tables}
        variants = [("default", sql), ("scan", with_hint(sql, ignore))]
        for label, text in variants:
            out[label] = {"sql": text, "plan": explain(cur, text)}
            out[label]["summary"] = summary(out[label]["plan"])
    for label, text in variants:
        out[label].update(timed(conn, text))
        log(f"  {label:<9} {out[label]['seconds']:7.2f}s  {out[label]['summary']}")
    session_tmp(conn, BIG_TMP_TABLE)
    try:
        out["scan_big_tmp"] = timed(conn, out["scan"]["sql"])
    finally:
        session_tmp(conn, 0)
    log(f"  scan+tmp  {out['scan_big_tmp']['seconds']:7.2f}s  (tmp tables {BIG_TMP_TABLE >> 20} MB)")
    # What RepairEngine streams today, with the session settings it applies.
    text = streamed_sql(counter)
    with conn.cursor() as cur:
        plan = explain(cur, text)
    session_tmp(conn, ENGINE_TMP_TABLE)
    try:
        out["engine"] = {"sql": text, "plan": plan, "summary": summary(plan)} | timed(conn, text)
    finally:
        session_tmp(conn, 0)
    log(f"  engine    {out['engine']['seconds']:7.2f}s  {out['engine']['summary']}")
    ids = sample_ids(conn, counter)
    out["recheck"] = recheck(conn, counter, ids)
    log(f"  recheck   {out['recheck']['seconds']:7.2f}s  {out['recheck']['summary']}  (IN {len(ids)} ids)")

    created = []
    try:
        with conn.cursor() as cur:
            for table, name, columns in COVERING.get(key, []):
                started = time.monotonic()
                cur.execute(f"CREATE INDEX `{name}` ON `{table}` ({columns})")
                created.append((table, name))
                log(f"  created {table}({columns}) in {time.monotonic() - started:.1f}s")
            if created:
                plan = explain(cur, sql)
                used = {row["key"] for row in plan}
                text = sql
                if not used & {name for _, name in created}:
                    text = with_hint(sql, {t: f"FORCE INDEX ({n})" for t, n in created})
                    plan = explain(cur, text)
                out["covering"] = {
                    "sql": text,
                    "indexes": [f"{t}({c})" for t, _, c in COVERING[key]],
                    "chosen_by_optimizer": text == sql,
                    "plan": plan,
                    "summary": summary(plan),
                }
        if created:
            out["covering"].update(timed(conn, out["covering"]["sql"]))
            log(
                f"  covering  {out['covering']['seconds']:7.2f}s  {out['covering']['summary']}"
                f"{'' if out['covering']['chosen_by_optimizer'] else ' (FORCE INDEX)'}"
            )
            out["covering"]["recheck"] = recheck(conn, counter, ids)
            log(
                f"  recheck   {out['covering']['recheck']['seconds']:7.2f}s  "
                f"{out['covering']['recheck']['summary']}  (with the covering index)"
            )
    finally:
        with conn.cursor() as cur:
            for table, name in created:
                cur.execute(f"DROP INDEX `{name}` ON `{table}`")
    if key in ALTERNATIVES:
        label, template, member = ALTERNATIVES[key]
        text = template.format(where="")
        with conn.cursor() as cur:
            plan = explain(cur, text)
        out["alternative"] = {"label": label, "sql": text, "plan": plan, "summary": summary(plan)} | timed(conn, text)
        log(f"  {label}: {out['alternative']['seconds']:7.2f}s  {out['alternative']['summary']}")
        text = template.format(where=f"AND {member} IN ({', '.join(map(str, ids))})")
        out["alternative"]["recheck"] = timed(conn, text)
        log(f"  recheck   {out['alternative']['recheck']['seconds']:7.2f}s  ({label})")
    return out


def recheck(conn, counter, ids) -> dict:
    sql = recheck_sql(counter, ids)
    with conn.cursor() as cur:
        plan = explain(cur, sql)
    return {"plan": plan, "summary": summary(plan)} | timed(conn, sql)


def markdown(results: list) -> str:
    lines = [
        "| counter | members | default plan | default s | forced scan s | scan, 128 MB tmp s | engine today s |"
        " covering index | covering s | re-read 1000 ids s (default / covering) |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in results:
        cov = r.get("covering") or {}
        lines.append(
            f"| `{r['counter']}` | {r['default']['rows']:,} | {r['default']['summary']} | "
            f"{r['default']['seconds']:.1f} | "
            f"{r['scan']['seconds']:.1f} | {r['scan_big_tmp']['seconds']:.1f} | {r['engine']['seconds']:.1f} | "
            f"{', '.join(cov.get('indexes', []))} | {cov.get('seconds', float('nan')):.1f} | "
            f"{r['recheck']['seconds']:.2f} / {cov.get('recheck', {}).get('seconds', float('nan')):.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    parser.add_argument("--only", action="append", default=[], metavar="KEY")
    args = parser.parse_args(argv)
    counters = select_counters(args.only) if args.only else list(COUNTERS)

    def log(text):
        print(text, flush=True)

    conn = pymysql.connect(
        host=args.host, port=args.port, user=args.user, password=args.password, database=args.database, autocommit=True
    )
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION(), @@innodb_buffer_pool_size, @@sort_buffer_size, @@tmp_table_size")
        version, pool, sort_buffer, tmp_table = cur.fetchone()
    log(
        f"MariaDB {version}, buffer pool {pool >> 20} MB, sort buffer {sort_buffer >> 10} KB, "
        f"tmp table {tmp_table >> 20} MB"
    )
    results = []
    for counter in counters:
        log(f"{counter.key}")
        results.append(study(conn, counter, log))
    conn.close()
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"plans-{args.database}.json"
    path.write_text(json.dumps({"server": version, "results": results}, indent=2, default=str))
    log("\n" + markdown(results))
    log(f"\nraw results: {path}")


if __name__ == "__main__":
    main()
