/*
 * resize.c
 *		The worker's own changes of a pool's max_size, made by the scale_up
 *		action (alerts.c) and by autoscaling (autoscale.c): the size scale_up
 *		asks for, the change itself, and what a hot standby keeps in memory.
 *
 * On a primary a change is written to dbpool_config (worker_sql.c), so it is
 * in dbpool_pools and in pg_dump; it also takes effect at once in memory,
 * and the re-read that its commit asks for finds the same value.
 *
 * On a hot standby nothing can be written: the change is kept in memory and
 * logged, with the table's value it replaced (an override).  Every
 * configuration read applies the override again (DbpoolResizeOverride) as
 * long as the table still holds that value; once the table's max_size changes
 * (replayed from the primary, or written after a promotion) the table wins
 * and the override is forgotten.  A worker restart forgets it too.
 */
#include "postgres.h"

#include "access/xlog.h"

#include "dbpool.h"
#include "worker.h"

/* A hot standby's own max_size for a pool, over the table's value. */
typedef struct Override
{
	char		name[DBPOOL_NAME_LEN];
	int			table_max;		/* the table's max_size it replaced */
	int			max;			/* the size in use */
} Override;

static List *overrides = NIL;	/* of Override, in worker memory */

/* The highest max_size the worker may give a pool. */
static int
size_cap(const DbpoolSettings *s)
{
	return Min(s->max_size_limit, DbpoolMaxConnections);
}

/* What scale_up makes of max_size: + half (at least 1), within the cap. */
int
DbpoolScaleUpSize(const DbpoolSettings *s)
{
	return Max(Min(s->max_size + Max(1, s->max_size / 2), size_cap(s)), s->max_size);
}

/* The override of a pool, or NULL. */
static Override *
find_override(const char *name)
{
	ListCell   *lc;

	foreach(lc, overrides)
	{
		Override   *o = lfirst(lc);

		if (strcmp(o->name, name) == 0)
			return o;
	}
	return NULL;
}

/* Forget a pool's override (it is dropped). */
void
DbpoolResizeForget(const char *name)
{
	Override   *o = find_override(name);

	if (o)
	{
		overrides = list_delete_ptr(overrides, o);
		pfree(o);
	}
}

/*
 * A configuration read: apply a standby's own size to the settings read, as
 * long as the table still holds the value it replaced; else forget it.
 */
void
DbpoolResizeOverride(const char *name, DbpoolSettings *s)
{
	Override   *o = find_override(name);

	if (o == NULL)
		return;
	if (s->max_size != o->table_max)
	{
		ereport(LOG,
				(errmsg("dbpool: pool \"%s\": max_size %d from the configuration replaces the size %d this standby chose",
						name, s->max_size, o->max)));
		DbpoolResizeForget(name);
		return;
	}
	s->max_size = Max(Min(o->max, size_cap(s)), Max(s->min_size, s->max_size_floor));
}

/* Use new_max at once: the worker's settings, the registry slot, waiters served. */
static void
apply_size(WorkerPool *pool, int new_max)
{
	pool->settings.max_size = new_max;
	LWLockAcquire(DbpoolShmem->lock, LW_EXCLUSIVE);
	DbpoolShmem->pools[pool->slot].settings.max_size = new_max;
	LWLockRelease(DbpoolShmem->lock);
	DbpoolPoolGrow(pool);
	DbpoolWorkerServeNeeded = true;
}

/*
 * Change a pool's max_size to new_max (the caller keeps it within the floor
 * and the cap) for the reason why: written and logged, or on a hot standby
 * kept in memory and logged.  False if nothing changed.
 */
bool
DbpoolResizePool(WorkerPool *pool, int new_max, const char *why)
{
	int			old_max = pool->settings.max_size;

	if (new_max == old_max)
		return false;
	if (RecoveryInProgress())
	{
		Override   *o = find_override(pool->name);
		MemoryContext old = MemoryContextSwitchTo(DbpoolWorkerContext);

		if (o == NULL)
		{
			o = palloc0(sizeof(Override));
			strlcpy(o->name, pool->name, sizeof(o->name));
			o->table_max = old_max;
			overrides = lappend(overrides, o);
		}
		MemoryContextSwitchTo(old);
		o->max = new_max;
		apply_size(pool, new_max);
		ereport(LOG,
				(errmsg("dbpool: pool \"%s\": max_size %d -> %d: %s", pool->name, old_max,
						new_max, why),
				 errdetail("This server is a hot standby: the new size is kept in memory only, until max_size changes in dbpool_config or the worker restarts.")));
		return true;
	}
	if (!DbpoolWorkerWriteMaxSize(pool->name, old_max, new_max))
	{
		ereport(LOG,
				(errmsg("dbpool: pool \"%s\": max_size not changed from %d to %d (%s)",
						pool->name, old_max, new_max, why),
				 errdetail("dbpool_config could not be written, or its max_size changed meanwhile.")));
		return false;
	}
	apply_size(pool, new_max);
	ereport(LOG,
			(errmsg("dbpool: pool \"%s\": max_size %d -> %d: %s", pool->name, old_max, new_max,
					why)));
	return true;
}
