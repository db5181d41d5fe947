/*
 * conn.c
 *		One outbound connection's state machine, non-blocking libpq only.
 *
 *	CONNECTING --PQconnectPoll ok--> IDLE --request--> ACTIVE --results done-->
 *	  CLEANUP (ROLLBACK if a transaction was left open, reset_query, waiting
 *	  for an in-flight cancel to land) --> IDLE, or closed.
 *
 * CONNECTING, CLEANUP and a cancelled ACTIVE have deadlines (connect_timeout,
 * DBPOOL_CANCEL_GRACE_MS), and ACTIVE has query_timeout_ms when set; past a
 * deadline the request is answered and the connection cancelled or closed.  Results stream into the client's channel
 * in single-row mode; while the channel is full the socket is not read
 * (DbpoolConnWantedEvents drops it from the wait set), so memory stays
 * bounded whatever the result size.
 *
 * Nothing here raises an ERROR for a remote or client problem: errors are
 * records sent to the one client concerned.
 */
#include "postgres.h"

#include "storage/fd.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

#define ROWS_PER_FLUSH_BYTES 8192

int			DbpoolAwaitingCancels = 0;

static void conn_broken(WorkerConn *conn);

/* libpq notice processor that drops remote notices (they would go to the server log). */
static void
notice_noop(void *arg, const char *message)
{
}

/* Change state, note when, add up the time spent active, and publish it. */
void
DbpoolConnSetState(WorkerConn *conn, ConnState state)
{
	TimestampTz now = GetCurrentTimestamp();

	if (conn->state == CONN_ACTIVE)
		conn->active_us += Max(now - conn->state_since, 0);
	conn->state = state;
	conn->state_since = now;
	DbpoolStatsConnUpdate(conn);
}

/* The SQLSTATE (into state[6]) and message of an 'E' record. */
static const char *
record_error(const StringInfo rec, char *state)
{
	int32		len;

	memcpy(state, rec->data + 1, 5);
	state[5] = '\0';
	memcpy(&len, rec->data + 6, 4);
	return pnstrdup(rec->data + 10, len);
}

/* libpq's last error for conn, without the trailing newline. */
static char *
conn_error(WorkerConn *conn)
{
	char	   *msg = conn->pg ? pstrdup(PQerrorMessage(conn->pg)) : pstrdup("out of memory");

	return msg[0] ? pchomp(msg) : pstrdup("unknown libpq error");
}

/* A connection attempt failed: tell the pool (its waiters), then close. */
static void
fail_connect(WorkerConn *conn, const char *detail)
{
	WorkerPool *pool = conn->pool;

	DbpoolStatsCount(pool, DBPOOL_C_CONN_FAILURES);
	DbpoolPoolConnFailed(pool, "08001",
						 psprintf("could not connect to pool \"%s\"", pool->name),
						 detail, NULL);
	DbpoolConnClose(conn, DBPOOL_CLOSE_UNCOUNTED);
}

/* Start a connection for pool; NULL if it failed at once (the pool was told). */
WorkerConn *
DbpoolConnOpen(WorkerPool *pool)
{
	WorkerConn *conn = MemoryContextAllocZero(DbpoolWorkerContext, sizeof(WorkerConn));
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext old;

	conn->pool = pool;
	conn->state = CONN_CONNECTING;
	conn->sock = PGINVALID_SOCKET;
	conn->wait_pos = -1;
	conn->created_at = conn->state_since = now;
	conn->conninfo_gen = pool->conninfo_gen;
	DbpoolStatsConnOpened(conn);
	old = MemoryContextSwitchTo(DbpoolWorkerContext);
	initStringInfo(&conn->error);
	MemoryContextSwitchTo(old);
	DbpoolStmtInit(&conn->stmts);
	dlist_push_tail(&pool->conns, &conn->pool_node);
	pool->nconns++;
	pool->nconnecting++;
	DbpoolWorkerTotalConns++;

	if (!AcquireExternalFD())
	{
		fail_connect(conn, "The dbpool worker has no file descriptor left (max_files_per_process).");
		return NULL;
	}
	conn->has_fd = true;
	if (pool->keywords == NULL)
	{
		fail_connect(conn, "The pool's conninfo in the configuration table is invalid; fix it with dbpool_alter_pool().");
		return NULL;
	}
	conn->pg = PQconnectStartParams(pool->keywords, pool->values, 0);
	if (conn->pg == NULL || PQstatus(conn->pg) == CONNECTION_BAD)
	{
		fail_connect(conn, conn_error(conn));
		return NULL;
	}
	conn->poll = PGRES_POLLING_WRITING;
	conn->sock = PQsocket(conn->pg);
	conn->deadline = TimestampTzPlusMilliseconds(now, pool->connect_timeout_ms);
	DbpoolWorkerDeadline(conn->deadline);
	DbpoolWorkerSocketsChanged();
	return conn;
}

/* The socket events this connection waits for now (0: none, leave it out of the set). */
uint32
DbpoolConnWantedEvents(WorkerConn *conn)
{
	if (conn->sock == PGINVALID_SOCKET)
		return 0;
	switch (conn->state)
	{
		case CONN_CONNECTING:
			return conn->poll == PGRES_POLLING_READING ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE;
		case CONN_IDLE:
			return WL_SOCKET_READABLE;	/* to notice the server closing it */
		case CONN_ACTIVE:
		case CONN_CLEANUP:
			if (conn->state == CONN_CLEANUP && conn->cleanup_step == CLEANUP_AWAIT_CANCEL)
				return 0;
			if (conn->ch && conn->ch->blocked)
				return 0;		/* backpressure: the client has not read yet */
			return WL_SOCKET_READABLE | (conn->flushing ? WL_SOCKET_WRITEABLE : 0);
	}
	return 0;
}

/* Answer the connection's client with an error and let go of it. */
void
DbpoolConnFailRequest(WorkerConn *conn, const char *sqlstate, const char *message,
					  const char *detail, const char *hint)
{
	WorkerChannel *ch = conn->ch;

	if (ch == NULL)
		return;
	DbpoolStatsRequestEnd(ch, conn, sqlstate, message, false, -1);
	conn->ch = NULL;
	ch->conn = NULL;
	DbpoolChannelError(ch, sqlstate, message, detail, hint);
}

/* Start sending what libpq queued; false if the connection is broken. */
static bool
flush_sent(WorkerConn *conn, int ok)
{
	int			r;

	if (!ok)
		return false;
	r = PQflush(conn->pg);
	if (r < 0)
		return false;
	conn->flushing = (r == 1);
	return true;
}

/* Send a query text (several statements allowed) on the connection; false if broken. */
static bool
send_text(WorkerConn *conn, const char *sql)
{
	return flush_sent(conn, PQsendQuery(conn->pg, sql));
}

/*
 * Send the request's query in single-row mode: bound to its prepared
 * statement if there is one (and unnamed is false), else as an unnamed
 * statement, or through the simple protocol when it has no parameters array.
 */
static bool
send_query(WorkerConn *conn, WorkerChannel *ch, bool unnamed)
{
	StmtEntry  *e = unnamed ? NULL : conn->stmt;
	int			ok;

	if (e && e->prepared)
	{
		char		name[32];

		DbpoolStmtName(&conn->stmts, e, name, sizeof(name));
		ok = PQsendQueryPrepared(conn->pg, name, ch->nparams, ch->params, NULL, NULL, 0);
	}
	else if (ch->nparams < 0)
		ok = PQsendQuery(conn->pg, ch->sql);
	else
		ok = PQsendQueryParams(conn->pg, ch->sql, ch->nparams, NULL, ch->params, NULL, NULL, 0);
	if (!flush_sent(conn, ok))
		return false;
	(void) PQsetSingleRowMode(conn->pg);
	return true;
}

/* The request's statement-cache entry, or NULL when it should not use the cache. */
static StmtEntry *
cache_entry(WorkerConn *conn, WorkerChannel *ch)
{
	if (ch->nparams < 0)
		return NULL;			/* simple protocol: nothing to prepare */
	if (!conn->pool->stmt_cache_allowed)
		return NULL;			/* its reset_query would drop them after each call */
	return DbpoolStmtLookup(&conn->stmts, ch->sql, ch->nparams);
}

/* Run ch's request on this idle connection. */
void
DbpoolConnStart(WorkerConn *conn, WorkerChannel *ch)
{
	WorkerPool *pool = conn->pool;
	StmtEntry  *e;
	bool		ok;

	Assert(conn->state == CONN_IDLE);
	conn->ch = ch;
	ch->conn = conn;
	ch->state = REQ_RUNNING;
	conn->requests_served++;
	conn->orphaned = false;
	conn->result_started = false;
	conn->status[0] = '\0';
	conn->rows = 0;
	conn->preparing = conn->stmt_retry = conn->stmt_lost = false;
	resetStringInfo(&conn->error);
	conn->state = CONN_ACTIVE;
	conn->state_since = ch->started_at = GetCurrentTimestamp();
	DbpoolStatsAcquired(ch);
	DbpoolStatsConnQuery(conn, ch);
	/* a lowered dbpool.statement_cache_size applies to every connection that serves */
	DbpoolStmtTrim(&conn->stmts, Max(DbpoolStatementCacheSize, 0));
	e = conn->stmt = cache_entry(conn, ch);
	if (e && !e->prepared && !e->failed && e->uses >= 2)
	{
		char		name[32];

		/* the second use: prepare it now, the query follows (process_results) */
		DbpoolStmtName(&conn->stmts, e, name, sizeof(name));
		conn->preparing = true;
		ok = flush_sent(conn, PQsendPrepare(conn->pg, name, ch->sql, ch->nparams, NULL));
	}
	else
		ok = send_query(conn, ch, false);
	if (!ok)
	{
		DbpoolConnFailRequest(conn, "08006",
							  psprintf("could not send the query to pool \"%s\"", pool->name),
							  conn_error(conn), NULL);
		DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
		return;
	}
	conn->deadline = pool->settings.query_timeout_ms > 0 ?
		TimestampTzPlusMilliseconds(conn->state_since, pool->settings.query_timeout_ms) : 0;
	DbpoolWorkerDeadline(conn->deadline);
}

/* Stop serving the client (gone or answered): cancel the remote query and drain it. */
void
DbpoolConnOrphan(WorkerConn *conn)
{
	if (conn->ch)
		conn->ch->conn = NULL;
	conn->ch = NULL;
	if (conn->state != CONN_ACTIVE || conn->orphaned)
		return;
	conn->orphaned = true;
	DbpoolStatsConnUpdate(conn);	/* closing: no client any more */
	if (conn->cancel == NULL)
		conn->cancel = DbpoolCancelStart(conn->pg);
	if (conn->cancel == NULL)
	{
		conn->retire = true;	/* no cancel possible: close at the deadline */
		conn->retire_reason = DBPOOL_CLOSE_ERROR;
	}
	conn->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												 conn->cancel ? DBPOOL_CANCEL_GRACE_MS : 0);
	DbpoolWorkerDeadline(conn->deadline);
}

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
next_cleanup(WorkerConn *conn, CleanupStep step)
{
	if (step < CLEANUP_SETTINGS && settings_drifted(conn->pg))
		return CLEANUP_SETTINGS;
	if (step <= CLEANUP_DEALLOCATE && DbpoolStmtHasDeallocate(&conn->stmts))
		return CLEANUP_DEALLOCATE;
	if (step < CLEANUP_RESET && conn->pool->settings.reset_query[0] != '\0')
		return CLEANUP_RESET;
	return CLEANUP_NONE;
}

/* Start a cleanup step; close the connection if it cannot. */
static void
start_cleanup(WorkerConn *conn, CleanupStep step)
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
	ok = send_text(conn, sql);
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

/* The request's last result is in: answer the client, then clean the connection. */
static void
request_done(WorkerConn *conn)
{
	WorkerChannel *ch = conn->ch;
	PGTransactionStatusType ts = PQtransactionStatus(conn->pg);
	bool		txn_open = (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR);

	if (conn->stmt_retry && ch && ts == PQTRANS_IDLE)
	{
		/* our prepared statement failed at Bind, before anything ran: again, unnamed */
		if (conn->stmt_lost)
			DbpoolStmtLost(&conn->stmts, conn->stmt);
		else
			DbpoolStmtEvict(&conn->stmts, conn->stmt);
		conn->stmt = NULL;
		conn->stmt_retry = conn->stmt_lost = false;
		conn->status[0] = '\0';
		resetStringInfo(&conn->error);
		if (!send_query(conn, ch, true))
			conn_broken(conn);
		return;
	}
	if (ch)
	{
		if (conn->error.len == 0 && txn_open)
			DbpoolErrorRecord(&conn->error, "25000",
							  psprintf("the query left a transaction open on pool \"%s\"",
									   conn->pool->name),
							  "dbpool rolled the remote transaction back: a connection goes back to the pool only outside a transaction.",
							  "End every transaction in the call that starts it, for example 'BEGIN; ...; COMMIT'.",
							  NULL);
		if (conn->error.len > 0)
		{
			char		state[6];
			const char *msg = record_error(&conn->error, state);

			DbpoolStatsRequestEnd(ch, conn, state, msg, false, -1);
			DbpoolChannelAddRecord(ch, &conn->error);
		}
		else
		{
			DbpoolStatsRequestEnd(ch, conn, NULL, NULL, false, -1);
			DbpoolChannelAddComplete(ch, conn->status);
		}
		conn->ch = NULL;
		ch->conn = NULL;
	}
	conn->deadline = 0;
	if (txn_open)
		start_cleanup(conn, CLEANUP_ROLLBACK);
	else if (ts != PQTRANS_IDLE)
		DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
	else
	{
		CleanupStep next = next_cleanup(conn, CLEANUP_NONE);

		if (next != CLEANUP_NONE)
			start_cleanup(conn, next);
		else
			to_pool(conn);
	}

	/*
	 * Answer last: a waiting request got this connection above, so the
	 * foreign server starts on it while we wake our client.
	 */
	if (ch)
		DbpoolChannelReply(ch);
}

/* A cleanup step ended. */
static void
cleanup_done(WorkerConn *conn)
{
	CleanupStep next;

	if (conn->cleanup_step == CLEANUP_DEALLOCATE)
	{
		DbpoolStmtDeallocateDone(&conn->stmts, conn->error.len == 0);
		if (conn->error.len > 0 && PQtransactionStatus(conn->pg) == PQTRANS_IDLE)
			resetStringInfo(&conn->error);	/* a statement the server lost already */
	}
	if (conn->error.len > 0 || PQtransactionStatus(conn->pg) != PQTRANS_IDLE)
	{
		elog(LOG, "dbpool: closing a connection of pool \"%s\": its %s failed",
			 conn->pool->name,
			 conn->cleanup_step == CLEANUP_ROLLBACK ? "ROLLBACK" :
			 conn->cleanup_step == CLEANUP_SETTINGS ? "settings reset" :
			 conn->cleanup_step == CLEANUP_DEALLOCATE ? "DEALLOCATE" : "reset_query");
		DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
		return;
	}
	next = next_cleanup(conn, conn->cleanup_step);
	if (next != CLEANUP_NONE)
		start_cleanup(conn, next);
	else
		to_pool(conn);
}

/* Answer the client with the recorded error and close: the protocol state is unusable (COPY). */
static void
abort_copy(WorkerConn *conn)
{
	WorkerChannel *ch = conn->ch;

	if (ch)
	{
		DbpoolStatsRequestEnd(ch, conn, "0A000", "COPY is not supported by dbpool", false, -1);
		conn->ch = NULL;
		ch->conn = NULL;
		DbpoolChannelAddRecord(ch, &conn->error);
		DbpoolChannelReply(ch);
	}
	DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
}

/* Bytes row of res would take in a 'D' record. */
static Size
row_bytes(const PGresult *res, int row)
{
	Size		n = 1;
	int			i;

	for (i = 0; i < PQnfields(res); i++)
		n += 4 + PQgetlength(res, row, i);
	return n;
}

/*
 * Whether an error says that our prepared statement failed at Bind, before
 * anything ran, so that the request may simply run again unnamed: the server
 * no longer has it (*lost), its result type changed since it was prepared, or
 * analyzing it again with the parameter types fixed at PREPARE failed.  Only
 * errors raised at the top level (no context) and before any row count.
 */
static bool
bind_failed(WorkerConn *conn, const PGresult *res, bool *lost)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *context = PQresultErrorField(res, PG_DIAG_CONTEXT);
	const char *routine = PQresultErrorField(res, PG_DIAG_SOURCE_FUNCTION);
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	const char *file;

	*lost = false;
	if (conn->stmt == NULL || !conn->stmt->prepared || conn->result_started ||
		conn->ch == NULL || state == NULL || (context && context[0]))
		return false;
	if (strcmp(state, "26000") == 0 && msg)
	{
		char		name[32];
		const char *hit;

		DbpoolStmtName(&conn->stmts, conn->stmt, name, sizeof(name));
		hit = strstr(msg, name);
		*lost = hit != NULL && !isdigit((unsigned char) hit[strlen(name)]);
		return *lost;
	}
	if (strcmp(state, "0A000") == 0 && routine && strcmp(routine, "RevalidateCachedQuery") == 0)
		return true;

	/*
	 * Re-analysis at Bind against changed objects (ALTER COLUMN TYPE, a table
	 * re-created with other column types) keeps the parameter types inferred
	 * at PREPARE and can fail where the text, analyzed afresh, would not:
	 * parser errors (class 42 from parse_*.c, analyze.c) at the top level.
	 * The failed attempt ran in an implicit transaction that is now rolled back.
	 */
	file = PQresultErrorField(res, PG_DIAG_SOURCE_FILE);
	return strncmp(state, "42", 2) == 0 && file &&
		(strncmp(file, "parse_", 6) == 0 || strcmp(file, "analyze.c") == 0);
}

/* One result of a running request: forward rows, remember status and errors; false for COPY. */
static bool
handle_result(WorkerConn *conn, PGresult *res)
{
	WorkerChannel *ch = conn->ch;
	bool		rows = ch && ch->kind == DBPOOL_REQ_QUERY;
	int			i;

	switch (PQresultStatus(res))
	{
		case PGRES_SINGLE_TUPLE:
		case PGRES_TUPLES_OK:
			if (rows && !conn->result_started)
				DbpoolChannelAddRowDesc(ch, PQnfields(res));
			conn->result_started = true;
			/* single-row mode: one row, or none in the TUPLES_OK that ends the set */
			for (i = 0; rows && i < PQntuples(res); i++)
			{
				if (row_bytes(res, i) > DBPOOL_MAX_MESSAGE_BYTES)
				{
					DbpoolConnFailRequest(conn, "54000",
										  psprintf("a row from pool \"%s\" is too large", conn->pool->name),
										  psprintf("dbpool passes rows of at most %d MB.",
												   DBPOOL_MAX_MESSAGE_BYTES / (1024 * 1024)),
										  NULL);
					DbpoolConnOrphan(conn);	/* cancel and drain the rest */
					return true;
				}
				DbpoolChannelAddRow(ch, res, i);
			}
			if (PQresultStatus(res) == PGRES_TUPLES_OK)
			{
				conn->rows += strtol(PQcmdTuples(res), NULL, 10);
				conn->result_started = false;
				strlcpy(conn->status, PQcmdStatus(res), sizeof(conn->status));
			}
			if (ch && ch->out.len >= ROWS_PER_FLUSH_BYTES)
				DbpoolChannelReply(ch);
			return true;
		case PGRES_COMMAND_OK:
		case PGRES_EMPTY_QUERY:
			conn->rows += strtol(PQcmdTuples(res), NULL, 10);
			conn->result_started = false;
			strlcpy(conn->status, PQcmdStatus(res), sizeof(conn->status));
			return true;
		case PGRES_COPY_IN:
		case PGRES_COPY_OUT:
		case PGRES_COPY_BOTH:
			DbpoolErrorRecord(&conn->error, "0A000", "COPY is not supported by dbpool",
							  NULL, "Use INSERT and SELECT through dbpool_exec and dbpool_query.",
							  NULL);
			return false;
		default:
			if (conn->error.len == 0)
			{
				conn->stmt_retry = bind_failed(conn, res, &conn->stmt_lost);
				DbpoolErrorRecordFromResult(&conn->error, res);
			}
			return true;
	}
}

/* Drop NOTIFY messages a caller's LISTEN left behind (libpq would keep them). */
static void
drain_notifies(PGconn *pg)
{
	PGnotify   *n;

	while ((n = PQnotifies(pg)) != NULL)
		PQfreemem(n);
}

/* The connection broke while serving: answer the client and close. */
static void
conn_broken(WorkerConn *conn)
{
	DbpoolConnFailRequest(conn, "08006",
						  psprintf("lost the connection to pool \"%s\"", conn->pool->name),
						  conn_error(conn), NULL);
	DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
}

/*
 * The request's PREPARE ended: send the query itself (by name if the
 * PREPARE worked, else unnamed; the query's own run reports any error).
 * False if the connection left the request (orphaned, broken).
 */
static bool
prepare_done(WorkerConn *conn)
{
	StmtEntry  *e = conn->stmt;

	conn->preparing = false;
	if (conn->error.len == 0)
		e->prepared = true;
	else if (conn->ch)
		e->failed = true;
	resetStringInfo(&conn->error);
	if (conn->ch == NULL)
	{
		request_done(conn);		/* orphaned meanwhile: clean up */
		return false;
	}
	if (!send_query(conn, conn->ch, false))
	{
		conn_broken(conn);
		return false;
	}
	return true;
}

/* Read what the server sent and act on it. */
static void
process_results(WorkerConn *conn)
{
	PGconn	   *pg = conn->pg;

	if (conn->state == CONN_CLEANUP && conn->cleanup_step == CLEANUP_AWAIT_CANCEL)
		return;
	if (conn->flushing && conn->writable)
	{
		int			r = PQflush(pg);

		if (r < 0)
		{
			conn_broken(conn);
			return;
		}
		conn->flushing = (r == 1);
	}
	if (conn->readable && !(conn->ch && conn->ch->blocked))
	{
		if (!PQconsumeInput(pg))
		{
			conn_broken(conn);
			return;
		}
	}
	conn->readable = conn->writable = false;
	drain_notifies(pg);

	for (;;)
	{
		PGresult   *res;
		bool		ok = true;

		if (conn->ch && conn->ch->blocked)
			return;				/* resumed when the client reads */
		if (PQisBusy(pg))
		{
			if (conn->ch && conn->ch->out.len > 0)
				DbpoolChannelReply(conn->ch);
			return;
		}
		res = PQgetResult(pg);
		if (res == NULL)
		{
			if (conn->preparing)
			{
				if (prepare_done(conn))
					continue;
				return;
			}
			if (conn->state == CONN_ACTIVE)
				request_done(conn);
			else
				cleanup_done(conn);
			return;
		}
		if (conn->preparing)
		{
			/* COMMAND_OK, or the error that makes this text run unnamed */
			if (PQresultStatus(res) == PGRES_FATAL_ERROR && conn->error.len == 0)
				DbpoolErrorRecordFromResult(&conn->error, res);
		}
		else if (conn->state == CONN_ACTIVE)
			ok = handle_result(conn, res);
		else if (PQresultStatus(res) == PGRES_FATAL_ERROR && conn->error.len == 0)
			DbpoolErrorRecordFromResult(&conn->error, res);
		else if (PQresultStatus(res) == PGRES_COPY_IN || PQresultStatus(res) == PGRES_COPY_OUT ||
				 PQresultStatus(res) == PGRES_COPY_BOTH)
			ok = false;
		PQclear(res);
		if (!ok)
		{
			abort_copy(conn);
			return;
		}
	}
}

/* Act on socket readiness (or on the client having read) for this connection. */
void
DbpoolConnProcess(WorkerConn *conn)
{
	switch (conn->state)
	{
		case CONN_CONNECTING:
			if (!conn->readable && !conn->writable)
				return;
			conn->readable = conn->writable = false;
			conn->poll = PQconnectPoll(conn->pg);
			/*
			 * libpq may close the socket and open another (multi-host, failover),
			 * possibly with the same number, which epoll has forgotten: always
			 * re-register.  Connects are rare.
			 */
			conn->sock = PQsocket(conn->pg);
			DbpoolWorkerSocketsChanged();
			if (conn->poll == PGRES_POLLING_FAILED)
				fail_connect(conn, conn_error(conn));
			else if (conn->poll == PGRES_POLLING_OK)
			{
				WorkerPool *pool = conn->pool;

				(void) PQsetnonblocking(conn->pg, 1);
				PQsetNoticeProcessor(conn->pg, notice_noop, NULL);
				if (!pool->owner_is_superuser && !PQconnectionUsedPassword(conn->pg))
				{
					DbpoolStatsCount(pool, DBPOOL_C_CONN_FAILURES);
					DbpoolPoolConnFailed(pool, "2F003", "password is required",
										 "Non-superuser cannot connect if the server does not request a password.",
										 "Target server's authentication method must be changed.");
					DbpoolConnClose(conn, DBPOOL_CLOSE_UNCOUNTED);
					return;
				}
				pool->nconnecting--;
				conn->deadline = 0;
				conn->remote_pid = PQbackendPID(conn->pg);
				DbpoolStatsCount(pool, DBPOOL_C_CONNS_CREATED);
				DbpoolConnSetState(conn, CONN_IDLE);
				DbpoolPoolConnected(conn);
			}
			return;
		case CONN_IDLE:
			if (!conn->readable)
				return;
			conn->readable = false;
			if (!PQconsumeInput(conn->pg) || PQstatus(conn->pg) == CONNECTION_BAD)
			{
				elog(DEBUG1, "dbpool: an idle connection of pool \"%s\" was closed by the server",
					 conn->pool->name);
				DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
				return;
			}
			while (!PQisBusy(conn->pg))
			{
				PGresult   *res = PQgetResult(conn->pg);

				if (res == NULL)
					break;
				PQclear(res);
			}
			drain_notifies(conn->pg);
			return;
		case CONN_ACTIVE:
		case CONN_CLEANUP:
			process_results(conn);
			return;
	}
}

/* Enforce this connection's deadline. */
void
DbpoolConnCheckDeadline(WorkerConn *conn, TimestampTz now)
{
	WorkerPool *pool = conn->pool;

	if (conn->deadline == 0)
		return;
	if (now < conn->deadline)
	{
		DbpoolWorkerDeadline(conn->deadline);
		return;
	}
	switch (conn->state)
	{
		case CONN_CONNECTING:
			fail_connect(conn, psprintf("timeout expired after %d ms", pool->connect_timeout_ms));
			return;
		case CONN_ACTIVE:
			if (conn->ch)
			{
				char	   *msg = psprintf("canceling query on pool \"%s\" due to query_timeout_ms",
										   pool->name);

				DbpoolStatsRequestEnd(conn->ch, conn, "57014", msg, false,
									  DBPOOL_C_QUERY_TIMEOUTS);
				DbpoolConnFailRequest(conn, "57014", msg,
									  psprintf("The query ran longer than %d ms.",
											   pool->settings.query_timeout_ms),
									  NULL);
				DbpoolConnOrphan(conn);
				return;
			}
			/* orphaned and not ended by its cancel in time */
			DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
			return;
		case CONN_CLEANUP:
			DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
			return;
		case CONN_IDLE:
			conn->deadline = 0;
			return;
	}
}

/* Close the connection and forget it, counted under reason; its pool is told. */
void
DbpoolConnClose(WorkerConn *conn, DbpoolCloseReason reason)
{
	WorkerPool *pool = conn->pool;

	if (reason != DBPOOL_CLOSE_UNCOUNTED && conn->state != CONN_CONNECTING)
		DbpoolStatsCount(pool, (DbpoolCounter) reason);
	DbpoolStatsConnClosed(conn);
	if (conn->ch)
		DbpoolConnFailRequest(conn, "08006",
							  psprintf("lost the connection to pool \"%s\"", pool->name),
							  NULL, NULL);
	if (conn->on_idle_list)
	{
		dlist_delete(&conn->idle_node);
		pool->nidle--;
	}
	if (conn->state == CONN_CONNECTING)
		pool->nconnecting--;
	else if (conn->state == CONN_CLEANUP && conn->cleanup_step == CLEANUP_AWAIT_CANCEL)
		DbpoolAwaitingCancels--;
	dlist_delete(&conn->pool_node);
	pool->nconns--;
	DbpoolWorkerTotalConns--;
	if (conn->cancel)
		DbpoolCancelForget(conn->cancel);
	if (conn->pg)
		PQfinish(conn->pg);
	DbpoolStmtFree(&conn->stmts);
	if (conn->has_fd)
		ReleaseExternalFD();
	if (conn->wait_pos >= 0)
		DbpoolWorkerSocketsChanged();
	pfree(conn->error.data);
	pfree(conn);
	DbpoolPoolConnClosed(pool);
}
