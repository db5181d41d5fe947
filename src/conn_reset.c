/*
 * conn_reset.c
 *		Cleaning a connection between requests, so that the next client finds
 *		it as a fresh one: roll back a transaction left open, set back the
 *		settings the text values depend on, DEALLOCATE statements that fell out
 *		of the statement cache, run the pool's reset_query, and wait for an
 *		in-flight cancel to land; then hand it back to its pool.
 *
 * The steps run in the order of CleanupStep (worker.h), each a simple query
 * with a DBPOOL_CANCEL_GRACE_MS deadline; their results are read by
 * conn_query.c's result loop.  A step that fails, or any transaction state
 * other than idle afterwards, closes the connection.
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

/* Connections waiting for their cancel thread (CLEANUP_AWAIT_CANCEL). */
int			DbpoolAwaitingCancels = 0;

/* Hand a clean connection back to its pool, once no cancel can still reach it. */
static void
to_pool(WorkerConn *conn)
{
	if (conn->cancel)
	{
		if (!DbpoolCancelDone(conn->cancel))
		{
			if (!(conn->state == CONN_CLEANUP && conn->cleanup_step == CLEANUP_AWAIT_CANCEL))
			{
				DbpoolConnSetState(conn, CONN_CLEANUP);
				conn->cleanup_step = CLEANUP_AWAIT_CANCEL;
				conn->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															 DBPOOL_CANCEL_GRACE_MS);
				DbpoolWorkerDeadline(conn->deadline);
				DbpoolAwaitingCancels++;
			}
			return;
		}
		conn->cancel = NULL;
	}
	if (conn->state == CONN_CLEANUP && conn->cleanup_step == CLEANUP_AWAIT_CANCEL)
		DbpoolAwaitingCancels--;
	conn->deadline = 0;
	conn->orphaned = false;
	conn->cleanup_step = CLEANUP_NONE;
	DbpoolPoolRelease(conn);
}

/* If the connection waits for its cancel thread, move on when it is done; true if it waited. */
bool
DbpoolConnPollCancel(WorkerConn *conn)
{
	if (conn->state != CONN_CLEANUP || conn->cleanup_step != CLEANUP_AWAIT_CANCEL)
		return false;
	to_pool(conn);
	return true;
}

/* Whether a caller changed a setting that the text values' meaning depends on. */
static bool
settings_drifted(PGconn *pg)
{
	const char *ds = PQparameterStatus(pg, "DateStyle");
	const char *is = PQparameterStatus(pg, "IntervalStyle");
	const char *ce = PQparameterStatus(pg, "client_encoding");

	return (ds && strncmp(ds, "ISO", 3) != 0) || (is && strcmp(is, "postgres") != 0) ||
		(ce && strcmp(ce, "UTF8") != 0);
}

/* The cleanup step after step (CLEANUP_NONE: the request itself); CLEANUP_NONE when clean. */
static CleanupStep
next_step(WorkerConn *conn, CleanupStep step)
{
	if (step < CLEANUP_SETTINGS && settings_drifted(conn->pg))
		return CLEANUP_SETTINGS;
	if (step <= CLEANUP_DEALLOCATE && DbpoolStmtHasDeallocate(&conn->stmts))
		return CLEANUP_DEALLOCATE;
	if (step < CLEANUP_RESET && conn->pool->settings.reset_query[0] != '\0')
		return CLEANUP_RESET;
	return CLEANUP_NONE;
}

/* A step's name, for the log. */
static const char *
step_name(CleanupStep step)
{
	switch (step)
	{
		case CLEANUP_ROLLBACK:
			return "ROLLBACK";
		case CLEANUP_SETTINGS:
			return "settings reset";
		case CLEANUP_DEALLOCATE:
			return "DEALLOCATE";
		case CLEANUP_RESET:
			return "reset_query";
		default:
			return "cleanup";
	}
}

/* Start a cleanup step; close the connection if it cannot. */
static void
start_step(WorkerConn *conn, CleanupStep step)
{
	const char *sql = step == CLEANUP_ROLLBACK ? "ROLLBACK" :
		step == CLEANUP_SETTINGS ?
		"SET datestyle = ISO; SET intervalstyle = postgres; SET client_encoding = 'UTF8'" :
		step == CLEANUP_DEALLOCATE ? DbpoolStmtDeallocateSQL(&conn->stmts) :
		conn->pool->settings.reset_query;
	bool		ok;

	DbpoolConnSetState(conn, CONN_CLEANUP);
	conn->cleanup_step = step;
	resetStringInfo(&conn->error);
	ok = DbpoolConnFlushSent(conn, PQsendQuery(conn->pg, sql));
	if (step == CLEANUP_DEALLOCATE)
		pfree((char *) sql);
	if (!ok)
	{
		DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
		return;
	}
	conn->deadline = TimestampTzPlusMilliseconds(conn->state_since, DBPOOL_CANCEL_GRACE_MS);
	DbpoolWorkerDeadline(conn->deadline);
}

/* Start the next step after step, or hand the connection back when none is left. */
static void
continue_after(WorkerConn *conn, CleanupStep step)
{
	CleanupStep next = next_step(conn, step);

	if (next != CLEANUP_NONE)
		start_step(conn, next);
	else
		to_pool(conn);
}

/* A request is over (its client answered or gone) with the server in state ts: clean up. */
void
DbpoolConnResetStart(WorkerConn *conn, PGTransactionStatusType ts)
{
	if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
		start_step(conn, CLEANUP_ROLLBACK);
	else if (ts != PQTRANS_IDLE)
		DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
	else
		continue_after(conn, CLEANUP_NONE);
}

/* The current cleanup step's last result is in. */
void
DbpoolConnResetStepDone(WorkerConn *conn)
{
	if (conn->cleanup_step == CLEANUP_DEALLOCATE)
	{
		DbpoolStmtDeallocateDone(&conn->stmts, conn->error.len == 0);
		if (conn->error.len > 0 && PQtransactionStatus(conn->pg) == PQTRANS_IDLE)
			resetStringInfo(&conn->error);	/* a statement the server lost already */
	}
	if (conn->error.len > 0 || PQtransactionStatus(conn->pg) != PQTRANS_IDLE)
	{
		elog(LOG, "dbpool: closing a connection of pool \"%s\": its %s failed",
			 conn->pool->name, step_name(conn->cleanup_step));
		DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
		return;
	}
	continue_after(conn, conn->cleanup_step);
}
