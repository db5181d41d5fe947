/*
 * health.c
 *		The worker's health checks: each pool's background probe every
 *		health_check_interval_ms, and the checks dbpool_health() asks for
 *		(health_sql.c).  A check runs the pool's health_query on one of its
 *		connections with a deadline of health_timeout_ms and records the
 *		result in the pool's statistics block.
 *
 * A check, by the pool's situation:
 *	- being dropped, or down: answered at once (a down pool with the failure
 *	  that made it down), without a connection attempt;
 *	- an idle connection: the least recently used one (checked for a close by
 *	  its server first) runs the health query as a cleanup step
 *	  (CLEANUP_HEALTH, conn_reset.c), so conn_query.c's result loop reads it;
 *	  then the usual cleanup follows and the connection goes back to its pool
 *	  (to the first waiter, if one came meanwhile), idle since when it was
 *	  before.  While it runs the check the connection counts as active in the
 *	  gauges and shows as closing in dbpool_connections.  Past the deadline
 *	  the check fails and the connection is closed; an SQL error fails the
 *	  check, and the connection stays if its transaction ends idle;
 *	- asked for, no idle connection, room below max_size (and under
 *	  dbpool.max_connections) and the pool may connect (no backoff pending):
 *	  a new connection, checked as soon as it is up, within the same
 *	  deadline; a failed attempt fails the check with libpq's message.  If a
 *	  request waits when it comes up, the request gets it and the check is
 *	  answered by the connect itself (ok, the connect's latency);
 *	- otherwise (all busy at max_size, or only attempts that fail): no
 *	  connection is taken or opened.  A pool with live connections is
 *	  saturated: answered at once with the latest background probe's result
 *	  (saturated = true); one without is failed with its last failure.
 * A background probe runs only on an idle connection with no request
 * waiting (a down pool's probe is answered from its state); it never opens a
 * connection.  So a check never takes a connection a waiting request could
 * use, and never goes beyond max_size.
 *
 * Shared state and its rules:
 *	- The result (DbpoolHealthResult) and health_done live in the pool's
 *	  statistics block (stats.h) and are written by the worker inside
 *	  DbpoolBeginWrite/EndWrite like the rest of the block: readers copy it
 *	  with DbpoolPoolStatsSnapshot.  The worker zeroes them when it gives the
 *	  block to a new pool; dbpool_reset_stats() leaves them.
 *	- A registry slot's health_requested counts the checks asked for its pool
 *	  (backends: add-fetch; zeroed by the worker when it gives the slot to a
 *	  new pool).  After bumping it, a backend bumps
 *	  DbpoolShmem->health_doorbell (add-fetch, a full barrier) and sets the
 *	  worker's latch.  The worker reads the doorbell once per loop iteration
 *	  and looks at the slots only when it moved, so nothing is added per
 *	  pool or per query to the loop.
 *	- A check the worker starts covers every request up to the value of
 *	  health_requested it read (health_seq); a request seen while a check is
 *	  in flight joins it (its result comes after the request).  The worker
 *	  publishes health_done = health_seq with the result: a backend whose
 *	  request is n waits for health_done >= n.
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "dbpool.h"
#include "proto.h"
#include "worker.h"

/* The doorbell the worker saw last; true while requests may still wait for a scan. */
static uint64 doorbell_seen = 0;
static bool rescan = false;

/*
 * Publish r as the result of the pool's check in flight: in its statistics
 * block with the requests it answers, and as its latest probe if it was one.
 */
static void
publish(WorkerPool *pool, const DbpoolHealthResult *r)
{
	DbpoolPoolStats *s = &DbpoolShmem->stats[pool->slot];

	if (r->kind == DBPOOL_HEALTH_PROBE && !r->saturated)
		pool->last_probe = *r;
	DbpoolBeginWrite(&s->changecount);
	s->health = *r;
	if (pool->health_seq > s->health_done)
		s->health_done = pool->health_seq;
	DbpoolEndWrite(&s->changecount);

	if (pool->health_conn)
		pool->health_conn->health = false;
	pool->health_conn = NULL;
	pool->health_busy = false;
	pool->health_last = r->at;
	rescan = true;				/* requests that came meanwhile start a check next */
}

/* A result for the pool's check in flight, now; its error text from message and detail. */
static void
result_now(WorkerPool *pool, DbpoolHealthResult *r, bool ok, int64 latency_us)
{
	memset(r, 0, sizeof(*r));
	r->at = GetCurrentTimestamp();
	r->ok = ok;
	r->kind = pool->health_on_demand ? DBPOOL_HEALTH_ON_DEMAND : DBPOOL_HEALTH_PROBE;
	r->latency_us = latency_us;
}

/* Record the check in flight as passed (ok) or failed with message and detail. */
static void
record(WorkerPool *pool, bool ok, int64 latency_us, const char *message, const char *detail)
{
	DbpoolHealthResult r;

	result_now(pool, &r, ok, latency_us);
	if (!ok)
	{
		char	   *text = psprintf("%s%s%s", message ? message : "the health check failed",
									detail && detail[0] ? ": " : "", detail ? detail : "");

		DbpoolTextStore(r.error, sizeof(r.error), text, strlen(text));
	}
	publish(pool, &r);
}

/*
 * Answer the check in flight with the latest background probe's result (ok,
 * latency, error): the pool is saturated.  Never probed: ok if a connection
 * is up (they are all serving), else failed (all are still connecting).
 */
static void
record_saturated(WorkerPool *pool)
{
	DbpoolHealthResult r;

	result_now(pool, &r, true, -1);
	if (pool->last_probe.at != 0)
	{
		r.ok = pool->last_probe.ok;
		r.latency_us = pool->last_probe.latency_us;
		memcpy(r.error, pool->last_probe.error, sizeof(r.error));
	}
	else if (pool->nconns - pool->nconnecting == 0)
	{
		char	   *text = psprintf("no connection of pool \"%s\" is up yet: all %d are connecting",
									pool->name, pool->nconns);

		r.ok = false;
		DbpoolTextStore(r.error, sizeof(r.error), text, strlen(text));
	}
	r.saturated = true;
	publish(pool, &r);
}

/* The pool's least recently used idle connection, off the idle list; NULL if none is left. */
static WorkerConn *
take_idle(WorkerPool *pool)
{
	while (pool->nidle > 0)
	{
		WorkerConn *conn = dlist_container(WorkerConn, idle_node, dlist_tail_node(&pool->idle));

		if (!DbpoolConnIdleAlive(conn))
			continue;			/* closed by its server meanwhile: the next one */
		dlist_delete(&conn->idle_node);
		conn->on_idle_list = false;
		pool->nidle--;
		return conn;
	}
	return NULL;
}

/* Run the check in flight on conn (idle or just connected). */
static void
run_on(WorkerPool *pool, WorkerConn *conn)
{
	conn->health = true;
	pool->health_conn = conn;
	pool->health_query_at = GetCurrentTimestamp();
	DbpoolConnRunHealthQuery(conn); /* if it cannot be sent, the close fails the check */
	DbpoolPoolPublish(pool);
}

/* Start a check of pool: asked for by dbpool_health() (on_demand), or a background probe. */
static void
start_check(WorkerPool *pool, bool on_demand, TimestampTz now)
{
	WorkerConn *conn;

	pool->health_busy = true;
	pool->health_on_demand = on_demand;
	pool->health_deadline = TimestampTzPlusMilliseconds(now, pool->settings.health_timeout_ms);
	DbpoolWorkerDeadline(pool->health_deadline);

	if (pool->dropping)
	{
		record(pool, false, -1, psprintf("pool \"%s\" is being dropped", pool->name), NULL);
		return;
	}
	if (pool->down)
	{
		record(pool, false, -1, pool->last_message, pool->last_detail);
		return;
	}
	if (dlist_is_empty(&pool->waiters) && (conn = take_idle(pool)) != NULL)
	{
		conn->health_idle_since = conn->state_since;
		run_on(pool, conn);
		return;
	}
	if (!on_demand)
	{
		pool->health_busy = false;	/* no idle connection left: the next tick tries again */
		return;
	}
	if (pool->nconns < pool->settings.max_size &&
		DbpoolWorkerTotalConns < DbpoolMaxConnections &&
		DbpoolPoolMayConnect(pool))
	{
		conn = DbpoolConnOpen(pool);
		if (conn == NULL)
		{
			/* it failed at once, and told the pool */
			record(pool, false, -1, pool->last_message, pool->last_detail);
			return;
		}
		conn->health = true;
		pool->health_conn = conn;
		return;
	}
	if (pool->nconns - pool->nconnecting == 0 && pool->failures > 0)
		record(pool, false, -1, pool->last_message, pool->last_detail);
	else
		record_saturated(pool);
}

/*
 * Start the checks dbpool_health() asked for: one atomic read of the
 * doorbell, and a look at every pool only when it moved (or a check ended
 * since requests came).
 */
void
DbpoolHealthApply(void)
{
	uint64		bell = pg_atomic_read_u64(&DbpoolShmem->health_doorbell);
	TimestampTz now;
	dlist_mutable_iter it;

	if (bell == doorbell_seen && !rescan)
		return;
	pg_read_barrier();			/* the requests made before the bell */
	doorbell_seen = bell;
	rescan = false;
	now = GetCurrentTimestamp();
	dlist_foreach_modify(it, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, it.cur);
		uint64		req = pg_atomic_read_u64(&DbpoolShmem->pools[pool->slot].health_requested);

		if (req <= pool->health_seq)
			continue;
		pool->health_seq = req;
		if (!pool->health_busy)
			start_check(pool, true, now);
	}
}

/*
 * Housekeeping of a pool's checks: the deadline of a check whose connection
 * is still connecting, and the background probe when it is due.
 */
void
DbpoolHealthTick(WorkerPool *pool, TimestampTz now)
{
	TimestampTz due;

	if (pool->health_busy)
	{
		WorkerConn *conn = pool->health_conn;

		if (now < pool->health_deadline)
			DbpoolWorkerDeadline(pool->health_deadline);
		else if (conn && conn->state == CONN_CONNECTING)
		{
			/* the connection may still come up and serve: only the check is over */
			record(pool, false, -1,
				   psprintf("could not connect to pool \"%s\" within health_timeout_ms (%d ms)",
							pool->name, pool->settings.health_timeout_ms),
				   NULL);
		}
		return;
	}
	if (pool->settings.health_check_interval_ms == 0 || pool->dropping)
		return;
	due = TimestampTzPlusMilliseconds(pool->health_last, pool->settings.health_check_interval_ms);
	if (now < due)
	{
		DbpoolWorkerDeadline(due);
		return;
	}
	if (pool->down || (pool->nidle > 0 && pool->nwaiting == 0))
		start_check(pool, false, now);
}

/*
 * A connection opened for a check is up.  True if the check runs on it now;
 * false if a request waits, which gets it instead (the connect answers the
 * check).
 */
bool
DbpoolHealthConnReady(WorkerConn *conn)
{
	WorkerPool *pool = conn->pool;

	if (pool->health_conn != conn)
	{
		conn->health = false;	/* its check was answered meanwhile */
		return false;
	}
	if (!dlist_is_empty(&pool->waiters))
	{
		record(pool, true, Max(GetCurrentTimestamp() - conn->created_at, 0), NULL, NULL);
		return false;
	}
	run_on(pool, conn);
	return true;
}

/* The health query's last result is in (conn->error holds its error, if any). */
void
DbpoolHealthStepDone(WorkerConn *conn)
{
	WorkerPool *pool = conn->pool;
	int64		latency = Max(GetCurrentTimestamp() - pool->health_query_at, 0);

	if (pool->health_conn != conn)
	{
		conn->health = false;
		return;
	}
	if (conn->error.len > 0)
	{
		DbpoolErrorFields e = {0};

		DbpoolProtoErrorOf(&conn->error, &e);
		record(pool, false, latency, e.message, e.detail);
	}
	else
		record(pool, true, latency, NULL, NULL);
}

/*
 * The check running on (or waiting for) conn failed: its deadline passed,
 * the connect failed, or the connection is being closed.
 */
void
DbpoolHealthConnFailed(WorkerConn *conn, const char *message, const char *detail)
{
	WorkerPool *pool = conn->pool;

	if (!conn->health)
		return;
	conn->health = false;
	if (pool->health_conn != conn)
		return;
	record(pool, false,
		   conn->state == CONN_CLEANUP ? Max(GetCurrentTimestamp() - pool->health_query_at, 0) : -1,
		   message, detail);
}

/*
 * A connection taken idle for a check is clean again: back to its pool as
 * it was (idle since then, least recently used), unless it must retire or a
 * request waits for it (DbpoolPoolRelease).  A check keeps no connection
 * alive against idle_timeout_ms.
 */
void
DbpoolHealthRelease(WorkerConn *conn)
{
	WorkerPool *pool = conn->pool;
	TimestampTz since = conn->health_idle_since;
	DbpoolCloseReason reason;

	conn->health_idle_since = 0;
	if (!dlist_is_empty(&pool->waiters) ||
		DbpoolConnShouldRetire(conn, GetCurrentTimestamp(), &reason))
	{
		DbpoolPoolRelease(conn);
		return;
	}
	DbpoolConnSetState(conn, CONN_IDLE);
	conn->state_since = since;
	DbpoolStatsConnUpdate(conn);
	dlist_push_tail(&pool->idle, &conn->idle_node);
	conn->on_idle_list = true;
	pool->nidle++;
	if (DbpoolWorkerCapBlocked)
		DbpoolWorkerServeNeeded = true; /* a pool waiting for the cap may take it */
	DbpoolPoolPublish(pool);
}
