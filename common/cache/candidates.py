"""A repair's second look at ids that were not quiet (README, "How the repair works").

An id is *quiet* for a run when no increment of it is announced and none touched it
since the run last looked. A candidate waits ``settle`` seconds (so the increments on
their way can land), then is observed in Redis in one MULTI (which resets its tracking);
then the database's view is fixed (a snapshot) and Redis is looked at once more. An id
still quiet and unchanged then has, in Redis, every increment committed before the
snapshot and none after: its score *matches the snapshot*, however long the re-count
that follows takes. If the re-count differs, a full run (the only run writing the
counter) writes the count plus whatever traffic added since (``_ADJUST``, exact for any
traffic); a shard's run writes the count only if the id is still quiet and unchanged
(``_CAS``). One whose second look finds it busy is tried again: it
gets ``attempts`` tries, then more in the final pass; there, where the counter's member
column has an index on MySQL/MariaDB, one still busy after :data:`PIN_AFTER` tries is
*pinned*: re-counted with its rows locked and written whatever traffic did meanwhile
(:meth:`Candidates.pin`). Any other is reported as skipped.
Candidates wait in a bounded buffer and are re-counted up to :data:`RECOUNT` ids per
query: every re-count of a counter without an index on its member column (most of them,
on the original DDL) is a table scan, so one scan serves many candidates. Redis sees
them :data:`REDIS_IDS` at a time, so no command keeps it from other clients for long.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

from common.cache import keys
from common.cache.lease import FENCE, previous_writers
from common.cache.script import NOW, Lua
from common.exceptions import LockLost, PreviousWriters, one_line

log = logging.getLogger(__name__)

# The writes of a script, gathered per id and made at the end in one ZADD and one ZREM:
# put(id, count) ('' removes the id), then flush(key).
_PUT = """
local adds, removes = {}, {}
local function put(id, count)
  if count == '' then
    removes[#removes + 1] = id
  else
    adds[#adds + 1] = count
    adds[#adds + 1] = id
  end
end
local function flush(key)
  if #adds > 0 then redis.call('ZADD', key, unpack(adds)) end
  if #removes > 0 then redis.call('ZREM', key, unpack(removes)) end
end
"""

# Whether a score (false: absent) is the one a run read (ARGV text, '' absent).
_SAME = """
local function same(read, score)
  return (read == '' and not score) or (read ~= '' and score and tonumber(score) == tonumber(read))
end
"""

# KEYS: counter, runs, track, inflight, canary. ARGV: lease, then per id: id, expected
# score ('' absent), new count ('' remove). -1 lease lost, -2 old writers; otherwise one
# answer per id: 1 written, 0 not quiet or changed (left alone). Each id is checked on its
# own, with one command per check for all of them, and the writes go in one ZADD and ZREM.
_CAS = Lua(
    NOW
    + FENCE
    + _PUT
    + _SAME
    + """
if redis.call('SCARD', KEYS[5]) > 1 then return -2 end
local ids = {}
for i = 2, #ARGV, 3 do ids[#ids + 1] = ARGV[i] end
local tracked = redis.call('SMISMEMBER', KEYS[3], unpack(ids))
local announced = redis.call('HMGET', KEYS[4], unpack(ids))
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
local answers = {}
for k = 1, #ids do
  local expected, cur = ARGV[3 * k], scores[k]
  local answer = 0
  if tracked[k] == 0 and not announced[k] then
    if same(expected, cur) then
      answer = 1
      put(ids[k], ARGV[3 * k + 1])
    end
  end
  answers[k] = answer
end
flush(KEYS[1])
return answers
"""
)

# KEYS: counter, runs, track, inflight, canary. ARGV: lease, then per id: id, count (''
# remove). For ids that were quiet when read while nothing of the counter was tracked or
# announced (a quiet night): while that is still so, no increment was applied or is on
# its way since, and every id is written with no check of its own. -1 lease lost, -2 old
# writers, 0 something was tracked or announced meanwhile (nothing written), 1 written.
_QUIET_PUT = Lua(
    NOW
    + FENCE
    + _PUT
    + """
if redis.call('SCARD', KEYS[5]) > 1 then return -2 end
if redis.call('SCARD', KEYS[3]) > 0 or redis.call('HLEN', KEYS[4]) > 0 then return 0 end
for i = 2, #ARGV, 2 do put(ARGV[i], ARGV[i + 1]) end
flush(KEYS[1])
return 1
"""
)

# KEYS: counter, runs, inflight, canary. ARGV: lease, then per id: id, count ('' remove).
# For ids whose rows the run holds locked in the database (so their count cannot move and
# every change to them committed before the locks): write each id with no increment still
# announced. -1 lease lost, -2 old writers; otherwise per id the score it had ('' absent),
# or 'busy' when left alone.
_PIN = Lua(
    NOW
    + FENCE
    + _PUT
    + """
if redis.call('SCARD', KEYS[4]) > 1 then return -2 end
local ids = {}
for i = 2, #ARGV, 2 do ids[#ids + 1] = ARGV[i] end
local announced = redis.call('HMGET', KEYS[3], unpack(ids))
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
local answers = {}
for k = 1, #ids do
  if announced[k] then
    answers[k] = 'busy'
  else
    answers[k] = scores[k] or ''
    put(ids[k], ARGV[2 * k + 1])
  end
end
flush(KEYS[1])
return answers
"""
)

# KEYS: counter, runs, canary. ARGV: lease, then per id: id, score observed ('' absent),
# count ('' zero), the score matching the count's snapshot. For a run that alone writes the
# counter (a full run: its lease excludes every other): the increments applied since the
# snapshot all committed after it, so the id's right score is the count plus what the
# score gained since it was observed. -1 lease lost, -2 old writers; otherwise per id 1
# written, 0 left alone (a score that is no finite number: no gain can be told).
_ADJUST = Lua(
    NOW
    + FENCE
    + _PUT
    + _SAME
    + """
if redis.call('SCARD', KEYS[3]) > 1 then return -2 end
local ids = {}
for i = 2, #ARGV, 3 do ids[#ids + 1] = ARGV[i] end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
local answers = {}
for k = 1, #ids do
  local observed, count, score = ARGV[3 * k], ARGV[3 * k + 1], scores[k]
  local answer = 1
  if same(observed, score) then
    put(ids[k], count)
  else
    local was, now, want = 0, 0, 0
    if observed ~= '' then was = tonumber(observed) end
    if score then now = tonumber(score) end
    if count ~= '' then want = tonumber(count) end
    local right = was and now and want and (want + now - was)
    if not right or right ~= right or right == math.huge or right == -math.huge then
      answer = 0
    elseif right == 0 then
      put(ids[k], '')
    else
      put(ids[k], string.format('%.17g', right))
    end
  end
  answers[k] = answer
end
flush(KEYS[1])
return answers
"""
)

#: Attempts in the final pass after which an id that never stayed quiet is re-counted
#: under the database's locks on its rows (:meth:`Candidates.pin`), where the counter allows it.
PIN_AFTER = 2

#: Ids, and rows of theirs, pinned by one locking re-count at most: the writers of all of
#: them wait while it reads all those rows (by primary key, one at a time: on a cold
#: buffer pool tens of microseconds each). An id holding more rows is pinned alone.
PIN_IDS = 50
PIN_ROWS = 10_000

#: Seconds a pin waits, locks held, for the increments committed before it to land,
#: looking every PIN_STEP seconds (they are one Redis round trip behind their commit).
PIN_WAIT = 0.05
PIN_STEP = 0.002

#: Ids re-counted by one database query at most. A re-count of a counter whose member
#: column has no index scans the table whatever the number of ids, so the fewer the
#: queries the better; the buffer of candidates waiting for it is bounded by this.
RECOUNT = 20_000

#: Ids one Redis command (or MULTI, or script) carries at most: Redis answers no other
#: client while it runs one, and formatting a score costs it about half a microsecond.
REDIS_IDS = 250


def parts(items: list):
    """``items`` in runs of at most :data:`REDIS_IDS`: what one Redis command may carry."""
    for start in range(0, len(items), REDIS_IDS):
        yield items[start : start + REDIS_IDS]


@dataclass
class Candidate:
    """An id to look at again once ``due`` (monotonic seconds)."""

    member: str
    member_id: int
    due: float
    attempts: int = 0
    rows: int = 0  # about how many rows it holds: its score when last observed


def _count(value):
    """Normalise a database count: 0 means the member is absent."""
    return int(value) if value else None


def same(score, count) -> bool:
    """Tell whether a score (None: absent) says what a count (None: zero) says."""
    if score is None or count is None:
        return score is None and count is None
    return score == count


class Candidates:
    """The ids of one counter's repair waiting for their second look."""

    def __init__(self, repair):
        self.repair = repair
        self.run = repair.run
        self.redis = repair.redis
        self.key = repair.key
        self.result = repair.result
        self.lease = repair.lease
        self.dry_run = repair.dry_run
        self.track = keys.track(self.key, self.run.token)
        self.late = keys.late(self.key, self.run.token)
        self.inflight = keys.inflight(self.key)
        self.pending: deque = deque()
        self.unresolved: list = []
        self.final = False
        self.disturbed = False  # an id became a candidate: its second look reset its tracking
        self.hot: list = []  # ids of the final pass that never stayed quiet, to pin
        self.pinnable = not self.dry_run and self.run.source.can_lock(repair.counter)

    def look(self, members):
        """Read announcements, scores and tracking of ``members``, each at one instant.

        Return ``(announced, scores, touched)``; while no id of the counter is announced
        or tracked (a quiet night), one MULTI with the scores alone says so, and
        ``announced`` and ``touched`` are None: every member is quiet. Redis sees at most
        :data:`REDIS_IDS` of them per MULTI, each id's answers from one; the MULTIs of a
        batch go in one round trip (and those of its parts that were not quiet in one more).
        """
        chunks = list(parts(members))
        quick = self._multis(
            [[("HLEN", self.inflight), ("SCARD", self.track), ("ZMSCORE", self.key, *part)] for part in chunks]
        )
        busy = [at for at, (announced, tracked, _) in enumerate(quick) if announced or tracked]
        if not busy:
            return None, [_score(score) for _, _, part in quick for score in part], None
        full = self._multis(
            [
                [
                    ("HMGET", self.inflight, *chunks[at]),
                    ("ZMSCORE", self.key, *chunks[at]),
                    ("SMISMEMBER", self.track, *chunks[at]),
                ]
                for at in busy
            ]
        )
        looks = {at: answer for at, answer in zip(busy, full)}
        announced, scores, touched = [], [], []
        for at, (_, _, part) in enumerate(quick):
            if at in looks:
                pending, now, moved = looks[at]
                announced += pending
                scores += [_score(score) for score in now]
                touched += moved
            else:
                announced += [None] * len(part)
                scores += [_score(score) for score in part]
                touched += [0] * len(part)
        return announced, scores, touched

    def _multis(self, transactions: list) -> list:
        """Run each list of commands in a MULTI of its own, all in one round trip; return
        each one's raw answers (scores as Redis wrote them)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.response_callbacks = {}  # raw answers: QUEUED for the commands inside a MULTI
        for commands in transactions:
            pipe.execute_command("MULTI")
            for command in commands:
                pipe.execute_command(*command)
            pipe.execute_command("EXEC")
        answers, at = [], 0
        replies = pipe.execute()
        for commands in transactions:
            at += len(commands) + 2
            answer = replies[at - 1]
            for value in answer:
                if isinstance(value, Exception):  # a command failed inside the MULTI (a wrong type)
                    raise value
            answers.append(answer)
        return answers

    def queue(self, member, member_id, fresh=True):
        """Make a member a candidate: due now (``fresh``) or after the settle delay."""
        due = 0.0 if fresh else time.monotonic() + self.run.settle
        self.disturbed = True
        self.pending.append(Candidate(member, member_id, due))

    def settle(self, force: bool):
        """Look at due candidates again, up to RECOUNT at a time once that many wait (one
        re-count query serves them all), all of them with ``force`` (and pin the hot ones)."""
        while self.pending:
            if not force and len(self.pending) < RECOUNT:
                return
            wait = self.pending[0].due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            ready = []
            now = time.monotonic()
            while self.pending and len(ready) < RECOUNT and self.pending[0].due <= now:
                ready.append(self.pending.popleft())
            if ready:
                self.run.beat()
                self.recheck(ready)
        if force and self.hot:
            self.pin()

    def recheck(self, ready):
        """Observe ``ready`` in Redis (a batch per MULTI), fix the database's view and look
        at the quiet ones again, re-count those still unchanged in one query from that
        view, then write each that differs (:meth:`adjust`)."""
        once: set = set()  # one candidate per id: two would each add what traffic added
        ready = [c for c in ready if not (c.member in once or once.add(c.member))]
        quiet = []
        self.result.rechecked += len(ready)
        for part in parts(ready):
            quiet += self.observe(part)
        if not quiet:
            return
        started = time.monotonic()
        with self.repair.snapshot():
            self.repair.at("recount_view", members=[c.member for c, _ in quiet])
            quiet = [item for part in parts(quiet) for item in self.unchanged(part)]
            if not quiet:
                return
            counts = self.repair.counts([c.member_id for c, _ in quiet], sum(c.rows for c, _ in quiet))
        self.result.recounts += 1
        self.result.recount_seconds += time.monotonic() - started
        self.repair.at("recount", members=[c.member for c, _ in quiet])
        wrong = []
        for cand, score in quiet:
            count = _count(counts.get(cand.member_id))
            if not same(score, count):
                wrong.append((cand, score, count))
        self.adjust(wrong)

    def observe(self, ready) -> list:
        """Reset the tracking of ``ready`` and read them at one instant; return the quiet
        ones with their scores, and retry the others (an increment is on its way)."""
        members = [c.member for c in ready]
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(self.track, *members)
        if not self.dry_run:
            pipe.srem(self.late, *members)
        pipe.hmget(self.inflight, members)
        pipe.zmscore(self.key, members)
        pending, scores = pipe.execute()[-2:]
        self.repair.at("observe", members=members)
        quiet = []
        for cand, busy, score in zip(ready, pending, scores):
            cand.rows = _rows(score)
            if busy:
                self.retry(cand)
            else:
                quiet.append((cand, score))
        return quiet

    def unchanged(self, items) -> list:
        """Keep the items (``(candidate, score observed, ...)``) still quiet and unchanged
        since they were observed; retry the others."""
        if not items:
            return []
        members = [item[0].member for item in items]
        pipe = self.redis.pipeline(transaction=True)
        pipe.smismember(self.track, members)
        pipe.hmget(self.inflight, members)
        pipe.zmscore(self.key, members)
        touched, pending, scores = pipe.execute()
        kept = []
        for item, moved, busy, now in zip(items, touched, pending, scores):
            if moved or busy or not same(now, item[1]):
                self.retry(item[0])
            else:
                kept.append(item)
        return kept

    def adjust(self, items):
        """Write each ``(candidate, score, count)`` whose score matched the count's snapshot.

        A full run writes the count plus what the score gained since it was observed
        (``_ADJUST``): traffic need not stay away. A shard's run shares the counter with
        the other shards' runs, which may write the same id (after a rebuild): it writes
        the count only where the id is still quiet and unchanged (:meth:`write`). A check
        reports them: drift at the snapshot's instant.
        """
        if not items:
            return
        if self.dry_run:
            for cand, score, count in items:
                self._drift(cand, score, count)
            return
        if self.run.shard is not None:
            self.write(items)
            return
        counter_keys = [self.key, keys.runs(self.key), keys.canary(self.key)]
        answers = []
        for part in parts(items):  # a script blocks Redis while it runs
            answers += self._written(_ADJUST(self.redis, counter_keys, self._args(part)))
        self._answered(items, answers)

    def write(self, items, counter_quiet: bool = False):
        """Compare-and-set each ``(candidate, score read, count)``: the count is written only
        if the member is still quiet, its lease live and its score the one read.

        ``counter_quiet``: the scores were read while nothing of the counter was tracked or
        announced; a part is then written at once if that is still so (``_QUIET_PUT``).
        """
        if not items:
            return
        if self.dry_run:  # reported if still quiet and unchanged: drift at that instant
            for part in parts(items):
                for cand, score, count in self.unchanged(part):
                    self._drift(cand, score, count)
            return
        counter_keys = [self.key, keys.runs(self.key), self.track, self.inflight, keys.canary(self.key)]
        answers = []
        for part in parts(items):  # a script blocks Redis while it runs
            if counter_quiet:
                args = [self.lease]
                for cand, _, count in part:
                    args += (cand.member, "" if count is None else str(count))
                if self._written(_QUIET_PUT(self.redis, counter_keys, args)) == 1:
                    answers += [1] * len(part)
                    continue
                counter_quiet = False  # traffic came: each id is checked from now on
            answers += self._written(_CAS(self.redis, counter_keys, self._args(part)))
        self._answered(items, answers)

    def _args(self, part) -> list:
        """A write script's ARGV: the lease, then per item its id, the score read ('' absent)
        and the count ('' zero)."""
        args = [self.lease]
        for cand, score, count in part:
            args += (cand.member, "" if score is None else repr(score), "" if count is None else str(count))
        return args

    def _answered(self, items, answers):
        """After a write: report each item written, retry each left alone."""
        self.repair.at("write", members=[cand.member for cand, _, _ in items])
        for (cand, score, count), answer in zip(items, answers):
            if answer == 0:
                self.retry(cand)
            else:
                self._fixed(cand, score, count)

    def _written(self, answer):
        """A write script's answers, unless it refused them all (lease lost, old writers)."""
        if answer == -1:
            raise LockLost(f"lost the lease on {self.key} (expired or taken over); stopping")
        if answer == -2:
            raise PreviousWriters(previous_writers(self.key))
        return answer

    def _drift(self, cand, score, count):
        """Report a member whose ``score`` (None: absent) should be ``count`` (None: zero)."""
        self.result.wrong += 1
        self.repair.example(cand.member, score, count or 0)

    def _fixed(self, cand, score, count):
        """Report a member written from ``score`` (None: absent) to ``count`` (None: removed)."""
        self._drift(cand, score, count)
        if count is None:
            self.result.removed += 1
        elif score is None:
            self.result.added += 1
        else:
            self.result.changed += 1

    def retry(self, cand):
        self.disturbed = True
        cand.attempts += 1
        if self.final and self.pinnable and cand.attempts >= min(PIN_AFTER, self.run.attempts):
            self.hot.append(cand)
        elif cand.attempts < self.run.attempts:
            cand.due = time.monotonic() + self.run.settle
            self.pending.append(cand)
        elif self.final:
            self.result.skip(cand.member)
        else:
            self.unresolved.append(cand.member)  # one more round in the final pass

    def pin(self):
        """Settle the ids that never stayed quiet while their rows are locked.

        A locking re-count holds their rows (and the gaps where new ones would go): no
        change to them can commit meanwhile, and every one made before has committed. The
        app's writers lock a row before they announce its increment, so no new increment
        of these ids is announced either; once the increments committed before the locks
        have landed (at most :data:`PIN_WAIT`), Redis holds all of them and the count holds
        the same, and the count is written whatever traffic touched in between. Their
        writers wait for the locks, for a re-count and one script. An id whose increment is
        still announced, and every id of a re-count that failed (its locks not had in time,
        a deadlock, a locking read refused to the account), is skipped.
        """
        hot, self.hot = self.hot, []
        for group in _pin_groups(hot):
            self.run.beat()
            try:
                self._pin(group)
            except DBAPIError as exc:  # a lock wait timeout, a deadlock, a locking read refused
                log.info("could not lock the rows of %d ids of %s: %s", len(group), self.key, one_line(exc))
                for cand in group:
                    self.result.skip(cand.member)

    def _pin(self, group):
        members = [cand.member for cand in group]
        source = self.run.source
        started = time.monotonic()
        with source.locked_counts(self.repair.counter, [cand.member_id for cand in group]) as counts:
            self.result.pinned += len(group)
            self.repair.at("locked", members=members)
            deadline = time.monotonic() + PIN_WAIT
            while any(self.redis.hmget(self.inflight, members)) and time.monotonic() < deadline:
                time.sleep(PIN_STEP)
            args = [self.lease]
            for cand in group:
                count = _count(counts.get(cand.member_id))
                args += (cand.member, "" if count is None else str(count))
            answer = _PIN(self.redis, [self.key, keys.runs(self.key), self.inflight, keys.canary(self.key)], args)
        self.result.pin_seconds += time.monotonic() - started
        self.repair.at("unlocked", members=members)
        for cand, old in zip(group, self._written(answer)):
            if old == "busy":
                self.result.skip(cand.member)
                continue
            score = float(old) if old != "" else None
            count = _count(counts.get(cand.member_id))
            if not same(score, count):
                self._fixed(cand, score, count)


def _score(raw):
    """A score as Redis wrote it (None: absent) as a float."""
    return None if raw is None else float(raw)


def _rows(score) -> int:
    """About how many rows an id with this score holds (scores may be wrong, even inf)."""
    return int(min(score, 1e12)) if score and score > 0 else 0


def _pin_groups(hot: list):
    """``hot`` in groups of at most PIN_IDS ids holding at most PIN_ROWS rows together (an
    id holding more goes alone): each group's writers wait while all its rows are read."""
    group, rows = [], 0
    for cand in sorted(hot, key=lambda c: c.rows):
        if group and (len(group) == PIN_IDS or rows + cand.rows > PIN_ROWS):
            yield group
            group, rows = [], 0
        group.append(cand)
        rows += cand.rows
    if group:
        yield group
