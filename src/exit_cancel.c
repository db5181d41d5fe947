/*
 * exit_cancel.c
 *		The worker's exit: cancel every query it has running on a foreign
 *		server, bounded in time, so that nothing it started keeps running
 *		there once it is gone.
 *
 * Closing a socket does not stop a running remote query: the foreign backend
 * notices only when it next writes to the client or checks the socket (its
 * client_connection_check_interval, which conninfo.c sets as a startup
 * option; that is what covers a killed worker, which runs no exit code).
 * So the exit callback (worker.c) first takes a PGcancel for every
 * connection with a command in flight, then closes the connections and
 * answers its clients, then waits at most EXIT_CANCEL_WAIT_MS for the cancel
 * requests to be delivered.
 *
 * PQcancel blocks, so up to EXIT_CANCEL_THREADS threads deliver them, each
 * taking the next one from a shared counter.  The threads call only
 * PQcancel and atomics, with every signal blocked; nothing is freed while a
 * thread may still use it: a thread still blocked at the deadline (a frozen
 * server) ends with the process.  This file is independent of cancel.c's
 * per-request cancels, whose budget it does not use.
 */
#include "postgres.h"

#include <pthread.h>
#include <signal.h>

#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

#define EXIT_CANCEL_THREADS	16
#define EXIT_CANCEL_WAIT_MS	1000
#define EXIT_CANCEL_STACK	(256 * 1024)

typedef struct ExitCancels
{
	PGcancel  **cancels;
	int			n;
	int			nthreads;		/* threads started */
	pg_atomic_uint32 next;		/* the next cancel a thread takes */
	pg_atomic_uint32 done;		/* cancels delivered or failed */
} ExitCancels;

static ExitCancels *exit_cancels = NULL;

/* Thread body: deliver cancel requests until none is left. */
static void *
exit_cancel_thread(void *arg)
{
	ExitCancels *ec = (ExitCancels *) arg;
	char		errbuf[256];

	for (;;)
	{
		uint32		i = pg_atomic_fetch_add_u32(&ec->next, 1);

		if (i >= (uint32) ec->n)
			break;
		(void) PQcancel(ec->cancels[i], errbuf, sizeof(errbuf));
		pg_atomic_fetch_add_u32(&ec->done, 1);
	}
	return NULL;
}

/* Whether conn has a command in flight on its server (a request, or a cleanup step). */
static bool
has_command_in_flight(WorkerConn *conn)
{
	return conn->pg != NULL && conn->state != CONN_CONNECTING &&
		PQstatus(conn->pg) == CONNECTION_OK &&
		PQtransactionStatus(conn->pg) == PQTRANS_ACTIVE;
}

/*
 * Start cancelling every command the worker's connections have in flight.
 * Call before the connections close (a PGcancel outlives its connection).
 * Uses malloc only and never raises an error: it runs in the exit callback.
 */
void
DbpoolExitCancelStart(void)
{
	ExitCancels *ec;
	dlist_iter	pit;
	int			max = DbpoolWorkerTotalConns;
	sigset_t	all,
				old;
	pthread_attr_t attr;
	int			i;

	if (max <= 0)
		return;
	ec = malloc(sizeof(ExitCancels));
	if (ec == NULL)
		return;
	ec->cancels = malloc(sizeof(PGcancel *) * max);
	if (ec->cancels == NULL)
	{
		free(ec);
		return;
	}
	ec->n = 0;
	ec->nthreads = 0;
	pg_atomic_init_u32(&ec->next, 0);
	pg_atomic_init_u32(&ec->done, 0);
	dlist_foreach(pit, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, pit.cur);
		dlist_iter	cit;

		dlist_foreach(cit, &pool->conns)
		{
			WorkerConn *conn = dlist_container(WorkerConn, pool_node, cit.cur);
			PGcancel   *c;

			if (ec->n >= max || !has_command_in_flight(conn))
				continue;
			c = PQgetCancel(conn->pg);
			if (c != NULL)
				ec->cancels[ec->n++] = c;
		}
	}
	if (ec->n == 0)
	{
		free(ec->cancels);
		free(ec);
		return;
	}

	/* PostgreSQL's signal handlers must run in the worker's own thread */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	(void) pthread_attr_setstacksize(&attr, EXIT_CANCEL_STACK);
	for (i = 0; i < Min(ec->n, EXIT_CANCEL_THREADS); i++)
	{
		pthread_t	thread;

		if (pthread_create(&thread, &attr, exit_cancel_thread, ec) != 0)
			break;
		ec->nthreads++;
	}
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ec->nthreads == 0)
	{
		for (i = 0; i < ec->n; i++)
			PQfreeCancel(ec->cancels[i]);
		free(ec->cancels);
		free(ec);
		return;
	}
	exit_cancels = ec;
}

/*
 * Wait, at most EXIT_CANCEL_WAIT_MS, until the cancel requests started by
 * DbpoolExitCancelStart are delivered; log how many were not.
 */
void
DbpoolExitCancelWait(void)
{
	ExitCancels *ec = exit_cancels;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   EXIT_CANCEL_WAIT_MS);
	uint32		done;

	if (ec == NULL)
		return;
	while ((done = pg_atomic_read_u32(&ec->done)) < (uint32) ec->n &&
		   GetCurrentTimestamp() < deadline)
		pg_usleep(2000L);
	if (done < (uint32) ec->n)
		ereport(LOG,
				(errmsg("dbpool: %u of %d remote cancel requests were not delivered within %d ms of the worker's exit",
						ec->n - done, ec->n, EXIT_CANCEL_WAIT_MS),
				 errdetail("Those queries run on until they end or their server notices the closed connection (client_connection_check_interval).")));
	else
		elog(DEBUG1, "dbpool: %d remote queries cancelled at exit", ec->n);
	/* threads may still hold ec (a blocked one, or one past its last cancel): the process frees it */
}
