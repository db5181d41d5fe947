/*
 * conn_query.c
 *		Running one request on a connection: send it (through the statement
 *		cache's PREPARE step when it says so), stream its results into the
 *		client's channel, finish it, or orphan it when the client is gone
 *		(cancelling the remote query, or queueing the cancel while its pool
 *		has no room for one: cancel.c).
 *
 * Results stream in single-row mode; while the client's channel is full the
 * socket is not read (DbpoolConnWantedEvents leaves it out of the wait set),
 * so memory stays bounded whatever the result size.  When the last result
 * is in, the client is answered and conn_reset.c cleans the connection for
 * the next request.
 *
 * Nothing here raises an ERROR for a remote or client problem: errors are
 * records sent to the one client concerned.
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "proto.h"
#include "worker.h"

#define ROWS_PER_FLUSH_BYTES 8192

/* A message of n bytes passed through libpq: past DBPOOL_LARGE_MESSAGE_BYTES, its buffers grew. */
static inline void
note_size(WorkerConn *conn, Size n)
{
	if (n > DBPOOL_LARGE_MESSAGE_BYTES)
		conn->large = true;
}

/*
 * The size of what the server sent for res but its rows: the error or
 * notice text, and the column names of a result set's description (a
 * foreign server is not trusted to keep them short).
 */
static Size
result_desc_size(const PGresult *res)
{
	Size		n = strlen(PQresultErrorMessage(res));
	int			i;

	for (i = 0; i < PQnfields(res); i++)
	{
		const char *name = PQfname(res, i);	/* NULL in a COPY's result */

		n += (name ? strlen(name) : 0) + 20;
	}
	return n;
}

/*
 * Answer the connection's client with an error (an ERRCODE_* value) and let
 * go of it; also is a counter to bump with it (a timeout), or -1.
 */
void
DbpoolConnFailRequest(WorkerConn *conn, int sqlerrcode, int also, const char *message,
					  const char *detail, const char *hint)
{
	WorkerChannel *ch = conn->ch;

	if (ch == NULL)
		return;
	DbpoolStatsRequestEnd(ch, conn, unpack_sql_state(sqlerrcode), message, false, also);
	conn->ch = NULL;
	ch->conn = NULL;
	DbpoolChannelError(ch, sqlerrcode, message, detail, hint);
}

/*
 * The connection broke while serving: answer the client and close.  Before
 * the request itself was sent (a prelude), it gets another connection instead.
 */
static void
conn_broken(WorkerConn *conn)
{
	if (conn->prelude != PRELUDE_NONE && DbpoolPoolRetry(conn))
		return;
	DbpoolConnFailRequest(conn, ERRCODE_CONNECTION_FAILURE, -1,
						  psprintf("lost the connection to pool \"%s\"", conn->pool->name),
						  DbpoolConnErrorText(conn), NULL);
	DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
}

/*
 * Send the request's query in single-row mode: bound to its prepared
 * statement if there is one (and unnamed is false), else as an unnamed
 * statement, or through the simple protocol when it has no parameters array.
 */
static bool
send_query(WorkerConn *conn, WorkerChannel *ch, bool unnamed)
{
	const DbpoolRequest *req = &ch->req;
	StmtEntry  *e = unnamed ? NULL : conn->stmt;
	int			ok;

	if (e && e->prepared)
	{
		char		name[32];

		DbpoolStmtName(&conn->stmts, e, name, sizeof(name));
		ok = PQsendQueryPrepared(conn->pg, name, req->nparams, req->params, NULL, NULL, 0);
	}
	else if (req->nparams < 0)
		ok = PQsendQuery(conn->pg, req->sql);
	else
		ok = PQsendQueryParams(conn->pg, req->sql, req->nparams, NULL, req->params, NULL, NULL, 0);
	if (!DbpoolConnFlushSent(conn, ok))
		return false;
	(void) PQsetSingleRowMode(conn->pg);
	return true;
}

/*
 * Send ch's request: through the statement cache's PREPARE when it says so,
 * else the query itself.  False if the connection broke (the client is
 * answered and the connection closed).
 */
static bool
send_request(WorkerConn *conn, WorkerChannel *ch)
{
	WorkerPool *pool = conn->pool;
	StmtEntry  *e;
	bool		ok;

	/* a lowered dbpool.statement_cache_size applies to every connection that serves */
	DbpoolStmtTrim(&conn->stmts, Max(DbpoolStatementCacheSize, 0));
	e = conn->stmt = DbpoolStmtForRequest(&conn->stmts, pool->stmt_cache_allowed,
										  ch->req.sql, ch->req.nparams);
	if (DbpoolStmtShouldPrepare(e))
	{
		char		name[32];

		/* prepare it now, the query follows (prepare_done) */
		DbpoolStmtName(&conn->stmts, e, name, sizeof(name));
		conn->preparing = true;
		ok = DbpoolConnFlushSent(conn, PQsendPrepare(conn->pg, name, ch->req.sql,
													 ch->req.nparams, NULL));
	}
	else
		ok = send_query(conn, ch, false);
	if (!ok && DbpoolPoolRetry(conn))
		return false;			/* nothing was sent: another connection has it */
	if (!ok)
	{
		DbpoolConnFailRequest(conn, ERRCODE_CONNECTION_FAILURE, -1,
							  psprintf("could not send the query to pool \"%s\"", pool->name),
							  DbpoolConnErrorText(conn), NULL);
		DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
	}
	return ok;
}

/*
 * Run ch's request on this idle connection.  A connection that last served
 * another local role is reset first (conn_reset.c's role reset), so that no
 * role meets another's session state; one idle longer than the pool's
 * validation_interval_ms is checked with an empty query.  The request
 * follows when that prelude is answered (prelude_done); if the connection
 * turns out broken, the request gets another (DbpoolPoolRetry).
 */
void
DbpoolConnStart(WorkerConn *conn, WorkerChannel *ch)
{
	WorkerPool *pool = conn->pool;
	TimestampTz idle_since = conn->state_since;
	char	   *sql = NULL;

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
	conn->prelude = PRELUDE_NONE;
	conn->stmt = NULL;
	note_size(conn, ch->msg.len);	/* libpq builds the whole Bind message in its buffer */
	resetStringInfo(&conn->error);
	conn->state = CONN_ACTIVE;
	conn->state_since = ch->started_at = GetCurrentTimestamp();
	DbpoolStatsAcquired(ch);
	DbpoolStatsConnQuery(conn, ch);
	conn->deadline = pool->settings.query_timeout_ms > 0 ?
		TimestampTzPlusMilliseconds(conn->state_since, pool->settings.query_timeout_ms) : 0;
	if (OidIsValid(conn->served_role) && conn->served_role != ch->req.user)
	{
		conn->prelude = PRELUDE_ROLE_RESET;
		sql = DbpoolConnRoleResetSQL(conn);
	}
	else if (pool->settings.validation_interval_ms > 0 &&
			 TimestampDifferenceExceeds(idle_since, conn->state_since,
										pool->settings.validation_interval_ms))
	{
		conn->prelude = PRELUDE_VALIDATE;
		sql = pstrdup("");
	}
	if (sql)
	{
		bool		ok = DbpoolConnFlushSent(conn, PQsendQuery(conn->pg, sql));

		pfree(sql);
		if (!ok)
		{
			conn_broken(conn);
			return;
		}
	}
	else
	{
		conn->served_role = ch->req.user;
		if (!send_request(conn, ch))
			return;
	}
	DbpoolWorkerDeadline(conn->deadline);
}

/* Stop serving the client (gone or answered): cancel the remote query and drain it. */
void
DbpoolConnOrphan(WorkerConn *conn)
{
	if (conn->ch)
		conn->ch->conn = NULL;
	conn->ch = NULL;
	DbpoolWorkerConnDirty(conn);	/* a blocked client no longer holds its socket back */
	if (conn->state != CONN_ACTIVE || conn->orphaned)
		return;
	conn->orphaned = true;
	DbpoolStatsConnUpdate(conn);	/* closing: no client any more */
	if (conn->cancel == NULL)
	{
		bool		busy;

		conn->cancel = DbpoolCancelStart(conn, &busy);
		if (conn->cancel == NULL && busy)
		{
			/* its pool's cancels are all in flight: wait for room (process_connections) */
			conn->cancel_queued = true;
			DbpoolCancelsQueued++;
		}
		else if (conn->cancel == NULL)
		{
			/* no cancel possible: never reuse it, close at the deadline */
			conn->retire = true;
			conn->retire_reason = DBPOOL_CLOSE_ERROR;
			DbpoolCancelGaveUp(conn->pool, false);
		}
	}
	conn->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												 conn->cancel || conn->cancel_queued ?
												 DBPOOL_CANCEL_GRACE_MS : 0);
	DbpoolWorkerDeadline(conn->deadline);

	/*
	 * libpq may already hold the rest of the result (read while the client's
	 * queue was full), and then no socket event will come to drain it: drive
	 * the connection at the next loop iteration, without waiting.
	 */
	conn->readable = true;
	DbpoolWorkerConnReady(conn);
}

/*
 * Whether the foreign server reports a client_encoding other than UTF8: the
 * request changed it (SET, set_config), and the texts it sends are no longer
 * UTF8.  libpq's encoding number is the cheap test, made for every result; a
 * server that never reported client_encoding has not changed it.
 */
static bool
encoding_changed(WorkerConn *conn)
{
	const char *ce;

	if (PQclientEncoding(conn->pg) == PG_UTF8)
		return false;
	ce = PQparameterStatus(conn->pg, "client_encoding");
	return ce != NULL && strcmp(ce, "UTF8") != 0;
}

/*
 * The 0A000 error's texts for a request that changed client_encoding.  The
 * value is the server's, shown only if it looks like an encoding name.
 */
static void
encoding_error(WorkerConn *conn, char **message, char **detail, const char **hint)
{
	const char *ce = DbpoolConnReportedStyle(conn, "client_encoding");

	*message = psprintf("the query changed client_encoding on pool \"%s\"", conn->pool->name);
	*detail = psprintf("The foreign server now sends text in %s, but dbpool reads every result as UTF8 (it converts to this database's encoding itself). The call's results were discarded, and the connection is set back to UTF8.",
					   ce ? ce : "another encoding");
	*hint = "Remove the client_encoding change (SET client_encoding, set_config) from the query.";
}

/* The connection no longer waits for room to start a cancel. */
void
DbpoolConnUnqueueCancel(WorkerConn *conn)
{
	if (!conn->cancel_queued)
		return;
	conn->cancel_queued = false;
	DbpoolCancelsQueued--;
}

/*
 * An orphaned connection waits for room to start its cancel: try again (a
 * cancel of its pool may have ended).  One that no longer runs its query
 * needs no cancel any more.
 */
void
DbpoolConnRetryCancel(WorkerConn *conn)
{
	bool		busy;

	if (!conn->cancel_queued)
		return;
	if (conn->state != CONN_ACTIVE || !conn->orphaned || conn->cancel != NULL)
	{
		DbpoolConnUnqueueCancel(conn);
		return;
	}
	conn->cancel = DbpoolCancelStart(conn, &busy);
	if (conn->cancel == NULL && busy)
		return;
	DbpoolConnUnqueueCancel(conn);
	if (conn->cancel == NULL)
	{
		conn->retire = true;
		conn->retire_reason = DBPOOL_CLOSE_ERROR;
		conn->deadline = GetCurrentTimestamp();
		DbpoolWorkerDeadline(conn->deadline);
		DbpoolCancelGaveUp(conn->pool, false);
	}
}

/* Answer the client with the error record in conn->error, and let go of it. */
static void
answer_error(WorkerConn *conn, WorkerChannel *ch)
{
	DbpoolErrorFields e;

	DbpoolProtoErrorOf(&conn->error, &e);
	DbpoolStatsRequestEnd(ch, conn, e.sqlstate, e.message, false, -1);
	DbpoolChannelAddFinal(ch, &conn->error);
	conn->ch = NULL;
	ch->conn = NULL;
}

/* The request's last result is in: answer the client, then clean the connection. */
static void
request_done(WorkerConn *conn)
{
	WorkerChannel *ch = conn->ch;
	PGTransactionStatusType ts = PQtransactionStatus(conn->pg);

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
	if (ch && encoding_changed(conn))
	{
		char	   *message;
		char	   *detail;
		const char *hint;

		/* it replaces any other error, and the rows still buffered are never sent */
		encoding_error(conn, &message, &detail, &hint);
		resetStringInfo(&ch->out);
		resetStringInfo(&conn->error);
		DbpoolProtoPutError(&conn->error, ERRCODE_FEATURE_NOT_SUPPORTED, message, detail, hint,
							NULL);
	}
	if (ch)
	{
		if (conn->error.len == 0 && (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR))
			DbpoolProtoPutError(&conn->error, ERRCODE_INVALID_TRANSACTION_STATE,
								psprintf("the query left a transaction open on pool \"%s\"",
										 conn->pool->name),
								"dbpool rolled the remote transaction back: a connection goes back to the pool only outside a transaction.",
								"End every transaction in the call that starts it, for example 'BEGIN; ...; COMMIT'.",
								NULL);
		if (conn->error.len > 0)
			answer_error(conn, ch);
		else
		{
			DbpoolStatsRequestEnd(ch, conn, NULL, NULL, false, -1);
			DbpoolChannelAddComplete(ch, conn->status);
			conn->ch = NULL;
			ch->conn = NULL;
		}
	}
	conn->deadline = 0;
	DbpoolConnResetStart(conn, ts);

	/*
	 * Answer last: a waiting request got this connection above, so the
	 * foreign server starts on it while we wake our client.
	 */
	if (ch)
		DbpoolChannelReply(ch);
}

/* Answer the client with the recorded error and close: the protocol state is unusable (COPY). */
static void
abort_copy(WorkerConn *conn)
{
	WorkerChannel *ch = conn->ch;

	if (ch)
	{
		answer_error(conn, ch);
		DbpoolChannelReply(ch);
	}
	DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
}

/* The COPY error record, in conn->error. */
static void
copy_error(WorkerConn *conn)
{
	resetStringInfo(&conn->error);
	DbpoolProtoPutError(&conn->error, ERRCODE_FEATURE_NOT_SUPPORTED,
						"COPY is not supported by dbpool", NULL,
						"Use INSERT and SELECT through dbpool_exec and dbpool_query.", NULL);
}

/* Keep a result's command status (the foreign server's text: made canonical, text.c). */
static void
store_status(WorkerConn *conn, PGresult *res)
{
	const char *status = PQcmdStatus(res);

	DbpoolTextStore(conn->status, sizeof(conn->status), status, strlen(status));
}

/* One result of a running request: forward rows, remember status and errors; false for COPY. */
static bool
handle_result(WorkerConn *conn, PGresult *res)
{
	WorkerChannel *ch = conn->ch;
	bool		rows = ch && ch->req.kind == DBPOOL_REQ_QUERY;
	int			i;

	if (ch && encoding_changed(conn))
	{
		char	   *message;
		char	   *detail;
		const char *hint;

		/* reported before the request's end (servers before 14): relay nothing more */
		encoding_error(conn, &message, &detail, &hint);
		DbpoolConnFailRequest(conn, ERRCODE_FEATURE_NOT_SUPPORTED, -1, message, detail, hint);
		DbpoolConnOrphan(conn);	/* cancel and drain the rest; cleanup sets UTF8 back */
		return true;
	}
	if (!conn->result_started ||
		(PQresultStatus(res) != PGRES_SINGLE_TUPLE && PQresultStatus(res) != PGRES_TUPLES_OK))
		note_size(conn, result_desc_size(res));
	switch (PQresultStatus(res))
	{
		case PGRES_SINGLE_TUPLE:
		case PGRES_TUPLES_OK:
			if (rows && !conn->result_started)
				DbpoolProtoPutRowDesc(&ch->out, PQnfields(res),
									  DbpoolConnReportedStyle(conn, "DateStyle"),
									  DbpoolConnReportedStyle(conn, "IntervalStyle"));
			conn->result_started = true;
			/* single-row mode: one row, or none in the TUPLES_OK that ends the set */
			for (i = 0; i < PQntuples(res); i++)
			{
				Size		size = DbpoolProtoRowSize(res, i);

				note_size(conn, size);	/* even when the rows are not wanted */
				if (!rows)
					continue;
				if (size > DBPOOL_MAX_MESSAGE_BYTES)
				{
					DbpoolConnFailRequest(conn, ERRCODE_PROGRAM_LIMIT_EXCEEDED, -1,
										  psprintf("a row from pool \"%s\" is too large", conn->pool->name),
										  psprintf("dbpool passes rows of at most %d MB.",
												   DBPOOL_MAX_MESSAGE_BYTES / (1024 * 1024)),
										  NULL);
					DbpoolConnOrphan(conn);	/* cancel and drain the rest */
					return true;
				}
				DbpoolProtoPutRow(&ch->out, res, i);
			}
			if (PQresultStatus(res) == PGRES_TUPLES_OK)
			{
				conn->rows += strtol(PQcmdTuples(res), NULL, 10);
				conn->result_started = false;
				store_status(conn, res);
			}
			if (ch && ch->out.len >= ROWS_PER_FLUSH_BYTES)
				DbpoolChannelReply(ch);
			return true;
		case PGRES_COMMAND_OK:
		case PGRES_EMPTY_QUERY:
			conn->rows += strtol(PQcmdTuples(res), NULL, 10);
			conn->result_started = false;
			store_status(conn, res);
			return true;
		case PGRES_COPY_IN:
		case PGRES_COPY_OUT:
		case PGRES_COPY_BOTH:
			copy_error(conn);
			return false;
		default:
			if (conn->error.len == 0)
			{
				conn->stmt_retry = ch && !conn->result_started &&
					DbpoolStmtBindFailed(&conn->stmts, conn->stmt, res, &conn->stmt_lost);
				DbpoolProtoPutRemoteError(&conn->error, res);
			}
			return true;
	}
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

/*
 * The prelude before a request ended.  After a role reset the statement
 * cache is forgotten (the server deallocated everything).  A prelude that
 * failed gives the request another connection (it was not sent), or, if it
 * had one already, fails it; a prelude whose client left closes the
 * connection (what a role reset did is not known).  Then the request is
 * sent.  False if the connection left the request.
 */
static bool
prelude_done(WorkerConn *conn)
{
	WorkerChannel *ch = conn->ch;
	ConnPrelude prelude = conn->prelude;

	if (prelude == PRELUDE_ROLE_RESET)
	{
		DbpoolStmtFree(&conn->stmts);
		DbpoolStmtInit(&conn->stmts);
		conn->served_role = InvalidOid;
	}
	if (conn->error.len > 0 || PQtransactionStatus(conn->pg) != PQTRANS_IDLE || ch == NULL)
	{
		if (ch && DbpoolPoolRetry(conn))
			return false;
		conn->prelude = PRELUDE_NONE;
		if (ch)
		{
			DbpoolErrorFields e = {0};

			if (conn->error.len > 0)
				DbpoolProtoErrorOf(&conn->error, &e);
			DbpoolConnFailRequest(conn, ERRCODE_CONNECTION_FAILURE, -1,
								  prelude == PRELUDE_ROLE_RESET ?
								  psprintf("could not reset a connection of pool \"%s\" for another role",
										   conn->pool->name) :
								  psprintf("lost the connection to pool \"%s\"", conn->pool->name),
								  e.message, NULL);
			DbpoolChannelReply(ch);
		}
		elog(LOG, "dbpool: closing a connection of pool \"%s\": its %s %s",
			 conn->pool->name, prelude == PRELUDE_ROLE_RESET ? "role reset" : "validation",
			 ch ? "failed" : "was interrupted");
		DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);
		return false;
	}
	conn->prelude = PRELUDE_NONE;
	resetStringInfo(&conn->error);
	conn->served_role = ch->req.user;
	return send_request(conn, ch);
}

/* Read what the server sent for a request or a cleanup step, and act on it. */
void
DbpoolConnProcessResults(WorkerConn *conn)
{
	PGconn	   *pg = conn->pg;

	DbpoolWorkerConnDirty(conn);	/* its flushing or its client's backpressure may change */
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
	DbpoolConnDrainNotifies(conn);

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
			if (conn->prelude != PRELUDE_NONE)
			{
				if (prelude_done(conn))
					continue;
				return;
			}
			if (conn->preparing)
			{
				if (prepare_done(conn))
					continue;
				return;
			}
			if (conn->state == CONN_ACTIVE)
				request_done(conn);
			else
				DbpoolConnResetStepDone(conn);
			return;
		}
		if (conn->preparing || conn->prelude != PRELUDE_NONE || conn->state != CONN_ACTIVE)
		{
			int			i;

			/* a PREPARE's, a prelude's or a cleanup step's result: only an error (and its size) matters */
			note_size(conn, result_desc_size(res));
			for (i = 0; i < PQntuples(res); i++)
				note_size(conn, DbpoolProtoRowSize(res, i));
			if (PQresultStatus(res) == PGRES_FATAL_ERROR && conn->error.len == 0)
				DbpoolProtoPutRemoteError(&conn->error, res);
			else if (!conn->preparing && conn->prelude == PRELUDE_NONE &&
					 (PQresultStatus(res) == PGRES_COPY_IN || PQresultStatus(res) == PGRES_COPY_OUT ||
					  PQresultStatus(res) == PGRES_COPY_BOTH))
			{
				copy_error(conn);
				ok = false;
			}
		}
		else
			ok = handle_result(conn, res);
		PQclear(res);
		if (!ok)
		{
			abort_copy(conn);
			return;
		}
	}
}
