/*
 * stmtcache.c
 *		Each outbound connection's cache of prepared statements.
 *
 * A parameterized request (dbpool_query or dbpool_exec with a params array)
 * runs through the extended protocol.  Sent as an unnamed statement, the
 * foreign server parses, analyzes and plans it on every call; prepared once
 * and then bound, it does not, which is the largest saving per query that a
 * pool can make on the foreign side.
 *
 * The rules:
 *	- a text seen for the first time on a connection runs unnamed (ad hoc SQL
 *	  costs nothing extra); the second time it is prepared first, one extra
 *	  round trip per connection and text; after that it is bound by name;
 *	- the cache holds dbpool.statement_cache_size texts per connection, most
 *	  recently used first; the least recently used falls out, and if it was
 *	  prepared its DEALLOCATE runs as a cleanup step after the request;
 *	- a statement that the server no longer has (a caller's DISCARD ALL or
 *	  DEALLOCATE ALL, or a reset_query doing so) or whose result type changed
 *	  (ALTER TABLE under a SELECT *) fails at Bind, before anything ran: conn.c
 *	  then forgets it and runs the request again unnamed;
 *	- a text whose PREPARE fails is never prepared again on that connection;
 *	- texts longer than DBPOOL_STMT_MAX_TEXT are not cached.
 *
 * Everything here is worker-private memory; names are dbpool_s<n>, n never
 * reused on a connection.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/memutils.h"

#include "dbpool.h"
#include "worker.h"

#define DBPOOL_STMT_MAX_TEXT	16384	/* longer texts always run unnamed */

/* Set up an empty cache on a new connection. */
void
DbpoolStmtInit(StmtCache *cache)
{
	dlist_init(&cache->lru);
	cache->n = 0;
	cache->next_id = 1;
	cache->dealloc = NULL;
}

/* Free an entry. */
static void
free_entry(StmtEntry *e)
{
	pfree(e->sql);
	pfree(e);
}

/* Queue "DEALLOCATE name" for the next cleanup. */
static void
queue_deallocate(StmtCache *cache, StmtEntry *e)
{
	MemoryContext old = MemoryContextSwitchTo(DbpoolWorkerContext);

	if (cache->dealloc == NULL)
		cache->dealloc = makeStringInfo();
	appendStringInfo(cache->dealloc, "DEALLOCATE dbpool_s%u;", e->id);
	MemoryContextSwitchTo(old);
}

/*
 * The entry for sql on this connection, made if new (the least recently used
 * one may fall out), moved to the front and its use counted.  NULL when the
 * cache is off or the text is too long to keep.
 */
StmtEntry *
DbpoolStmtLookup(StmtCache *cache, const char *sql, int nparams)
{
	size_t		len;
	uint32		hash;
	dlist_iter	it;
	StmtEntry  *e;

	if (DbpoolStatementCacheSize <= 0)
		return NULL;
	len = strlen(sql);
	if (len > DBPOOL_STMT_MAX_TEXT)
		return NULL;
	hash = hash_bytes((const unsigned char *) sql, (int) len);
	dlist_foreach(it, &cache->lru)
	{
		e = dlist_container(StmtEntry, node, it.cur);
		if (e->hash == hash && e->nparams == nparams && e->len == len &&
			memcmp(e->sql, sql, len) == 0)
		{
			dlist_move_head(&cache->lru, &e->node);
			if (e->uses < PG_UINT32_MAX)
				e->uses++;
			return e;
		}
	}
	while (cache->n >= DbpoolStatementCacheSize)
	{
		e = dlist_container(StmtEntry, node, dlist_tail_node(&cache->lru));
		dlist_delete(&e->node);
		if (e->prepared)
			queue_deallocate(cache, e);
		free_entry(e);
		cache->n--;
	}
	e = MemoryContextAllocZero(DbpoolWorkerContext, sizeof(StmtEntry));
	e->sql = MemoryContextAlloc(DbpoolWorkerContext, len + 1);
	memcpy(e->sql, sql, len + 1);
	e->len = len;
	e->hash = hash;
	e->nparams = nparams;
	e->uses = 1;
	dlist_push_head(&cache->lru, &e->node);
	cache->n++;
	return e;
}

/* Give the entry a fresh statement name before it is prepared. */
void
DbpoolStmtName(StmtCache *cache, StmtEntry *e, char *buf, size_t size)
{
	if (!e->prepared)
		e->id = cache->next_id++;
	snprintf(buf, size, "dbpool_s%u", e->id);
}

/* Drop one entry whose prepared statement went bad; DEALLOCATE it if it may still exist. */
void
DbpoolStmtEvict(StmtCache *cache, StmtEntry *e, bool exists)
{
	if (e->prepared && exists)
		queue_deallocate(cache, e);
	dlist_delete(&e->node);
	free_entry(e);
	cache->n--;
}

/* The server lost our statements (DISCARD ALL, DEALLOCATE ALL): forget they were prepared. */
void
DbpoolStmtForgetPrepared(StmtCache *cache)
{
	dlist_iter	it;

	dlist_foreach(it, &cache->lru)
		dlist_container(StmtEntry, node, it.cur)->prepared = false;
	if (cache->dealloc)
		resetStringInfo(cache->dealloc);
}

/* The DEALLOCATE commands waiting to run, or NULL. */
const char *
DbpoolStmtPendingDeallocate(StmtCache *cache)
{
	return cache->dealloc && cache->dealloc->len > 0 ? cache->dealloc->data : NULL;
}

/* The pending DEALLOCATE commands were sent. */
void
DbpoolStmtDeallocateSent(StmtCache *cache)
{
	if (cache->dealloc)
	{
		pfree(cache->dealloc->data);
		pfree(cache->dealloc);
		cache->dealloc = NULL;
	}
}

/* Free the whole cache (the connection closes). */
void
DbpoolStmtFree(StmtCache *cache)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &cache->lru)
	{
		StmtEntry  *e = dlist_container(StmtEntry, node, it.cur);

		dlist_delete(&e->node);
		free_entry(e);
	}
	cache->n = 0;
	DbpoolStmtDeallocateSent(cache);
}
