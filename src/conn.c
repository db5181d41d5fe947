/*
 * conn.c
 *		One outbound connection's life, non-blocking libpq only: open, the
 *		connect poll and the password rule, the idle watch, the socket events
 *		it waits for, its deadlines, and close.
 *
 *	CONNECTING (first waiting for its pool's host name lookup, if its hosts
 *	  need one: resolve.c) --PQconnectPoll ok--> (CLEANUP: set-up) --> IDLE --request-->
 *	  ACTIVE (conn_query.c) --results done--> CLEANUP (conn_reset.c) --> IDLE,
 *	  or closed.
 *
 * A pool has at most one host name lookup in flight; every connection that
 * opens meanwhile waits for it (a lookup older than DBPOOL_LOOKUP_MAX_AGE_MS
 * is forgotten instead), and when it ends each starts libpq with the
 * addresses found, or fails.  The connect deadline covers the lookup.
 *
 * CONNECTING, CLEANUP and a cancelled ACTIVE have deadlines (connect_timeout,
 * DBPOOL_CANCEL_GRACE_MS), and ACTIVE has query_timeout_ms when set; past a
 * deadline the request is answered and the connection cancelled or closed.
 *
 * Nothing here raises an ERROR for a remote or client problem: errors are
 * records sent to the one client concerned.
 */
#include "postgres.h"

#include <poll.h>

#include "storage/fd.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

/* Targets with a host name lookup in flight (their lookup_node). */
static dlist_head lookup_targets = DLIST_STATIC_INIT(lookup_targets);

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
	DbpoolWorkerConnDirty(conn);
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
	DbpoolWorkerConnDirty(conn);
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

/*
 * A connection attempt failed (an ERRCODE_* value): tell the pool (its
 * waiters), then close.  A probe's failure goes to failover.c instead, and
 * an attempt at a target the pool has left since (failover, failback) tells
 * nobody.
 */
static void
fail_connect(WorkerConn *conn, int sqlerrcode, const char *message, const char *detail,
			 const char *hint)
{
	WorkerPool *pool = conn->pool;

	DbpoolHealthConnFailed(conn, message, detail);	/* if it was opened for a check */
	if (conn->probe)
		DbpoolFailoverProbed(pool, false, detail ? detail : message);
	else if (conn->conninfo_gen == pool->conninfo_gen)
	{
		DbpoolStatsCount(pool, DBPOOL_C_CONN_FAILURES);
		DbpoolPoolConnFailed(pool, sqlerrcode, message, detail, hint);
	}
	DbpoolConnClose(conn, DBPOOL_CLOSE_UNCOUNTED);
}

/* The usual connect failure: 08001 "could not connect to pool" with detail. */
static void
fail_connect_08001(WorkerConn *conn, const char *detail)
{
	fail_connect(conn, ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
				 psprintf("could not connect to pool \"%s\"", conn->pool->name), detail, NULL);
}

/* Start libpq on conn with these keywords; false if that failed at once (the pool was told). */
static bool
start_libpq(WorkerConn *conn, const char *const *keywords, const char *const *values)
{
	conn->pg = PQconnectStartParams(keywords, values, 0);
	if (conn->pg == NULL || PQstatus(conn->pg) == CONNECTION_BAD)
	{
		fail_connect_08001(conn, DbpoolConnErrorText(conn));
		return false;
	}
	conn->poll = PGRES_POLLING_WRITING;
	conn->sock = PQsocket(conn->pg);
	DbpoolWorkerSocketsChanged();
	return true;
}

/* The worker no longer waits for target's lookup (the thread frees it when done). */
static void
forget_lookup(WorkerTarget *target)
{
	DbpoolLookupForget(target->lookup);
	target->lookup = NULL;
	dlist_delete(&target->lookup_node);
}

/* The names target's connections look up, quoted, for messages. */
static char *
lookup_names(WorkerTarget *target)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < target->params.nhosts; i++)
		if (target->params.lookup[i] != NULL)
			appendStringInfo(&buf, "%s\"%s\"", buf.len > 0 ? ", " : "",
							 target->params.lookup[i]);
	return buf.data;
}

/* Make conn wait for its target's lookup, starting one if needed; false if it failed (the pool was told). */
static bool
await_lookup(WorkerConn *conn)
{
	WorkerTarget *target = conn->target;
	TimestampTz now = GetCurrentTimestamp();

	if (target->lookup != NULL &&
		TimestampDifferenceExceeds(target->lookup_started, now, DBPOOL_LOOKUP_MAX_AGE_MS))
		forget_lookup(target);
	if (target->lookup == NULL)
	{
		const char *why;

		target->lookup = DbpoolLookupStart(target->params.lookup, target->params.nhosts, &why);
		if (target->lookup == NULL)
		{
			fail_connect_08001(conn, psprintf("Could not look up the host name %s: %s.",
											  lookup_names(target), why));
			return false;
		}
		target->lookup_started = now;
		dlist_push_tail(&lookup_targets, &target->lookup_node);
	}
	conn->resolving = true;
	return true;
}

/*
 * Start a connection to target for pool (a probe if probe); NULL if it
 * failed at once (the pool, or failover.c, was told).  A probe holds a slot
 * under dbpool.max_connections but is not in the pool's counts.
 */
static WorkerConn *
open_conn(WorkerPool *pool, WorkerTarget *target, bool probe)
{
	WorkerConn *conn = MemoryContextAllocZero(DbpoolWorkerContext, sizeof(WorkerConn));
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext old;

	conn->pool = pool;
	conn->target = target;
	conn->probe = probe;
	conn->state = CONN_CONNECTING;
	conn->sock = PGINVALID_SOCKET;
	conn->wait_pos = -1;
	conn->created_at = conn->state_since = now;
	conn->conninfo_gen = pool->conninfo_gen;
	conn->restart_gen = pool->restart_gen;
	conn->client_check = !target->params.client_check_off;
	if (probe)
	{
		conn->entry = -1;		/* not in dbpool_connections */
		pool->probe = conn;
	}
	else
		DbpoolStatsConnOpened(conn);
	old = MemoryContextSwitchTo(DbpoolWorkerContext);
	initStringInfo(&conn->error);
	MemoryContextSwitchTo(old);
	DbpoolStmtInit(&conn->stmts);
	dlist_push_tail(&pool->conns, &conn->pool_node);
	if (!probe)
	{
		pool->nconns++;
		pool->nconnecting++;
	}
	DbpoolWorkerTotalConns++;

	if (!AcquireExternalFD())
	{
		fail_connect_08001(conn, "The dbpool worker has no file descriptor left (max_files_per_process).");
		return NULL;
	}
	conn->has_fd = true;
	if (target->params.keywords == NULL)
	{
		fail_connect_08001(conn, target->backup ?
						   "The pool's backup_conninfo in the configuration table is invalid; fix it with dbpool_alter_pool()." :
						   "The pool's conninfo in the configuration table is invalid; fix it with dbpool_alter_pool().");
		return NULL;
	}
	/* the deadline covers the host name lookup too */
	conn->deadline = TimestampTzPlusMilliseconds(now, target->params.connect_timeout_ms);
	DbpoolWorkerDeadline(conn->deadline);
	if (target->params.nhosts > 0)
		return await_lookup(conn) ? conn : NULL;
	return start_libpq(conn, target->params.keywords, target->params.values) ? conn : NULL;
}

/* Start a connection for pool, to the target it uses now; NULL if it failed at once (the pool was told). */
WorkerConn *
DbpoolConnOpen(WorkerPool *pool)
{
	return open_conn(pool, DbpoolPoolTarget(pool), false);
}

/* Start a probe of pool's primary (failover.c); NULL if it failed at once (failover.c was told). */
WorkerConn *
DbpoolConnOpenProbe(WorkerPool *pool)
{
	return open_conn(pool, &pool->primary, true);
}

/* target's lookup has ended: start each connection that waited for it, or fail it. */
static void
lookup_finished(WorkerTarget *target)
{
	WorkerPool *pool = target->pool;
	DbpoolLookup *l = target->lookup;
	const DbpoolConnParams *p = &target->params;
	const char **addrs = palloc0(sizeof(char *) * p->nhosts);
	const char **keywords = NULL;
	const char **values = NULL;
	StringInfoData errors;
	dlist_mutable_iter it;
	int			n,
				i;

	target->lookup = NULL;
	dlist_delete(&target->lookup_node);
	initStringInfo(&errors);
	for (i = 0; i < p->nhosts; i++)
	{
		char	   *error;

		if (p->lookup[i] == NULL)
			continue;
		addrs[i] = DbpoolLookupResult(l, i, &error);
		if (error)
			appendStringInfo(&errors, "%s%s", errors.len > 0 ? "\n" : "", error);
	}
	n = DbpoolConninfoAttemptParams(p, addrs, &keywords, &values);
	dlist_foreach_modify(it, &pool->conns)
	{
		WorkerConn *conn = dlist_container(WorkerConn, pool_node, it.cur);

		if (conn->state != CONN_CONNECTING || !conn->resolving || conn->target != target)
			continue;
		conn->resolving = false;
		if (n == 0)
			fail_connect_08001(conn, errors.data);
		else
			(void) start_libpq(conn, keywords, values);
	}
	DbpoolLookupForget(l);		/* done: this frees it */
}

/* Start (or fail) the connections whose target's host name lookup has ended. */
void
DbpoolConnLookupsPoll(void)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &lookup_targets)
	{
		WorkerTarget *target = dlist_container(WorkerTarget, lookup_node, it.cur);

		if (DbpoolLookupDone(target->lookup))
			lookup_finished(target);
	}
}

/*
 * target's host names change or its pool goes: stop waiting for its lookup.
 * Its resolving connections must be closed too (config.c closes every
 * connecting one when a conninfo changes).
 */
void
DbpoolConnForgetLookup(WorkerTarget *target)
{
	if (target->lookup != NULL)
		forget_lookup(target);
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

/*
 * Whether a failed attempt's error is the server refusing our startup option
 * client_connection_check_interval: a server before 14 does not know it, one
 * on a platform without it refuses a value, a proxy such as PgBouncer may
 * take no options at all.
 */
static bool
client_check_refused(const char *error)
{
	return strstr(error, "client_connection_check_interval") != NULL ||
		strstr(error, "unsupported startup parameter") != NULL;
}

/* Drive a connection attempt one step; on success it goes to its pool. */
static void
connect_poll(WorkerConn *conn)
{
	WorkerPool *pool = conn->pool;

	if (conn->pg == NULL || (!conn->readable && !conn->writable))
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
		char	   *error = DbpoolConnErrorText(conn);

		if (conn->client_check && client_check_refused(error))
		{
			/*
			 * Not a failure of the target: attempts from now on go without
			 * the option (others started with it meet the same refusal).
			 */
			if (DbpoolConninfoDropClientCheck(&conn->target->params))
				ereport(LOG,
						(errmsg("dbpool: the server of pool \"%s\" refused the startup option client_connection_check_interval; connecting without it",
								pool->name),
						 errdetail_internal("%s", error)));
			DbpoolConnClose(conn, DBPOOL_CLOSE_UNCOUNTED);
			return;
		}
		fail_connect_08001(conn, error);
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
	if (conn->probe)
	{
		/* the primary answers: that is all a probe asks */
		DbpoolConnClose(conn, DBPOOL_CLOSE_UNCOUNTED);
		DbpoolFailoverProbed(pool, true, NULL);
		return;
	}
	if (conn->conninfo_gen != pool->conninfo_gen)
	{
		/* started before the pool changed target: of no use now */
		DbpoolConnClose(conn, DBPOOL_CLOSE_UNCOUNTED);
		return;
	}
	pool->nconnecting--;
	conn->deadline = 0;
	conn->remote_pid = PQbackendPID(conn->pg);
	DbpoolStatsConnCreated(pool);
	DbpoolConnSetState(conn, CONN_IDLE);
	DbpoolPoolConnected(pool);
	DbpoolConnSetUp(conn);		/* ISO output, keeping the foreign field order */
}

/*
 * Read what an idle connection's server sent: notifications are dropped; the
 * server closing it, or an error (a FATAL before it closes), closes it as
 * broken; a large notice or notification closes it too (closed_large).
 * False if it was closed.
 */
static bool
idle_input(WorkerConn *conn)
{
	bool		broken = !PQconsumeInput(conn->pg) || PQstatus(conn->pg) == CONNECTION_BAD;

	while (!broken && !PQisBusy(conn->pg))
	{
		PGresult   *res = PQgetResult(conn->pg);

		if (res == NULL)
			break;
		broken = PQresultStatus(res) == PGRES_FATAL_ERROR;
		PQclear(res);
	}
	if (broken)
	{
		elog(DEBUG1, "dbpool: an idle connection of pool \"%s\" was closed by the server",
			 conn->pool->name);
		DbpoolConnClose(conn, DBPOOL_CLOSE_BROKEN);
		return false;
	}
	DbpoolConnDrainNotifies(conn);
	if (conn->large)
	{
		DbpoolConnClose(conn, DBPOOL_CLOSE_LARGE);	/* a large notice or notification */
		return false;
	}
	return true;
}

/* An idle connection's socket is readable: the server closed it, or sent a notification. */
static void
idle_watch(WorkerConn *conn)
{
	if (!conn->readable)
		return;
	conn->readable = false;
	(void) idle_input(conn);
}

/*
 * Whether an idle connection about to be used is still open, its input read
 * if there is any; false if it was closed.  The loop's last wait watched
 * every idle socket, and what it reported was handled before any request is
 * served: only a socket it flagged readable and not yet handled, or a wait
 * that returned as many events as it could take (others may be missing), is
 * polled.  A close that comes after that wait is the same race as one just
 * after the poll.
 */
bool
DbpoolConnIdleAlive(WorkerConn *conn)
{
	struct pollfd pfd;

	if (!conn->readable && !DbpoolWorkerWaitCapped)
		return true;
	pfd.fd = conn->sock;
	pfd.events = POLLIN;
	pfd.revents = 0;
	if (poll(&pfd, 1, 0) <= 0)
		return true;			/* nothing to read (or poll failed: the request will tell) */
	return idle_input(conn);
}

/* Act on socket readiness (or on the client having read) for this connection. */
void
DbpoolConnProcess(WorkerConn *conn)
{
	DbpoolWorkerConnDirty(conn);
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
			if (conn->resolving)
				fail_connect_08001(conn, psprintf("timeout expired after %d ms while looking up the host name %s",
												  conn->target->params.connect_timeout_ms,
												  lookup_names(conn->target)));
			else
				fail_connect_08001(conn, psprintf("timeout expired after %d ms",
												  conn->target->params.connect_timeout_ms));
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
			if (conn->cleanup_step == CLEANUP_HEALTH)
				DbpoolHealthConnFailed(conn,
									   psprintf("the health query of pool \"%s\" did not finish within health_timeout_ms (%d ms)",
												pool->name, pool->settings.health_timeout_ms),
									   NULL);
			DbpoolConnClose(conn, DBPOOL_CLOSE_ERROR);	/* a timed-out check's too */
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

	if (conn->health)
		DbpoolHealthConnFailed(conn, psprintf("lost the connection to pool \"%s\" during its health check",
											  pool->name),
							   conn->pg && PQstatus(conn->pg) == CONNECTION_BAD ?
							   DbpoolConnErrorText(conn) : NULL);
	if (conn->leak_suspected)
		DbpoolLeakEnded(conn, "the connection was closed");
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
	if (conn->probe)
		pool->probe = NULL;
	else if (conn->state == CONN_CONNECTING)
		pool->nconnecting--;
	else if (conn->state == CONN_CLEANUP && conn->cleanup_step == CLEANUP_AWAIT_CANCEL)
		DbpoolAwaitingCancels--;
	dlist_delete(&conn->pool_node);
	if (!conn->probe)
		pool->nconns--;
	DbpoolWorkerTotalConns--;
	if (conn->cancel_queued)
	{
		DbpoolConnUnqueueCancel(conn);
		DbpoolCancelGaveUp(pool, false);	/* its cancel never found room */
	}
	if (conn->cancel && DbpoolCancelForget(conn->cancel))
		DbpoolCancelGaveUp(pool, true); /* its cancel is still unanswered */
	if (conn->pg)
		PQfinish(conn->pg);
	if (conn->large)
		DbpoolWorkerFreedLarge();	/* libpq's buffers held a large value */
	else
		DbpoolWorkerFreedConn();	/* after many, their buffers add up */
	DbpoolStmtFree(&conn->stmts);
	if (conn->has_fd)
		ReleaseExternalFD();
	if (conn->wait_pos >= 0)
		DbpoolWorkerSocketsChanged();
	DbpoolWorkerConnForget(conn);
	pfree(conn->error.data);
	pfree(conn);
	DbpoolPoolConnClosed(pool);
}
