/*
 * The counter repair protocol, as a Spin model (common/cache: writes.py, lease.py,
 * repair.py, engine.py). Checked exhaustively by tests/test_protocol_model.py:
 *
 *     spin -a -DSCENARIO=1 protocol.pml && gcc -DSAFETY -o pan pan.c && ./pan
 *
 * One counter, one member m. Writers take the app's write path: announce, commit,
 * apply (which settles the announcement, notes m for every live lease, and removes m at
 * 0). Runs take the engine's steps. Each step labelled here without a trailing underscore
 * is a checkpoint of the engine (CHECKPOINTS) or a step of a write (WRITER_STEPS), under
 * the same name; a test compares the lists. A run's
 * steps over m: lease (tracking on), snapshot, stream compare or (unless the set's size
 * shows nothing stray) sweep, candidates
 * (observe, the re-count's snapshot, a second look that m is still quiet and unchanged,
 * recount, then a write: a full run's adds what the score gained since observed, a
 * shard's is a compare-and-set; retried at most MAXA times, then left
 * for the final pass, then pinned where the counter allows it: re-counted with m's rows
 * locked, so no commit changes m meanwhile, and written unless an increment is still
 * announced; else skipped), rebuild (claim, staging, swap), final pass over
 * what was touched and what is announced, release.
 * A lease can expire at any moment in scenario 5; every write checks it. (A quiet night's
 * batch write checks that nothing of the counter is tracked or announced: with one member
 * that is m's own quietness, as modelled.)
 *
 * Property: once every writer and run is done, if a run that vouched for m (m in its
 * shard, or it rebuilt the key) ended well without skipping m, Redis equals the database,
 * unless a run that ended well reported m as skipped.
 *
 * Scenarios (-DSCENARIO=n): 1 one full run, key present; 2 two shards at once, the
 * second owning m; 3 one full run, key missing; 4 two shards, key of the wrong type;
 * 5 two full runs, the first one's lease may expire mid-run; 6 a --rebuild of a present key;
 * 7 one full run whose lease may expire mid-run (with PINNABLE: while it holds m's rows
 * locked; scenario 5 with PINNABLE verifies too, by hand: 72M states, 163 s, 3.7 GB).
 * Redis starts with any drift of m: absent, 0, 1, 2 or 3 (the database says 1).
 * -DPINNABLE=1: the counter's member column has an index, so a hot m is pinned.
 */

#ifndef SCENARIO
#define SCENARIO 1
#endif
#ifndef MAXA
#define MAXA 2
#endif
#ifndef PINNABLE
#define PINNABLE 0
#endif

#define ZSET  0
#define NONE  1
#define WRONG 2
#define NOBODY 255

#if SCENARIO == 2 || SCENARIO == 4 || SCENARIO == 5
#define RUNS 2
#else
#define RUNS 1
#endif

byte kind = ZSET;      /* the live key: a sorted set, missing, or another type */
short db = 1;          /* the database's count of m */
short rs = 0;          /* m's score, when rp */
bool rp = false;       /* m is in the live sorted set */
byte inflight = 0;     /* increments of m announced and not yet applied */
bool live[RUNS];       /* run r's lease is live (the writers track for it) */
bool track[RUNS];      /* m is in run r's tracking set */
bool sp[RUNS];         /* m is in run r's staging key */
short ss[RUNS];        /* ... with this score */
byte claimer = NOBODY; /* the run holding the rebuild claim */
byte done = 0;         /* writers and runs that ended */
bool vouched = false;  /* a run that covers m ended well without skipping it */
bool skipped = false;  /* a run that ended well reported m as skipped */
byte dblock = 0;       /* runs holding m's rows locked in the database (a pin's locking re-count) */
bool pinnable = PINNABLE;  /* the counter's member column has an index: a hot m may be pinned */

#ifndef WRITERS
#define WRITERS 2
#endif
/* A write goes through only while the run's lease lives (lease.py FENCE). */
#define FENCE(r) live[r]
/* m is quiet for run r: not touched since observed, no increment announced, unchanged. */
#define QUIET(r) (!track[r] && inflight == 0 && rp == e1 && (!rp || rs == s1))
#define EXACT (kind != WRONG && ((rp && rs == db && db > 0) || (!rp && db == 0)))

proctype Writer(short d)
{
    byte r;
announce:
    inflight++;
commit:
    atomic { dblock == 0 -> db = db + d };  /* a pin's locks hold m's rows: the commit waits */
apply:
    atomic {
        inflight--;
        r = 0;
        do
        :: r < RUNS -> if :: live[r] -> track[r] = true :: else -> skip fi; r++
        :: else -> break
        od;
        if
        :: kind == WRONG -> skip  /* ZINCRBY fails: the increment is lost, the touch noted */
        :: else ->
            kind = ZSET;
            if :: rp -> rs = rs + d :: else -> rs = d; rp = true fi;
            if :: rs == 0 -> rp = false :: else -> skip fi
        fi
    }
    done++
}

/* Free what a run whose lease is gone left: its tracking, its staging, its claim. */
inline reap() {
    i = 0;
    do
    :: i < RUNS ->
        if :: !live[i] -> track[i] = false; sp[i] = false; if :: claimer == i -> claimer = NOBODY :: else -> skip fi
        :: else -> skip fi;
        i++
    :: else -> break
    od
}

proctype Run(byte r; bool owns; bool exclusive; bool rebuild_all)
{
    short c0; short c; short s1; bool e1; bool p1; bool t1;
    short want;            /* the count a write would set */
    bool rebuilt = false; bool building = false; bool waited = false;
    bool cand = false; bool unresolved = false; bool final = false;
    bool gave_up = false; bool lost = false; bool got; byte attempts = 0; byte i; byte found = kind;
    bool pinned = false;
    bool adjusting = false;  /* the write is of a re-count whose snapshot s1 matched */

start:
    atomic {
        /* a full run waits while another lease lives; shards of one split go together */
#if RUNS == 2
        (!exclusive || !live[1 - r]) ->
#endif
        reap();
        live[r] = true;
        track[r] = false
    }
tracking:
    if
    :: kind == ZSET && !rebuild_all -> goto reconcile_
    :: else -> goto rebuild_
    fi;

reconcile_:
    if :: owns -> building = false; goto snap_ :: else -> goto final_ fi;

snap_:
snapshot:
    c0 = db;
    if :: building -> goto build_ :: else -> skip fi;
    if
    :: c0 > 0 ->
stream_batch:
        atomic { p1 = inflight > 0; t1 = track[r]; s1 = rs; e1 = rp };
        if
        :: p1 || t1 -> cand = true; goto settle_
        :: !(p1 || t1) && e1 && s1 == c0 -> goto final_
        :: !(p1 || t1) && !(e1 && s1 == c0) -> want = c0; goto write_
        fi
    :: else ->
stray_count:
        /* the set's size against the ids streamed (none here: m is the only member and
         * the database does not count it), with no id tracked or announced: the walk is
         * left out only then. Whether a removed streamed id can hide a stray takes two
         * members: tests/test_races.py forces that. */
        atomic { e1 = !track[r] && inflight == 0 && !rp };
        if :: e1 -> goto final_ :: else -> skip fi;
sweep_batch:
        atomic { p1 = inflight > 0; t1 = track[r]; s1 = rs; e1 = rp };
        if
        :: !e1 -> goto final_
        :: e1 && (p1 || t1) -> cand = true; goto settle_
        :: e1 && !(p1 || t1) -> want = 0; goto write_
        fi
    fi;

settle_:
    if
    :: attempts >= MAXA && final && pinnable && !pinned -> goto pin_
    :: attempts >= MAXA && final -> gave_up = true; goto release_
    :: attempts >= MAXA && !final -> unresolved = true; goto final_
    :: else -> attempts++
    fi;
observe:
    atomic { track[r] = false; p1 = inflight > 0; s1 = rs; e1 = rp };
    if :: p1 -> goto settle_ :: else -> skip fi;
recount_view:
    c = db;  /* the snapshot the re-count reads: c is its count, however late the query runs */
    atomic {  /* looked at again: still quiet and unchanged since observed, so s1 matches c */
        if
        :: QUIET(r) -> cand = false
        :: else -> cand = true
        fi
    };
    if :: cand -> goto settle_ :: else -> skip fi;
recount:
    if
    :: (e1 && s1 == c && c > 0) || (!e1 && c == 0) -> goto resolved_
    :: else -> want = c; adjusting = true; goto write_
    fi;

pin_:
    /* Lock m's rows, or fail to in time (a lock wait timeout, a deadlock): then m is skipped.
     * The model lets a writer be announced and not yet committed meanwhile (one whose
     * row change is flushed at its commit); its commit waits for the locks. */
    pinned = true;
    if
    :: atomic { dblock++ }
    :: gave_up = true; goto release_
    fi;
locked:
    c = db;
    if :: inflight == 0 -> skip :: skip fi;  /* a bounded wait for increments committed before */
    atomic {
        if
        :: !FENCE(r) -> lost = true
        :: FENCE(r) && inflight == 0 ->
            cand = false;
            if :: c > 0 -> rp = true; rs = c :: else -> rp = false fi
        :: FENCE(r) && inflight > 0 -> cand = true
        fi
    };
unlocked:
    dblock--;
    if :: lost -> goto done_ :: cand -> gave_up = true; goto release_ :: else -> goto resolved_ fi;

write_:
write:
    atomic {
        if
        :: !FENCE(r) -> lost = true
        :: FENCE(r) && adjusting && exclusive ->
            /* a full run, the only writer: the count plus what the score gained since
             * observed (every increment applied since committed after the snapshot) */
            cand = false;
            want = want + (rp -> rs : 0) - (e1 -> s1 : 0);
            if :: want != 0 -> rp = true; rs = want :: else -> rp = false fi
        :: FENCE(r) && !(adjusting && exclusive) && QUIET(r) ->
            cand = false;
            if :: want > 0 -> rp = true; rs = want :: else -> rp = false fi
        :: FENCE(r) && !(adjusting && exclusive) && !QUIET(r) -> cand = true
        fi;
        adjusting = false
    };
    if :: lost -> goto done_ :: cand -> goto settle_ :: else -> goto resolved_ fi;

resolved_:
    if :: final -> goto release_ :: else -> goto final_ fi;

rebuild_:
claim:
    atomic {
        if
        :: !FENCE(r) -> lost = true; got = false
        :: FENCE(r) && (claimer == NOBODY || claimer == r) -> claimer = r; got = true
        :: FENCE(r) && claimer != NOBODY && claimer != r -> got = false
        fi
    };
    if :: lost -> goto done_ :: got -> skip :: else ->
        atomic { claimer == NOBODY || !live[claimer] -> reap() };  /* wait; a dead run's claim is freed */
        waited = true;
        goto rebuild_
    fi;
    /* another run rebuilt it meanwhile (traffic cannot turn another type into a sorted set) */
    if :: (waited || found == WRONG) && kind == ZSET && !rebuild_all -> goto reconcile_ :: else -> skip fi;
    building = true;
    goto snap_;
build_:
rebuild_batch:
    if :: c0 > 0 -> sp[r] = true; ss[r] = c0 :: else -> sp[r] = false fi;
swap:
    atomic {
        if
        :: !FENCE(r) -> lost = true
        :: FENCE(r) && sp[r] != (c0 > 0) -> lost = true  /* staging short: refused, the counter failed */
        :: FENCE(r) && sp[r] == (c0 > 0) -> kind = ZSET; rp = sp[r]; rs = ss[r]; sp[r] = false; rebuilt = true
        fi
    };
    if :: lost -> goto done_ :: else -> skip fi;

final_:
final_pass:
    final = true;
    attempts = 0;
    if
    :: ((track[r] || inflight > 0) && (owns || rebuilt)) || unresolved -> goto settle_
    :: else -> skip
    fi;

release_:
release:
    atomic {
        if
        :: !live[r] -> lost = true
        :: else -> live[r] = false; track[r] = false; if :: claimer == r -> claimer = NOBODY :: else -> skip fi
        fi
    };
    if
    :: !lost && !gave_up && (owns || rebuilt) -> vouched = true
    :: !lost && gave_up -> skipped = true
    :: else -> skip
    fi;
done_:
    done++
}

/* A lease that runs out: a partition, a failover that lost it, a pause longer than its ttl. */
proctype Expiry(byte r)
{
    if
    :: live[r] -> live[r] = false
    :: skip
    fi
}

init {
    /* any drift of m in Redis */
    if
    :: rp = false
    :: rp = true; rs = 0
    :: rp = true; rs = 1
    :: rp = true; rs = 2
    :: rp = true; rs = 3
    fi;
#if SCENARIO == 3
    kind = NONE; rp = false;
#endif
#if SCENARIO == 4
    kind = WRONG; rp = false;
#endif
    atomic {
        run Writer(1);
        run Writer(-1);
#if WRITERS == 3
        run Writer(1);
#endif
#if SCENARIO == 1
        run Run(0, true, true, false);
#elif SCENARIO == 2
        run Run(0, false, false, false);
        run Run(1, true, false, false);
#elif SCENARIO == 3
        run Run(0, true, true, false);
#elif SCENARIO == 4
        run Run(0, false, false, false);
        run Run(1, true, false, false);
#elif SCENARIO == 5
        run Run(0, true, true, false);
        run Run(1, true, true, false);
        run Expiry(0);
#elif SCENARIO == 6
        run Run(0, true, true, true);
#elif SCENARIO == 7
        run Run(0, true, true, false);
        run Expiry(0);
#endif
    }
    done == WRITERS + RUNS;
    assert(!vouched || skipped || EXACT)
}
