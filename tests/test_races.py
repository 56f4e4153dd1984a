"""Exact under every interleaving: each race the protocol must win, forced at the engine's
named checkpoints on the real MariaDB and Redis.

Each test plays the app's writers step by step (announce, commit, increment) and other
runs between two steps of the run under test, then asserts the counter equals the
database. Every interleaving is forced; nothing waits on a timer.
"""

import itertools
import threading

import pytest
from sqlalchemy import text

from common.cache import candidates
from common.cache.engine import RepairEngine
from common.cache.members import Shard
from common.cache.statistic import Statistic
from common.exceptions import LockHeld, LockLost
from tests.expected import expected, wrong_members
from tests.races import (
    FOLLOWERS,
    FOLLOWINGS,
    Checkpoints,
    attempt,
    expire_leases,
    follow,
    seed_followers,
    unfollow,
)

KEY = FOLLOWERS.key

# The increment script of the release before the write protocol: no announcement, and
# the id noted in {key}:dirty while a repair ran.
PREVIOUS_INCR = """
local score = redis.call('ZINCRBY', KEYS[1], ARGV[2], ARGV[1])
if tonumber(score) == 0 then redis.call('ZREM', KEYS[1], ARGV[1]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('SADD', KEYS[2], ARGV[1]) end
return score
"""


def run(engine, redis, counters=(FOLLOWERS,), **kwargs):
    kwargs.setdefault("settle", 0.01)
    kwargs.setdefault("batch_size", 2)
    return RepairEngine(redis, engine, **kwargs).run(list(counters))


def result_of(report, counter=FOLLOWERS):
    return next(r for r in report.results if r.counter == counter.key)


def exact(engine, redis, *counters):
    return wrong_members(engine, redis, [c.key for c in counters or (FOLLOWERS,)]) == {}


@pytest.fixture
def world(engine, redis):
    """Targets 20..29 with 2..6 followers each (five batches of two), counters exact."""
    seed_followers(engine, {target: 2 + target % 5 for target in range(20, 30)})
    run(engine, redis, (FOLLOWERS, FOLLOWINGS))
    assert exact(engine, redis, FOLLOWERS, FOLLOWINGS)
    return engine, redis


def count(engine, target) -> float:
    return expected(engine, KEY).get(str(target), 0)


# -- shards and overlapping runs -----------------------------------------------------------


def test_two_shards_at_once_keep_each_others_tracking(world):
    engine, redis = world
    redis.zincrby(KEY, -1, "25")  # shard 1/2's member, one short
    cp = Checkpoints()

    def shard_0_finishes_then_a_follow_lands():
        run(engine, redis, shard=Shard(0, 2))
        follow(engine, redis, 900, 25).run()  # after shard 1's snapshot: its old count now looks right

    cp.at("stream_batch", shard_0_finishes_then_a_follow_lands, counter=KEY, shard="1/2")
    run(engine, redis, shard=Shard(1, 2), checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis)


def test_a_full_run_starting_while_a_shard_rebuilds_leaves_its_staging_alone(world):
    engine, redis = world
    redis.delete(KEY)
    cp = Checkpoints()
    cp.at("rebuild_batch", lambda: attempt(lambda: run(engine, redis, (FOLLOWINGS,))), counter=KEY)

    report = run(engine, redis, shard=Shard(0, 2), checkpoint=cp)

    cp.assert_fired()
    assert not report.failed
    assert exact(engine, redis, FOLLOWERS, FOLLOWINGS)
    assert not list(redis.scan_iter("{count:user:followers}:staging:*"))


@pytest.mark.parametrize(
    "first, second, refused",
    [
        ("full", "full", True),
        ("full", "shard 1/2", True),
        ("shard 1/2", "full", True),
        ("shard 1/2", "shard 1/2", True),
        ("shard 0/2", "shard 0/3", True),
        ("shard 0/2", "shard 1/2", False),
        ("full", "full of another counter", False),
    ],
)
def test_runs_over_the_same_members_exclude_each_other_both_ways(world, first, second, refused):
    engine, redis = world
    shards = {"full": None, "shard 1/2": Shard(1, 2), "shard 0/2": Shard(0, 2), "shard 0/3": Shard(0, 3)}
    counters = (FOLLOWINGS,) if second == "full of another counter" else (FOLLOWERS,)
    outcome = []
    cp = Checkpoints()
    cp.at(
        "stream_batch",
        lambda: outcome.append(attempt(lambda: run(engine, redis, counters, shard=shards.get(second)))),
        counter=KEY,
    )

    run(engine, redis, shard=shards[first], checkpoint=cp)

    cp.assert_fired()
    assert isinstance(outcome[0], LockHeld) if refused else outcome[0] is None
    assert exact(engine, redis, FOLLOWERS, FOLLOWINGS)


def test_a_shard_waits_for_another_shards_rebuild_then_reconciles_its_part(world):
    engine, redis = world
    redis.delete(KEY)
    redis.set(KEY, "not a sorted set")
    waiting = threading.Event()
    second = {}
    cp_second = Checkpoints().at("claim", waiting.set, counter=KEY)

    def start_shard_1():
        thread = threading.Thread(
            target=lambda: second.update(report=run(engine, redis, shard=Shard(1, 2), checkpoint=cp_second))
        )
        thread.start()
        second["thread"] = thread
        assert waiting.wait(20), "shard 1/2 never found the rebuild claimed"
        follow(engine, redis, 901, 27).run()  # a shard 1 member changes during shard 0's build

    cp_first = Checkpoints().at("rebuild_batch", start_shard_1, counter=KEY)
    first = run(engine, redis, shard=Shard(0, 2), checkpoint=cp_first)
    second["thread"].join(30)

    cp_first.assert_fired()
    assert result_of(first).mode == "rebuild"
    assert not second["report"].failed
    assert exact(engine, redis)


# -- rebuilds under traffic ----------------------------------------------------------------


def test_a_plus_one_then_minus_one_during_a_rebuild_of_a_missing_key_is_counted(world):
    engine, redis = world
    redis.delete(KEY)
    write = follow(engine, redis, 900, 20)  # 20 is in the first batch, far from the last ones
    cp = Checkpoints()
    cp.at("snapshot", lambda: write.announce().commit(), counter=KEY)

    def land_then_cancel():
        write.increment()  # +1 into the recreated live key...
        unfollow(engine, redis, 900, 20).run()  # ...and -1 takes it to 0: the member leaves the set

    cp.at("rebuild_batch", land_then_cancel, counter=KEY)
    run(engine, redis, checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis)


@pytest.mark.parametrize("lands_at", ["swap", "final_pass"])
def test_an_increment_committed_before_the_build_landing_after_the_swap_counts_once(world, lands_at):
    engine, redis = world
    redis.delete(KEY)
    write = follow(engine, redis, 900, 20)
    cp = Checkpoints()
    cp.at("snapshot", lambda: write.announce().commit(), counter=KEY)
    cp.at(lands_at, write.increment, counter=KEY)

    run(engine, redis, checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis)


def test_a_wrong_type_key_under_shards_ends_exact_for_every_shards_members(world):
    engine, redis = world
    redis.delete(KEY)
    redis.set(KEY, "not a sorted set")
    cp = Checkpoints()
    # Whichever shard rebuilds, a member of shard 1/2 changes while it builds.
    cp.at("rebuild_batch", lambda: follow(engine, redis, 900, 21).run(), counter=KEY)

    reports = [
        run(engine, redis, shard=Shard(1, 2), checkpoint=cp),
        run(engine, redis, shard=Shard(0, 2), checkpoint=cp),
    ]

    cp.assert_fired()
    assert not any(r.failed for r in reports)
    assert exact(engine, redis)


def test_a_swap_refuses_a_staging_key_that_lost_members(world):
    engine, redis = world
    before = dict(redis.zscan_iter(KEY))
    cp = Checkpoints()
    cp.at(
        "rebuild_batch",
        lambda: [redis.unlink(k) for k in redis.scan_iter("{count:user:followers}:staging:*")],
        counter=KEY,
        nth=2,
    )

    report = run(engine, redis, rebuild=True, checkpoint=cp)

    cp.assert_fired()
    assert "staging" in result_of(report).error
    assert dict(redis.zscan_iter(KEY)) == before


# -- live traffic against the reconcile pass -------------------------------------------------


def another_member_changes_during_the_final_pass(engine, redis, cp, land):
    """Make member 27 a candidate of the run's final pass, and call ``land()`` while that
    pass re-reads it: after the last moment a run that trusts timing looks at anything else."""
    cp.at("stray_count", lambda: follow(engine, redis, 902, 27).run(), counter=KEY)  # touched after the stream
    write = follow(engine, redis, 901, 27)
    cp.at("final_pass", lambda: write.announce().commit(), counter=KEY)  # and wrong until its increment
    cp.at("observe", lambda: (land(), write.increment()), counter=KEY, after="final_pass")


def test_an_increment_slower_than_the_settle_delay_counts_once(world):
    engine, redis = world
    redis.zincrby(KEY, 3, "23")
    write = follow(engine, redis, 900, 23)
    cp = Checkpoints()
    cp.at("snapshot", lambda: write.announce().commit(), counter=KEY)
    another_member_changes_during_the_final_pass(engine, redis, cp, land=write.increment)  # long after settling

    report = run(engine, redis, checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis)
    assert result_of(report).skipped == 0


def test_an_increment_on_its_way_for_an_id_neither_side_shows_is_waited_for(world):
    # Found by the model checker: the database counts 31 once, Redis lacks it, and an
    # unfollow committed before the snapshot hides that: the stream does not count 31,
    # the sweep does not find it, and its -1 lands after the run looked at everything.
    engine, redis = world
    follow(engine, redis, 950, 31).run()
    redis.zrem(KEY, "31")
    leaving = unfollow(engine, redis, 950, 31)
    cp = Checkpoints()
    cp.at("snapshot", lambda: leaving.announce().commit(), counter=KEY)
    cp.at("observe", leaving.increment, counter=KEY, after="final_pass")

    run(engine, redis, checkpoint=cp)
    follow(engine, redis, 950, 31).run()  # traffic goes on: a wrong count would show now

    cp.assert_fired()
    assert exact(engine, redis)


def test_an_unannounced_increment_during_a_run_is_left_to_the_run(world):
    engine, redis = world
    redis.zincrby(KEY, 3, "23")
    write = follow(engine, redis, 900, 23)  # its announcement failed: commit, then increment
    cp = Checkpoints()
    cp.at("snapshot", write.commit, counter=KEY)
    another_member_changes_during_the_final_pass(engine, redis, cp, land=write.increment)

    run(engine, redis, checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis)


def test_a_batch_looked_at_in_parts_keeps_each_ids_answers_together(world, monkeypatch):
    engine, redis = world
    monkeypatch.setattr(candidates, "REDIS_IDS", 2)  # a batch of six is looked at in three parts
    redis.zincrby(KEY, -1, "20")  # wrong in a quiet part
    redis.zincrby(KEY, 5, "25")  # wrong in another quiet part
    redis.zincrby(KEY, 1, "23")  # wrong beside 22, whose follow is on its way
    write = follow(engine, redis, 900, 22)
    cp = Checkpoints()
    cp.at("snapshot", write.announce, counter=KEY)
    cp.at("stream_batch", lambda: write.commit().increment(), counter=KEY)

    report = run(engine, redis, batch_size=6, checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis)
    assert result_of(report).wrong == 3  # 20, 23 and 25; 22's increment was the app's own


def test_a_run_whose_lease_expired_writes_nothing(world):
    engine, redis = world
    redis.zincrby(KEY, -2, "22")  # 22 is two short
    cp = Checkpoints()
    # Traffic touches 22, so the run re-counts it in the database before writing.
    cp.at("stream_batch", lambda: follow(engine, redis, 900, 22).run(), counter=KEY)

    def lease_lost_then_a_manual_fix_and_another_run():
        expire_leases(redis, FOLLOWERS)  # a partition or a failover that lost the key
        with engine.begin() as conn:  # a DBA deletes two follows by hand: Redis is right again
            conn.exec_driver_sql("DELETE FROM user_relation WHERE target_user_id = 22 ORDER BY relation_id LIMIT 2")
        run(engine, redis)

    cp.at("recount", lease_lost_then_a_manual_fix_and_another_run, counter=KEY)
    outcome = attempt(lambda: run(engine, redis, checkpoint=cp))

    cp.assert_fired()
    assert exact(engine, redis)  # the stale count read before the lease was lost was not written
    assert isinstance(outcome, LockLost)


@pytest.mark.parametrize("drifted", [True, False], ids=["a write follows", "nothing to write"])
def test_a_writer_with_the_previous_increment_script_fails_the_counter(world, drifted):
    engine, redis = world
    if drifted:
        redis.zincrby(KEY, 2, "29")
    previous = redis.register_script(PREVIOUS_INCR)

    def old_pod_follows():
        follow(engine, redis, 900, 25).commit()
        previous(keys=[KEY, f"{{{KEY}}}:dirty"], args=["25", 1])

    cp = Checkpoints().at("stream_batch", old_pod_follows, counter=KEY)
    report = run(engine, redis, checkpoint=cp)

    cp.assert_fired()
    assert "previous increment script" in result_of(report).error


def test_a_leaked_announcement_leaves_its_member_skipped_until_it_expires(world):
    engine, redis = world
    redis.zincrby(KEY, 2, "24")
    follow(engine, redis, 900, 24).announce()  # the writer died before its commit

    first = run(engine, redis)

    assert result_of(first).skipped == 1
    assert "24" in result_of(first).skipped_ids
    redis.zadd(f"{{{KEY}}}:inflight:ops", {m: 0 for m in redis.zrange(f"{{{KEY}}}:inflight:ops", 0, -1)})
    second = run(engine, redis)  # the announcement's time is up: reaped, then repaired
    assert result_of(second).skipped == 0
    assert exact(engine, redis)


def test_check_under_traffic_reports_no_drift_that_is_not_there(world):
    engine, redis = world
    write = follow(engine, redis, 900, 26)
    cp = Checkpoints()
    cp.at("snapshot", lambda: write.announce().commit(), counter=KEY)
    cp.at(("observe", "final_pass"), write.increment, counter=KEY)

    report = run(engine, redis, dry_run=True, checkpoint=cp)

    cp.assert_fired()
    assert not report.drift


@pytest.mark.parametrize("step", ["applied", "announced and committed"])
def test_a_follow_between_a_quiet_batchs_read_and_its_write_is_not_written_over(world, step):
    # A quiet night's batch is written without a check per id only while nothing of the
    # counter is tracked or announced: a follow of 23 between its read and its write stops that.
    engine, redis = world
    redis.zincrby(KEY, -2, "23")
    write = follow(engine, redis, 901, 23)
    cp = Checkpoints()
    cp.at("stream_batch", write.run if step == "applied" else lambda: write.announce().commit(), counter=KEY, nth=2)
    if step != "applied":
        cp.at("write", write.increment, counter=KEY)

    report = run(engine, redis, checkpoint=cp)

    cp.assert_fired()
    assert [c["members"] for n, c in cp.reached if n == "stream_batch"][1] == ["22", "23"]
    assert exact(engine, redis)
    assert result_of(report).wrong == 1


# -- re-counts from a snapshot ---------------------------------------------------------------


def a_candidate(engine, redis, cp, target=23, counter=KEY):
    """Make ``target`` a candidate (touched while streamed) two short: the run re-counts it."""
    redis.zincrby(KEY, -2, str(target))
    cp.at("stream_batch", lambda: follow(engine, redis, 900, target).run(), counter=counter)


def observed(cp, member) -> int:
    """How many times the run observed ``member`` before its final pass (which looks again
    at every id traffic touched)."""
    names = cp.names()
    before = cp.reached[: names.index("final_pass")] if "final_pass" in names else cp.reached
    return sum(1 for n, c in before if n == "observe" and member in c["members"])


def test_a_follow_landing_between_a_recount_and_its_write_is_added_to_the_count(world):
    engine, redis = world
    cp = Checkpoints()
    a_candidate(engine, redis, cp)
    cp.at("recount", lambda: follow(engine, redis, 901, 23).run(), counter=KEY)  # after the snapshot

    report = run(engine, redis, checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis)
    assert observed(cp, "23") == 1  # written at once, the count plus the follow's +1, not tried again
    assert result_of(report).wrong == 1 and result_of(report).skipped == 0


def test_a_shards_run_retries_an_id_that_moved_between_its_recount_and_its_write(world):
    # Another shard's run may write the same id (after a rebuild): adding a gain is a full run's alone.
    engine, redis = world
    cp = Checkpoints()
    a_candidate(engine, redis, cp, target=25)
    cp.at("recount", lambda: follow(engine, redis, 901, 25).run(), counter=KEY)

    run(engine, redis, shard=Shard(1, 2), checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis)
    assert observed(cp, "25") == 2


@pytest.mark.parametrize("committed", ["after the snapshot", "before the snapshot"])
def test_a_follow_applied_between_the_observe_and_the_second_look_is_looked_at_again(world, committed):
    engine, redis = world
    cp = Checkpoints()
    a_candidate(engine, redis, cp)
    write = follow(engine, redis, 901, 23)
    if committed == "after the snapshot":  # not in the count, but in the score
        cp.at("recount_view", write.run, counter=KEY)
    else:  # in the count, and in the score: the score observed matches neither side
        cp.at("observe", lambda: write.announce().commit(), counter=KEY)
        cp.at("recount_view", write.increment, counter=KEY)

    run(engine, redis, checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis)
    assert observed(cp, "23") >= 2  # the second look found it busy: tried again


def test_a_member_queued_twice_is_corrected_once(world, monkeypatch):
    engine, redis = world
    monkeypatch.setattr(candidates, "REDIS_IDS", 1)  # each copy written by a script of its own
    queue = candidates.Candidates.queue

    def twice(self, *args, **kwargs):
        queue(self, *args, **kwargs)
        queue(self, *args, **kwargs)

    monkeypatch.setattr(candidates.Candidates, "queue", twice)
    cp = Checkpoints()
    a_candidate(engine, redis, cp)

    report = run(engine, redis, checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis)
    assert result_of(report).wrong == 1


def test_a_recount_reads_the_database_as_it_was_at_its_snapshot(world):
    engine, redis = world
    cp = Checkpoints()
    a_candidate(engine, redis, cp)
    cp.at("recount_view", lambda: follow(engine, redis, 901, 23).commit(), counter=KEY)  # applied later

    run(engine, redis, checkpoint=cp)
    seen_by_recount = redis.zscore(KEY, "23")
    follow(engine, redis, 901, 23).increment()

    cp.assert_fired()
    assert seen_by_recount == count(engine, 23) - 1  # the follow committed after the snapshot is not in it
    assert exact(engine, redis)


# -- what a run leaves in Redis --------------------------------------------------------------


def test_a_junk_member_with_a_trailing_newline_is_removed(world):
    engine, redis = world
    redis.zadd(KEY, {"25\n": 1})
    report = run(engine, redis)
    assert redis.zscore(KEY, "25\n") is None
    assert result_of(report).wrong == 1
    assert exact(engine, redis)


def test_no_key_a_run_creates_has_a_ttl_that_eviction_could_pick(world):
    engine, redis = world
    redis.delete(KEY)
    redis.zincrby(FOLLOWINGS.key, 2, "1000")
    seen = {}

    def note_ttls():
        for key in redis.scan_iter("*count:*"):
            ttl = redis.pttl(key)
            if ttl != -2:  # gone since the scan (the other counter's catch-up ended meanwhile)
                seen[key] = ttl

    cp = Checkpoints()
    for name in ("rebuild_batch", "swap", "stream_batch", "final_pass"):
        for counter in (FOLLOWERS, FOLLOWINGS):
            cp.at(name, note_ttls, counter=counter)
    run(engine, redis, (FOLLOWERS, FOLLOWINGS), checkpoint=cp)

    assert any("staging" in key for key in seen)
    assert {key: ttl for key, ttl in seen.items() if ttl != -1} == {}


def test_every_checkpoint_a_run_reaches_is_declared(world):
    from common.cache.engine import CHECKPOINTS

    engine, redis = world
    redis.delete(KEY)
    redis.zincrby(FOLLOWINGS.key, 2, "1000")
    cp = Checkpoints()
    run(engine, redis, (FOLLOWERS, FOLLOWINGS), checkpoint=cp)
    assert set(cp.names()) <= set(CHECKPOINTS)


def test_counters_outside_the_run_are_not_touched(world):
    engine, redis = world
    other = Statistic.registry["count:art:liking"]
    redis.zadd(other.key, {"5": 3})
    run(engine, redis)
    assert redis.zscore(other.key, "5") == 3


# -- the next counter, begun ahead ---------------------------------------------------------


def test_the_next_counter_is_begun_while_the_first_finishes(world):
    engine, redis = world
    begun = threading.Event()
    cp = Checkpoints().at("snapshot", begun.set, counter=KEY)
    cp.at("final_pass", lambda: begun.wait(timeout=10), counter=FOLLOWINGS)  # not a timer: fails unless begun
    run(engine, redis, (FOLLOWINGS, FOLLOWERS), checkpoint=cp)
    order = [(name, context["counter"]) for name, context in cp.reached if name in ("snapshot", "release")]
    assert order.index(("snapshot", KEY)) < order.index(("release", FOLLOWINGS.key))


@pytest.mark.parametrize("lands_at", ["snapshot", "first_release"])
def test_a_follow_between_a_counter_begun_ahead_and_its_turn_is_counted(world, lands_at):
    engine, redis = world
    redis.zincrby(KEY, 3, "24")  # drift too, so the run has something to write
    slow = follow(engine, redis, 901, 26).announce()
    committed = threading.Event()

    def land():
        follow(engine, redis, 900, 22).run()
        slow.commit()
        committed.set()

    cp = Checkpoints()
    if lands_at == "snapshot":  # the next counter's query starts while the first one still runs
        cp.at("snapshot", land, counter=KEY)
    else:  # the first counter gives its lease back after the next one's stream began
        cp.at("release", land, counter=FOLLOWINGS)
    # The app increments after its commit: the stream waits for it (the release is the other thread's).
    cp.at("stream_batch", lambda: committed.wait(timeout=30) and slow.increment(), counter=KEY, nth=2)

    run(engine, redis, (FOLLOWINGS, FOLLOWERS), checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis, FOLLOWERS, FOLLOWINGS)


def test_a_stop_while_the_next_counter_is_begun_leaves_no_reader_or_query(world):
    engine, redis = world
    begun = threading.Event()

    def stop():
        begun.wait(timeout=10)
        raise LockLost("stopped by the test")

    cp = Checkpoints().at("snapshot", begun.set, counter=KEY).at("stray_count", stop, counter=FOLLOWINGS)
    with pytest.raises(LockLost):
        run(engine, redis, (FOLLOWINGS, FOLLOWERS), checkpoint=cp)

    cp.assert_fired()
    assert ("snapshot", KEY) in [(n, c["counter"]) for n, c in cp.reached]
    assert not [t for t in threading.enumerate() if t.name == "stats-reader"]
    with engine.connect() as conn:
        queries = conn.execute(
            text("SELECT info FROM information_schema.processlist WHERE info LIKE :q"), {"q": "%counted%"}
        )
        assert [q for (q,) in queries if "processlist" not in q] == []


# -- the sweep's walk over the set ----------------------------------------------------------


def move_an_anchor(engine, redis, cp, user):
    """Follow the last member of the page just read (through the app's write path), so the
    anchor the next page would start from has another score."""
    page = [c for n, c in cp.reached if n == "sweep_batch"][-1]["members"]
    follow(engine, redis, user, int(page[-1])).run()


@pytest.mark.parametrize("anchors, first", [(16, 2), (1, 1)])  # (1, 1): the only anchor moves
def test_strays_after_a_page_whose_anchor_moved_are_still_removed(world, monkeypatch, anchors, first):
    from common.cache import repair

    monkeypatch.setattr(repair, "ANCHORS", anchors)
    engine, redis = world
    redis.zadd(KEY, {str(70 + i): 1 + i % 3 for i in range(8)})  # strays among the members
    cp = Checkpoints()
    cp.at("sweep_batch", lambda: move_an_anchor(engine, redis, cp, 950), counter=KEY, nth=first)
    cp.at("sweep_batch", lambda: move_an_anchor(engine, redis, cp, 951), counter=KEY, nth=4)

    run(engine, redis, checkpoint=cp)

    cp.assert_fired()
    assert exact(engine, redis, FOLLOWERS, FOLLOWINGS)


def test_a_stray_is_swept_when_traffic_removed_a_streamed_id_and_the_sizes_agree(world):
    engine, redis = world
    redis.zadd(KEY, {"77": 1})  # a stray: the database counts no follower of 77
    cp = Checkpoints()

    def target_20_loses_both_followers():  # after the stream looked at 20: it leaves the set
        unfollow(engine, redis, 1000, 20).run()
        unfollow(engine, redis, 1001, 20).run()

    cp.at("stream_batch", target_20_loses_both_followers, counter=KEY)

    run(engine, redis, checkpoint=cp)

    cp.assert_fired()
    sizes = [c for n, c in cp.reached if n == "stray_count"]
    assert sizes[0]["size"] == sizes[0]["streamed"] == 10  # 77 in, 20 out: the sizes alone would say "nothing stray"
    assert "sweep_batch" in cp.names()
    assert redis.zscore(KEY, "77") is None
    assert exact(engine, redis)


def test_a_counter_reports_where_its_seconds_went(world):
    engine, redis = world
    cp = Checkpoints()
    announced_when_streamed(cp, follow(engine, redis, 900, 23), counter=FOLLOWERS, nth=3)  # 23 announced when looked at

    result = result_of(run(engine, redis, checkpoint=cp))

    cp.assert_fired()
    timing = result.as_dict()["timing"]
    assert timing["recounts"] >= 1 and timing["rechecked"] >= 1
    assert 0 < result.recount_seconds < result.seconds
    assert result.pass_seconds > 0 and result.catch_up_seconds > 0
    assert result.pass_seconds + result.catch_up_seconds <= result.seconds
    assert exact(engine, redis)


def test_the_catch_up_of_one_counter_runs_while_the_next_counter_streams(world):
    engine, redis = world
    redis.zincrby(KEY, 3, "22")
    redis.zincrby(FOLLOWINGS.key, -1, "1003")
    next_streams = threading.Event()
    waited = []
    cp = Checkpoints()
    cp.at("final_pass", lambda: waited.append(next_streams.wait(timeout=30)), counter=KEY)
    cp.at("stream_batch", next_streams.set, counter=FOLLOWINGS)

    report = run(engine, redis, (FOLLOWERS, FOLLOWINGS), checkpoint=cp)

    cp.assert_fired()
    assert waited == [True]  # one at a time, the final pass would have waited in vain
    assert [r.counter for r in report.results] == [KEY, FOLLOWINGS.key]
    assert [r.wrong for r in report.results] == [1, 1]
    assert exact(engine, redis, FOLLOWERS, FOLLOWINGS)


def test_a_set_that_keeps_moving_under_the_sweep_fails_the_counter_and_says_so(world, monkeypatch):
    from common.cache import repair

    monkeypatch.setattr(repair, "ANCHORS", 1)
    monkeypatch.setattr(repair, "RESTARTS", 0)
    engine, redis = world
    redis.zadd(KEY, {"77": 2})
    cp = Checkpoints().at("sweep_batch", lambda: move_an_anchor(engine, redis, cp, 950), counter=KEY)

    report = run(engine, redis, checkpoint=cp)

    assert "kept changing under the sweep" in result_of(report).error
    assert run(engine, redis).failed == [] and exact(engine, redis, FOLLOWERS)


def test_a_missing_key_begun_ahead_is_rebuilt_exactly_with_follows_before_its_claim(world):
    engine, redis = world
    redis.delete(KEY)
    cp = Checkpoints()
    cp.at("snapshot", lambda: follow(engine, redis, 900, 22).run(), counter=KEY)
    cp.at("claim", lambda: follow(engine, redis, 901, 23).run(), counter=KEY)

    report = run(engine, redis, (FOLLOWINGS, FOLLOWERS), checkpoint=cp)

    cp.assert_fired()
    assert result_of(report).mode == "rebuild"
    assert exact(engine, redis, FOLLOWERS, FOLLOWINGS)


# -- hot ids: pinned under the database's locks ------------------------------------------------

HOT = "1003"  # follows 21; followings are counted by user_relation.user_id, which an index starts


def keep_hot(cp, counter, member, land):
    """A checkpoint callable: ``cp``, and ``land(k)`` (the k-th write touching ``member``)
    between each re-count's snapshot of ``member`` in ``counter`` and its second look, so it
    never stays quiet."""
    landed = itertools.count()

    def at(name, **context):
        cp(name, **context)
        if name == "recount_view" and context["counter"] == counter.key and member in context["members"]:
            land(next(landed))

    return at


def hot_follower(engine, redis, cp):
    """:func:`keep_hot` for HOT in FOLLOWINGS: HOT follows someone new each time."""
    return keep_hot(cp, FOLLOWINGS, HOT, lambda k: follow(engine, redis, int(HOT), 100 + k).run())


def announced_when_streamed(cp, write, counter=FOLLOWINGS, nth=9):
    """Make the member of ``write`` a candidate of ``counter``: announced and committed
    when the stream starts, it is applied after the ``nth`` batch."""
    cp.at("snapshot", lambda: write.announce().commit(), counter=counter)
    cp.at("stream_batch", write.increment, counter=counter, nth=nth)


def test_an_id_never_quiet_is_pinned_under_its_rows_locks_and_ends_exact(world):
    engine, redis = world
    redis.zincrby(FOLLOWINGS.key, 3, HOT)
    cp = Checkpoints()
    announced_when_streamed(cp, follow(engine, redis, int(HOT), 99))

    report = run(engine, redis, (FOLLOWINGS,), checkpoint=hot_follower(engine, redis, cp))

    cp.assert_fired()
    result = result_of(report, FOLLOWINGS)
    assert [c["members"] for n, c in cp.reached if n == "locked"] == [[HOT]]
    assert result.skipped == 0 and result.wrong >= 1
    assert result.pinned == 1 and 0 < result.pin_seconds < result.seconds
    assert exact(engine, redis, FOLLOWINGS)


def test_a_counter_without_an_index_on_its_member_column_skips_an_id_never_quiet(world):
    engine, redis = world
    cp = Checkpoints()
    announced_when_streamed(cp, follow(engine, redis, 900, 24), counter=FOLLOWERS, nth=3)
    new_follower = keep_hot(cp, FOLLOWERS, "24", lambda k: follow(engine, redis, 2000 + k, 24).run())

    report = run(engine, redis, checkpoint=new_follower)

    assert "locked" not in cp.names()  # user_relation.target_user_id has no index of its own
    assert result_of(report).skipped_ids == ["24"]


def test_a_write_to_a_pinned_id_waits_for_the_locks_then_counts_once(world):
    engine, redis = world
    cp = Checkpoints()
    announced_when_streamed(cp, follow(engine, redis, int(HOT), 99))
    waiting = threading.Thread(target=lambda: follow(engine, redis, int(HOT), 29).run_as_app())

    def a_write_comes_in():
        waiting.start()
        assert wait_for_a_lock_wait(engine), "the write did not wait for the pin's locks"
        with engine.begin() as conn:  # another user's follow does not wait: only 1003's rows are locked
            conn.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
            conn.execute(text("INSERT INTO user_relation (user_id, target_user_id, relation) VALUES (1010, 99, 0)"))
            conn.execute(text("SET SESSION innodb_lock_wait_timeout = DEFAULT"))

    cp.at("locked", a_write_comes_in, counter=FOLLOWINGS)

    report = run(engine, redis, (FOLLOWINGS,), checkpoint=hot_follower(engine, redis, cp))
    waiting.join(timeout=30)

    cp.assert_fired()
    assert not waiting.is_alive()
    assert result_of(report, FOLLOWINGS).skipped == 0
    assert exact(engine, redis, FOLLOWINGS)


def test_a_pin_that_cannot_lock_the_rows_in_time_skips_the_id_and_writes_nothing(world):
    engine, redis = world
    redis.zincrby(FOLLOWINGS.key, 3, HOT)
    cp = Checkpoints()
    announced_when_streamed(cp, follow(engine, redis, int(HOT), 99))
    holder = engine.connect()
    holding = holder.begin()

    def another_transaction_holds_a_row():  # its existing follow, not the gaps the follows go into
        holder.execute(text("SELECT * FROM user_relation WHERE user_id = 1003 AND target_user_id = 21 FOR UPDATE"))

    cp.at("final_pass", another_transaction_holds_a_row, counter=FOLLOWINGS)
    try:
        report = run(engine, redis, (FOLLOWINGS,), checkpoint=hot_follower(engine, redis, cp))
        score = redis.zscore(FOLLOWINGS.key, HOT)
    finally:
        holding.rollback()
        holder.close()

    cp.assert_fired()
    assert "locked" not in cp.names()
    assert result_of(report, FOLLOWINGS).skipped_ids == [HOT]
    assert score != expected(engine, FOLLOWINGS.key)[HOT]  # left wrong, and said so
    run(engine, redis, (FOLLOWINGS,))
    assert exact(engine, redis, FOLLOWINGS)


def wait_for_a_lock_wait(engine, timeout=10.0) -> bool:
    """Tell whether some transaction is waiting for a lock, looking until ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text("SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'")
            ).scalar()
            conn.commit()
            if waiting:
                return True
            time.sleep(0.01)
    return False


def test_a_counters_pass_waits_for_the_catch_up_of_the_counter_two_before(world):
    engine, redis = world
    arts = Statistic.registry["count:user:arts"]  # missing: rebuilt (empty), its swap in the main thread
    third_passes = threading.Event()
    waited = []
    cp = Checkpoints()
    cp.at("final_pass", lambda: waited.append(third_passes.wait(timeout=3)), counter=KEY)
    cp.at("swap", third_passes.set, counter=arts)

    report = run(engine, redis, (FOLLOWERS, FOLLOWINGS, arts), checkpoint=cp)

    cp.assert_fired()
    assert waited == [False]  # one catch-up waits at a time: the third pass came after the first catch-up
    names = [(n, c["counter"]) for n, c in cp.reached]
    assert names.index(("release", KEY)) < names.index(("swap", arts.key))
    assert not report.failed and exact(engine, redis, FOLLOWERS, FOLLOWINGS)
