/*
 * conn_reset.c
 *		Cleaning a connection between requests, so that the next client finds
 *		it as a fresh one: roll back a transaction left open, DEALLOCATE
 *		statements that fell out of the statement cache, run the pool's
 *		reset_query, set back the settings the connection keeps (DateStyle,
 *		IntervalStyle, client_encoding), and wait for an in-flight cancel to
 *		land; then hand it back to its pool.  A new connection goes through
 *		the settings step once, to get ISO output (DbpoolConnSetUp).
 *
 * The steps run in the order of CleanupStep (worker.h), each a simple query
 * with a DBPOOL_CANCEL_GRACE_MS deadline; their results are read by
 * conn_query.c's result loop.  A step that fails, or any transaction state
 * other than idle afterwards, closes the connection.  A health check
 * (health.c) runs its query through the same machinery (CLEANUP_HEALTH), and
 * the usual cleanup follows it.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

/* Connections waiting for their cancel thread (CLEANUP_AWAIT_CANCEL). */
int			DbpoolAwaitingCancels = 0;

/* Hand a clean connection back to its pool, once no cancel can still reach it. */
static void
to_pool(WorkerConn *conn)
{
	DbpoolConnUnqueueCancel(conn);	/* the query ended before its cancel could start */
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
	if (conn->health_idle_since != 0)
		DbpoolHealthRelease(conn);	/* back from a health check, idle as it was */
	else
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

/*
 * A setting the server reported (DateStyle, IntervalStyle), if it is a
 * plausible value: letters, digits, "_", "," and spaces, shorter than
 * DBPOOL_STYLE_LEN.  NULL otherwise: a foreign server is untrusted, and these
 * values are sent back to it and to the caller's session.
 */
const char *
DbpoolConnReportedStyle(WorkerConn *conn, const char *name)
{
	const char *v = PQparameterStatus(conn->pg, name);
	const char *c;

	if (v == NULL || strlen(v) >= DBPOOL_STYLE_LEN)
		return NULL;
	for (c = v; *c; c++)
		if (!isalnum((unsigned char) *c) && *c != '_' && *c != ',' && *c != ' ')
			return NULL;
	return v;
}

/*
 * A new connection: note the settings it keeps between requests.  DateStyle
 * becomes ISO output with the foreign session's own field order (what the
 * database, the role or the conninfo's options set), so that results are
 * unambiguous and literals in the callers' SQL mean what they mean there;
 * IntervalStyle stays the foreign one (the reader parses with it).
 */
static void
note_styles(WorkerConn *conn)
{
	const char *ds = DbpoolConnReportedStyle(conn, "DateStyle");
	const char *is = DbpoolConnReportedStyle(conn, "IntervalStyle");

	conn->datestyle[0] = conn->intervalstyle[0] = '\0';
	if (ds)
	{
		const char *order = strchr(ds, ',');

		snprintf(conn->datestyle, sizeof(conn->datestyle), "ISO%s", order ? order : "");
	}
	if (is)
		strlcpy(conn->intervalstyle, is, sizeof(conn->intervalstyle));
}

/* Whether the connection's DateStyle, IntervalStyle or client_encoding differ from what it keeps. */
static bool
settings_drifted(WorkerConn *conn)
{
	const char *ds = PQparameterStatus(conn->pg, "DateStyle");
	const char *is = PQparameterStatus(conn->pg, "IntervalStyle");
	const char *ce = PQparameterStatus(conn->pg, "client_encoding");

	return (conn->datestyle[0] && (ds == NULL || strcmp(ds, conn->datestyle) != 0)) ||
		(conn->intervalstyle[0] && (is == NULL || strcmp(is, conn->intervalstyle) != 0)) ||
		(ce && strcmp(ce, "UTF8") != 0);
}

/* The SQL that sets back what the connection keeps (the values are checked characters). */
static char *
settings_sql(WorkerConn *conn)
{
	StringInfoData sql;

	initStringInfo(&sql);
	if (conn->datestyle[0])
		appendStringInfo(&sql, "SET datestyle = '%s'; ", conn->datestyle);
	if (conn->intervalstyle[0])
		appendStringInfo(&sql, "SET intervalstyle = '%s'; ", conn->intervalstyle);
	appendStringInfoString(&sql, "SET client_encoding = 'UTF8'");
	return sql.data;
}

/*
 * The role reset, run before a request of another local role than the one
 * the connection last served: what DISCARD ALL does, step by step so that it
 * can share one round trip (DISCARD ALL itself must be a query of its own),
 * then the settings the connection keeps.  Functions are schema-qualified:
 * search_path is the caller's until RESET ALL.
 */
char *
DbpoolConnRoleResetSQL(WorkerConn *conn)
{
	char	   *settings = settings_sql(conn);
	char	   *sql = psprintf("CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; "
							   "DEALLOCATE ALL; UNLISTEN *; "
							   "SELECT pg_catalog.pg_advisory_unlock_all(); "
							   "DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES; %s",
							   settings);

	pfree(settings);
	return sql;
}

/* The cleanup step after step (CLEANUP_NONE: the request itself); CLEANUP_NONE when clean. */
static CleanupStep
next_step(WorkerConn *conn, CleanupStep step)
{
	if (step <= CLEANUP_DEALLOCATE && DbpoolStmtHasDeallocate(&conn->stmts))
		return CLEANUP_DEALLOCATE;
	if (step < CLEANUP_RESET && conn->pool->settings.reset_query[0] != '\0')
		return CLEANUP_RESET;
	if (step < CLEANUP_SETTINGS && settings_drifted(conn))
		return CLEANUP_SETTINGS;
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
		case CLEANUP_HEALTH:
			return "health query";
		default:
			return "cleanup";
	}
}

/* Start a cleanup step; close the connection if it cannot. */
static void
start_step(WorkerConn *conn, CleanupStep step)
{
	const char *sql = step == CLEANUP_ROLLBACK ? "ROLLBACK" :
		step == CLEANUP_SETTINGS ? settings_sql(conn) :
		step == CLEANUP_DEALLOCATE ? DbpoolStmtDeallocateSQL(&conn->stmts) :
		step == CLEANUP_HEALTH ? conn->pool->settings.health_query :
		conn->pool->settings.reset_query;
	bool		ok;

	DbpoolConnSetState(conn, CONN_CLEANUP);
	conn->cleanup_step = step;
	resetStringInfo(&conn->error);
	ok = DbpoolConnFlushSent(conn, PQsendQuery(conn->pg, sql));
	if (step == CLEANUP_DEALLOCATE || step == CLEANUP_SETTINGS)
		pfree((char *) sql);
	if (!ok)
	{
		DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
		return;
	}
	conn->deadline = step == CLEANUP_HEALTH ? conn->pool->health_deadline :
		TimestampTzPlusMilliseconds(conn->state_since, DBPOOL_CANCEL_GRACE_MS);
	DbpoolWorkerDeadline(conn->deadline);
}

/*
 * Run the pool's health query on this connection (idle, or just connected),
 * with the check's deadline (health.c); its result comes to
 * DbpoolConnResetStepDone.  If it cannot be sent the connection is closed.
 */
void
DbpoolConnRunHealthQuery(WorkerConn *conn)
{
	start_step(conn, CLEANUP_HEALTH);
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

/* A new connection is up: set it up (ISO output) if needed, then hand it to its pool. */
void
DbpoolConnSetUp(WorkerConn *conn)
{
	note_styles(conn);
	if (conn->health && DbpoolHealthConnReady(conn))
		return;					/* opened for a health check: it runs first */
	if (settings_drifted(conn))
		start_step(conn, CLEANUP_SETTINGS);
	else
		to_pool(conn);
}

/* A request is over (its client answered or gone) with the server in state ts: clean up. */
void
DbpoolConnResetStart(WorkerConn *conn, PGTransactionStatusType ts)
{
	if (conn->large)
		DbpoolConnClose(conn, DBPOOL_CLOSE_LARGE);	/* no cleanup: it is not reused */
	else if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
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
	if (conn->cleanup_step == CLEANUP_HEALTH)
	{
		/* the check is answered; then the usual cleanup, as after a request */
		DbpoolHealthStepDone(conn);
		resetStringInfo(&conn->error);
		conn->deadline = 0;
		DbpoolConnResetStart(conn, PQtransactionStatus(conn->pg));
		return;
	}
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
