/*
 * conn.c
 *		One outbound connection's life, non-blocking libpq only: open, the
 *		connect poll and the password rule, the idle watch, the socket events
 *		it waits for, its deadlines, and close.
 *
 *	CONNECTING --PQconnectPoll ok--> (CLEANUP: set-up) --> IDLE --request-->
 *	  ACTIVE (conn_query.c) --results done--> CLEANUP (conn_reset.c) --> IDLE,
 *	  or closed.
 *
 * CONNECTING, CLEANUP and a cancelled ACTIVE have deadlines (connect_timeout,
 * DBPOOL_CANCEL_GRACE_MS), and ACTIVE has query_timeout_ms when set; past a
 * deadline the request is answered and the connection cancelled or closed.
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

/*
 * libpq notice processor that drops remote notices (they would go to the
 * server log); a large one marks its connection (arg) for closing.
 */
static void
notice_noop(void *arg, const char *message)
{
	WorkerConn *conn = (WorkerConn *) arg;

	if (strlen(message) > DBPOOL_LARGE_MESSAGE_BYTES)
		conn->large = true;
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

/* libpq's last error for conn, without the trailing newline. */
char *
DbpoolConnErrorText(WorkerConn *conn)
{
	char	   *msg = conn->pg ? pstrdup(PQerrorMessage(conn->pg)) : pstrdup("out of memory");

	return msg[0] ? pchomp(msg) : pstrdup("unknown libpq error");
}

/* Start sending what libpq queued after a PQsend* that returned ok; false if broken. */
bool
DbpoolConnFlushSent(WorkerConn *conn, int ok)
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

/* Drop NOTIFY messages a caller's LISTEN left behind (libpq would keep them). */
void
DbpoolConnDrainNotifies(WorkerConn *conn)
{
	PGnotify   *n;

	while ((n = PQnotifies(conn->pg)) != NULL)
	{
		if (strlen(n->relname) + strlen(n->extra) > DBPOOL_LARGE_MESSAGE_BYTES)
			conn->large = true;
		PQfreemem(n);
	}
}

/* A connection attempt failed (an ERRCODE_* value): tell the pool (its waiters), then close. */
static void
fail_connect(WorkerConn *conn, int sqlerrcode, const char *message, const char *detail,
			 const char *hint)
{
	DbpoolStatsCount(conn->pool, DBPOOL_C_CONN_FAILURES);
	DbpoolPoolConnFailed(conn->pool, sqlerrcode, message, detail, hint);
	DbpoolConnClose(conn, DBPOOL_CLOSE_UNCOUNTED);
}

/* The usual connect failure: 08001 "could not connect to pool" with detail. */
static void
fail_connect_08001(WorkerConn *conn, const char *detail)
{
	fail_connect(conn, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
				 psprintf("could not connect to pool \"%s\"", conn->pool->name), detail, NULL);
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
		fail_connect_08001(conn, "The dbpool worker has no file descriptor left (max_files_per_process).");
		return NULL;
	}
	conn->has_fd = true;
	if (pool->params.keywords == NULL)
	{
		fail_connect_08001(conn, "The pool's conninfo in the configuration table is invalid; fix it with dbpool_alter_pool().");
		return NULL;
	}
	conn->pg = PQconnectStartParams(pool->params.keywords, pool->params.values, 0);
	if (conn->pg == NULL || PQstatus(conn->pg) == CONNECTION_BAD)
	{
		fail_connect_08001(conn, DbpoolConnErrorText(conn));
		return NULL;
	}
	conn->poll = PGRES_POLLING_WRITING;
	conn->sock = PQsocket(conn->pg);
	conn->deadline = TimestampTzPlusMilliseconds(now, pool->params.connect_timeout_ms);
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

/* Drive a connection attempt one step; on success it goes to its pool. */
static void
connect_poll(WorkerConn *conn)
{
	WorkerPool *pool = conn->pool;

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
	{
		fail_connect_08001(conn, DbpoolConnErrorText(conn));
		return;
	}
	if (conn->poll != PGRES_POLLING_OK)
		return;
	(void) PQsetnonblocking(conn->pg, 1);
	PQsetNoticeProcessor(conn->pg, notice_noop, conn);
	if (!DbpoolConninfoPasswordRuleMet(conn->pg, pool->owner_is_superuser))
	{
		fail_connect(conn, ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED,
					 "password is required",
					 "Non-superuser cannot connect if the server does not request a password.",
					 "Target server's authentication method must be changed.");
		return;
	}
	pool->nconnecting--;
	conn->deadline = 0;
	conn->remote_pid = PQbackendPID(conn->pg);
	DbpoolStatsCount(pool, DBPOOL_C_CONNS_CREATED);
	DbpoolConnSetState(conn, CONN_IDLE);
	DbpoolPoolConnected(pool);
	DbpoolConnSetUp(conn);		/* ISO output, keeping the foreign field order */
}

/* An idle connection's socket is readable: the server closed it, or sent a notification. */
static void
idle_watch(WorkerConn *conn)
{
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
	DbpoolConnDrainNotifies(conn);
	if (conn->large)
		DbpoolConnClose(conn, DBPOOL_CLOSE_LARGE);	/* a large notice or notification */
}

/* Act on socket readiness (or on the client having read) for this connection. */
void
DbpoolConnProcess(WorkerConn *conn)
{
	switch (conn->state)
	{
		case CONN_CONNECTING:
			connect_poll(conn);
			return;
		case CONN_IDLE:
			idle_watch(conn);
			return;
		case CONN_ACTIVE:
		case CONN_CLEANUP:
			DbpoolConnProcessResults(conn);
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
			fail_connect_08001(conn, psprintf("timeout expired after %d ms",
											  pool->params.connect_timeout_ms));
			return;
		case CONN_ACTIVE:
			if (conn->ch)
			{
				DbpoolConnFailRequest(conn, ERRCODE_QUERY_CANCELED, DBPOOL_C_QUERY_TIMEOUTS,
									  psprintf("canceling query on pool \"%s\" due to query_timeout_ms",
											   pool->name),
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
		DbpoolConnFailRequest(conn, ERRCODE_CONNECTION_FAILURE, -1,
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
	if (conn->large)
		DbpoolWorkerFreedLarge();	/* libpq's buffers held a large value */
	DbpoolStmtFree(&conn->stmts);
	if (conn->has_fd)
		ReleaseExternalFD();
	if (conn->wait_pos >= 0)
		DbpoolWorkerSocketsChanged();
	pfree(conn->error.data);
	pfree(conn);
	DbpoolPoolConnClosed(pool);
}
