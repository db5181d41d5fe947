/*
 * pool.c
 *		Pools in the worker: acquire (an idle connection, or the FIFO wait
 *		queue), growth within max_size, release and retirement, reactions to
 *		connections opening, failing and closing, and the global cap
 *		(dbpool.max_connections) with stealing of idle slots.  Publishes each
 *		pool's state and gauges.  Creating, changing and dropping pools is
 *		config.c's; the periodic tick is janitor.c's.
 */
#include "postgres.h"

#include <math.h>

#include "common/pg_prng.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

/* The worker's pool with this name that is not being dropped, or NULL. */
WorkerPool *
DbpoolPoolFind(const char *name)
{
	dlist_iter	it;

	dlist_foreach(it, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, it.cur);

		if (!pool->dropping && strcmp(pool->name, name) == 0)
			return pool;
	}
	return NULL;
}

/* The pool a request names by registry slot and id, or NULL if it is gone. */
WorkerPool *
DbpoolPoolBySlot(int slot, uint64 pool_id)
{
	dlist_iter	it;

	dlist_foreach(it, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, it.cur);

		if (pool->slot == slot && pool->pool_id == pool_id)
			return pool;
	}
	return NULL;
}

/* Copy the pool's gauges and state into its registry slot. */
void
DbpoolPoolPublish(WorkerPool *pool)
{
	DbpoolPoolSlot *slot = &DbpoolShmem->pools[pool->slot];
	DbpoolPoolState state;

	if (pool->dropping)
		state = DBPOOL_POOL_DROPPING;
	else if (pool->down)
		state = DBPOOL_POOL_DOWN;
	else if (pool->failures > 0 || pool->on_backup)
		state = DBPOOL_POOL_DEGRADED;
	else if (pool->ever_connected)
		state = DBPOOL_POOL_OK;
	else
		state = DBPOOL_POOL_CONNECTING;
	if (slot->state != state)
	{
		slot->state = state;
		DbpoolRegistryChanged();	/* lookups skip DROPPING slots */
	}
	slot->on_backup = pool->on_backup;	/* a single store, read without the lock too */
	DbpoolStatsGauges(pool);
}

/*
 * Whether the pool may start a connection attempt now: always while attempts
 * succeed; after a failure one attempt at a time, once next_connect_at has
 * come (the loop is woken for it).
 */
bool
DbpoolPoolMayConnect(WorkerPool *pool)
{
	if (pool->failures == 0)
		return true;
	if (pool->nconnecting > 0)
		return false;
	if (GetCurrentTimestamp() < pool->next_connect_at)
	{
		DbpoolWorkerDeadline(pool->next_connect_at);
		return false;
	}
	return true;
}

/* Open connections for waiters, within max_size, dbpool.max_connections and the backoff. */
void
DbpoolPoolGrow(WorkerPool *pool)
{
	while (!pool->dropping &&
		   pool->nwaiting > pool->nconnecting &&
		   pool->nconns < pool->settings.max_size &&
		   DbpoolPoolMayConnect(pool))
	{
		if (DbpoolWorkerTotalConns >= DbpoolMaxConnections)
		{
			/* an idle connection elsewhere can give up its slot, now or later */
			DbpoolWorkerCapBlocked = true;
			DbpoolWorkerServeNeeded = true;
			break;
		}
		if (DbpoolConnOpen(pool) == NULL)
			break;
	}
}

/*
 * The idle connection to give a request of role: the most recently used one
 * that last served that role, else one that needs no role reset (new or just
 * reset), else the most recently used.  A workload of one role never pays
 * for the role reset.
 */
static WorkerConn *
idle_for_role(WorkerPool *pool, Oid role)
{
	WorkerConn *fresh = NULL;
	dlist_iter	it;

	dlist_foreach(it, &pool->idle)
	{
		WorkerConn *conn = dlist_container(WorkerConn, idle_node, it.cur);

		if (conn->served_role == role)
			return conn;
		if (fresh == NULL && !OidIsValid(conn->served_role))
			fresh = conn;
	}
	return fresh ? fresh : dlist_container(WorkerConn, idle_node, dlist_head_node(&pool->idle));
}

/* Answer a waiting request of a down pool with the failure that made it down. */
static void
fail_down(WorkerChannel *ch)
{
	WorkerPool *pool = ch->pool;

	DbpoolPoolFailWaiter(ch, pool->last_sqlerrcode, -1, pool->last_message, pool->last_detail,
						 psprintf("Pool \"%s\" is down after %d failed connection attempts in a row; dbpool tries again every %d ms and serves again as soon as one connects.",
								  pool->name, pool->failures, pool->settings.down_probe_interval_ms));
}

/* Hand the request to an idle connection, or queue it (FIFO) and grow. */
void
DbpoolPoolSubmit(WorkerPool *pool, WorkerChannel *ch)
{
	TimestampTz now;

	ch->pool = pool;
	ch->enqueued_at = ch->started_at = 0;
	ch->counted = false;
	if (pool->down)
	{
		/* fail fast with the failure that made it down; probes bring it back */
		ch->state = REQ_WAITING;
		ch->acquire_deadline = 0;
		dlist_push_tail(&pool->waiters, &ch->wait_node);
		pool->nwaiting++;
		fail_down(ch);
		return;
	}
	while (dlist_is_empty(&pool->waiters) && pool->nidle > 0)
	{
		WorkerConn *conn = idle_for_role(pool, ch->req.user);

		if (!DbpoolConnIdleAlive(conn))
			continue;			/* closed by its server meanwhile: the next one */
		dlist_delete(&conn->idle_node);
		conn->on_idle_list = false;
		pool->nidle--;
		DbpoolConnStart(conn, ch);
		DbpoolPoolPublish(pool);
		return;
	}
	now = GetCurrentTimestamp();
	ch->state = REQ_WAITING;
	ch->enqueued_at = now;
	ch->acquire_deadline = pool->settings.acquire_timeout_ms > 0 ?
		TimestampTzPlusMilliseconds(now, pool->settings.acquire_timeout_ms) : 0;
	if (ch->acquire_deadline)
		DbpoolWorkerDeadline(ch->acquire_deadline);
	dlist_push_tail(&pool->waiters, &ch->wait_node);
	pool->nwaiting++;
	DbpoolPoolGrow(pool);
	DbpoolPoolPublish(pool);
}

/*
 * The connection broke, or failed its check, before its request was sent (a
 * prelude: validation or role reset): close it and give the request another
 * connection, once.  False if the request was retried already (the caller
 * fails it).
 */
bool
DbpoolPoolRetry(WorkerConn *conn)
{
	WorkerChannel *ch = conn->ch;
	WorkerPool *pool = conn->pool;

	if (ch == NULL || ch->retried)
		return false;
	ch->retried = true;
	conn->ch = NULL;
	ch->conn = NULL;
	DbpoolStatsCount(pool, DBPOOL_C_RETRIES);
	elog(DEBUG1, "dbpool: a connection of pool \"%s\" broke before the request was sent: retrying on another",
		 pool->name);
	DbpoolConnClose(conn, DBPOOL_CLOSE_BROKEN);
	DbpoolPoolSubmit(pool, ch);
	return true;
}

/* Take a waiting request off its pool's queue. */
void
DbpoolPoolForget(WorkerChannel *ch)
{
	WorkerPool *pool = ch->pool;

	Assert(ch->state == REQ_WAITING);
	dlist_delete(&ch->wait_node);
	pool->nwaiting--;
	ch->state = REQ_RUNNING;	/* no longer waiting; the caller finishes it */
	DbpoolPoolPublish(pool);
}

/* Answer a waiting request with an error, an ERRCODE_* value (also: a counter for it, or -1). */
void
DbpoolPoolFailWaiter(WorkerChannel *ch, int sqlerrcode, int also, const char *message,
					 const char *detail, const char *hint)
{
	DbpoolStatsRequestEnd(ch, NULL, unpack_sql_state(sqlerrcode), message, false, also);
	DbpoolPoolForget(ch);
	DbpoolChannelError(ch, sqlerrcode, message, detail, hint);
}

/* Answer every waiting request of pool with the same error. */
void
DbpoolPoolFailWaiters(WorkerPool *pool, int sqlerrcode, const char *message,
					  const char *detail, const char *hint)
{
	while (!dlist_is_empty(&pool->waiters))
		DbpoolPoolFailWaiter(dlist_container(WorkerChannel, wait_node,
											 dlist_head_node(&pool->waiters)),
							 sqlerrcode, -1, message, detail, hint);
}

/*
 * Whether this connection should be closed rather than reused, and why.  A
 * connection past max_lifetime_ms still serves the request it was opened
 * for: otherwise a lifetime shorter than a connect would never serve anyone.
 */
bool
DbpoolConnShouldRetire(WorkerConn *conn, TimestampTz now, DbpoolCloseReason *reason)
{
	WorkerPool *pool = conn->pool;

	if (conn->retire)
		*reason = conn->retire_reason;
	else if (pool->dropping)
		*reason = DBPOOL_CLOSE_DROP;
	else if (conn->conninfo_gen != pool->conninfo_gen)
		*reason = DBPOOL_CLOSE_CONFIG;
	else if (pool->nconns > pool->settings.max_size)
		*reason = DBPOOL_CLOSE_RESIZE;
	else if (pool->settings.max_lifetime_ms > 0 && conn->requests_served > 0 &&
			 now >= TimestampTzPlusMilliseconds(conn->created_at, pool->settings.max_lifetime_ms))
		*reason = DBPOOL_CLOSE_LIFETIME;
	else if (conn->large)
		*reason = DBPOOL_CLOSE_LARGE;
	else
		return false;
	return true;
}

/* A clean connection is free: serve the first waiter, keep it idle, or close it. */
void
DbpoolPoolRelease(WorkerConn *conn)
{
	WorkerPool *pool = conn->pool;
	DbpoolCloseReason reason;

	if (DbpoolConnShouldRetire(conn, GetCurrentTimestamp(), &reason))
	{
		DbpoolConnClose(conn, reason);
		return;
	}
	if (!dlist_is_empty(&pool->waiters))
	{
		WorkerChannel *ch = dlist_container(WorkerChannel, wait_node,
											dlist_head_node(&pool->waiters));

		DbpoolConnSetState(conn, CONN_IDLE);
		DbpoolPoolForget(ch);
		DbpoolConnStart(conn, ch);
	}
	else
	{
		DbpoolConnSetState(conn, CONN_IDLE);
		dlist_push_head(&pool->idle, &conn->idle_node);
		conn->on_idle_list = true;
		pool->nidle++;
		if (DbpoolWorkerCapBlocked)
			DbpoolWorkerServeNeeded = true; /* a pool waiting for the cap may take it */
	}
	DbpoolPoolPublish(pool);
}

/* Forget the pool's connection failures: attempts start again at once. */
void
DbpoolPoolResetFailures(WorkerPool *pool)
{
	pool->failures = 0;
	pool->down = false;
	pool->next_connect_at = 0;
}

/* Replace a kept copy of a failure's text. */
static void
keep_text(char **dst, const char *src)
{
	if (*dst)
		pfree(*dst);
	*dst = src ? MemoryContextStrdup(DbpoolWorkerContext, src) : NULL;
}

/* A new connection of pool is up: the pool is reachable (the connection is released after its set-up). */
void
DbpoolPoolConnected(WorkerPool *pool)
{
	if (pool->failures > 0)
		ereport(LOG, (errmsg("dbpool: pool \"%s\" is reachable again", pool->name),
					  errdetail("After %d failed connection attempts%s.", pool->failures,
								pool->down ? ", while it was down" : "")));
	pool->ever_connected = true;
	DbpoolPoolResetFailures(pool);
}

/*
 * A connection attempt failed.  The next attempt waits: retry_base_ms doubled
 * for each failure in a row, up to retry_max_ms, with jitter (a random 50 to
 * 100 %).  After retry_attempts failures in a row with no live connection the
 * pool is down: every waiter gets this failure now, later requests get it at
 * once, and a probe tries every down_probe_interval_ms.  Until then waiters
 * wait for the retries (within their acquire timeout).  A pool on its
 * primary that has a backup moves to it instead of going down (failover.c).
 */
void
DbpoolPoolConnFailed(WorkerPool *pool, int sqlerrcode, const char *message,
					 const char *detail, const char *hint)
{
	int			live = pool->nconns - pool->nconnecting;
	TimestampTz now = GetCurrentTimestamp();
	double		delay;

	if (pool->failures == 0 || pool->last_failure_log == 0 ||
		TimestampDifferenceExceeds(pool->last_failure_log, now, 60000))
	{
		ereport(LOG,
				(errmsg("dbpool: %s", message),
				 detail ? errdetail_internal("%s", detail) : 0));
		pool->last_failure_log = now;
	}
	pool->failures++;
	pool->last_sqlerrcode = sqlerrcode;
	keep_text(&pool->last_message, message);
	keep_text(&pool->last_detail, detail);
	keep_text(&pool->last_hint, hint);

	if (live == 0 && pool->failures >= pool->settings.retry_attempts &&
		DbpoolFailoverNeeded(pool))
	{
		/* the primary is down and there is a backup: waiters wait on for it */
		DbpoolFailoverToBackup(pool);
		return;
	}
	if (!pool->down && live == 0 && pool->failures >= pool->settings.retry_attempts)
	{
		pool->down = true;
		ereport(LOG,
				(errmsg("dbpool: pool \"%s\" is down", pool->name),
				 errdetail("%d connection attempts in a row failed; requests fail at once until a probe connects (every %d ms).",
						   pool->failures, pool->settings.down_probe_interval_ms)));
	}
	if (pool->down)
		delay = pool->settings.down_probe_interval_ms;
	else
	{
		delay = (double) pool->settings.retry_base_ms * pow(2.0, Min(pool->failures - 1, 30));
		delay = Min(delay, (double) pool->settings.retry_max_ms);
		delay *= 0.5 + 0.5 * pg_prng_double(&pg_global_prng_state);
	}
	pool->next_connect_at = TimestampTzPlusMilliseconds(now, (int64) delay);
	DbpoolWorkerDeadline(pool->next_connect_at);
	if (pool->down)
		DbpoolPoolFailWaiters(pool, sqlerrcode, message, detail, hint);
	DbpoolPoolPublish(pool);
}

/* A connection of pool is gone: its slot under the global cap may serve someone. */
void
DbpoolPoolConnClosed(WorkerPool *pool)
{
	DbpoolWorkerServeNeeded = true;
	if (pool->dropping && pool->nconns == 0)
		DbpoolWorkerDeadline(GetCurrentTimestamp());	/* free its slot now */
	DbpoolPoolPublish(pool);
}

/* Close the idle connection that has been idle longest in a pool other than except. */
static bool
steal_idle(WorkerPool *except)
{
	WorkerConn *victim = NULL;
	dlist_iter	it;

	dlist_foreach(it, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, it.cur);
		WorkerConn *oldest;

		if (pool == except || pool->nidle == 0)
			continue;
		oldest = dlist_container(WorkerConn, idle_node, dlist_tail_node(&pool->idle));
		if (victim == NULL || oldest->state_since < victim->state_since)
			victim = oldest;
	}
	if (victim == NULL)
		return false;
	DbpoolConnClose(victim, DBPOOL_CLOSE_RESIZE);
	return true;
}

/* Let every pool with waiters grow into freed room, taking idle slots of others if needed. */
void
DbpoolPoolServeAll(void)
{
	dlist_iter	it;

	DbpoolWorkerServeNeeded = false;
	DbpoolWorkerCapBlocked = false; /* DbpoolPoolGrow sets it again if still so */
	dlist_foreach(it, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, it.cur);

		while (!pool->dropping && pool->nwaiting > pool->nconnecting &&
			   pool->nconns < pool->settings.max_size &&
			   DbpoolWorkerTotalConns >= DbpoolMaxConnections &&
			   steal_idle(pool))
			;
		DbpoolPoolGrow(pool);
	}
}

/* Close every connection and forget every pool (worker exit). */
void
DbpoolPoolCloseAll(void)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, it.cur);
		dlist_mutable_iter cit;

		dlist_foreach_modify(cit, &pool->conns)
			DbpoolConnClose(dlist_container(WorkerConn, pool_node, cit.cur),
							DBPOOL_CLOSE_UNCOUNTED);
	}
}
