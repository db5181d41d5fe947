/*
 * figures.h
 *		What readers derive from a copy of the statistics: a pool's figures
 *		(utilization, rates, percentiles, error rate, oldest wait, ...) and a
 *		connection's row, each computed once, in one struct, by figures.c.
 *		The SQL functions (views.c, detail.c) only render them; so will any
 *		other renderer.
 */
#ifndef DBPOOL_FIGURES_H
#define DBPOOL_FIGURES_H

#include "dbpool.h"
#include "stats.h"

#define DBPOOL_INSUFFICIENT_PRIVILEGE "<insufficient privilege>"	/* shown instead of a text */

/* The percentiles of a latency over the last 60 s. */
typedef enum DbpoolPercentile
{
	DBPOOL_P50,
	DBPOOL_P95,
	DBPOOL_P99,
	DBPOOL_NUM_PERCENTILES
} DbpoolPercentile;

/* The rates: over the last 1, 10 and 60 complete seconds. */
typedef enum DbpoolRateWindow
{
	DBPOOL_RATE_1S,
	DBPOOL_RATE_10S,
	DBPOOL_RATE_60S,
	DBPOOL_NUM_RATE_WINDOWS
} DbpoolRateWindow;

extern const int DbpoolRateWindowSecs[DBPOOL_NUM_RATE_WINDOWS];

typedef struct DbpoolRateFigures
{
	double		queries_per_second;
	double		errors_per_second;
	double		error_rate;		/* errors / queries; 0 without queries */
} DbpoolRateFigures;

/* One latency: the last 60 s and since stats_reset.  Milliseconds are rounded to the us. */
typedef struct DbpoolLatencyFigures
{
	uint64		window_n;		/* samples in the last 60 s */
	double		window_ms[DBPOOL_NUM_PERCENTILES];	/* -1: no sample */
	uint64		window[DBPOOL_HIST_BUCKETS];
	uint64		cumulative_n;
	double		cumulative_sum_ms;	/* not rounded */
	uint64		cumulative[DBPOOL_HIST_BUCKETS];
} DbpoolLatencyFigures;

/* A pool's figures at one instant: its registry slot, its statistics, the time. */
typedef struct DbpoolPoolFigures
{
	char		name[DBPOOL_NAME_LEN];
	DbpoolPoolState state;
	bool		on_backup;		/* serving from its backup target */
	TimestampTz now;			/* when they were read */
	TimestampTz stats_reset;	/* 0: the worker has not initialized them yet */

	/* gauges */
	int32		total;
	int32		active;
	int32		idle;
	int32		connecting;
	int32		waiting;
	int32		max_size;
	double		utilization;	/* active / max_size; 0 when max_size is 0 */
	double		oldest_wait_ms; /* rounded to the us; -1: no request waits */
	int32		leaks_suspected;	/* connections suspected of leaking now */
	uint64		conns_created_60s;	/* connections established in the last 60 complete s */

	uint64		counters[DBPOOL_NUM_COUNTERS];
	uint64		timeouts;		/* acquire and query timeouts */
	DbpoolRateFigures rates[DBPOOL_NUM_RATE_WINDOWS];
	DbpoolLatencyFigures acquire;
	DbpoolLatencyFigures query;

	/* the latest health check (health.c); health.at 0: none yet */
	DbpoolHealthResult health;
	double		health_latency_ms;	/* rounded to the us; -1: unknown */
} DbpoolPoolFigures;

/* A connection's row; the texts in the database encoding, NULL when there is none. */
typedef struct DbpoolConnFigures
{
	uint64		conn_id;
	const char *state;			/* its SQL name */
	int32		client_pid;		/* 0: no session is served */
	int32		remote_pid;		/* 0: not connected yet */
	TimestampTz created_at;
	TimestampTz state_since;
	double		active_seconds; /* serving requests, the current one included */
	uint64		queries_served;
	const char *last_query;		/* or DBPOOL_INSUFFICIENT_PRIVILEGE */
	const char *last_error;		/* or DBPOOL_INSUFFICIENT_PRIVILEGE */
	bool		suspected_leak; /* busy with one request past leak_threshold_ms */
	const char *application_name;	/* the served client's (NULL: none, or gone) */
	const char *client_query;	/* its local query, or DBPOOL_INSUFFICIENT_PRIVILEGE */
} DbpoolConnFigures;

/* the figures */
extern void DbpoolComputePoolFigures(const DbpoolPoolSlot *slot, const DbpoolPoolStats *s,
									 TimestampTz now, DbpoolPoolFigures *f);
extern void DbpoolReadPoolFigures(const DbpoolPoolSlot *slot, DbpoolPoolFigures *f);
extern void DbpoolComputeConnFigures(const DbpoolConnEntry *e, TimestampTz now,
									 DbpoolConnFigures *f);
extern DbpoolConnEntry *DbpoolConnEntryIn(DbpoolConnEntry *entries, int i);
extern void DbpoolSlotStats(const DbpoolPoolSlot *slot, DbpoolPoolStats *copy);

/* their parts */
typedef struct DbpoolWindowFigures
{
	uint64		acquire[DBPOOL_HIST_BUCKETS];
	uint64		query[DBPOOL_HIST_BUCKETS];
	uint64		acquire_n;
	uint64		query_n;
} DbpoolWindowFigures;

extern void DbpoolWindowSum(const DbpoolPoolStats *s, TimestampTz now, DbpoolWindowFigures *w);
extern double DbpoolHistPercentile(const uint64 *count, uint64 n, double p);
extern void DbpoolRates(const DbpoolPoolStats *s, TimestampTz now, int secs,
						double *qps, double *errors_per_sec);
extern uint64 DbpoolConnsCreated(const DbpoolPoolStats *s, TimestampTz now, int secs);
extern double DbpoolRoundMs(double ms);

/* who sees what, and names */
extern bool DbpoolMaySeeText(Oid role);
extern const char *DbpoolShownText(const char *utf8, Oid role);
extern const char *DbpoolConnStateName(DbpoolConnShownState state);
extern const char *DbpoolPoolStateName(DbpoolPoolState state);
extern const char *DbpoolHealthKindName(DbpoolHealthKind kind);
extern double DbpoolHealthLatencyMs(const DbpoolHealthResult *r);
extern const char *DbpoolHealthShownError(const DbpoolHealthResult *r, Oid owner);

/* the overall health of pools, as dbpool_health() and GET /health report it (figures.c) */
typedef enum DbpoolHealthStatus
{
	DBPOOL_HEALTHY,
	DBPOOL_DEGRADED,
	DBPOOL_UNHEALTHY
} DbpoolHealthStatus;

extern DbpoolHealthStatus DbpoolHealthStatusOf(int unhealthy, int total);
extern const char *DbpoolHealthStatusName(DbpoolHealthStatus status);

/* the endpoint's texts (prometheus.c), for metrics_http.c and dbpool_prometheus() */
extern void DbpoolPrometheusRender(StringInfo buf, const char *prefix);
extern DbpoolHealthStatus DbpoolHealthSummary(StringInfo buf);

/* the pieces of the jsonb documents (json_out.c) */
extern void DbpoolJsonKey(StringInfo buf, const char *k);
extern void DbpoolJsonString(StringInfo buf, const char *s);
extern void DbpoolJsonTime(StringInfo buf, TimestampTz t);
extern void DbpoolJsonUtc(StringInfo buf, TimestampTz t);
extern void DbpoolJsonMs(StringInfo buf, double ms);

/* helpers of the SQL functions (views.c) */
extern DbpoolPoolSlot *DbpoolFindSlot(DbpoolPoolSlot *slots, int n, const char *name,
									  bool dropping);

#endif							/* DBPOOL_FIGURES_H */
