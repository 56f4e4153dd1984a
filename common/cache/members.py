"""Member ids: what counts as one, the ids a pass has seen, and the shards they fall in."""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Optional

#: Ids are BIGINT UNSIGNED in the original schema.
MAX_ID = 2**64 - 1
#: The ids every backend stores: BIGINT is signed on SQLite, so the API and tokens take 1 to 2**63 - 1.
MAX_SIGNED_ID = 2**63 - 1

# A canonical non-negative integer: no sign, no leading zero, no whitespace, ASCII digits.
_ID = re.compile(r"0|[1-9][0-9]{0,19}")


def parse_member(member) -> Optional[int]:
    """Return the id a member (or any text) names, or None when it is not a canonical id.

    ``"5\\n"``, ``" 5"``, ``"05"``, ``"-5"``, ``"5.0"`` and non-ASCII digits are junk: the
    app writes ``str(id)`` and nothing else.
    """
    if isinstance(member, bytes):
        member = member.decode("utf-8", "replace")
    if not isinstance(member, str) or not _ID.fullmatch(member):
        return None
    value = int(member)
    return value if value <= MAX_ID else None


def parse_members(members: list) -> list:
    """Return :func:`parse_member` of each member; fast when every one is a canonical id."""
    try:
        ids = list(map(int, members))
    except (ValueError, TypeError):
        ids = None
    if ids and list(map(str, ids)) == members and min(ids) >= 0 and max(ids) <= MAX_ID:
        return ids
    return [parse_member(m) for m in members]


def is_id(value, upper: int = MAX_ID) -> bool:
    """Tell whether ``value`` (an int from JSON, say) is a positive id no larger than ``upper``."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= upper


class IdBitmap:
    """The ids a reconcile pass saw in the database, so the stray sweep needs no queries.

    Dense small ids take one bit each (1 MB covers 8 million ids); ids at or above
    ``limit`` (snowflake ids, as the original toutiao gives its users) go into a sorted
    array, 8 bytes each, looked up by bisection. Memory grows with the ids, not with the
    batch: at most 16 MB of bits, plus 8 bytes per snowflake id. The stream yields ids
    in ascending order, so appending keeps the array sorted.
    """

    def __init__(self, limit: int = 1 << 27):
        self.limit = limit
        self.bits = bytearray()
        self.large = array("Q")

    def add(self, member_id: int):
        if member_id >= self.limit:
            if self.large and member_id < self.large[-1]:
                insort(self.large, member_id)  # out of order: keep it sorted anyway
            else:
                self.large.append(member_id)
            return
        byte = member_id >> 3
        if byte >= len(self.bits):
            self.bits.extend(bytes(max(byte + 1 - len(self.bits), len(self.bits))))
        self.bits[byte] |= 1 << (member_id & 7)

    def add_many(self, member_ids: list):
        """Add ids, as :meth:`add` does one."""
        if not member_ids:
            return
        limit = self.limit
        top = max(member_ids)
        if top >= limit:
            large = [i for i in member_ids if i >= limit]
            if (not self.large or large[0] >= self.large[-1]) and large == sorted(large):
                self.large.extend(large)  # the stream's ascending order: the array stays sorted
            else:
                for member_id in large:
                    self.add(member_id)
            member_ids = [i for i in member_ids if i < limit]
            if not member_ids:
                return
            top = max(member_ids)
        if (top >> 3) >= len(self.bits):
            self.add(top)
        bits = self.bits
        for member_id in member_ids:
            bits[member_id >> 3] |= 1 << (member_id & 7)

    def absent(self, member_ids: list) -> list:
        """Return the positions in ``member_ids`` of the ids not added."""
        bits, limit, size = self.bits, self.limit, len(self.bits)
        positions = []
        for at, member_id in enumerate(member_ids):
            if member_id >= limit:
                if member_id not in self:
                    positions.append(at)
            elif (member_id >> 3) >= size or not bits[member_id >> 3] & (1 << (member_id & 7)):
                positions.append(at)
        return positions

    def __contains__(self, member_id: int) -> bool:
        if member_id >= self.limit:
            at = bisect_left(self.large, member_id)
            return at < len(self.large) and self.large[at] == member_id
        byte = member_id >> 3
        return byte < len(self.bits) and bool(self.bits[byte] & (1 << (member_id & 7)))


@dataclass(frozen=True)
class Shard:
    """One of ``total`` disjoint parts of the work: the members whose id % total == index.

    Junk members (not ids) belong to shard 0.
    """

    index: int
    total: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """Parse ``i/N``; raise ValueError with a readable message when malformed."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not match:
            raise ValueError(f"expected INDEX/TOTAL such as 0/4, got {text!r}")
        index, total = int(match.group(1)), int(match.group(2))
        if total < 1 or index >= total:
            raise ValueError(f"index must be in 0..TOTAL-1 and TOTAL at least 1, got {text!r}")
        return cls(index, total)

    def owns(self, member_id: Optional[int]) -> bool:
        """Tell whether this shard handles a member (None: a junk member)."""
        if member_id is None:
            return self.index == 0
        return member_id % self.total == self.index

    def __str__(self):
        return f"{self.index}/{self.total}"


def owned_by(shard: Optional[Shard], member_id: Optional[int]) -> bool:
    """Tell whether a run over ``shard`` (None: every member) handles a member."""
    return shard is None or shard.owns(member_id)
