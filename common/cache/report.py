"""What a repair found and changed: one record per wrong member, one result per counter,
one report per run. The CLI renders them; nothing here prints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from common.cache.members import Shard

#: Skipped ids kept per counter, for the report and for tests that check a run's claims.
MAX_SKIPPED_IDS = 1000


@dataclass
class Drift:
    """One wrong member: what Redis held and what the database says."""

    counter: str
    id: str
    wrong: object  # the score read (float), None when absent, or a note such as "<string key>"
    right: int

    def as_dict(self) -> dict:
        data = asdict(self)
        if isinstance(self.wrong, float) and not math.isfinite(self.wrong):
            data["wrong"] = str(self.wrong)  # JSON has no Infinity
        return data


@dataclass
class CounterResult:
    """What the repair of one counter found and changed."""

    counter: str
    mode: str = "reconcile"
    scanned: int = 0
    wrong: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    note: str = ""
    error: str = ""
    examples: list = field(default_factory=list)
    skipped_ids: list = field(default_factory=list)
    # Where the seconds went: the pass over the rows (stream or rebuild, sweep), the
    # catch-up (touched ids, then the release), and the re-count queries within both.
    pass_seconds: float = 0.0
    catch_up_seconds: float = 0.0
    recounts: int = 0
    recount_seconds: float = 0.0
    rechecked: int = 0  # second looks at candidates (an id retried counts each time)
    pinned: int = 0  # ids re-counted with their rows locked (writers of them waited)
    pin_seconds: float = 0.0  # how long those locks were held, in all

    @property
    def fixed(self) -> int:
        """Members written: added, changed or removed."""
        return self.added + self.changed + self.removed

    def skip(self, member: str):
        self.skipped += 1
        if len(self.skipped_ids) < MAX_SKIPPED_IDS:
            self.skipped_ids.append(member)

    def as_dict(self, examples: int = 10) -> dict:
        data = {name: getattr(self, name) for name in COLUMNS + ("counter", "mode", "note", "error")}
        data["fixed"] = self.fixed
        data["seconds"] = round(self.seconds, 3)
        data["examples"] = [d.as_dict() for d in self.examples[:examples]]
        data["skipped_ids"] = list(self.skipped_ids)
        data["timing"] = {
            "pass_seconds": round(self.pass_seconds, 3),
            "catch_up_seconds": round(self.catch_up_seconds, 3),
            "recounts": self.recounts,
            "recount_seconds": round(self.recount_seconds, 3),
            "rechecked": self.rechecked,
            "pinned": self.pinned,
            "pin_seconds": round(self.pin_seconds, 3),
        }
        return data


#: The count columns of a result, in the order reports show them.
COLUMNS = ("scanned", "wrong", "added", "changed", "removed", "skipped")


@dataclass
class Report:
    """The results of one run over several counters."""

    results: list
    dry_run: bool
    shard: Optional[Shard] = None
    seconds: float = 0.0
    interrupted: str = ""

    COLUMNS = COLUMNS

    @property
    def totals(self) -> dict:
        totals = {name: sum(getattr(r, name) for r in self.results) for name in COLUMNS}
        totals["fixed"] = sum(r.fixed for r in self.results)
        totals["seconds"] = round(self.seconds, 3)
        return totals

    @property
    def failed(self) -> list:
        return [r for r in self.results if r.error]

    @property
    def drift(self) -> bool:
        return any(r.wrong or r.skipped for r in self.results)

    def examples(self, limit: int) -> list:
        return [d for r in self.results for d in r.examples][:limit]

    def as_dict(self, examples: int = 10) -> dict:
        return {
            "dry_run": self.dry_run,
            "shard": str(self.shard) if self.shard else None,
            "counters": [r.as_dict(examples) for r in self.results],
            "totals": self.totals,
            "failed": [r.counter for r in self.failed],
            "interrupted": self.interrupted or None,
        }
