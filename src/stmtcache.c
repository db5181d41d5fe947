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
 *	- a text seen for the first time on a connection runs unnamed; the second
 *	  time it is prepared first, one extra round trip per connection and text;
 *	  after that it is bound by name;
 *	- the cache holds dbpool.statement_cache_size texts per connection, most
 *	  recently used first; the least recently used falls out, and if it was
 *	  prepared its DEALLOCATE runs as a cleanup step after the request (a
 *	  batch that fails is sent again one statement at a time); a lowered
 *	  setting trims every connection at its next request;
 *	- a statement that the server no longer has (a caller's DEALLOCATE or
 *	  DISCARD ALL), whose result type changed (ALTER TABLE under a SELECT *),
 *	  or whose re-analysis with the parameter types fixed at PREPARE fails
 *	  (ALTER COLUMN TYPE) fails at Bind (DbpoolStmtBindFailed): conn_query.c
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
	cache->ndealloc = cache->maxdealloc = cache->nsent = 0;
	cache->one_by_one = false;
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
	if (cache->ndealloc >= cache->maxdealloc)
	{
		cache->maxdealloc = Max(16, cache->maxdealloc * 2);
		cache->dealloc = cache->dealloc ?
			repalloc(cache->dealloc, sizeof(uint32) * cache->maxdealloc) :
			MemoryContextAlloc(DbpoolWorkerContext, sizeof(uint32) * cache->maxdealloc);
	}
	cache->dealloc[cache->ndealloc++] = e->id;
}

/* Drop an entry from the cache; DEALLOCATE its statement at the next cleanup if prepared. */
void
DbpoolStmtEvict(StmtCache *cache, StmtEntry *e)
{
	if (e->prepared)
		queue_deallocate(cache, e);
	dlist_delete(&e->node);
	free_entry(e);
	cache->n--;
}

/* Let the least recently used entries fall out until at most limit are left. */
void
DbpoolStmtTrim(StmtCache *cache, int limit)
{
	while (cache->n > limit)
		DbpoolStmtEvict(cache, dlist_container(StmtEntry, node, dlist_tail_node(&cache->lru)));
}

/*
 * Whether a pool with this reset_query may cache statements: not if it seems
 * to drop them after every call (DISCARD, DEALLOCATE; a plain substring test,
 * so DISCARD TEMP turns the cache off too).  Computed when the pool's
 * settings change, not per query.
 */
bool
DbpoolStmtCacheAllowed(const char *reset_query)
{
	const char *p;

	for (p = reset_query; *p; p++)
		if (pg_strncasecmp(p, "discard", 7) == 0 || pg_strncasecmp(p, "deallocate", 10) == 0)
			return false;
	return true;
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
	DbpoolStmtTrim(cache, DbpoolStatementCacheSize - 1);
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

/*
 * The cache entry a request should use, or NULL: a request without a
 * parameters array runs through the simple protocol (nothing to prepare), and
 * a pool whose reset_query drops statements after each call (allowed false)
 * does not cache.
 */
StmtEntry *
DbpoolStmtForRequest(StmtCache *cache, bool allowed, const char *sql, int nparams)
{
	if (nparams < 0 || !allowed)
		return NULL;
	return DbpoolStmtLookup(cache, sql, nparams);
}

/* Whether the request should PREPARE its entry first: the text's second use. */
bool
DbpoolStmtShouldPrepare(const StmtEntry *e)
{
	return e && !e->prepared && !e->failed && e->uses >= 2;
}

/*
 * Whether an error says that the prepared statement e failed at Bind, before
 * anything ran, so that the request may simply run again unnamed: the server
 * no longer has it (*lost), its result type changed since it was prepared, or
 * analyzing it again with the parameter types fixed at PREPARE failed.  Only
 * errors raised at the top level (no context); the caller checks that no row
 * came before.
 */
bool
DbpoolStmtBindFailed(StmtCache *cache, StmtEntry *e, const PGresult *res, bool *lost)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *context = PQresultErrorField(res, PG_DIAG_CONTEXT);
	const char *routine = PQresultErrorField(res, PG_DIAG_SOURCE_FUNCTION);
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	const char *file;

	*lost = false;
	if (e == NULL || !e->prepared || state == NULL || (context && context[0]))
		return false;
	if (strcmp(state, "26000") == 0 && msg)
	{
		char		name[32];
		const char *hit;

		DbpoolStmtName(cache, e, name, sizeof(name));
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

/* Give the entry a fresh statement name before it is prepared. */
void
DbpoolStmtName(StmtCache *cache, StmtEntry *e, char *buf, size_t size)
{
	if (!e->prepared)
		e->id = cache->next_id++;
	snprintf(buf, size, "dbpool_s%u", e->id);
}

/*
 * The server no longer has this entry's statement (a caller's DEALLOCATE,
 * DEALLOCATE ALL or DISCARD ALL).  Only this one is forgotten: the others, if
 * gone too, fail the same way once each; forgetting them all would leave any
 * that still exist on the server for the connection's lifetime.
 */
void
DbpoolStmtLost(StmtCache *cache, StmtEntry *e)
{
	e->prepared = false;
}

/* Whether DEALLOCATE commands wait to run. */
bool
DbpoolStmtHasDeallocate(StmtCache *cache)
{
	return cache->ndealloc > 0;
}

/*
 * The DEALLOCATE step to send now (palloc'd in the current context): all
 * queued statements at once, or only the first while one_by_one (a simple
 * query stops at its first error, so a batch naming a statement the server
 * lost would leave the others).
 */
char *
DbpoolStmtDeallocateSQL(StmtCache *cache)
{
	StringInfoData sql;
	int			i;

	initStringInfo(&sql);
	cache->nsent = cache->one_by_one ? Min(cache->ndealloc, 1) : cache->ndealloc;
	for (i = 0; i < cache->nsent; i++)
		appendStringInfo(&sql, "DEALLOCATE dbpool_s%u;", cache->dealloc[i]);
	return sql.data;
}

/* The DEALLOCATE step ended; a failed batch is sent again one statement at a time. */
void
DbpoolStmtDeallocateDone(StmtCache *cache, bool ok)
{
	if (!ok && cache->nsent > 1)
		cache->one_by_one = true;
	else
	{
		memmove(cache->dealloc, cache->dealloc + cache->nsent,
				sizeof(uint32) * (cache->ndealloc - cache->nsent));
		cache->ndealloc -= cache->nsent;
	}
	cache->nsent = 0;
	if (cache->ndealloc == 0)
		cache->one_by_one = false;
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
	if (cache->dealloc)
		pfree(cache->dealloc);
	cache->dealloc = NULL;
	cache->ndealloc = cache->maxdealloc = cache->nsent = 0;
}
