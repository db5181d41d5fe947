/*
 * autoscale.c
 *		Autoscaling: the operations guide's dynamic sizing, for pools whose
 *		autoscale setting is on.  Once a second the worker samples the pool's
 *		utilization (its figures, figures.c) into a ring in worker memory;
 *		with a full window (dbpool.autoscale_window_s) and no change within
 *		dbpool.autoscale_cooldown_s:
 *	- mean utilization > dbpool.autoscale_up_utilization and the queries per
 *	  second over the window > dbpool.autoscale_up_qps: max_size x 1.5
 *	  (rounded, at least +1), at most max_size_limit and
 *	  dbpool.max_connections;
 *	- mean utilization < dbpool.autoscale_down_utilization and QPS <
 *	  dbpool.autoscale_down_qps: max_size x 0.8 (rounded, at least -1), not
 *	  below the pool's floor (DbpoolMaxSizeFloor).
 * The QPS over the window is figures.c's rate over that many complete
 * seconds (hence a window of at most 60 s).  Each change goes through
 * resize.c: written to dbpool_config and logged with its reason and figures;
 * on a hot standby kept in memory and logged.
 */
#include "postgres.h"

#include <math.h>

#include "utils/timestamp.h"

#include "dbpool.h"
#include "figures.h"
#include "worker.h"

#define AUTOSCALE_MAX_WINDOW	DBPOOL_RATE_MAX_SECS

/* A pool's samples. */
typedef struct DbpoolAutoscale
{
	double		util[AUTOSCALE_MAX_WINDOW];	/* a ring of per-second samples */
	int			next;			/* where the next sample goes */
	int			nsamples;		/* samples in the ring (at most AUTOSCALE_MAX_WINDOW) */
	int64		last_second;	/* the second of the last sample */
	TimestampTz last_change;	/* 0: none yet */
} DbpoolAutoscale;

/* Free a pool's samples (it is freed, or autoscale was turned off). */
void
DbpoolAutoscaleForget(WorkerPool *pool)
{
	if (pool->autoscale)
		pfree(pool->autoscale);
	pool->autoscale = NULL;
}

/* The mean of the last n samples. */
static double
mean_of_last(const DbpoolAutoscale *a, int n)
{
	double		sum = 0;
	int			i;

	for (i = 1; i <= n; i++)
		sum += a->util[(a->next - i + AUTOSCALE_MAX_WINDOW) % AUTOSCALE_MAX_WINDOW];
	return sum / n;
}

/* Decide, from the mean utilization and QPS over the window, and resize if the policy says so. */
static void
decide(WorkerPool *pool, DbpoolAutoscale *a, double util, double qps, int window, TimestampTz now)
{
	const DbpoolSettings *s = &pool->settings;
	int			cur = s->max_size;
	int			new_max = cur;
	const char *dir = NULL;

	if (util > DbpoolAutoscaleUpUtilization && qps > DbpoolAutoscaleUpQps)
	{
		new_max = Max((int) rint(cur * 1.5), cur + 1);
		new_max = Min(new_max, Min(s->max_size_limit, DbpoolMaxConnections));
		dir = psprintf("mean utilization %.3f > %g and %.2f queries/s > %g over %d s",
					   util, DbpoolAutoscaleUpUtilization, qps, DbpoolAutoscaleUpQps, window);
	}
	else if (util < DbpoolAutoscaleDownUtilization && qps < DbpoolAutoscaleDownQps)
	{
		new_max = Min((int) rint(cur * 0.8), cur - 1);
		new_max = Max(new_max, DbpoolMaxSizeFloor(s));
		dir = psprintf("mean utilization %.3f < %g and %.2f queries/s < %g over %d s",
					   util, DbpoolAutoscaleDownUtilization, qps, DbpoolAutoscaleDownQps, window);
	}
	if (dir == NULL || new_max == cur ||
		(new_max > cur && new_max > Min(s->max_size_limit, DbpoolMaxConnections)) ||
		(new_max < cur && new_max < DbpoolMaxSizeFloor(s)))
		return;
	/* an attempt counts whether it worked or not: a failing write waits for the cooldown */
	(void) DbpoolResizePool(pool, new_max, psprintf("autoscale: %s", dir));
	a->last_change = now;
}

/* Sample a pool with autoscale on (once a second) and apply the policy. */
void
DbpoolAutoscaleTick(WorkerPool *pool, TimestampTz now)
{
	DbpoolAutoscale *a = pool->autoscale;
	int64		second = now / USECS_PER_SEC;
	int			window = Min(Max(DbpoolAutoscaleWindowS, 1), AUTOSCALE_MAX_WINDOW);
	DbpoolPoolFigures *f;
	double		qps,
				eps;

	if (!pool->settings.autoscale || pool->dropping)
	{
		DbpoolAutoscaleForget(pool);
		return;
	}
	if (a == NULL)
		a = pool->autoscale = MemoryContextAllocZero(DbpoolWorkerContext, sizeof(DbpoolAutoscale));
	if (a->last_second == second)
		return;
	a->last_second = second;

	/* the worker writes these alone: its own reads need no copy */
	f = palloc(sizeof(DbpoolPoolFigures));
	DbpoolComputePoolFigures(&DbpoolShmem->pools[pool->slot], &DbpoolShmem->stats[pool->slot],
							 now, f);
	a->util[a->next] = f->utilization;
	a->next = (a->next + 1) % AUTOSCALE_MAX_WINDOW;
	a->nsamples = Min(a->nsamples + 1, AUTOSCALE_MAX_WINDOW);
	pfree(f);

	if (a->nsamples < window)
		return;
	if (a->last_change != 0 &&
		now < TimestampTzPlusMilliseconds(a->last_change, (int64) DbpoolAutoscaleCooldownS * 1000))
		return;
	DbpoolRates(&DbpoolShmem->stats[pool->slot], now, window, &qps, &eps);
	decide(pool, a, mean_of_last(a, window), qps, window, now);
}
