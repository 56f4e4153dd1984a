from common.demo import drift_counters, seed_database
from tests.expected import wrong_members


def test_fix_makes_every_counter_equal_the_database(runner, engine, redis):
    seed_database(engine, users=60)
    result = runner.invoke(args=["stats", "fix"])
    assert result.exit_code == 0, result.output
    assert wrong_members(engine, redis) == {}
    drift_counters(redis)
    assert wrong_members(engine, redis) != {}
    result = runner.invoke(args=["stats", "fix"])
    assert result.exit_code == 0, result.output
    assert wrong_members(engine, redis) == {}
