/*
 * failover.c
 *		A pool's two targets: its primary (conninfo) and its backup
 *		(backup_conninfo).  When the pool would go down on its primary and has
 *		a backup, it moves to the backup; while there, a probe connection to
 *		the primary every down_probe_interval_ms, and the move back once the
 *		primary has answered every probe for failback_after_ms (0: only by
 *		dbpool_restart_pool or a change of either conninfo), or at once when
 *		the backup is down too.
 *
 * A move bumps the pool's conninfo_gen: connections to the other target
 * retire (idle and connecting ones at the next housekeeping tick, which is
 * asked for at once; busy ones when their request ends), and the failures
 * and backoff start over.  Nothing here closes a connection itself: these
 * functions run while the loop walks the pool's connections.
 *
 * A probe is a WorkerConn (conn.c) flagged probe: it connects, passes the
 * password rule, is closed, and never serves.  It holds a slot under
 * dbpool.max_connections while it connects, but it is not in the pool's
 * counts, gauges or dbpool_connections, and its failures are not the pool's.
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

/* The target the pool's new connections go to. */
WorkerTarget *
DbpoolPoolTarget(WorkerPool *pool)
{
	return pool->on_backup ? &pool->backup : &pool->primary;
}

/* Whether a pool that would go down now should move to its backup instead. */
bool
DbpoolFailoverNeeded(WorkerPool *pool)
{
	return !pool->on_backup && !pool->dropping && pool->backup.conninfo != NULL;
}

/* Move the pool to its backup, or back to its primary; connections to the other retire. */
static void
switch_target(WorkerPool *pool, bool backup)
{
	TimestampTz now = GetCurrentTimestamp();

	pool->on_backup = backup;
	pool->conninfo_gen++;
	DbpoolPoolResetFailures(pool);
	pool->primary_up_since = 0;
	pool->next_probe_at = TimestampTzPlusMilliseconds(now, pool->settings.down_probe_interval_ms);
	DbpoolWorkerServeNeeded = true; /* waiters get connections to the new target */
	DbpoolWorkerDeadline(now);	/* housekeeping closes the old idle and connecting ones */
	DbpoolPoolPublish(pool);
}

/* The primary is down (retry_attempts failures in a row, nothing live): serve from the backup. */
void
DbpoolFailoverToBackup(WorkerPool *pool)
{
	ereport(LOG,
			(errmsg("dbpool: pool \"%s\" fails over to its backup", pool->name),
			 errdetail("%d connection attempts in a row to its primary failed; the last: %s%s%s",
					   pool->failures, pool->last_message ? pool->last_message : "",
					   pool->last_detail ? ": " : "", pool->last_detail ? pool->last_detail : ""),
			 pool->settings.failback_after_ms > 0 ?
			 errhint("The pool returns to its primary once the primary has answered for %d ms.",
					 pool->settings.failback_after_ms) :
			 errhint("failback_after_ms is 0: the pool stays on its backup until dbpool_restart_pool().")));
	switch_target(pool, true);
}

/*
 * Put the pool back on its primary now, if it is on its backup
 * (dbpool_restart_pool, a change of either conninfo).
 */
void
DbpoolPoolUsePrimary(WorkerPool *pool)
{
	if (!pool->on_backup)
		return;
	ereport(LOG,
			(errmsg("dbpool: pool \"%s\" returns to its primary", pool->name),
			 errdetail("It was restarted or its configuration changed.")));
	switch_target(pool, false);
}

/*
 * A probe of the primary ended: connected (ok), or failed with error.  The
 * pool fails back once the primary has answered every probe for
 * failback_after_ms, or at once if its backup is down too.
 */
void
DbpoolFailoverProbed(WorkerPool *pool, bool ok, const char *error)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!pool->on_backup || pool->dropping)
		return;
	pool->next_probe_at = TimestampTzPlusMilliseconds(now, pool->settings.down_probe_interval_ms);
	DbpoolWorkerDeadline(pool->next_probe_at);
	if (!ok)
	{
		if (pool->primary_up_since != 0)
			elog(DEBUG1, "dbpool: the primary of pool \"%s\" failed a probe again: %s",
				 pool->name, error ? error : "");
		pool->primary_up_since = 0;
		return;
	}
	if (pool->primary_up_since == 0)
		pool->primary_up_since = now;
	if (pool->down)
	{
		ereport(LOG,
				(errmsg("dbpool: pool \"%s\" fails back to its primary", pool->name),
				 errdetail("Its backup is down and its primary answers.")));
		switch_target(pool, false);
	}
	else if (pool->settings.failback_after_ms > 0 &&
			 TimestampDifferenceExceeds(pool->primary_up_since, now,
										pool->settings.failback_after_ms))
	{
		ereport(LOG,
				(errmsg("dbpool: pool \"%s\" fails back to its primary", pool->name),
				 errdetail("Its primary has answered every probe for %d ms (failback_after_ms).",
						   pool->settings.failback_after_ms)));
		switch_target(pool, false);
	}
}

/*
 * Housekeeping of a pool on its backup: probe the primary every
 * down_probe_interval_ms, one probe at a time, within the global cap.  With
 * failback_after_ms 0 only while the backup is down as well.
 */
void
DbpoolFailoverTick(WorkerPool *pool, TimestampTz now)
{
	if (!pool->on_backup || pool->dropping || pool->probe != NULL)
		return;
	if (pool->settings.failback_after_ms == 0 && !pool->down)
		return;
	if (now < pool->next_probe_at)
	{
		DbpoolWorkerDeadline(pool->next_probe_at);
		return;
	}
	if (DbpoolWorkerTotalConns >= DbpoolMaxConnections)
		return;					/* the next tick tries again */
	pool->next_probe_at = TimestampTzPlusMilliseconds(now, pool->settings.down_probe_interval_ms);
	(void) DbpoolConnOpenProbe(pool);
}
