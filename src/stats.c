/*
 * stats.c
 *		What the worker measures: per-pool counters, gauges, latency histograms
 *		and rates, and one entry per outbound connection; their shared memory,
 *		the worker's updates and the readers' consistent copies.  What readers
 *		derive from the copies is in figures.c.
 *
 * Layout (after the channels in dbpool's shared memory, see shmem.c):
 *	dbpool.max_pools DbpoolPoolStats, stats[i] for registry slot i;
 *	dbpool.max_connections connection entries, each a DbpoolConnEntry and
 *	track_activity_query_size bytes of query text;
 *	the slow-query ring (slowlog.c).
 *
 * Locking and ownership rules:
 *	- The worker is the only writer.  Every write is bracketed by the
 *	  block's changecount (odd while writing, with write barriers), as
 *	  PostgreSQL does for PgBackendStatus: the worker never waits for a reader
 *	  and takes no lock, so measuring adds no contention to the query path.
 *	- A reader copies a whole block and keeps the copy only if the changecount
 *	  was even and unchanged across the copy; otherwise it copies again.  A
 *	  copy is thus one consistent instant of that block: counters, gauges,
 *	  histograms and rates of a pool agree with one another.
 *	- stats[i] describes the pool in registry slot i only while its pool_id
 *	  matches the slot's; the worker re-initializes it when it creates a pool.
 *	- reset_pending (per pool) is set by dbpool_reset_stats() before it bumps
 *	  DbpoolShmem->reset_requested; the worker reads reset_requested, clears
 *	  and applies every reset_pending, then publishes reset_applied.  A
 *	  caller that sees reset_applied reach its request knows its pools were
 *	  reset.
 *	- Query texts and error messages are in text.c's canonical form: valid
 *	  UTF-8, invalid bytes escaped, cut between characters with a mark.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/shmem.h"
#include "utils/backend_status.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "stats.h"
#include "worker.h"

int64		DbpoolHistBounds[DBPOOL_HIST_BOUNDS];

const char *const DbpoolCounterNames[DBPOOL_NUM_COUNTERS] = {
	"queries", "errors", "acquire_timeouts", "query_timeouts", "cancels", "slow_queries",
	"rows", "connections_created", "connection_failures", "closed_idle", "closed_lifetime",
	"closed_error", "closed_resize", "closed_config", "closed_drop",
	"closed_broken", "retries",
	"closed_large", "cancels_skipped", "cancels_abandoned", "leaks_suspected"
};

/* Worker-local: free connection entries, a stack of indexes. */
static int *free_entries = NULL;
static int	nfree_entries = 0;

/* ---------- histograms ---------- */

/* Compute the bucket bounds (every process, at load). */
void
DbpoolHistInit(void)
{
	int64		b = 50;
	int			i;

	for (i = 0; i < DBPOOL_HIST_BOUNDS; i++)
	{
		DbpoolHistBounds[i] = b;
		b += Max(b / 10, 1);
	}
	/* the last bound must reach 60 s, and no further bucket be needed */
	if (DbpoolHistBounds[DBPOOL_HIST_BOUNDS - 1] < 60 * USECS_PER_SEC ||
		DbpoolHistBounds[DBPOOL_HIST_BOUNDS - 2] >= 60 * USECS_PER_SEC)
		elog(ERROR, "dbpool: DBPOOL_HIST_BOUNDS does not match the bucket rule");
}

/* The bucket of a duration in microseconds (binary search over the bounds). */
int
DbpoolHistBucket(int64 us)
{
	int			lo = 0,
				hi = DBPOOL_HIST_BOUNDS;

	/* the first bound greater than us; its index is the bucket */
	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (DbpoolHistBounds[mid] > us)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

/* ---------- shared memory ---------- */

/* Bytes of query text kept per connection and per slow query. */
Size
DbpoolQueryTextLen(void)
{
	return Max(pgstat_track_activity_query_size, 100);
}

/* One connection entry with its text. */
static Size
conn_entry_stride(void)
{
	return MAXALIGN(offsetof(DbpoolConnEntry, last_query) + DbpoolQueryTextLen());
}

/* One slow-query entry with its text. */
static Size
slow_entry_stride(void)
{
	return MAXALIGN(offsetof(DbpoolSlowEntry, query) + DbpoolQueryTextLen());
}

/* Shared memory for the statistics, the connection table and the slow-query ring. */
Size
DbpoolStatsShmemSize(void)
{
	Size		size = MAXALIGN(mul_size(sizeof(DbpoolPoolStats), DbpoolMaxPools));

	size = add_size(size, mul_size(conn_entry_stride(), DbpoolMaxConnections));
	size = add_size(size, MAXALIGN(offsetof(DbpoolSlowLog, entries)));
	size = add_size(size, mul_size(slow_entry_stride(), DbpoolSlowQueryLogSize));
	return size;
}

/* Place (and on first use initialize) the statistics at base. */
void
DbpoolStatsShmemInit(char *base, bool found)
{
	int			i;

	DbpoolShmem->stats = (DbpoolPoolStats *) base;
	base += MAXALIGN(sizeof(DbpoolPoolStats) * DbpoolMaxPools);
	DbpoolShmem->conn_entries = base;
	DbpoolShmem->conn_entry_stride = conn_entry_stride();
	base += conn_entry_stride() * DbpoolMaxConnections;
	DbpoolShmem->slowlog = (DbpoolSlowLog *) base;
	if (found)
		return;

	memset(DbpoolShmem->stats, 0, sizeof(DbpoolPoolStats) * DbpoolMaxPools);
	for (i = 0; i < DbpoolMaxPools; i++)
	{
		pg_atomic_init_u32(&DbpoolShmem->stats[i].changecount, 0);
		pg_atomic_init_u32(&DbpoolShmem->stats[i].reset_pending, 0);
	}
	for (i = 0; i < DbpoolMaxConnections; i++)
	{
		DbpoolConnEntry *e = DbpoolConnEntryAt(i);

		memset(e, 0, conn_entry_stride());
		pg_atomic_init_u32(&e->changecount, 0);
	}
	DbpoolShmem->slowlog->size = DbpoolSlowQueryLogSize;
	DbpoolShmem->slowlog->stride = slow_entry_stride();
	pg_atomic_init_u64(&DbpoolShmem->slowlog->next, 0);
	for (i = 0; i < DbpoolSlowQueryLogSize; i++)
	{
		DbpoolSlowEntry *e = DbpoolSlowEntryAt(i);

		memset(e, 0, slow_entry_stride());
		pg_atomic_init_u32(&e->changecount, 0);
	}
}

/* Connection entry i. */
DbpoolConnEntry *
DbpoolConnEntryAt(int i)
{
	return (DbpoolConnEntry *) (DbpoolShmem->conn_entries + DbpoolShmem->conn_entry_stride * i);
}

/* ---------- the change counts ---------- */

/* Reader: copy len bytes at src, guarded by cc, until the copy is consistent. */
void
DbpoolReadConsistent(pg_atomic_uint32 *cc, void *dst, const void *src, Size len)
{
	int			tries;

	for (tries = 0;; tries++)
	{
		uint32		before = pg_atomic_read_u32(cc);

		pg_read_barrier();
		memcpy(dst, src, len);
		pg_read_barrier();
		if ((before & 1) == 0 && pg_atomic_read_u32(cc) == before)
			return;
		CHECK_FOR_INTERRUPTS();
		if (tries >= 100000)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("could not read a consistent copy of dbpool's statistics"),
					 errdetail("The dbpool worker is changing them without pause.")));
		if (tries >= 100)
			pg_usleep(10);
	}
}

/* ---------- the worker's updates: pools ---------- */

static DbpoolRateSlot *rate_slot(DbpoolPoolStats *s, TimestampTz now);

/* The stats block of a pool. */
static inline DbpoolPoolStats *
pool_stats(WorkerPool *pool)
{
	return &DbpoolShmem->stats[pool->slot];
}

/* Zero a pool's figures and restart its stats_reset; inside a write. */
static void
zero_stats(DbpoolPoolStats *s, TimestampTz now)
{
	s->stats_reset = now;
	s->slow_seq_at_reset = DbpoolShmem->slowlog->size > 0 ?
		pg_atomic_read_u64(&DbpoolShmem->slowlog->next) : 0;
	memset(s->counters, 0, sizeof(s->counters));
	memset(&s->acquire, 0, sizeof(s->acquire));
	memset(&s->query, 0, sizeof(s->query));
	memset(s->rate, 0, sizeof(s->rate));
	memset(s->window, 0, sizeof(s->window));
}

/* A pool took registry slot pool->slot: its figures start from zero. */
void
DbpoolStatsPoolCreated(WorkerPool *pool)
{
	DbpoolPoolStats *s = pool_stats(pool);

	DbpoolBeginWrite(&s->changecount);
	s->pool_id = pool->pool_id;
	s->total = s->active = s->idle = s->connecting = s->waiting = 0;
	s->oldest_wait_since = 0;
	s->leaks_suspected = 0;
	pg_atomic_write_u32(&s->reset_pending, 0);
	zero_stats(s, GetCurrentTimestamp());
	memset(&s->health, 0, sizeof(s->health));	/* a reset keeps them: they are state */
	s->health_done = 0;
	DbpoolEndWrite(&s->changecount);
}

/* Publish a pool's gauges. */
void
DbpoolStatsGauges(WorkerPool *pool)
{
	DbpoolPoolStats *s = pool_stats(pool);
	TimestampTz oldest = 0;

	if (!dlist_is_empty(&pool->waiters))
		oldest = dlist_container(WorkerChannel, wait_node,
								 dlist_head_node(&pool->waiters))->enqueued_at;
	DbpoolBeginWrite(&s->changecount);
	s->total = pool->nconns;
	s->idle = pool->nidle;
	s->connecting = pool->nconnecting;
	s->active = pool->nconns - pool->nidle - pool->nconnecting;
	s->waiting = pool->nwaiting;
	s->oldest_wait_since = oldest;
	DbpoolEndWrite(&s->changecount);
}

/* Count one event of a pool (connections created, failed, closed by reason). */
void
DbpoolStatsCount(WorkerPool *pool, DbpoolCounter c)
{
	DbpoolPoolStats *s = pool_stats(pool);

	DbpoolBeginWrite(&s->changecount);
	s->counters[c]++;
	DbpoolEndWrite(&s->changecount);
}

/* A connection of a pool was established: count it, and in its second for the churn rate. */
void
DbpoolStatsConnCreated(WorkerPool *pool)
{
	DbpoolPoolStats *s = pool_stats(pool);

	DbpoolBeginWrite(&s->changecount);
	s->counters[DBPOOL_C_CONNS_CREATED]++;
	rate_slot(s, GetCurrentTimestamp())->conns_created++;
	DbpoolEndWrite(&s->changecount);
}

/* Publish how many connections of a pool are suspected leaks now (leak.c). */
void
DbpoolStatsLeaks(WorkerPool *pool, int32 n)
{
	DbpoolPoolStats *s = pool_stats(pool);

	DbpoolBeginWrite(&s->changecount);
	s->leaks_suspected = n;
	DbpoolEndWrite(&s->changecount);
}

/* The pool's window slot for time now, emptied if it held an older slot; inside a write. */
static DbpoolWindowSlot *
window_slot(DbpoolPoolStats *s, TimestampTz now)
{
	int64		epoch = now / USECS_PER_SEC / DBPOOL_WINDOW_SLOT_SECS;
	DbpoolWindowSlot *w = &s->window[epoch % DBPOOL_WINDOW_SLOTS];

	if (w->epoch != epoch)
	{
		memset(w, 0, sizeof(*w));
		w->epoch = epoch;
	}
	return w;
}

/* The pool's per-second slot for time now, emptied if older; inside a write. */
static DbpoolRateSlot *
rate_slot(DbpoolPoolStats *s, TimestampTz now)
{
	int64		second = now / USECS_PER_SEC;
	DbpoolRateSlot *r = &s->rate[second % DBPOOL_RATE_SLOTS];

	if (r->second != second)
	{
		r->queries = r->errors = r->conns_created = 0;
		r->second = second;
	}
	return r;
}

/* A request got a connection at ch->started_at: record how long it waited. */
void
DbpoolStatsAcquired(WorkerChannel *ch)
{
	DbpoolPoolStats *s = pool_stats(ch->pool);
	int64		us = ch->enqueued_at ? Max(ch->started_at - ch->enqueued_at, 0) : 0;
	int			b = DbpoolHistBucket(us);

	DbpoolBeginWrite(&s->changecount);
	s->acquire.count[b]++;
	s->acquire.sum_us += us;
	window_slot(s, ch->started_at)->acquire[b]++;
	DbpoolEndWrite(&s->changecount);
}

/*
 * A request of ch->pool ended: answered (sqlstate NULL for success) or, with
 * cancelled, abandoned by its session.  conn is the connection that ran it,
 * if any; also is a counter to bump in the same write (a timeout), or -1.
 * Counts it, times it and logs it if slow; later calls for it do nothing.
 */
void
DbpoolStatsRequestEnd(WorkerChannel *ch, WorkerConn *conn, const char *sqlstate,
					  const char *message, bool cancelled, int also)
{
	WorkerPool *pool = ch->pool;
	DbpoolPoolStats *s;
	TimestampTz now;
	int64		us = 0;
	int64		rows = conn ? conn->rows : 0;
	bool		slow = false;
	DbpoolRateSlot *r;

	/* the one test the query path pays for leak detection */
	if (unlikely(conn && conn->leak_suspected))
		DbpoolLeakEnded(conn, cancelled ? "its client abandoned it" :
						sqlstate ? "answered with an error" : "answered");
	if (pool == NULL || ch->counted)
		return;
	ch->counted = true;
	s = pool_stats(pool);
	now = GetCurrentTimestamp();
	if (ch->started_at)
	{
		us = Max(now - ch->started_at, 0);
		slow = pool->settings.slow_query_ms > 0 &&
			us > (int64) pool->settings.slow_query_ms * 1000;
	}

	DbpoolBeginWrite(&s->changecount);
	s->counters[DBPOOL_C_QUERIES]++;
	if (cancelled)
		s->counters[DBPOOL_C_CANCELS]++;
	else if (sqlstate)
		s->counters[DBPOOL_C_ERRORS]++;
	if (slow)
		s->counters[DBPOOL_C_SLOW]++;
	if (also >= 0)
		s->counters[also]++;
	s->counters[DBPOOL_C_ROWS] += rows;
	if (ch->started_at)
	{
		int			b = DbpoolHistBucket(us);

		s->query.count[b]++;
		s->query.sum_us += us;
		window_slot(s, now)->query[b]++;
	}
	r = rate_slot(s, now);
	r->queries++;
	if (sqlstate && !cancelled)
		r->errors++;
	DbpoolEndWrite(&s->changecount);

	if (slow)
		DbpoolSlowLogAdd(pool, ch, now, us, rows, cancelled ? "57014" : sqlstate);
	if (conn && message)
		DbpoolStatsConnError(conn, message, ch->req.user);
}

/* Apply the resets dbpool_reset_stats() asked for. */
void
DbpoolStatsApplyResets(void)
{
	uint64		target = pg_atomic_read_u64(&DbpoolShmem->reset_requested);
	TimestampTz now;
	int			i;

	if (target == pg_atomic_read_u64(&DbpoolShmem->reset_applied))
		return;
	now = GetCurrentTimestamp();
	for (i = 0; i < DbpoolMaxPools; i++)
	{
		DbpoolPoolStats *s = &DbpoolShmem->stats[i];

		if (pg_atomic_exchange_u32(&s->reset_pending, 0) == 0)
			continue;
		DbpoolBeginWrite(&s->changecount);
		zero_stats(s, now);
		DbpoolEndWrite(&s->changecount);
	}
	pg_write_barrier();			/* the zeroes before the news */
	pg_atomic_write_u64(&DbpoolShmem->reset_applied, target);
}

/* ---------- the worker's updates: connections ---------- */

/* Worker start: every entry is free (a previous worker's connections are gone). */
void
DbpoolStatsConnInit(void)
{
	int			i;

	free_entries = MemoryContextAlloc(DbpoolWorkerContext, sizeof(int) * DbpoolMaxConnections);
	nfree_entries = 0;
	for (i = DbpoolMaxConnections - 1; i >= 0; i--)
	{
		DbpoolConnEntry *e = DbpoolConnEntryAt(i);

		DbpoolBeginWrite(&e->changecount);
		e->in_use = false;
		DbpoolEndWrite(&e->changecount);
		free_entries[nfree_entries++] = i;
	}
}

/* A connection is being opened: give it an entry (none if the table is full). */
void
DbpoolStatsConnOpened(WorkerConn *conn)
{
	DbpoolConnEntry *e;

	conn->entry = -1;
	conn->conn_id = ++DbpoolShmem->next_conn_id;
	if (nfree_entries == 0)
		return;
	conn->entry = free_entries[--nfree_entries];
	e = DbpoolConnEntryAt(conn->entry);
	DbpoolBeginWrite(&e->changecount);
	e->in_use = true;
	e->pool_slot = conn->pool->slot;
	e->pool_id = conn->pool->pool_id;
	e->conn_id = conn->conn_id;
	e->state = DBPOOL_CONN_CONNECTING;
	e->client_pid = 0;
	e->remote_pid = 0;
	e->created_at = conn->created_at;
	e->state_since = conn->state_since;
	e->active_us = 0;
	e->queries_served = 0;
	e->suspected_leak = false;
	e->last_role = e->last_error_role = InvalidOid;
	e->last_error[0] = '\0';
	e->last_query[0] = '\0';
	DbpoolEndWrite(&e->changecount);
}

/* The state a connection shows. */
static DbpoolConnShownState
shown_state(WorkerConn *conn)
{
	switch (conn->state)
	{
		case CONN_CONNECTING:
			return DBPOOL_CONN_CONNECTING;
		case CONN_IDLE:
			return DBPOOL_CONN_IDLE;
		case CONN_ACTIVE:
			return conn->ch ? DBPOOL_CONN_ACTIVE : DBPOOL_CONN_CLOSING;
		case CONN_CLEANUP:
			return DBPOOL_CONN_CLOSING;
	}
	return DBPOOL_CONN_CLOSING;
}

/* Copy a connection's state, client, remote pid and counts into its entry; inside a write. */
static void
fill_state(DbpoolConnEntry *e, WorkerConn *conn)
{
	e->state = shown_state(conn);
	e->state_since = conn->state_since;
	e->client_pid = conn->ch ? conn->ch->backend_pid : 0;
	e->remote_pid = conn->remote_pid;
	e->active_us = conn->active_us;
	e->queries_served = conn->requests_served;
}

/* Publish a connection's state, client, remote pid and counts. */
void
DbpoolStatsConnUpdate(WorkerConn *conn)
{
	DbpoolConnEntry *e;

	if (conn->entry < 0)
		return;
	e = DbpoolConnEntryAt(conn->entry);
	DbpoolBeginWrite(&e->changecount);
	fill_state(e, conn);
	DbpoolEndWrite(&e->changecount);
}

/* A connection (now serving ch) starts ch's request: publish it with its text and role. */
void
DbpoolStatsConnQuery(WorkerConn *conn, WorkerChannel *ch)
{
	DbpoolConnEntry *e;

	Assert(conn->ch == ch);
	if (conn->entry < 0)
		return;
	e = DbpoolConnEntryAt(conn->entry);
	DbpoolBeginWrite(&e->changecount);
	DbpoolTextStore(e->last_query, DbpoolQueryTextLen(), ch->req.sql, strlen(ch->req.sql));
	e->last_role = ch->req.user;
	fill_state(e, conn);
	DbpoolEndWrite(&e->changecount);
}

/* Publish whether a connection is a suspected leak (leak.c). */
void
DbpoolStatsConnLeak(WorkerConn *conn)
{
	DbpoolConnEntry *e;

	if (conn->entry < 0)
		return;
	e = DbpoolConnEntryAt(conn->entry);
	DbpoolBeginWrite(&e->changecount);
	e->suspected_leak = conn->leak_suspected;
	DbpoolEndWrite(&e->changecount);
}

/* Note the last error a connection's request of role was answered with. */
void
DbpoolStatsConnError(WorkerConn *conn, const char *message, Oid role)
{
	DbpoolConnEntry *e;

	if (conn->entry < 0)
		return;
	e = DbpoolConnEntryAt(conn->entry);
	DbpoolBeginWrite(&e->changecount);
	DbpoolTextStore(e->last_error, sizeof(e->last_error), message, strlen(message));
	e->last_error_role = role;
	DbpoolEndWrite(&e->changecount);
}

/* A connection is closed: free its entry. */
void
DbpoolStatsConnClosed(WorkerConn *conn)
{
	DbpoolConnEntry *e;

	if (conn->entry < 0)
		return;
	e = DbpoolConnEntryAt(conn->entry);
	DbpoolBeginWrite(&e->changecount);
	e->in_use = false;
	DbpoolEndWrite(&e->changecount);
	free_entries[nfree_entries++] = conn->entry;
	conn->entry = -1;
}

/* ---------- readers ---------- */

/* Copy pool slot's statistics if they belong to pool_id; false if not (yet). */
bool
DbpoolPoolStatsSnapshot(int slot, uint64 pool_id, DbpoolPoolStats *copy)
{
	DbpoolPoolStats *s = &DbpoolShmem->stats[slot];

	DbpoolReadConsistent(&s->changecount, copy, s, sizeof(DbpoolPoolStats));
	return copy->pool_id == pool_id;
}

/* Copy every connection entry in use; returns how many (palloc'd array of strided entries). */
int
DbpoolConnSnapshot(DbpoolConnEntry **entries)
{
	Size		stride = DbpoolShmem->conn_entry_stride;
	char	   *buf = MemoryContextAllocHuge(CurrentMemoryContext, stride * DbpoolMaxConnections);
	int			n = 0;
	int			i;

	for (i = 0; i < DbpoolMaxConnections; i++)
	{
		DbpoolConnEntry *e = DbpoolConnEntryAt(i);
		DbpoolConnEntry *copy = (DbpoolConnEntry *) (buf + stride * n);

		if (!e->in_use)
			continue;			/* an unlocked peek; the copy decides */
		DbpoolReadConsistent(&e->changecount, copy, e, stride);
		if (copy->in_use)
			n++;
	}
	*entries = (DbpoolConnEntry *) buf;
	return n;
}
