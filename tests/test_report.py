"""Results and reports: the library's pure parts, no server needed."""

import json

from common.cache.members import Shard
from common.cache.report import MAX_SKIPPED_IDS, CounterResult, Drift, Report


def test_fixed_is_every_member_written():
    result = CounterResult("count:user:arts", added=2, changed=3, removed=4, wrong=9)
    assert result.fixed == 9
    assert result.as_dict()["fixed"] == 9


def test_skipped_ids_are_kept_up_to_a_bound():
    result = CounterResult("count:user:arts")
    for n in range(MAX_SKIPPED_IDS + 5):
        result.skip(str(n))
    assert result.skipped == MAX_SKIPPED_IDS + 5
    assert len(result.skipped_ids) == MAX_SKIPPED_IDS


def test_an_infinite_score_stays_valid_json():
    example = Drift("count:user:arts", "7", float("-inf"), 3).as_dict()
    assert json.loads(json.dumps(example)) == {"counter": "count:user:arts", "id": "7", "wrong": "-inf", "right": 3}


def test_a_report_totals_its_counters_and_tells_drift_and_failures():
    ok = CounterResult(
        "count:user:arts", scanned=10, wrong=2, changed=2, examples=[Drift("count:user:arts", "1", 3.0, 4)]
    )
    busy = CounterResult("count:art:liking", scanned=5, skipped=1)
    broken = CounterResult("count:art:comm", error="OperationalError: gone")
    report = Report([ok, busy, broken], dry_run=False, shard=Shard(1, 2), seconds=1.23456)

    assert report.totals == {
        "scanned": 15,
        "wrong": 2,
        "added": 0,
        "changed": 2,
        "removed": 0,
        "skipped": 1,
        "fixed": 2,
        "seconds": 1.235,
    }
    assert report.drift
    assert report.failed == [broken]
    assert report.examples(5) == ok.examples
    data = report.as_dict(examples=0)
    assert data["shard"] == "1/2" and data["failed"] == ["count:art:comm"]
    assert data["counters"][0]["examples"] == []
    assert json.loads(json.dumps(data)) == data


def test_a_clean_report_shows_no_drift():
    assert not Report([CounterResult("count:user:arts", scanned=3)], dry_run=True).drift
