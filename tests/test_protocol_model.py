"""The repair protocol, model-checked with Spin (common/cache/model).

The model of today's protocol verifies, exhaustively, in every scenario; the model of the
release before fails with the counterexamples of issue 8; and each deliberate hole cut
into today's model is found, so the checker is shown able to fail. The model names its
steps after the engine's checkpoints: a checkpoint missing on either side fails a test.
"""

import re
import subprocess
from pathlib import Path

import pytest

from common.cache.engine import CHECKPOINTS
from common.cache.writes import WRITER_STEPS
from tests.servers import binary

MODELS = Path(__file__).resolve().parent.parent / "common" / "cache" / "model"
PROTOCOL = (MODELS / "protocol.pml").read_text()
PREVIOUS = (MODELS / "previous.pml").read_text()
EXACT = "((!(vouched)||skipped)"  # how pan prints the final assertion's start
# Writers per scenario: three where the state space allows it (a +1, a -1 and a +1 can
# put a score back where a run read it: the case tracking is for), two elsewhere. By hand,
# scenario 4 with three writers verifies too (31M states, 63 s, 1.7 GB).
WRITERS = {1: 3, 2: 3, 3: 3, 4: 2, 5: 2, 6: 3, 7: 3}
SCENARIOS = {
    1: "one run",
    2: "two shards at once",
    3: "missing key",
    4: "wrong type under shards",
    5: "lease expires",
    6: "rebuild",
    7: "one run, lease expires",
}
# With PINNABLE (a hot id re-counted with its rows locked) every scenario but 5, whose
# state space grows to 72M states (163 s, 3.7 GB: verified by hand before the re-count's
# snapshot step, not since); 7 covers a lease
# expiring while the rows are locked.
CHECKED = [(n, 0) for n in range(1, 7)] + [(n, 1) for n in (1, 2, 3, 4, 6, 7)]


def verify(tmp_path, model: str, **defines) -> str:
    """Check ``model`` exhaustively with Spin; return pan's report."""
    (tmp_path / "model.pml").write_text(model)
    flags = [f"-D{name}={value}" if value is not True else f"-D{name}" for name, value in defines.items()]
    subprocess.run([binary("spin"), "-a", *flags, "model.pml"], cwd=tmp_path, check=True, capture_output=True)
    subprocess.run(
        [binary("gcc"), "-O2", "-DSAFETY", "-DCOLLAPSE", "-o", "pan", "pan.c"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    report = subprocess.run(["./pan", "-m2000000"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert "max search depth too small" not in report and "states, stored" in report, report
    return report


def errors(report: str) -> int:
    return int(re.search(r"errors: (\d+)", report).group(1))


@pytest.mark.parametrize(
    "scenario, pinnable",
    CHECKED,
    ids=[SCENARIOS[n] + (", hot ids pinned" if pin else "") for n, pin in CHECKED],
)
def test_every_counter_ends_exact_in_every_interleaving(tmp_path, scenario, pinnable):
    report = verify(tmp_path, PROTOCOL, SCENARIO=scenario, WRITERS=WRITERS[scenario], PINNABLE=pinnable)
    assert errors(report) == 0, report


@pytest.mark.parametrize(
    "scenario, case, assertion",
    [
        (1, "CASE1", "( !(relying)||dirty)"),
        (1, None, EXACT),
        (3, "CASE3", "( !(built_touch)||rp)"),
        (3, None, EXACT),
        (7, None, EXACT),
    ],
    ids=[
        "case 1: shared tracking deleted",
        "case 1: counter left wrong",
        "case 3: touch not moved aside",
        "case 3: counter left wrong",
        "an increment slower than the settle delay",
    ],
)
def test_the_previous_protocol_has_the_counterexamples_of_issue_8(tmp_path, scenario, case, assertion):
    defines = {"SCENARIO": scenario, **({case: True} if case else {})}
    report = verify(tmp_path, PREVIOUS, **defines)
    assert errors(report) >= 1, report
    assert f"assertion violated {assertion}".replace(" ", "") in report.replace(" ", ""), report


# (what is cut out, the scenario that must catch it, text of today's model, its replacement)
MUTANTS = [
    (
        "writes ignore announced increments",
        1,
        "#define QUIET(r) (!track[r] && inflight == 0 &&",
        "#define QUIET(r) (!track[r] &&",
    ),
    ("writes ignore tracking", 1, "#define QUIET(r) (!track[r] && ", "#define QUIET(r) ("),
    (
        "the stream trusts a touched id",
        1,
        ":: p1 || t1 -> cand = true; goto settle_",
        ":: p1 -> cand = true; goto settle_",
    ),
    (
        "the final pass forgets announced ids",
        1,
        "((track[r] || inflight > 0) && (owns || rebuilt))",
        "(track[r] && (owns || rebuilt))",
    ),
    ("writes are not fenced by the lease", 5, "#define FENCE(r) live[r]", "#define FENCE(r) true"),
    (
        "a release clears the other run's tracking",
        2,
        "live[r] = false; track[r] = false;",
        "live[r] = false; track[0] = false; track[RUNS - 1] = false;",
    ),
    (
        "a pin writes over an increment still announced",
        1,
        ":: FENCE(r) && inflight == 0 ->\n            cand = false;",
        ":: FENCE(r) ->\n            cand = false;",
    ),
    ("a commit does not wait for a pin's locks", 1, "atomic { dblock == 0 -> db = db + d }", "db = db + d"),
    (
        "a pin's write is not fenced by the lease",
        7,
        ":: !FENCE(r) -> lost = true\n        :: FENCE(r) && inflight == 0 ->",
        ":: false -> lost = true\n        :: inflight == 0 ->",
    ),
    ("a pin counts before it holds the locks", 1, "    c = db;\n    if :: inflight == 0", "    if :: inflight == 0"),
    (
        "a re-count trusts the score observed without a second look",
        1,
        "        :: QUIET(r) -> cand = false\n        :: else -> cand = true",
        "        :: true -> cand = false",
    ),
    (
        "a re-count's snapshot is taken after its second look",
        1,
        "recount_view:\n    c = db;",
        "recount_view:\n    skip;",
    ),
    (
        "a full run writes the count without what the score gained",
        1,
        "want = want + (rp -> rs : 0) - (e1 -> s1 : 0);",
        "skip;",
    ),
    (
        "a shard's run adds what the score gained",
        4,
        "FENCE(r) && adjusting && exclusive ->",
        "FENCE(r) && adjusting ->",
    ),
]
PINS = {name for name, *_ in MUTANTS if "pin" in name}


@pytest.mark.parametrize("name, scenario, text, replacement", MUTANTS, ids=[m[0] for m in MUTANTS])
def test_the_checker_finds_each_hole_cut_into_the_protocol(tmp_path, name, scenario, text, replacement):
    assert PROTOCOL.count(text) == 1, f"the model changed: {text!r} is gone or not one place"
    model = PROTOCOL.replace(text, replacement)
    if name == "a pin counts before it holds the locks":
        model = model.replace("    pinned = true;\n", "    pinned = true;\n    c = db;\n")
    if name == "a re-count's snapshot is taken after its second look":
        model = model.replace("\nrecount:\n", "\n    c = db;\nrecount:\n")
    if name == "a shard's run adds what the score gained":
        model = model.replace(":: FENCE(r) && !(adjusting && exclusive) &&", ":: FENCE(r) && !adjusting &&")
    pinnable = int(name in PINS)
    report = verify(tmp_path, model, SCENARIO=scenario, WRITERS=WRITERS[scenario], PINNABLE=pinnable)
    assert errors(report) >= 1, f"{name}: not found\n{report}"


def labels(model: str) -> set:
    """The model's step labels: those without a trailing underscore (which mark internal jumps)."""
    return {name for name in re.findall(r"^([a-z][a-z_]*):", model, re.M) if not name.endswith("_")}


def test_the_model_names_every_step_after_a_checkpoint_and_every_checkpoint_has_a_step():
    assert labels(PROTOCOL) == set(CHECKPOINTS) | set(WRITER_STEPS)


def test_every_declared_checkpoint_is_reached_by_the_engine_code():
    source = "".join(p.read_text() for p in (MODELS.parent).glob("*.py"))
    called = set(re.findall(r"\bat\(\s*\"([a-z_]+)\"", source))
    assert called == set(CHECKPOINTS)
