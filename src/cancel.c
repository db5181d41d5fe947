/*
 * cancel.c
 *		Cancel a remote query without blocking the worker's loop.
 *
 * PQcancel blocks (it connects to the server and waits for the reply) and on
 * PostgreSQL 15 has no non-blocking form.  libpq documents it as safe to call
 * from another thread, so each cancel runs in a short-lived detached thread
 * that calls only PQcancel, PQfreeCancel, free, atomics and SetLatch (a
 * store and a kill(), as in a signal handler), with every signal blocked:
 * PostgreSQL's handlers must run in the worker's own thread.  The thread
 * sets the worker's latch when it is done; the connection is not reused
 * before then, so a late cancel can never hit the next client's query.
 *
 * Ownership: a DbpoolCancel is malloc'd by the worker and freed by whichever
 * side finishes with it last, decided by one atomic compare-and-exchange.
 */
#include "postgres.h"

#include <pthread.h>
#include <signal.h>

#include "miscadmin.h"
#include "storage/latch.h"

#include "dbpool.h"
#include "worker.h"

#define MAX_CANCELS_IN_FLIGHT 16

enum
{
	CANCEL_RUNNING = 0,
	CANCEL_DONE = 1,			/* thread finished; the worker frees */
	CANCEL_FORGOTTEN = 2		/* worker lost interest; the thread frees */
};

struct DbpoolCancel
{
	pg_atomic_uint32 state;
	PGcancel   *cancel;
	Latch	   *latch;
};

static pg_atomic_uint32 cancels_in_flight;
static bool cancels_initialized = false;

/* Thread body: send the cancel request, then hand the struct back. */
static void *
cancel_thread_main(void *arg)
{
	DbpoolCancel *c = (DbpoolCancel *) arg;
	char		errbuf[256];
	uint32		expected = CANCEL_RUNNING;

	(void) PQcancel(c->cancel, errbuf, sizeof(errbuf));
	PQfreeCancel(c->cancel);
	c->cancel = NULL;
	pg_atomic_fetch_sub_u32(&cancels_in_flight, 1);
	if (pg_atomic_compare_exchange_u32(&c->state, &expected, CANCEL_DONE))
		SetLatch(c->latch);
	else
		free(c);
	return NULL;
}

/* Start cancelling pg's running query; NULL if that could not start. */
DbpoolCancel *
DbpoolCancelStart(PGconn *pg)
{
	DbpoolCancel *c;
	pthread_t	thread;
	pthread_attr_t attr;
	sigset_t	all,
				old;
	int			rc;

	if (!cancels_initialized)
	{
		pg_atomic_init_u32(&cancels_in_flight, 0);
		cancels_initialized = true;
	}
	if (pg_atomic_read_u32(&cancels_in_flight) >= MAX_CANCELS_IN_FLIGHT)
		return NULL;
	c = malloc(sizeof(DbpoolCancel));
	if (c == NULL)
		return NULL;
	c->cancel = PQgetCancel(pg);
	if (c->cancel == NULL)
	{
		free(c);
		return NULL;
	}
	pg_atomic_init_u32(&c->state, CANCEL_RUNNING);
	c->latch = MyLatch;
	pg_atomic_fetch_add_u32(&cancels_in_flight, 1);

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&thread, &attr, cancel_thread_main, c);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0)
	{
		pg_atomic_fetch_sub_u32(&cancels_in_flight, 1);
		PQfreeCancel(c->cancel);
		free(c);
		return NULL;
	}
	return c;
}

/* True once the cancel request has been delivered (or failed); frees c then. */
bool
DbpoolCancelDone(DbpoolCancel *c)
{
	if (pg_atomic_read_u32(&c->state) != CANCEL_DONE)
		return false;
	free(c);
	return true;
}

/* The worker no longer waits for c: whoever finishes last frees it. */
void
DbpoolCancelForget(DbpoolCancel *c)
{
	uint32		expected = CANCEL_RUNNING;

	if (!pg_atomic_compare_exchange_u32(&c->state, &expected, CANCEL_FORGOTTEN))
		free(c);				/* already done */
}
