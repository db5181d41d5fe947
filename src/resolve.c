/*
 * resolve.c
 *		Host name lookups off the worker's loop.
 *
 * getaddrinfo blocks for as long as the resolver takes, and libpq calls it
 * inside PQconnectStartParams/PQconnectPoll.  So the worker resolves a pool's
 * host names itself, in a short-lived detached thread per lookup, and hands
 * libpq the numeric addresses as hostaddr (conninfo.c builds those keywords;
 * conn.c decides which connections wait for which lookup).
 *
 * The thread runs no PostgreSQL code but SetLatch at the end (a store and a
 * kill(), as in a signal handler): it calls getaddrinfo, getnameinfo,
 * freeaddrinfo, malloc and free, with every signal blocked, so PostgreSQL's
 * handlers always run in the worker's own thread.
 *
 * Ownership: a DbpoolLookup is malloc'd by the worker and freed by whichever
 * side finishes with it last, decided by one atomic compare-and-exchange (as
 * cancel.c does).  A lookup the worker gave up on (its connections reached
 * their deadline, the pool's conninfo changed, the pool is gone) runs on
 * until the resolver answers, then frees itself; it still counts against
 * DBPOOL_MAX_LOOKUPS until then.
 */
#include "postgres.h"

#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#include "miscadmin.h"
#include "storage/latch.h"

#include "dbpool.h"
#include "worker.h"

enum
{
	LOOKUP_RUNNING = 0,
	LOOKUP_DONE = 1,			/* thread finished; the worker frees */
	LOOKUP_FORGOTTEN = 2		/* worker lost interest; the thread frees */
};

/* One name's answer. */
typedef struct LookupItem
{
	char	   *name;			/* NULL: this entry needs no lookup */
	int			rc;				/* getaddrinfo's result, 0 if it found addresses */
	int			sys_errno;		/* errno, for EAI_SYSTEM */
	char	   *addrs;			/* numeric addresses, comma-separated; NULL if none */
} LookupItem;

struct DbpoolLookup
{
	pg_atomic_uint32 state;
	Latch	   *latch;
	int			n;
	LookupItem	items[FLEXIBLE_ARRAY_MEMBER];
};

static pg_atomic_uint32 lookups_in_flight;
static bool lookups_initialized = false;

/* Free a lookup and everything it holds (either side, once it is the last owner). */
static void
lookup_free(DbpoolLookup *l)
{
	int			i;

	for (i = 0; i < l->n; i++)
	{
		free(l->items[i].name);
		free(l->items[i].addrs);
	}
	free(l);
}

/* Thread side: resolve one name into item (malloc only; no PostgreSQL code). */
static void
resolve_item(LookupItem *item)
{
	struct addrinfo hints;
	struct addrinfo *res = NULL;
	struct addrinfo *ai;
	size_t		len = 0;
	int			count = 0;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;	/* as libpq asks */
	hints.ai_socktype = SOCK_STREAM;
	errno = 0;
	item->rc = getaddrinfo(item->name, NULL, &hints, &res);
	item->sys_errno = errno;
	if (item->rc != 0)
		return;
	item->addrs = malloc((NI_MAXHOST + 1) * DBPOOL_MAX_LOOKUP_ADDRS);
	if (item->addrs == NULL)
	{
		freeaddrinfo(res);
		item->rc = EAI_MEMORY;
		return;
	}
	item->addrs[0] = '\0';
	for (ai = res; ai != NULL && count < DBPOOL_MAX_LOOKUP_ADDRS; ai = ai->ai_next)
	{
		char		host[NI_MAXHOST];

		if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
			continue;
		if (getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof(host), NULL, 0,
						NI_NUMERICHOST) != 0)
			continue;
		if (strchr(host, ',') != NULL)	/* cannot be listed in hostaddr */
			continue;
		if (count > 0)
			item->addrs[len++] = ',';
		strcpy(item->addrs + len, host);
		len += strlen(host);
		count++;
	}
	freeaddrinfo(res);
	if (count == 0)
	{
		free(item->addrs);
		item->addrs = NULL;
		item->rc = EAI_NONAME;
	}
}

/* Thread body: resolve every name, then hand the lookup back. */
static void *
lookup_thread_main(void *arg)
{
	DbpoolLookup *l = (DbpoolLookup *) arg;
	uint32		expected = LOOKUP_RUNNING;
	int			i;

	for (i = 0; i < l->n; i++)
		if (l->items[i].name != NULL)
			resolve_item(&l->items[i]);
	pg_atomic_fetch_sub_u32(&lookups_in_flight, 1);
	if (pg_atomic_compare_exchange_u32(&l->state, &expected, LOOKUP_DONE))
		SetLatch(l->latch);
	else
		lookup_free(l);
	return NULL;
}

/*
 * Start resolving names[0..n-1] (NULL entries are skipped) in a thread.
 * NULL if it could not start; *why then says why.
 */
DbpoolLookup *
DbpoolLookupStart(char *const *names, int n, const char **why)
{
	DbpoolLookup *l;
	pthread_t	thread;
	pthread_attr_t attr;
	sigset_t	all,
				old;
	int			rc;
	int			i;

	if (!lookups_initialized)
	{
		pg_atomic_init_u32(&lookups_in_flight, 0);
		lookups_initialized = true;
	}
	if (pg_atomic_read_u32(&lookups_in_flight) >= DBPOOL_MAX_LOOKUPS)
	{
		*why = "too many host name lookups are in progress in the dbpool worker";
		return NULL;
	}
	*why = "out of memory";
	l = malloc(offsetof(DbpoolLookup, items) + sizeof(LookupItem) * n);
	if (l == NULL)
		return NULL;
	memset(l, 0, offsetof(DbpoolLookup, items) + sizeof(LookupItem) * n);
	l->n = n;
	for (i = 0; i < n; i++)
	{
		if (names[i] == NULL)
			continue;
		l->items[i].name = strdup(names[i]);
		if (l->items[i].name == NULL)
		{
			lookup_free(l);
			return NULL;
		}
	}
	pg_atomic_init_u32(&l->state, LOOKUP_RUNNING);
	l->latch = MyLatch;
	pg_atomic_fetch_add_u32(&lookups_in_flight, 1);

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&thread, &attr, lookup_thread_main, l);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0)
	{
		pg_atomic_fetch_sub_u32(&lookups_in_flight, 1);
		lookup_free(l);
		*why = "could not start a host name lookup thread";
		return NULL;
	}
	return l;
}

/* True once the thread has answered every name (the worker then owns l). */
bool
DbpoolLookupDone(DbpoolLookup *l)
{
	return pg_atomic_read_u32(&l->state) == LOOKUP_DONE;
}

/*
 * Entry i's addresses, comma-separated, or NULL if it was not found; then
 * *error (palloc'd) says why, in libpq's words.  Only once done.
 */
const char *
DbpoolLookupResult(DbpoolLookup *l, int i, char **error)
{
	LookupItem *item = &l->items[i];

	Assert(DbpoolLookupDone(l) && i < l->n && item->name != NULL);
	*error = NULL;
	if (item->rc == 0)
		return item->addrs;
	*error = psprintf("could not translate host name \"%s\" to address: %s", item->name,
					  item->rc == EAI_SYSTEM ? strerror(item->sys_errno) :
					  gai_strerror(item->rc));
	return NULL;
}

/* The worker is done with l: free it now if the thread is done, else the thread will. */
void
DbpoolLookupForget(DbpoolLookup *l)
{
	uint32		expected = LOOKUP_RUNNING;

	if (!pg_atomic_compare_exchange_u32(&l->state, &expected, LOOKUP_FORGOTTEN))
		lookup_free(l);			/* already done */
}
