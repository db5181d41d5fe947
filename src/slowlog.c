/*
 * slowlog.c
 *		The slow-query log: a ring of the dbpool.slow_query_log_size most
 *		recent executions slower than their pool's slow_query_ms, in shared
 *		memory (placed by stats.c).
 *
 * Locking and ownership rules:
 *	- The worker is the only writer.  It fills the entry at next % size
 *	  inside the entry's changecount (odd while writing), then advances next.
 *	- A reader reads next, then copies entries next - size .. next - 1, each
 *	  until consistent (stats.c), and keeps a copy only if its seq is the one
 *	  it asked for: an entry overwritten meanwhile by a newer one is skipped.
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "dbpool.h"
#include "stats.h"
#include "worker.h"

/* The ring entry that holds (or will hold) the seq-th slow query. */
DbpoolSlowEntry *
DbpoolSlowEntryAt(uint64 seq)
{
	DbpoolSlowLog *log = DbpoolShmem->slowlog;

	return (DbpoolSlowEntry *) (log->entries + log->stride * (seq % log->size));
}

/* Worker: log a slow execution of ch's request on pool. */
void
DbpoolSlowLogAdd(WorkerPool *pool, WorkerChannel *ch, TimestampTz ended_at, int64 us,
				 int64 rows, const char *sqlstate)
{
	DbpoolSlowLog *log = DbpoolShmem->slowlog;
	uint64		seq;
	DbpoolSlowEntry *e;

	if (log->size == 0)
		return;
	seq = pg_atomic_read_u64(&log->next);
	e = DbpoolSlowEntryAt(seq);

	DbpoolBeginWrite(&e->changecount);
	e->seq = seq;
	e->pool_id = pool->pool_id;
	strlcpy(e->pool, pool->name, sizeof(e->pool));
	e->started_at = ch->started_at;
	e->ended_at = ended_at;
	e->duration_us = us;
	e->client_pid = ch->backend_pid;
	e->role = ch->req.user;
	e->rows = rows;
	strlcpy(e->sqlstate, sqlstate ? sqlstate : "", sizeof(e->sqlstate));
	DbpoolTextStore(e->query, DbpoolQueryTextLen(), ch->req.sql, strlen(ch->req.sql));
	DbpoolEndWrite(&e->changecount);
	pg_atomic_write_u64(&log->next, seq + 1);
}

/* Copy the entries still in the ring, oldest first; returns how many (strided array). */
int
DbpoolSlowSnapshot(DbpoolSlowEntry **entries)
{
	DbpoolSlowLog *log = DbpoolShmem->slowlog;
	uint64		next,
				seq;
	char	   *buf;
	int			n = 0;

	*entries = NULL;
	if (log->size == 0)
		return 0;
	next = pg_atomic_read_u64(&log->next);
	pg_read_barrier();
	buf = MemoryContextAllocHuge(CurrentMemoryContext, log->stride * log->size);
	for (seq = next > (uint64) log->size ? next - log->size : 0; seq < next; seq++)
	{
		DbpoolSlowEntry *e = DbpoolSlowEntryAt(seq);
		DbpoolSlowEntry *copy = (DbpoolSlowEntry *) (buf + log->stride * n);

		DbpoolReadConsistent(&e->changecount, copy, e, log->stride);
		if (copy->seq == seq)
			n++;
	}
	*entries = (DbpoolSlowEntry *) buf;
	return n;
}

/* qsort comparator of DbpoolSlowEntry pointers: slowest first, then newest first. */
int
DbpoolSlowestFirst(const void *a, const void *b)
{
	const DbpoolSlowEntry *x = *(DbpoolSlowEntry *const *) a;
	const DbpoolSlowEntry *y = *(DbpoolSlowEntry *const *) b;

	if (x->duration_us != y->duration_us)
		return x->duration_us > y->duration_us ? -1 : 1;
	return x->seq > y->seq ? -1 : (x->seq < y->seq ? 1 : 0);
}
