/*
 * janitor.c
 *		The worker's periodic housekeeping, run for every pool when a deadline
 *		is due and at least once a second: waiters past their acquire
 *		deadline, each connection's idle and lifetime limits and its own
 *		deadline, the drop grace of a dropped pool and freeing it, and the
 *		connection attempts no request waits for: retries after the backoff,
 *		min_size, the probes of down and degraded pools, a failed-over
 *		pool's probes of its primary (failover.c), the health checks'
 *		deadlines and background probes (health.c), leak detection
 *		(leak.c), autoscaling (autoscale.c, which samples once a second),
 *		and the alerts (alerts.c, evaluated once a second).
 *
 * Every deadline a phase sees in the future is registered with
 * DbpoolWorkerDeadline, so the loop wakes for it.
 */
#include "postgres.h"

#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

/*
 * Answer the waiters whose acquire deadline has passed: 53300, or, when no
 * connection of the pool is live and attempts are failing, the last failure.
 */
static void
expire_waiters(WorkerPool *pool, TimestampTz now)
{
	dlist_mutable_iter it;
	int			active = pool->nconns - pool->nidle - pool->nconnecting;

	dlist_foreach_modify(it, &pool->waiters)
	{
		WorkerChannel *ch = dlist_container(WorkerChannel, wait_node, it.cur);

		if (ch->acquire_deadline == 0)
			continue;
		if (now < ch->acquire_deadline)
		{
			DbpoolWorkerDeadline(ch->acquire_deadline);
			continue;
		}
		if (pool->failures > 0 && pool->nconns == pool->nconnecting)
		{
			/* nothing could serve it: the truth is the connection failure, not the wait */
			DbpoolPoolFailWaiter(ch, pool->last_sqlerrcode, DBPOOL_C_ACQUIRE_TIMEOUTS,
								 pool->last_message, pool->last_detail,
								 psprintf("dbpool is reconnecting to pool \"%s\": %d attempts failed in a row; the pool is down after %d.",
										  pool->name, pool->failures, pool->settings.retry_attempts));
			continue;
		}
		DbpoolPoolFailWaiter(ch, ERRCODE_TOO_MANY_CONNECTIONS, DBPOOL_C_ACQUIRE_TIMEOUTS,
							 psprintf("could not acquire a connection from pool \"%s\" within %d ms",
									  pool->name, pool->settings.acquire_timeout_ms),
							 DbpoolWorkerTotalConns >= DbpoolMaxConnections && pool->nconns < pool->settings.max_size ?
							 psprintf("All dbpool.max_connections (%d) connections of all pools are in use; this pool has %d of max_size %d, and %d requests are waiting.",
									  DbpoolMaxConnections, pool->nconns, pool->settings.max_size, pool->nwaiting) :
							 psprintf("%d of max_size %d connections are busy and %d requests are waiting.",
									  active, pool->settings.max_size, pool->nwaiting),
							 "Raise max_size or acquire_timeout_ms with dbpool_alter_pool(), or lower the load on the pool.");
	}
}

/* Close an idle connection that must retire, has outlived its lifetime unused, or idled too long. */
static void
check_idle(WorkerConn *conn, TimestampTz now)
{
	WorkerPool *pool = conn->pool;
	bool		unused_expired = conn->requests_served == 0 &&
		pool->settings.max_lifetime_ms > 0 &&
		now >= TimestampTzPlusMilliseconds(conn->created_at, pool->settings.max_lifetime_ms);
	bool		idle_expired = pool->settings.idle_timeout_ms > 0 &&
		pool->nconns > pool->settings.min_size &&
		now >= TimestampTzPlusMilliseconds(conn->state_since, pool->settings.idle_timeout_ms);
	DbpoolCloseReason reason;

	if (DbpoolConnShouldRetire(conn, now, &reason))
		DbpoolConnClose(conn, reason);
	else if (unused_expired)
		DbpoolConnClose(conn, DBPOOL_CLOSE_LIFETIME);
	else if (idle_expired)
		DbpoolConnClose(conn, DBPOOL_CLOSE_IDLE);
}

/*
 * A query still running when its grace period (a restart's or a drop's)
 * ends: answer its caller with 57P01 and cancel it.
 */
static void
end_after_grace(WorkerConn *conn, const char *what, const char *when)
{
	DbpoolConnFailRequest(conn, ERRCODE_ADMIN_SHUTDOWN, -1,
						  psprintf("pool \"%s\" was %s while the query ran", conn->pool->name, what),
						  psprintf("Queries may run for %d ms %s.", DBPOOL_DROP_GRACE_MS, when),
						  NULL);
	DbpoolConnOrphan(conn);
}

/* Each connection: idle limits, the grace of a restart or a drop, or its own deadline. */
static void
check_connections(WorkerPool *pool, TimestampTz now)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &pool->conns)
	{
		WorkerConn *conn = dlist_container(WorkerConn, pool_node, it.cur);

		if (conn->state == CONN_IDLE)
			check_idle(conn, now);
		else if (conn->state == CONN_CONNECTING && !conn->probe &&
				 conn->conninfo_gen != pool->conninfo_gen)
			DbpoolConnClose(conn, DBPOOL_CLOSE_UNCOUNTED);	/* to the target left */
		else if (conn->ch && conn->restart_gen != pool->restart_gen &&
				 now >= pool->restart_deadline)
			end_after_grace(conn, "restarted", "after dbpool_restart_pool()");
		else if (pool->dropping && conn->ch && now >= pool->drop_deadline)
			end_after_grace(conn, "dropped", "after the pool is dropped");
		else
			DbpoolConnCheckDeadline(conn, now);
	}
}

/* Free a dropped pool whose connections are all gone: its registry slot is free again. */
static void
free_pool(WorkerPool *pool)
{
	DbpoolPoolSlot *slot = &DbpoolShmem->pools[pool->slot];

	LWLockAcquire(DbpoolShmem->lock, LW_EXCLUSIVE);
	slot->in_use = false;
	LWLockRelease(DbpoolShmem->lock);
	DbpoolRegistryChanged();
	dlist_delete(&pool->node);
	DbpoolResizeForget(pool->name);
	DbpoolAutoscaleForget(pool);
	DbpoolConnForgetLookup(&pool->primary);
	DbpoolConnForgetLookup(&pool->backup);
	if (pool->primary.conninfo)
		pfree(pool->primary.conninfo);
	if (pool->primary.params.cxt)
		MemoryContextDelete(pool->primary.params.cxt);
	if (pool->backup.conninfo)
		pfree(pool->backup.conninfo);
	if (pool->backup.params.cxt)
		MemoryContextDelete(pool->backup.params.cxt);
	pfree(pool);
}

/*
 * Connection attempts that wait for no request: waiters whose backoff has
 * passed, min_size, and the probe of a pool whose attempts fail.  After a
 * failure, one attempt at a time once the backoff (or the probe interval) has
 * passed.  A degraded pool probes too (within max_size): its live connections
 * may be enough for min_size and the load, and then nothing else would ever
 * find out that attempts succeed again, so it would stay degraded (for
 * example after a frozen server is thawed).
 */
static void
reconnect(WorkerPool *pool)
{
	DbpoolPoolGrow(pool);
	while (pool->nconns < pool->settings.min_size &&
		   DbpoolWorkerTotalConns < DbpoolMaxConnections &&
		   DbpoolPoolMayConnect(pool) &&
		   DbpoolConnOpen(pool) != NULL)
		;
	if ((pool->down ||
		 (pool->failures > 0 && pool->nconns < pool->settings.max_size)) &&
		DbpoolWorkerTotalConns < DbpoolMaxConnections &&
		DbpoolPoolMayConnect(pool))
		(void) DbpoolConnOpen(pool);	/* the probe: on success it joins the pool */
}

/* Housekeeping for one pool. */
static void
pool_tick(WorkerPool *pool, TimestampTz now)
{
	expire_waiters(pool, now);
	check_connections(pool, now);
	DbpoolLeakTick(pool, now);
	if (pool->dropping)
	{
		if (pool->nconns == 0)
			free_pool(pool);
		else
			DbpoolWorkerDeadline(pool->drop_deadline);
		return;
	}
	reconnect(pool);
	DbpoolFailoverTick(pool, now);
	DbpoolHealthTick(pool, now);
	DbpoolAutoscaleTick(pool, now);
	DbpoolPoolPublish(pool);
}

/* Housekeeping for all pools. */
void
DbpoolJanitorTick(TimestampTz now)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &DbpoolWorkerPools)
		pool_tick(dlist_container(WorkerPool, node, it.cur), now);
	DbpoolAlertsTick(now);
}
