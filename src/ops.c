/*
 * ops.c
 *		The operator's manual operations on a pool, from the operations
 *		guide: dbpool_restart_pool (close every connection, reconnect) and
 *		dbpool_cleanup_pool (close idle and broken connections, forget the
 *		connection failures).  The SQL functions run in backends: they check
 *		privileges, mark the pool's registry slot and wait for the worker; the
 *		worker applies the marks in its loop (DbpoolOpsApply).
 *
 * Shared state: each registry slot's ops_pending is a bitmask set by
 * backends (fetch-or) and taken by the worker (exchange); the worker clears
 * it when it gives the slot to a new pool.  ops_requested and ops_applied
 * work as config_requested and config_applied (shmem.c): a backend bumps
 * ops_requested after marking (a full barrier), the worker publishes
 * ops_applied once every mark it saw is applied.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "figures.h"
#include "worker.h"

#define DBPOOL_OP_RESTART	0x1
#define DBPOOL_OP_CLEANUP	0x2

PG_FUNCTION_INFO_V1(dbpool_restart_pool);
PG_FUNCTION_INFO_V1(dbpool_cleanup_pool);

/* ---------- backends ---------- */

/* Mark pool name for operation op, after the privilege check, and wait for the worker. */
static void
request_op(FunctionCallInfo fcinfo, uint32 op, const char *what)
{
	DbpoolPoolSlot *slots;
	DbpoolPoolSlot *p;
	char	   *name;
	int			n;
	uint64		target;

	DbpoolCheckLoaded();
	name = DbpoolTextArg(fcinfo, 0, "pool name");
	DbpoolWaitForCommittedConfig();
	slots = DbpoolRegistryCopy(&n);
	p = DbpoolFindSlot(slots, n, name, false);
	if (!superuser() && !has_privs_of_role(GetUserId(), p->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of pool \"%s\"", name),
				 errdetail("Only a pool's owner or a superuser may %s it.", what)));
	pg_atomic_fetch_or_u32(&DbpoolShmem->pools[p->index].ops_pending, op);
	target = pg_atomic_add_fetch_u64(&DbpoolShmem->ops_requested, 1);
	DbpoolWaitForWorker();
	DbpoolWakeWorker();
	if (!DbpoolWaitForCounter(&DbpoolShmem->ops_applied, target, DBPOOL_WORKER_WAIT_MS))
		ereport(WARNING,
				(errmsg("the dbpool worker has not started to %s pool \"%s\" yet", what, name),
				 errdetail("It will when it next wakes up.")));
}

/*
 * dbpool_restart_pool(name): close every connection of the pool and connect
 * again from the configuration.  Idle connections close at once; queries in
 * flight may finish within DBPOOL_DROP_GRACE_MS, then they are cancelled.
 */
Datum
dbpool_restart_pool(PG_FUNCTION_ARGS)
{
	request_op(fcinfo, DBPOOL_OP_RESTART, "restart");
	PG_RETURN_VOID();
}

/*
 * dbpool_cleanup_pool(name): close the pool's idle connections and broken
 * ones, and clear its connection failures (down state, backoff).
 */
Datum
dbpool_cleanup_pool(PG_FUNCTION_ARGS)
{
	request_op(fcinfo, DBPOOL_OP_CLEANUP, "clean up");
	PG_RETURN_VOID();
}

/* ---------- the worker ---------- */

/*
 * Restart: every connection belongs to an old generation from now on (it is
 * closed when it is next free, idle and connecting ones now); a query still
 * running at restart_deadline is cancelled by housekeeping.  The failures
 * are forgotten, and min_size is refilled by housekeeping.
 */
static void
restart_pool(WorkerPool *pool)
{
	dlist_mutable_iter it;
	int			busy = 0;

	DbpoolPoolUsePrimary(pool);	/* a pool on its backup starts over on its primary */
	pool->conninfo_gen++;
	pool->restart_gen++;
	pool->restart_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														 DBPOOL_DROP_GRACE_MS);
	DbpoolWorkerDeadline(pool->restart_deadline);
	DbpoolPoolResetFailures(pool);
	dlist_foreach_modify(it, &pool->conns)
	{
		WorkerConn *conn = dlist_container(WorkerConn, pool_node, it.cur);

		if (conn->state == CONN_IDLE || conn->state == CONN_CONNECTING)
			DbpoolConnClose(conn, DBPOOL_CLOSE_CONFIG);
		else
			busy++;
	}
	ereport(LOG,
			(errmsg("dbpool: pool \"%s\" restarts", pool->name),
			 errdetail("%d busy connections close when their query ends, or are cancelled after %d ms.",
					   busy, DBPOOL_DROP_GRACE_MS)));
}

/*
 * Cleanup: close idle connections and broken ones (the server closed them,
 * or a cancel is stuck on them), and forget the failures so that attempts
 * start again at once.
 */
static void
cleanup_pool(WorkerPool *pool)
{
	dlist_mutable_iter it;
	int			idle = 0,
				broken = 0;
	bool		was_down = pool->down;

	dlist_foreach_modify(it, &pool->conns)
	{
		WorkerConn *conn = dlist_container(WorkerConn, pool_node, it.cur);

		if (conn->state == CONN_IDLE)
		{
			DbpoolConnClose(conn, DBPOOL_CLOSE_IDLE);
			idle++;
		}
		else if ((conn->pg && PQstatus(conn->pg) == CONNECTION_BAD) ||
				 (conn->state == CONN_CLEANUP && conn->cleanup_step == CLEANUP_AWAIT_CANCEL))
		{
			DbpoolConnClose(conn, DBPOOL_CLOSE_BROKEN);
			broken++;
		}
	}
	DbpoolPoolResetFailures(pool);
	ereport(LOG,
			(errmsg("dbpool: pool \"%s\" cleaned up", pool->name),
			 errdetail("%d idle and %d broken connections closed%s.", idle, broken,
					   was_down ? "; the down state is cleared" : "")));
}

/* Apply what dbpool_restart_pool and dbpool_cleanup_pool asked for. */
void
DbpoolOpsApply(void)
{
	uint64		target = pg_atomic_read_u64(&DbpoolShmem->ops_requested);
	dlist_mutable_iter it;

	if (target == pg_atomic_read_u64(&DbpoolShmem->ops_applied))
		return;
	dlist_foreach_modify(it, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, it.cur);
		uint32		ops = pg_atomic_exchange_u32(&DbpoolShmem->pools[pool->slot].ops_pending, 0);

		if (pool->dropping || ops == 0)
			continue;
		if (ops & DBPOOL_OP_CLEANUP)
			cleanup_pool(pool);
		if (ops & DBPOOL_OP_RESTART)
			restart_pool(pool);
		DbpoolPoolGrow(pool);
		DbpoolPoolPublish(pool);
	}
	DbpoolWorkerDeadline(GetCurrentTimestamp());	/* housekeeping refills min_size */
	pg_atomic_write_u64(&DbpoolShmem->ops_applied, target);
}
