/*
 * pool.c
 *		Pools in the worker: acquire, the FIFO wait queue, sizing, housekeeping
 *		(min_size, idle_timeout, max_lifetime), and reconciling the pools with
 *		the configuration table.  Writes the shared registry (worker.c only
 *		clears it at start-up).
 */
#include "postgres.h"

#include "libpq-fe.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

#define BACKOFF_MIN_MS	500
#define BACKOFF_MAX_MS	30000

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
	else if (pool->unreachable)
		state = DBPOOL_POOL_UNREACHABLE;
	else if (pool->ever_connected)
		state = DBPOOL_POOL_READY;
	else
		state = DBPOOL_POOL_CONNECTING;
	if (slot->state != state)
	{
		slot->state = state;
		DbpoolRegistryChanged();	/* lookups skip DROPPING slots */
	}
	DbpoolStatsGauges(pool);
}

/* Open connections for waiters, within max_size and dbpool.max_connections. */
static void
grow(WorkerPool *pool)
{
	while (!pool->dropping &&
		   pool->nwaiting > pool->nconnecting &&
		   pool->nconns < pool->settings.max_size)
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

/* Hand the request to an idle connection, or queue it (FIFO) and grow. */
void
DbpoolPoolSubmit(WorkerPool *pool, WorkerChannel *ch)
{
	TimestampTz now;

	ch->pool = pool;
	ch->enqueued_at = ch->started_at = 0;
	ch->counted = false;
	if (dlist_is_empty(&pool->waiters) && pool->nidle > 0)
	{
		WorkerConn *conn = dlist_container(WorkerConn, idle_node,
										   dlist_pop_head_node(&pool->idle));

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
	grow(pool);
	DbpoolPoolPublish(pool);
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

/* Answer a waiting request with an error (also: a counter for it, or -1). */
static void
fail_waiter(WorkerChannel *ch, const char *sqlstate, const char *message,
			const char *detail, const char *hint, int also)
{
	DbpoolStatsRequestEnd(ch, NULL, sqlstate, message, false, also);
	DbpoolPoolForget(ch);
	DbpoolChannelError(ch, sqlstate, message, detail, hint);
}

/*
 * Whether this connection should be closed rather than reused, and why.  A
 * connection past max_lifetime_ms still serves the request it was opened
 * for: otherwise a lifetime shorter than a connect would never serve anyone.
 */
static bool
should_retire(WorkerConn *conn, TimestampTz now, DbpoolCloseReason *reason)
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

	if (should_retire(conn, GetCurrentTimestamp(), &reason))
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

/* A new connection is up. */
void
DbpoolPoolConnected(WorkerConn *conn)
{
	WorkerPool *pool = conn->pool;

	if (pool->unreachable)
		ereport(LOG, (errmsg("dbpool: pool \"%s\" is reachable again", pool->name)));
	pool->ever_connected = true;
	pool->unreachable = false;
	pool->backoff_ms = 0;
	pool->next_connect_at = 0;
	DbpoolPoolRelease(conn);
}

/*
 * A connection attempt failed.  If no connection of the pool can serve its
 * waiters, answer them all with the reason now rather than at their
 * acquire timeout; back off before min_size tries again.
 */
void
DbpoolPoolConnFailed(WorkerPool *pool, const char *sqlstate, const char *message,
					 const char *detail, const char *hint)
{
	int			live = pool->nconns - pool->nconnecting;
	TimestampTz now = GetCurrentTimestamp();

	if (!pool->unreachable || pool->last_failure_log == 0 ||
		TimestampDifferenceExceeds(pool->last_failure_log, now, 60000))
	{
		ereport(LOG,
				(errmsg("dbpool: %s", message),
				 detail ? errdetail_internal("%s", detail) : 0));
		pool->last_failure_log = now;
	}
	pool->unreachable = true;
	pool->backoff_ms = pool->backoff_ms == 0 ? BACKOFF_MIN_MS :
		Min(pool->backoff_ms * 2, BACKOFF_MAX_MS);
	pool->next_connect_at = TimestampTzPlusMilliseconds(now, pool->backoff_ms);
	DbpoolWorkerDeadline(pool->next_connect_at);
	/* this attempt still counts in nconnecting; others may still succeed */
	if (live == 0 && pool->nconnecting <= 1)
	{
		while (!dlist_is_empty(&pool->waiters))
			fail_waiter(dlist_container(WorkerChannel, wait_node, dlist_head_node(&pool->waiters)),
						sqlstate, message, detail, hint, -1);
	}
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
	DbpoolWorkerCapBlocked = false; /* grow() sets it again if still so */
	dlist_foreach(it, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, it.cur);

		while (!pool->dropping && pool->nwaiting > pool->nconnecting &&
			   pool->nconns < pool->settings.max_size &&
			   DbpoolWorkerTotalConns >= DbpoolMaxConnections &&
			   steal_idle(pool))
			;
		grow(pool);
	}
}

/* Free a dropped pool whose connections are all gone. */
static void
free_pool(WorkerPool *pool)
{
	DbpoolPoolSlot *slot = &DbpoolShmem->pools[pool->slot];

	LWLockAcquire(DbpoolShmem->lock, LW_EXCLUSIVE);
	slot->in_use = false;
	LWLockRelease(DbpoolShmem->lock);
	DbpoolRegistryChanged();
	dlist_delete(&pool->node);
	if (pool->conninfo)
		pfree(pool->conninfo);
	if (pool->params_cxt)
		MemoryContextDelete(pool->params_cxt);
	pfree(pool);
}

/* Housekeeping for one pool: deadlines of waiters, idle/lifetime retirement, min_size. */
static void
pool_tick(WorkerPool *pool, TimestampTz now)
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
		fail_waiter(ch, "53300",
					psprintf("could not acquire a connection from pool \"%s\" within %d ms",
							 pool->name, pool->settings.acquire_timeout_ms),
					DbpoolWorkerTotalConns >= DbpoolMaxConnections && pool->nconns < pool->settings.max_size ?
					psprintf("All dbpool.max_connections (%d) connections of all pools are in use; this pool has %d of max_size %d, and %d requests are waiting.",
							 DbpoolMaxConnections, pool->nconns, pool->settings.max_size, pool->nwaiting) :
					psprintf("%d of max_size %d connections are busy and %d requests are waiting.",
							 active, pool->settings.max_size, pool->nwaiting),
					"Raise max_size or acquire_timeout_ms with dbpool_alter_pool(), or lower the load on the pool.",
					DBPOOL_C_ACQUIRE_TIMEOUTS);
	}

	dlist_foreach_modify(it, &pool->conns)
	{
		WorkerConn *conn = dlist_container(WorkerConn, pool_node, it.cur);

		if (conn->state == CONN_IDLE)
		{
			bool		unused_expired = conn->requests_served == 0 &&
				pool->settings.max_lifetime_ms > 0 &&
				now >= TimestampTzPlusMilliseconds(conn->created_at, pool->settings.max_lifetime_ms);
			bool		idle_expired = pool->settings.idle_timeout_ms > 0 &&
				pool->nconns > pool->settings.min_size &&
				now >= TimestampTzPlusMilliseconds(conn->state_since, pool->settings.idle_timeout_ms);
			DbpoolCloseReason reason;

			if (should_retire(conn, now, &reason))
				DbpoolConnClose(conn, reason);
			else if (unused_expired)
				DbpoolConnClose(conn, DBPOOL_CLOSE_LIFETIME);
			else if (idle_expired)
				DbpoolConnClose(conn, DBPOOL_CLOSE_IDLE);
		}
		else if (pool->dropping && conn->ch && now >= pool->drop_deadline)
		{
			DbpoolConnFailRequest(conn, "57P01",
								  psprintf("pool \"%s\" was dropped while the query ran", pool->name),
								  psprintf("Queries of a dropped pool may run for %d ms.",
										   DBPOOL_DROP_GRACE_MS),
								  NULL);
			DbpoolConnOrphan(conn);
		}
		else
			DbpoolConnCheckDeadline(conn, now);
	}
	if (pool->dropping)
	{
		if (pool->nconns == 0)
			free_pool(pool);
		else
			DbpoolWorkerDeadline(pool->drop_deadline);
		return;
	}

	/* keep min_size warm, after a failure only once the backoff has passed */
	if (pool->nconns < pool->settings.min_size)
	{
		if (now >= pool->next_connect_at)
		{
			while (pool->nconns < pool->settings.min_size &&
				   DbpoolWorkerTotalConns < DbpoolMaxConnections &&
				   (pool->nconnecting == 0 || !pool->unreachable) &&
				   DbpoolConnOpen(pool) != NULL)
				;
		}
		else
			DbpoolWorkerDeadline(pool->next_connect_at);
	}
	DbpoolPoolPublish(pool);
}

/* Housekeeping for all pools. */
void
DbpoolPoolTick(TimestampTz now)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &DbpoolWorkerPools)
		pool_tick(dlist_container(WorkerPool, node, it.cur), now);
}

/*
 * Build libpq's keyword/value arrays: our defaults, the pool's conninfo, then
 * what we force.  They live in pool->params_cxt, rebuilt on every change.  On
 * a conninfo libpq cannot parse the arrays are left NULL: connection attempts
 * then fail with a clear error instead of reaching an old target.
 */
static bool
build_params(WorkerPool *pool)
{
	static const char *const defaults[][2] = {
		{"connect_timeout", "10"},
		{"keepalives", "1"},
		{"keepalives_idle", "30"},
		{"keepalives_interval", "10"},
		{"keepalives_count", "3"},
	};
	PQconninfoOption *opts;
	PQconninfoOption *o;
	char	   *err = NULL;
	int			n = 0,
				max = lengthof(defaults) + 4;
	const char *user_options = NULL;
	int			connect_timeout = 10;
	MemoryContext old;
	int			i;

	if (pool->params_cxt == NULL)
		pool->params_cxt = AllocSetContextCreate(DbpoolWorkerContext, "dbpool pool params",
												 ALLOCSET_SMALL_SIZES);
	MemoryContextReset(pool->params_cxt);
	pool->keywords = pool->values = NULL;

	opts = PQconninfoParse(pool->conninfo, &err);
	if (opts == NULL)
	{
		if (err)
			PQfreemem(err);
		return false;
	}
	for (o = opts; o->keyword; o++)
		max++;
	old = MemoryContextSwitchTo(pool->params_cxt);
	pool->keywords = palloc0(sizeof(char *) * max);
	pool->values = palloc0(sizeof(char *) * max);
	for (i = 0; i < (int) lengthof(defaults); i++)
	{
		pool->keywords[n] = defaults[i][0];
		pool->values[n++] = defaults[i][1];
	}
	for (o = opts; o->keyword; o++)
	{
		if (o->val == NULL || strcmp(o->keyword, "client_encoding") == 0)
			continue;
		if (strcmp(o->keyword, "options") == 0)
		{
			user_options = o->val;
			continue;
		}
		if (strcmp(o->keyword, "connect_timeout") == 0)
			connect_timeout = atoi(o->val);
		pool->keywords[n] = pstrdup(o->keyword);
		pool->values[n++] = pstrdup(o->val);
	}
	pool->keywords[n] = "fallback_application_name";
	pool->values[n++] = "dbpool";
	pool->keywords[n] = "client_encoding";
	pool->values[n++] = "UTF8";
	pool->keywords[n] = "options";
	pool->values[n++] = psprintf("%s%s-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3",
								 user_options ? user_options : "", user_options ? " " : "");
	pool->keywords[n] = NULL;
	pool->values[n] = NULL;
	MemoryContextSwitchTo(old);
	/* libpq treats 1 as 2 and <= 0 as none; we enforce it ourselves, never unbounded */
	pool->connect_timeout_ms = (connect_timeout <= 0 ? 10 : Max(connect_timeout, 2)) * 1000;
	PQconninfoFree(opts);
	return true;
}

/* Write a pool's configuration into its registry slot. */
static void
publish_config(WorkerPool *pool, const PoolConfig *cfg)
{
	DbpoolPoolSlot *slot = &DbpoolShmem->pools[pool->slot];
	char	   *redacted = NULL;
	MemoryContext old = CurrentMemoryContext;

	/* the table's conninfo was validated when written; redaction cannot fail */
	PG_TRY();
	{
		redacted = DbpoolRedactConninfo(cfg->conninfo);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		FlushErrorState();
		redacted = pstrdup("(invalid)");
	}
	PG_END_TRY();

	LWLockAcquire(DbpoolShmem->lock, LW_EXCLUSIVE);
	slot->in_use = true;
	slot->pool_id = pool->pool_id;
	strlcpy(slot->name, cfg->name, sizeof(slot->name));
	slot->owner = cfg->owner;
	slot->ngrantees = cfg->ngrantees;
	memcpy(slot->grantees, cfg->grantees, sizeof(Oid) * cfg->ngrantees);
	slot->created_at = cfg->created_at;
	slot->settings = cfg->settings;
	strlcpy(slot->conninfo, redacted, sizeof(slot->conninfo));
	LWLockRelease(DbpoolShmem->lock);
	DbpoolRegistryChanged();
	DbpoolPoolPublish(pool);
}

/* Start dropping a pool: waiters fail now, running queries get a grace period. */
static void
start_drop(WorkerPool *pool)
{
	dlist_mutable_iter it;

	pool->dropping = true;
	pool->drop_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DBPOOL_DROP_GRACE_MS);
	DbpoolWorkerDeadline(pool->drop_deadline);
	while (!dlist_is_empty(&pool->waiters))
		fail_waiter(dlist_container(WorkerChannel, wait_node, dlist_head_node(&pool->waiters)),
					"42704", psprintf("pool \"%s\" was dropped", pool->name), NULL, NULL, -1);
	dlist_foreach_modify(it, &pool->conns)
	{
		WorkerConn *conn = dlist_container(WorkerConn, pool_node, it.cur);

		if (conn->state == CONN_IDLE || conn->state == CONN_CONNECTING)
			DbpoolConnClose(conn, DBPOOL_CLOSE_DROP);
	}
	DbpoolPoolPublish(pool);
}

/* Create a pool from its configuration; NULL if the registry is full. */
static WorkerPool *
create_pool(const PoolConfig *cfg)
{
	WorkerPool *pool;
	int			slot = -1;
	int			i;

	for (i = 0; i < DbpoolMaxPools; i++)
		if (!DbpoolShmem->pools[i].in_use)
		{
			slot = i;
			break;
		}
	if (slot < 0)
	{
		ereport(WARNING,
				(errmsg("dbpool: pool \"%s\" is not loaded: dbpool.max_pools (%d) pools exist",
						cfg->name, DbpoolMaxPools)));
		return NULL;
	}
	pool = MemoryContextAllocZero(DbpoolWorkerContext, sizeof(WorkerPool));
	pool->slot = slot;
	pool->pool_id = DbpoolShmem->next_pool_id++;
	strlcpy(pool->name, cfg->name, sizeof(pool->name));
	dlist_init(&pool->conns);
	dlist_init(&pool->idle);
	dlist_init(&pool->waiters);
	dlist_push_tail(&DbpoolWorkerPools, &pool->node);
	DbpoolStatsPoolCreated(pool);
	return pool;
}

/* Apply one pool's configuration (new or changed) to the live pool. */
static void
apply_config(WorkerPool *pool, const PoolConfig *cfg)
{
	bool		conninfo_changed = pool->conninfo == NULL ||
		strcmp(pool->conninfo, cfg->conninfo) != 0;
	bool		demoted = pool->owner_is_superuser && !cfg->owner_is_superuser;
	dlist_mutable_iter it;

	pool->settings = cfg->settings;
	pool->stmt_cache_allowed = DbpoolStmtCacheAllowed(cfg->settings.reset_query);
	pool->owner_is_superuser = cfg->owner_is_superuser;
	if (demoted)
		pool->conninfo_gen++;	/* its connections passed a check the owner would not now */
	if (conninfo_changed)
	{
		if (pool->conninfo)
			pfree(pool->conninfo);
		pool->conninfo = MemoryContextStrdup(DbpoolWorkerContext, cfg->conninfo);
		if (!build_params(pool))
			ereport(WARNING, (errmsg("dbpool: pool \"%s\" has an invalid conninfo", pool->name)));
		pool->conninfo_gen++;
		pool->unreachable = false;
		pool->backoff_ms = 0;
		pool->next_connect_at = 0;
	}
	/* idle connections that no longer fit (old conninfo, smaller size) close now */
	dlist_foreach_modify(it, &pool->conns)
	{
		WorkerConn *conn = dlist_container(WorkerConn, pool_node, it.cur);
		DbpoolCloseReason reason;

		if (conn->state == CONN_IDLE && should_retire(conn, GetCurrentTimestamp(), &reason))
			DbpoolConnClose(conn, reason);
		else if (conn->state == CONN_CONNECTING && (conninfo_changed || demoted))
			DbpoolConnClose(conn, DBPOOL_CLOSE_UNCOUNTED);
	}
	publish_config(pool, cfg);
	grow(pool);					/* a bigger max_size serves waiters at once */
}

/* Make the live pools match the configuration table. */
void
DbpoolPoolReconcile(List *configs)
{
	dlist_mutable_iter it;
	ListCell   *lc;

	/* pools no longer configured are dropped */
	dlist_foreach_modify(it, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, it.cur);
		bool		found = false;

		if (pool->dropping)
			continue;
		foreach(lc, configs)
			if (strcmp(((PoolConfig *) lfirst(lc))->name, pool->name) == 0)
				found = true;
		if (!found)
			start_drop(pool);
	}
	foreach(lc, configs)
	{
		PoolConfig *cfg = lfirst(lc);
		WorkerPool *pool = DbpoolPoolFind(cfg->name);

		if (pool == NULL)
			pool = create_pool(cfg);
		if (pool != NULL)
			apply_config(pool, cfg);
	}
	DbpoolWorkerServeNeeded = true;
	DbpoolWorkerDeadline(GetCurrentTimestamp());	/* min_size at once */
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
