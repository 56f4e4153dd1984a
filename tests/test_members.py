"""Member ids, the seen-id index and shards: the library's pure parts, no server needed."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.cache.members import (
    MAX_ID,
    MAX_SIGNED_ID,
    IdBitmap,
    Shard,
    is_id,
    owned_by,
    parse_member,
    parse_members,
)

JUNK = ["007", "-1", "1.0", "abc", "", " 1", "1 ", "5\n", "\n5", "+5", str(MAX_ID + 1), "\u0663", "\u00b2", "1_000"]


def test_parse_member_reads_canonical_ids():
    assert parse_member("42") == 42
    assert parse_member("0") == 0
    assert parse_member(str(MAX_ID)) == MAX_ID
    assert parse_member(b"17") == 17


@pytest.mark.parametrize("junk", JUNK)
def test_parse_member_calls_anything_else_junk(junk):
    assert parse_member(junk) is None


@pytest.mark.parametrize("junk", JUNK)
def test_parse_members_finds_one_junk_member_among_ids(junk):
    assert parse_members(["12", junk, "7"]) == [12, None, 7]


@given(st.lists(st.one_of(st.integers(0, 2**65).map(str), st.sampled_from(JUNK), st.text(max_size=4))))
def test_parse_members_says_what_parse_member_says_of_each(members):
    assert parse_members(members) == [parse_member(m) for m in members]


@given(
    st.lists(st.one_of(st.integers(0, 5000), st.integers(1 << 40, MAX_ID))),
    st.lists(st.one_of(st.integers(0, 6000), st.integers(1 << 40, MAX_ID))),
)
def test_id_bitmap_add_many_and_absent_agree_with_a_set(added, asked):
    seen = IdBitmap(limit=1 << 10)
    half = len(added) // 2
    seen.add_many(sorted(added[:half]))  # the stream's order
    seen.add_many(added[half:])  # any order
    asked = asked + added[:3]
    assert seen.absent(asked) == [at for at, i in enumerate(asked) if i not in set(added)]
    assert all(i in seen for i in added)


@pytest.mark.parametrize(
    "value, valid",
    [
        (1, True),
        (MAX_ID, True),
        (0, False),
        (-3, False),
        (MAX_ID + 1, False),
        (True, False),
        ("5", False),
        (5.0, False),
    ],
)
def test_is_id_takes_positive_integers_that_fit_bigint_unsigned(value, valid):
    assert is_id(value) is valid


def test_is_id_with_an_upper_bound_refuses_ids_above_it():
    assert is_id(MAX_SIGNED_ID, MAX_SIGNED_ID) is True
    assert is_id(MAX_SIGNED_ID + 1, MAX_SIGNED_ID) is False
    assert is_id(MAX_SIGNED_ID + 1) is True


def test_id_bitmap_knows_small_and_snowflake_ids():
    seen = IdBitmap(limit=1 << 10)
    for member_id in [3, 900, 5000, 1 << 40, (1 << 40) + 7, MAX_ID]:
        seen.add(member_id)
    assert all(i in seen for i in [3, 900, 5000, 1 << 40, (1 << 40) + 7, MAX_ID])
    assert not any(i in seen for i in [0, 4, 901, 4999, (1 << 40) + 1, 2**63])


def test_id_bitmap_keeps_large_ids_found_out_of_order():
    seen = IdBitmap(limit=1)
    for member_id in [50, 10, 30]:
        seen.add(member_id)
    assert list(seen.large) == [10, 30, 50]


@pytest.mark.parametrize(
    "text, error",
    [("3/3", "index"), ("a/b", "INDEX/TOTAL"), ("1/0", "index"), ("", "INDEX/TOTAL"), ("-1/2", "INDEX/TOTAL")],
)
def test_shard_parse_rejects_malformed_specs(text, error):
    with pytest.raises(ValueError, match=error):
        Shard.parse(text)


def test_shards_split_every_id_exactly_once_and_give_junk_to_shard_0():
    shards = [Shard.parse(f"{i}/3") for i in range(3)]
    for member_id in range(30):
        assert sum(shard.owns(member_id) for shard in shards) == 1
    assert [shard.owns(None) for shard in shards] == [True, False, False]
    assert str(shards[2]) == "2/3"


def test_a_run_without_a_shard_owns_everything():
    assert owned_by(None, 7) and owned_by(None, None)
    assert not owned_by(Shard(1, 2), 4)
