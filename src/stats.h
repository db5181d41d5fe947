/*
 * stats.h
 *		What the worker measures, in shared memory: per-pool statistics, one
 *		entry per outbound connection, and the slow-query ring.  The worker is
 *		the only writer of all three; backends read them through the
 *		Dbpool*Snapshot functions, which retry until they hold a consistent
 *		copy, and derive their figures from it (figures.h).  The rules are
 *		written at the top of stats.c.
 */
#ifndef DBPOOL_STATS_H
#define DBPOOL_STATS_H

#include "dbpool.h"

/*
 * Latency buckets, in microseconds: bucket 0 is [0, 50 us); bucket i (1..148)
 * is [DbpoolHistBounds[i-1], DbpoolHistBounds[i]), where each bound adds a
 * tenth of the previous one (rounded down, at least 1 us), so no bucket is
 * wider than 10% of its lower bound; bucket 149 is [61.3 s, infinity).
 */
#define DBPOOL_HIST_BOUNDS		149
#define DBPOOL_HIST_BUCKETS		(DBPOOL_HIST_BOUNDS + 1)

/* The sliding window of the percentiles: 12 slots of 5 s (the current one partial). */
#define DBPOOL_WINDOW_SLOTS		12
#define DBPOOL_WINDOW_SLOT_SECS	5
/* Per-second counts for the rates over 1, 10 and 60 complete seconds. */
#define DBPOOL_RATE_SLOTS		64
#define DBPOOL_RATE_MAX_SECS	60

extern int64 DbpoolHistBounds[DBPOOL_HIST_BOUNDS];
extern void DbpoolHistInit(void);
extern int	DbpoolHistBucket(int64 us);

/* Per-pool counters, since the pool's stats_reset. */
typedef enum DbpoolCounter
{
	DBPOOL_C_QUERIES,			/* requests that ended, however */
	DBPOOL_C_ERRORS,			/* requests answered with an error */
	DBPOOL_C_ACQUIRE_TIMEOUTS,	/* ... of which: no connection within acquire_timeout_ms */
	DBPOOL_C_QUERY_TIMEOUTS,	/* ... of which: query_timeout_ms */
	DBPOOL_C_CANCELS,			/* requests their session abandoned (cancel, timeout, exit) */
	DBPOOL_C_SLOW,				/* executions slower than slow_query_ms */
	DBPOOL_C_ROWS,				/* rows retrieved or affected */
	DBPOOL_C_CONNS_CREATED,		/* connections established */
	DBPOOL_C_CONN_FAILURES,		/* connection attempts that failed */
	DBPOOL_C_CLOSED_IDLE,		/* closed by reason: idle_timeout_ms */
	DBPOOL_C_CLOSED_LIFETIME,	/* max_lifetime_ms */
	DBPOOL_C_CLOSED_ERROR,		/* broken, or its cleanup failed */
	DBPOOL_C_CLOSED_RESIZE,		/* max_size lowered, or its slot given to another pool */
	DBPOOL_C_CLOSED_CONFIG,		/* conninfo or owner changed */
	DBPOOL_C_CLOSED_DROP,		/* the pool was dropped */
	DBPOOL_C_CLOSED_BROKEN,		/* found closed by the server while idle or before use */
	DBPOOL_C_RETRIES,			/* requests given another connection, not sent yet */
	DBPOOL_C_CLOSED_LARGE,		/* it carried a large value (DBPOOL_LARGE_MESSAGE_BYTES) */
	DBPOOL_C_CANCELS_SKIPPED,	/* remote cancels that could not start (cancel.c) */
	DBPOOL_C_CANCELS_ABANDONED, /* remote cancels given up on while in flight */
	DBPOOL_C_LEAKS_SUSPECTED,	/* connections flagged as suspected leaks (leak.c) */
	DBPOOL_NUM_COUNTERS
} DbpoolCounter;

extern const char *const DbpoolCounterNames[DBPOOL_NUM_COUNTERS];

/* Why a connection is closed: one of the DBPOOL_C_CLOSED_* counters, or none. */
typedef enum DbpoolCloseReason
{
	DBPOOL_CLOSE_UNCOUNTED = -1,	/* never established, or the worker exits */
	DBPOOL_CLOSE_IDLE = DBPOOL_C_CLOSED_IDLE,
	DBPOOL_CLOSE_LIFETIME = DBPOOL_C_CLOSED_LIFETIME,
	DBPOOL_CLOSE_ERROR = DBPOOL_C_CLOSED_ERROR,
	DBPOOL_CLOSE_RESIZE = DBPOOL_C_CLOSED_RESIZE,
	DBPOOL_CLOSE_CONFIG = DBPOOL_C_CLOSED_CONFIG,
	DBPOOL_CLOSE_DROP = DBPOOL_C_CLOSED_DROP,
	DBPOOL_CLOSE_BROKEN = DBPOOL_C_CLOSED_BROKEN,
	DBPOOL_CLOSE_LARGE = DBPOOL_C_CLOSED_LARGE
} DbpoolCloseReason;

typedef struct DbpoolHist
{
	uint64		count[DBPOOL_HIST_BUCKETS];
	uint64		sum_us;
} DbpoolHist;

typedef struct DbpoolWindowSlot
{
	int64		epoch;			/* start second / DBPOOL_WINDOW_SLOT_SECS */
	uint32		acquire[DBPOOL_HIST_BUCKETS];
	uint32		query[DBPOOL_HIST_BUCKETS];
} DbpoolWindowSlot;

typedef struct DbpoolRateSlot
{
	int64		second;			/* Unix-epoch-like second of the server clock */
	uint32		queries;
	uint32		errors;
	uint32		conns_created;	/* connections established */
} DbpoolRateSlot;

#define DBPOOL_LAST_ERROR_LEN	256

/* What ran a health check (health.c). */
typedef enum DbpoolHealthKind
{
	DBPOOL_HEALTH_NONE = 0,		/* no check yet */
	DBPOOL_HEALTH_PROBE,		/* a background probe (health_check_interval_ms) */
	DBPOOL_HEALTH_ON_DEMAND		/* asked for by dbpool_health() */
} DbpoolHealthKind;

/* A health check's result; the rules of the shared copies are at the top of health.c. */
typedef struct DbpoolHealthResult
{
	TimestampTz at;				/* when it ended; 0: no check yet */
	bool		ok;
	bool		saturated;		/* no free connection nor room: the latest probe's result */
	DbpoolHealthKind kind;
	int64		latency_us;		/* the health query's; -1: it did not run */
	char		error[DBPOOL_LAST_ERROR_LEN];	/* "" when ok; canonical UTF-8 (text.c) */
} DbpoolHealthResult;

/* One pool's statistics; stats[i] belongs to registry slot i while pool_id matches. */
typedef struct DbpoolPoolStats
{
	pg_atomic_uint32 changecount;	/* odd while the worker writes */
	uint64		pool_id;
	TimestampTz stats_reset;
	pg_atomic_uint32 reset_pending;	/* set by dbpool_reset_stats(), cleared by the worker */
	uint64		slow_seq_at_reset;	/* slow-query entries before this one are hidden */

	/* gauges */
	int32		total;
	int32		active;			/* serving or finishing a request */
	int32		idle;
	int32		connecting;
	int32		waiting;
	TimestampTz oldest_wait_since;	/* 0: no request waits */
	int32		leaks_suspected;	/* connections flagged as suspected leaks now (leak.c) */

	uint64		counters[DBPOOL_NUM_COUNTERS];
	DbpoolHist	acquire;		/* time to get a connection, since stats_reset */
	DbpoolHist	query;			/* send to completion, since stats_reset */
	DbpoolRateSlot rate[DBPOOL_RATE_SLOTS];
	DbpoolWindowSlot window[DBPOOL_WINDOW_SLOTS];

	/* the latest health check, and the last request of dbpool_health() answered (health.c) */
	DbpoolHealthResult health;
	uint64		health_done;
} DbpoolPoolStats;

/* A connection's state as shown in dbpool_connections. */
typedef enum DbpoolConnShownState
{
	DBPOOL_CONN_CONNECTING,
	DBPOOL_CONN_IDLE,
	DBPOOL_CONN_ACTIVE,
	DBPOOL_CONN_CLOSING			/* finishing a request: cancel, rollback, reset */
} DbpoolConnShownState;

/* One outbound connection; the last query text (track_activity_query_size bytes) follows. */
typedef struct DbpoolConnEntry
{
	pg_atomic_uint32 changecount;	/* odd while the worker writes */
	bool		in_use;
	int			pool_slot;
	uint64		pool_id;
	uint64		conn_id;
	DbpoolConnShownState state;
	int32		client_pid;		/* 0 when no session is served */
	int32		remote_pid;		/* 0 until connected */
	TimestampTz created_at;
	TimestampTz state_since;
	int64		active_us;		/* time spent serving earlier requests */
	uint64		queries_served;
	bool		suspected_leak; /* busy with one request past leak_threshold_ms (leak.c) */
	Oid			last_role;		/* who ran last_query */
	Oid			last_error_role;	/* whose request got last_error */
	char		last_error[DBPOOL_LAST_ERROR_LEN];
	char		last_query[FLEXIBLE_ARRAY_MEMBER];
} DbpoolConnEntry;

/* One slow execution; the query text (track_activity_query_size bytes) follows. */
typedef struct DbpoolSlowEntry
{
	pg_atomic_uint32 changecount;	/* odd while the worker writes */
	uint64		seq;			/* its position in the ring's history */
	uint64		pool_id;
	char		pool[DBPOOL_NAME_LEN];
	TimestampTz started_at;
	TimestampTz ended_at;
	int64		duration_us;
	int32		client_pid;
	Oid			role;
	int64		rows;
	char		sqlstate[6];	/* "" when it succeeded */
	char		query[FLEXIBLE_ARRAY_MEMBER];
} DbpoolSlowEntry;

typedef struct DbpoolSlowLog
{
	pg_atomic_uint64 next;		/* entries ever written; the next goes at next % size */
	int			size;
	Size		stride;
	char		entries[FLEXIBLE_ARRAY_MEMBER];
} DbpoolSlowLog;

/* shared memory (stats.c) */
extern Size DbpoolStatsShmemSize(void);
extern void DbpoolStatsShmemInit(char *base, bool found);
extern DbpoolConnEntry *DbpoolConnEntryAt(int i);
extern DbpoolSlowEntry *DbpoolSlowEntryAt(uint64 seq);
extern Size DbpoolQueryTextLen(void);

/*
 * The worker's writes: the count becomes odd (whatever it was: a previous
 * worker may have died between begin and end), then even again.
 */
static inline void
DbpoolBeginWrite(pg_atomic_uint32 *cc)
{
	pg_atomic_write_u32(cc, pg_atomic_read_u32(cc) | 1);
	pg_write_barrier();
}

/* The worker's write is complete: the count becomes even. */
static inline void
DbpoolEndWrite(pg_atomic_uint32 *cc)
{
	pg_write_barrier();
	pg_atomic_write_u32(cc, pg_atomic_read_u32(cc) + 1);
}

/* consistent copies for readers (stats.c, slowlog.c) */
extern void DbpoolReadConsistent(pg_atomic_uint32 *cc, void *dst, const void *src, Size len);
extern bool DbpoolPoolStatsSnapshot(int slot, uint64 pool_id, DbpoolPoolStats *copy);
extern int	DbpoolConnSnapshot(DbpoolConnEntry **entries);
extern int	DbpoolSlowSnapshot(DbpoolSlowEntry **entries);
extern int	DbpoolSlowestFirst(const void *a, const void *b);

/* reset (views.c asks, the worker applies) */
extern void DbpoolStatsApplyResets(void);

#endif							/* DBPOOL_STATS_H */
