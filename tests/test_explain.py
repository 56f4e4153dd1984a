"""``flask stats explain``: plans and covering-index suggestions, never created silently."""

from sqlalchemy import inspect, text

from common.cache.statistic import COUNTERS


def index_names(engine, table):
    with engine.connect() as conn:
        return {i["name"] for i in inspect(conn).get_indexes(table)}


def test_explain_prints_a_plan_and_a_covering_index_for_every_counter(runner, engine):
    before = {c.covering_index[0]: index_names(engine, c.covering_index[0]) for c in COUNTERS}
    result = runner.invoke(args=["stats", "explain"])
    assert result.exit_code == 0, result.output
    for counter in COUNTERS:
        assert f"{counter.key}: " in result.output
    assert "CREATE INDEX ix_user_relation_relation_user_id ON user_relation (relation, user_id)" in result.output
    after = {table: index_names(engine, table) for table in before}
    assert after == before


def test_explain_reports_an_index_only_scan_once_the_index_exists(runner, engine):
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX ix_user_relation_relation_user_id ON user_relation (relation, user_id)"))
    try:
        result = runner.invoke(args=["stats", "explain", "--only", "count:user:followings"])
        assert result.exit_code == 0, result.output
        assert "CREATE INDEX" not in result.output
        assert "index-only scan: yes" in result.output or "covering index exists" in result.output
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_user_relation_relation_user_id ON user_relation"))


def test_explain_rejects_an_unknown_counter(runner):
    result = runner.invoke(args=["stats", "explain", "--only", "count:nope"])
    assert result.exit_code == 2
    assert "count:nope" in result.output
