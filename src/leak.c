/*
 * leak.c
 *		Leak detection (worker): a connection busy with one request (active,
 *		serving a client) longer than its pool's leak_threshold_ms is a
 *		suspected leak.  The housekeeping tick (janitor.c) flags it once:
 *		counted (leaks_suspected), in the pool's gauge and in its
 *		dbpool_connections row, and logged with one WARNING that names the
 *		pool, the connection, the client's pid, application_name and local
 *		query (read from PostgreSQL's backend status array, client_status.c)
 *		and the remote query.  When the request ends, however, or the
 *		connection is closed, a LOG line says it came back and how long it was
 *		busy, and the gauge drops.  Nothing is reclaimed by force.
 *
 * The query path pays one test of conn->leak_suspected where a request ends
 * (stats.c's DbpoolStatsRequestEnd, and conn.c's DbpoolConnClose); the
 * checks run once a tick, never per query.  A changed leak_threshold_ms
 * applies at the next tick: to the connections it flags, and to those
 * flagged already, which it clears if they are no longer over it.
 */
#include "postgres.h"

#include "utils/backend_status.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

#define LEAK_TEXT_LEN	1024	/* the queries in the WARNING are cut to this */

/* Seconds between two times, for log lines. */
static double
seconds_between(TimestampTz from, TimestampTz to)
{
	return Max(to - from, 0) / (double) USECS_PER_SEC;
}

/* A canonical UTF-8 text cut to LEAK_TEXT_LEN, in this database's encoding; "" for NULL. */
static const char *
log_text(const char *utf8)
{
	char		buf[LEAK_TEXT_LEN];

	if (utf8 == NULL)
		return "";
	DbpoolTextStore(buf, sizeof(buf), utf8, strlen(utf8));
	return DbpoolTextShow(buf);
}

/*
 * Flag one connection and log its WARNING.  Normally (unreadable NULL,
 * inside a transaction: the client's database encoding is looked up) the
 * WARNING names the client's application_name and local query; otherwise it
 * says why they could not be read.
 */
static void
flag(WorkerConn *conn, TimestampTz now, const char *unreadable)
{
	WorkerPool *pool = conn->pool;
	WorkerChannel *ch = conn->ch;
	char	   *who;

	if (unreadable)
		who = psprintf("its texts could not be read: %s", unreadable);
	else
	{
		DbpoolClientInfo ci;

		(void) DbpoolClientStatus(ch->backend_pid, &ci);
		who = ci.found ?
			psprintf("application_name \"%s\", local query: %s",
					 log_text(ci.application_name), log_text(ci.query)) :
			pstrdup("not in pg_stat_activity any more");
	}
	ereport(WARNING,
			(errmsg("dbpool: suspected connection leak: connection " UINT64_FORMAT " of pool \"%s\" has been busy with one request for %.1f s (leak_threshold_ms %d)",
					conn->conn_id, pool->name, seconds_between(ch->started_at, now),
					pool->settings.leak_threshold_ms),
			 errdetail("Client pid %d, %s; remote query: %s",
					   (int) ch->backend_pid, who, log_text(ch->req.sql)),
			 errhint("The connection is not taken back: it returns when the request ends. dbpool_connections shows it (suspected_leak); pg_terminate_backend(%d) ends the client.",
					 (int) ch->backend_pid)));
	conn->leak_suspected = true;
	conn->leak_since = ch->started_at;
	pool->nleaks++;
	DbpoolStatsCount(pool, DBPOOL_C_LEAKS_SUSPECTED);
	DbpoolStatsConnLeak(conn);
}

/* What flag_in gets: the connections to flag, and when. */
typedef struct FlagArgs
{
	List	   *conns;
	TimestampTz now;
} FlagArgs;

/* Flag the connections, reading their clients as they are now (inside DbpoolWorkerRun). */
static bool
flag_in(void *arg)
{
	FlagArgs   *a = arg;
	ListCell   *lc;

	pgstat_clear_backend_activity_snapshot();
	foreach(lc, a->conns)
		flag((WorkerConn *) lfirst(lc), a->now, NULL);
	pgstat_clear_backend_activity_snapshot();
	return true;
}

/*
 * Flag the connections in list (of one pool), reading their clients in one
 * transaction; if that fails (a catalog read), flag the rest anyway, without
 * their clients' texts.
 */
static void
flag_all(List *conns, TimestampTz now)
{
	FlagArgs	a = {conns, now};
	ErrorData  *edata;
	ListCell   *lc;

	if (DbpoolWorkerRun(flag_in, &a, "dbpool: reading the clients of suspected leaks", &edata))
		return;
	pgstat_clear_backend_activity_snapshot();
	foreach(lc, conns)
	{
		WorkerConn *conn = (WorkerConn *) lfirst(lc);

		if (!conn->leak_suspected)
			flag(conn, now, edata ? edata->message : "unknown error");
	}
	if (edata)
		FreeErrorData(edata);
}

/*
 * Leak detection for one pool, at a housekeeping tick: flag the connections
 * busy with one request past leak_threshold_ms; clear the flagged ones the
 * threshold no longer covers (it was raised, or set to 0).
 */
void
DbpoolLeakTick(WorkerPool *pool, TimestampTz now)
{
	int			threshold = pool->settings.leak_threshold_ms;
	int			nleaks = pool->nleaks;
	List	   *found = NIL;
	dlist_iter	it;

	if (threshold <= 0 && pool->nleaks == 0)
		return;
	dlist_foreach(it, &pool->conns)
	{
		WorkerConn *conn = dlist_container(WorkerConn, pool_node, it.cur);

		if (conn->leak_suspected)
		{
			if (threshold <= 0 ||
				!TimestampDifferenceExceeds(conn->leak_since, now, threshold))
			{
				ereport(LOG,
						(errmsg("dbpool: connection " UINT64_FORMAT " of pool \"%s\" is no longer a suspected leak: leak_threshold_ms is now %d",
								conn->conn_id, pool->name, threshold)));
				conn->leak_suspected = false;
				pool->nleaks--;
				DbpoolStatsConnLeak(conn);
			}
			continue;
		}
		if (threshold > 0 && conn->state == CONN_ACTIVE && conn->ch && !conn->probe &&
			TimestampDifferenceExceeds(conn->ch->started_at, now, threshold))
			found = lappend(found, conn);
	}
	if (found)
		flag_all(found, now);
	list_free(found);
	if (pool->nleaks != nleaks)
		DbpoolStatsLeaks(pool, pool->nleaks);
}

/*
 * A suspected leak came back: its request ended (how says in what way) or
 * the connection is being closed.  Called where that happens, after one test
 * of conn->leak_suspected.
 */
void
DbpoolLeakEnded(WorkerConn *conn, const char *how)
{
	WorkerPool *pool = conn->pool;

	ereport(LOG,
			(errmsg("dbpool: suspected leak connection " UINT64_FORMAT " of pool \"%s\" came back after %.1f s busy with one request (%s)",
					conn->conn_id, pool->name,
					seconds_between(conn->leak_since, GetCurrentTimestamp()), how)));
	conn->leak_suspected = false;
	pool->nleaks--;
	DbpoolStatsLeaks(pool, pool->nleaks);
	DbpoolStatsConnLeak(conn);
}
