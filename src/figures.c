/*
 * figures.c
 *		What readers derive from a consistent copy of the statistics (stats.c):
 *		window sums, percentiles, rates; the privilege rule for query texts;
 *		the names of states.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_authid.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "figures.h"
#include "stats.h"

/* A pool's statistics; zeroes while the worker has not initialized them yet. */
void
DbpoolSlotStats(const DbpoolPoolSlot *slot, DbpoolPoolStats *copy)
{
	if (!DbpoolPoolStatsSnapshot(slot->index, slot->pool_id, copy))
		memset(copy, 0, sizeof(*copy));
}

/* ---------- figures from a copy ---------- */

/* Sum the window slots of the last 60 s (the current 5 s slot included). */
void
DbpoolWindowSum(const DbpoolPoolStats *s, TimestampTz now, DbpoolWindowFigures *w)
{
	int64		epoch = now / USECS_PER_SEC / DBPOOL_WINDOW_SLOT_SECS;
	int			i,
				b;

	memset(w, 0, sizeof(*w));
	for (i = 0; i < DBPOOL_WINDOW_SLOTS; i++)
	{
		const DbpoolWindowSlot *slot = &s->window[i];

		if (slot->epoch > epoch || slot->epoch <= epoch - DBPOOL_WINDOW_SLOTS)
			continue;
		for (b = 0; b < DBPOOL_HIST_BUCKETS; b++)
		{
			w->acquire[b] += slot->acquire[b];
			w->query[b] += slot->query[b];
			w->acquire_n += slot->acquire[b];
			w->query_n += slot->query[b];
		}
	}
}

/*
 * The p-quantile (0..1) of a histogram, in milliseconds; -1 when it is empty.
 * The nearest-rank sample's bucket is found and the value interpolated
 * linearly inside it, so the answer is within one bucket (at most 10%) of the
 * true quantile.  The last bucket has no upper bound: its lower bound is given.
 */
double
DbpoolHistPercentile(const uint64 *count, uint64 n, double p)
{
	double		rank;
	uint64		cum = 0;
	int			i;

	if (n == 0)
		return -1;
	rank = ceil(p * (double) n);
	if (rank < 1)
		rank = 1;
	for (i = 0; i < DBPOOL_HIST_BUCKETS; i++)
	{
		double		lo,
					hi;

		if (count[i] == 0)
			continue;
		if ((double) (cum + count[i]) < rank)
		{
			cum += count[i];
			continue;
		}
		lo = i == 0 ? 0 : (double) DbpoolHistBounds[i - 1];
		hi = i < DBPOOL_HIST_BOUNDS ? (double) DbpoolHistBounds[i] : lo;
		return (lo + (hi - lo) * (rank - (double) cum) / (double) count[i]) / 1000.0;
	}
	return (double) DbpoolHistBounds[DBPOOL_HIST_BOUNDS - 1] / 1000.0;
}

/* Queries and errors per second over the last secs complete seconds. */
void
DbpoolRates(const DbpoolPoolStats *s, TimestampTz now, int secs, double *qps,
			double *errors_per_sec)
{
	int64		cur = now / USECS_PER_SEC;
	uint64		q = 0,
				e = 0;
	int			i;

	Assert(secs >= 1 && secs <= DBPOOL_RATE_MAX_SECS);
	for (i = 0; i < DBPOOL_RATE_SLOTS; i++)
	{
		const DbpoolRateSlot *r = &s->rate[i];

		if (r->second >= cur - secs && r->second < cur)
		{
			q += r->queries;
			e += r->errors;
		}
	}
	*qps = (double) q / secs;
	*errors_per_sec = (double) e / secs;
}

/* Milliseconds rounded to the microsecond, the unit every latency is kept in. */
double
DbpoolRoundMs(double ms)
{
	return rint(ms * 1000.0) / 1000.0;
}

/* ---------- who sees what, and names ---------- */

/*
 * Whether the current user may see a query text (or an error message) of
 * role: superusers, members of pg_read_all_stats and of that role, as
 * pg_stat_statements and pg_stat_activity.
 */
bool
DbpoolMaySeeText(Oid role)
{
	Oid			me = GetUserId();

	return superuser() || has_privs_of_role(me, ROLE_PG_READ_ALL_STATS) ||
		(OidIsValid(role) && has_privs_of_role(me, role));
}

/* A connection state's SQL name. */
const char *
DbpoolConnStateName(DbpoolConnShownState state)
{
	switch (state)
	{
		case DBPOOL_CONN_CONNECTING:
			return "connecting";
		case DBPOOL_CONN_IDLE:
			return "idle";
		case DBPOOL_CONN_ACTIVE:
			return "active";
		case DBPOOL_CONN_CLOSING:
			return "closing";
	}
	return "unknown";
}

/* A pool state's SQL name. */
const char *
DbpoolPoolStateName(DbpoolPoolState state)
{
	switch (state)
	{
		case DBPOOL_POOL_CONNECTING:
			return "connecting";
		case DBPOOL_POOL_READY:
			return "ready";
		case DBPOOL_POOL_UNREACHABLE:
			return "unreachable";
		case DBPOOL_POOL_DROPPING:
			return "dropping";
	}
	return "unknown";
}
