/*
 * cancel.c
 *		Cancel a remote query without blocking the worker's loop, and without
 *		letting one pool's target use up another pool's cancels.
 *
 * PQcancel blocks (it connects to the server and waits for the reply) and on
 * PostgreSQL 15 has no non-blocking form.  libpq documents it as safe to call
 * from another thread, so each cancel runs in a short-lived detached thread
 * that calls only PQcancel, PQfreeCancel, atomics and SetLatch (a store and a
 * kill(), as in a signal handler), with every signal blocked: PostgreSQL's
 * handlers must run in the worker's own thread.  The thread sets the worker's
 * latch when it is done; the connection is not reused before then, so a late
 * cancel can never hit the next client's query.
 *
 * Budgets.  A thread cannot be interrupted (libpq retries recv on EINTR): a
 * server that accepts a CancelRequest and never answers holds its thread
 * until it closes the socket.  So each pool may have at most
 * DBPOOL_CANCELS_PER_POOL threads in flight, counted by pool_id (not by
 * registry slot: the threads of a dropped pool stay charged to it, never to
 * the pool that reuses its slot), and the whole worker at most that many per
 * live pool plus DBPOOL_CANCEL_SPARE (for threads of dropped pools).  A
 * cancel that finds no room is refused (the caller waits for room within its
 * deadline, or closes the connection); a cancel the worker stops waiting for
 * is abandoned.  Both are counted in the pool's cancels_skipped and
 * cancels_abandoned, and logged once per pool.
 *
 * Ownership: a DbpoolCancel is malloc'd by the worker and stays in the
 * worker's list of cancels until its thread is done and no connection holds
 * it; only the worker frees it.  The thread touches only cancel, latch and
 * done, and nothing at all after setting done.
 */
#include "postgres.h"

#include <pthread.h>
#include <signal.h>

#include "lib/ilist.h"
#include "miscadmin.h"
#include "storage/latch.h"

#include "dbpool.h"
#include "worker.h"

#define DBPOOL_CANCELS_PER_POOL		3	/* threads in flight per pool */
#define DBPOOL_CANCEL_SPARE			64	/* beyond the live pools' budgets */
#define CANCEL_THREAD_STACK			(256 * 1024)

struct DbpoolCancel
{
	dlist_node	node;			/* in cancels; worker only */
	uint64		pool_id;		/* whose budget it is charged to; worker only */
	bool		forgotten;		/* no connection holds it; worker only */
	pg_atomic_uint32 done;		/* set by the thread when it has finished */
	PGcancel   *cancel;			/* the thread's */
	Latch	   *latch;
};

/* Every cancel not yet freed: running, or done and held by a connection. */
static dlist_head cancels = DLIST_STATIC_INIT(cancels);

/* Connections waiting for room to start their cancel (conn->cancel_queued). */
int			DbpoolCancelsQueued = 0;

/* Thread body: send the cancel request, then say so; the worker frees the struct. */
static void *
cancel_thread_main(void *arg)
{
	DbpoolCancel *c = (DbpoolCancel *) arg;
	Latch	   *latch = c->latch;
	char		errbuf[256];

	(void) PQcancel(c->cancel, errbuf, sizeof(errbuf));
	PQfreeCancel(c->cancel);
	c->cancel = NULL;
	pg_write_barrier();
	pg_atomic_write_u32(&c->done, 1);
	SetLatch(latch);
	return NULL;
}

/* Free the cancels whose thread is done and that no connection holds. */
static void
reap(void)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &cancels)
	{
		DbpoolCancel *c = dlist_container(DbpoolCancel, node, it.cur);

		if (c->forgotten && pg_atomic_read_u32(&c->done) != 0)
		{
			dlist_delete(&c->node);
			free(c);
		}
	}
}

/* Whether a new cancel for pool may start: its budget, and the worker's cap. */
static bool
room_for(WorkerPool *pool)
{
	dlist_iter	it;
	int			mine = 0;
	int			all = 0;
	int			npools = 0;

	dlist_foreach(it, &cancels)
	{
		DbpoolCancel *c = dlist_container(DbpoolCancel, node, it.cur);

		if (pg_atomic_read_u32(&c->done) != 0)
			continue;
		all++;
		if (c->pool_id == pool->pool_id)
			mine++;
	}
	if (mine >= DBPOOL_CANCELS_PER_POOL)
		return false;
	if (all < DBPOOL_CANCEL_SPARE)
		return true;
	dlist_foreach(it, &DbpoolWorkerPools)
		npools++;
	return all < DBPOOL_CANCELS_PER_POOL * npools + DBPOOL_CANCEL_SPARE;
}

/*
 * Start cancelling the query running on conn.  NULL if it could not start:
 * *busy says whether only for want of room (the caller may try again when a
 * cancel of this pool ends) or for good (no cancel key, no thread).
 */
DbpoolCancel *
DbpoolCancelStart(WorkerConn *conn, bool *busy)
{
	DbpoolCancel *c;
	pthread_t	thread;
	pthread_attr_t attr;
	sigset_t	all,
				old;
	int			rc;

	reap();
	*busy = !room_for(conn->pool);
	if (*busy)
		return NULL;
	c = malloc(sizeof(DbpoolCancel));
	if (c == NULL)
		return NULL;
	c->cancel = PQgetCancel(conn->pg);
	if (c->cancel == NULL)
	{
		free(c);
		return NULL;
	}
	c->pool_id = conn->pool->pool_id;
	c->forgotten = false;
	pg_atomic_init_u32(&c->done, 0);
	c->latch = MyLatch;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	(void) pthread_attr_setstacksize(&attr, CANCEL_THREAD_STACK);
	rc = pthread_create(&thread, &attr, cancel_thread_main, c);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0)
	{
		PQfreeCancel(c->cancel);
		free(c);
		return NULL;
	}
	dlist_push_tail(&cancels, &c->node);
	return c;
}

/* True once the cancel request has been delivered (or failed); frees c then. */
bool
DbpoolCancelDone(DbpoolCancel *c)
{
	if (pg_atomic_read_u32(&c->done) == 0)
		return false;
	pg_read_barrier();
	dlist_delete(&c->node);
	free(c);
	return true;
}

/*
 * The connection holding c is closed: c is freed once its thread is done.
 * True if the thread was still running (the cancel is abandoned).
 */
bool
DbpoolCancelForget(DbpoolCancel *c)
{
	if (DbpoolCancelDone(c))
		return false;
	c->forgotten = true;
	return true;
}

/*
 * Count a cancel that pool gave up on: never started (skipped) or not
 * finished in time (abandoned); the first of each kind is logged.
 */
void
DbpoolCancelGaveUp(WorkerPool *pool, bool abandoned)
{
	DbpoolStatsCount(pool, abandoned ? DBPOOL_C_CANCELS_ABANDONED : DBPOOL_C_CANCELS_SKIPPED);
	if (abandoned && !pool->cancel_abandon_logged)
	{
		pool->cancel_abandon_logged = true;
		ereport(LOG,
				(errmsg("dbpool: pool \"%s\": a cancel request got no answer from the server before its connection was closed",
						pool->name),
				 errdetail("Further abandoned cancels of this pool are counted in cancels_abandoned of dbpool_detailed_metrics(), not logged.")));
	}
	else if (!abandoned && !pool->cancel_skip_logged)
	{
		pool->cancel_skip_logged = true;
		ereport(LOG,
				(errmsg("dbpool: pool \"%s\": a remote query could not be cancelled; the connection is closed",
						pool->name),
				 errdetail("At most %d cancel requests per pool are in flight at once, and those of this pool did not end in time (or a thread could not be started).",
						   DBPOOL_CANCELS_PER_POOL),
				 errhint("Further skipped cancels of this pool are counted in cancels_skipped of dbpool_detailed_metrics(), not logged.")));
	}
}
