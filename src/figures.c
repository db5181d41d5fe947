/*
 * figures.c
 *		What readers derive from a consistent copy of the statistics (stats.c):
 *		a pool's figures and a connection's row, each computed here once, and
 *		their parts (window sums, percentiles, rates), the privilege rule for
 *		query texts and the names of states.  The SQL functions render them.
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "figures.h"
#include "stats.h"

const int	DbpoolRateWindowSecs[DBPOOL_NUM_RATE_WINDOWS] = {1, 10, 60};

/* The quantiles of the DbpoolPercentile values. */
static const double quantiles[DBPOOL_NUM_PERCENTILES] = {0.50, 0.95, 0.99};

/* ---------- a pool ---------- */

/* Fill a latency's figures from its cumulative histogram and its 60 s window. */
static void
latency_figures(const DbpoolHist *cumulative, const uint64 *window, uint64 window_n,
				DbpoolLatencyFigures *l)
{
	int			i,
				b;

	l->window_n = window_n;
	memcpy(l->window, window, sizeof(l->window));
	for (i = 0; i < DBPOOL_NUM_PERCENTILES; i++)
	{
		double		ms = DbpoolHistPercentile(window, window_n, quantiles[i]);

		l->window_ms[i] = ms < 0 ? -1 : DbpoolRoundMs(ms);
	}
	l->cumulative_n = 0;
	for (b = 0; b < DBPOOL_HIST_BUCKETS; b++)
		l->cumulative_n += cumulative->count[b];
	l->cumulative_sum_ms = cumulative->sum_us / 1000.0;
	memcpy(l->cumulative, cumulative->count, sizeof(l->cumulative));
}

/*
 * A pool's figures from its registry slot (a copy), a copy of its statistics
 * (zeroes if the worker has not initialized them) and the time of that copy.
 */
void
DbpoolComputePoolFigures(const DbpoolPoolSlot *slot, const DbpoolPoolStats *s,
						 TimestampTz now, DbpoolPoolFigures *f)
{
	DbpoolWindowFigures w;
	int			i;

	strlcpy(f->name, slot->name, sizeof(f->name));
	f->state = slot->state;
	f->on_backup = slot->on_backup;
	f->now = now;
	f->stats_reset = s->stats_reset;

	f->total = s->total;
	f->active = s->active;
	f->idle = s->idle;
	f->connecting = s->connecting;
	f->waiting = s->waiting;
	f->max_size = slot->settings.max_size;
	f->utilization = f->max_size > 0 ? (double) s->active / f->max_size : 0;
	f->oldest_wait_ms = s->oldest_wait_since ?
		DbpoolRoundMs(Max(now - s->oldest_wait_since, 0) / 1000.0) : -1;
	f->leaks_suspected = s->leaks_suspected;
	f->conns_created_60s = DbpoolConnsCreated(s, now, DBPOOL_RATE_MAX_SECS);

	memcpy(f->counters, s->counters, sizeof(f->counters));
	f->timeouts = s->counters[DBPOOL_C_ACQUIRE_TIMEOUTS] + s->counters[DBPOOL_C_QUERY_TIMEOUTS];
	for (i = 0; i < DBPOOL_NUM_RATE_WINDOWS; i++)
	{
		DbpoolRateFigures *r = &f->rates[i];

		DbpoolRates(s, now, DbpoolRateWindowSecs[i], &r->queries_per_second,
					&r->errors_per_second);
		r->error_rate = r->queries_per_second > 0 ?
			r->errors_per_second / r->queries_per_second : 0;
	}

	DbpoolWindowSum(s, now, &w);
	latency_figures(&s->acquire, w.acquire, w.acquire_n, &f->acquire);
	latency_figures(&s->query, w.query, w.query_n, &f->query);

	f->health = s->health;
	f->health_latency_ms = DbpoolHealthLatencyMs(&s->health);
}

/* A health check's latency in ms (rounded to the us); -1 when its query did not run. */
double
DbpoolHealthLatencyMs(const DbpoolHealthResult *r)
{
	return r->at != 0 && r->latency_us >= 0 ? DbpoolRoundMs(r->latency_us / 1000.0) : -1;
}

/*
 * A health check's error as the current user may see it (the rule of the
 * views' texts, the pool owner's), in the database encoding; NULL if none.
 */
const char *
DbpoolHealthShownError(const DbpoolHealthResult *r, Oid owner)
{
	return r->at != 0 && r->error[0] ? DbpoolShownText(r->error, owner) : NULL;
}

/* A pool's figures now: a consistent copy of its statistics, then the figures. */
void
DbpoolReadPoolFigures(const DbpoolPoolSlot *slot, DbpoolPoolFigures *f)
{
	DbpoolPoolStats *s = palloc(sizeof(DbpoolPoolStats));

	DbpoolSlotStats(slot, s);
	DbpoolComputePoolFigures(slot, s, GetCurrentTimestamp(), f);
	pfree(s);
}

/* A pool's statistics; zeroes while the worker has not initialized them yet. */
void
DbpoolSlotStats(const DbpoolPoolSlot *slot, DbpoolPoolStats *copy)
{
	if (!DbpoolPoolStatsSnapshot(slot->index, slot->pool_id, copy))
		memset(copy, 0, sizeof(*copy));
}

/* ---------- a connection ---------- */

/*
 * A connection's row from a copy of its entry at time now, texts masked for
 * the current user.  The served client's application_name and local query
 * come from this transaction's snapshot of the backend status array (as
 * pg_stat_activity's), converted from its database's encoding; the
 * application_name is shown to everyone, as pg_stat_activity does, the query
 * under the text rules (DbpoolMaySeeText of the client's role).
 */
void
DbpoolComputeConnFigures(const DbpoolConnEntry *e, TimestampTz now, DbpoolConnFigures *f)
{
	int64		active_us = e->active_us;
	DbpoolClientInfo ci;

	if (e->state == DBPOOL_CONN_ACTIVE)
		active_us += Max(now - e->state_since, 0);
	f->conn_id = e->conn_id;
	f->state = DbpoolConnStateName(e->state);
	f->client_pid = e->client_pid;
	f->remote_pid = e->remote_pid;
	f->created_at = e->created_at;
	f->state_since = e->state_since;
	f->active_seconds = active_us / 1000000.0;
	f->queries_served = e->queries_served;
	f->last_query = e->last_query[0] ? DbpoolShownText(e->last_query, e->last_role) : NULL;
	f->last_error = e->last_error[0] ? DbpoolShownText(e->last_error, e->last_error_role) : NULL;
	f->suspected_leak = e->suspected_leak;
	f->application_name = f->client_query = NULL;
	if (e->client_pid != 0 && DbpoolClientStatus(e->client_pid, &ci))
	{
		f->application_name = DbpoolTextShow(ci.application_name);
		f->client_query = ci.query ? DbpoolShownText(ci.query, ci.userid) : NULL;
	}
}

/* Entry i of a DbpoolConnSnapshot() copy. */
DbpoolConnEntry *
DbpoolConnEntryIn(DbpoolConnEntry *entries, int i)
{
	return (DbpoolConnEntry *) ((char *) entries + DbpoolShmem->conn_entry_stride * i);
}

/* ---------- the parts ---------- */

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

/* Queries, errors and connections established over the last secs complete seconds. */
static void
window_counts(const DbpoolPoolStats *s, TimestampTz now, int secs, uint64 *queries,
			  uint64 *errors, uint64 *conns)
{
	int64		cur = now / USECS_PER_SEC;
	int			i;

	Assert(secs >= 1 && secs <= DBPOOL_RATE_MAX_SECS);
	*queries = *errors = *conns = 0;
	for (i = 0; i < DBPOOL_RATE_SLOTS; i++)
	{
		const DbpoolRateSlot *r = &s->rate[i];

		if (r->second >= cur - secs && r->second < cur)
		{
			*queries += r->queries;
			*errors += r->errors;
			*conns += r->conns_created;
		}
	}
}

/* Queries and errors per second over the last secs complete seconds. */
void
DbpoolRates(const DbpoolPoolStats *s, TimestampTz now, int secs, double *qps,
			double *errors_per_sec)
{
	uint64		q,
				e,
				c;

	window_counts(s, now, secs, &q, &e, &c);
	*qps = (double) q / secs;
	*errors_per_sec = (double) e / secs;
}

/* Connections established over the last secs complete seconds. */
uint64
DbpoolConnsCreated(const DbpoolPoolStats *s, TimestampTz now, int secs)
{
	uint64		q,
				e,
				c;

	window_counts(s, now, secs, &q, &e, &c);
	return c;
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
	Oid			me;

	/*
	 * The privileges are catalog lookups: outside a transaction (the worker,
	 * the metrics process, which has no user at all) no text is shown.
	 */
	if (!IsTransactionState())
		return false;
	me = GetUserId();
	return superuser() || has_privs_of_role(me, ROLE_PG_READ_ALL_STATS) ||
		(OidIsValid(role) && has_privs_of_role(me, role));
}

/*
 * A stored text of role as the current user may see it, in the database
 * encoding (what it lacks escaped, text.c).
 */
const char *
DbpoolShownText(const char *utf8, Oid role)
{
	if (!DbpoolMaySeeText(role))
		return DBPOOL_INSUFFICIENT_PRIVILEGE;
	return DbpoolTextShow(utf8);
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

/* A health check kind's SQL name. */
const char *
DbpoolHealthKindName(DbpoolHealthKind kind)
{
	switch (kind)
	{
		case DBPOOL_HEALTH_NONE:
			return "none";
		case DBPOOL_HEALTH_PROBE:
			return "probe";
		case DBPOOL_HEALTH_ON_DEMAND:
			return "on_demand";
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
		case DBPOOL_POOL_OK:
			return "ok";
		case DBPOOL_POOL_DEGRADED:
			return "degraded";
		case DBPOOL_POOL_DOWN:
			return "down";
		case DBPOOL_POOL_DROPPING:
			return "dropping";
	}
	return "unknown";
}

/* The status of pools of which unhealthy are unhealthy: all well, some, or all of them. */
DbpoolHealthStatus
DbpoolHealthStatusOf(int unhealthy, int total)
{
	return unhealthy == 0 ? DBPOOL_HEALTHY :
		unhealthy == total ? DBPOOL_UNHEALTHY : DBPOOL_DEGRADED;
}

/* A health status's name. */
const char *
DbpoolHealthStatusName(DbpoolHealthStatus status)
{
	switch (status)
	{
		case DBPOOL_HEALTHY:
			return "healthy";
		case DBPOOL_DEGRADED:
			return "degraded";
		case DBPOOL_UNHEALTHY:
			return "unhealthy";
	}
	return "unknown";
}
