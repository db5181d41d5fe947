/*
 * prometheus.c
 *		The texts of the metrics endpoint, computed from the pools' figures
 *		(figures.c): the Prometheus exposition (text format 0.0.4), shared by
 *		the HTTP listener (metrics_http.c) and dbpool_prometheus(), and the
 *		health summary of GET /health.
 *
 * It runs in client backends and in the "dbpool metrics" process, which has
 * no database: so nothing here reads a catalog or depends on the current
 * user.  It reads the registry (a copy under the LWLock in shared mode) and
 * the statistics through their snapshot functions, never the worker.
 *
 * Every series belongs to one family of families[]: its name after the
 * prefix, its type, its help text and the function that writes its samples.
 * Adding a series is one row there and, unless an existing writer fits, one
 * writer function.
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "alerts.h"
#include "dbpool.h"
#include "figures.h"
#include "stats.h"

PG_FUNCTION_INFO_V1(dbpool_prometheus);

/*
 * The `le` bounds of the exposed histograms: indexes into DbpoolHistBounds
 * (microseconds), the fine edges nearest 0.5, 1, 2.5, 5, 10, 25, 50, 100,
 * 250, 500 ms and 1, 2.5, 5, 10, 30, 60 s.  A fine bucket holds durations
 * below its bound, so a sample of exactly a bound's microsecond is counted
 * in the next `le`; every other sample is counted exactly.
 */
static const int le_edges[] = {25, 32, 42, 49, 56, 66, 73, 81, 90, 98, 105, 114, 122, 129, 140, 148};

#define NUM_LE_EDGES ((int) lengthof(le_edges))

/* What a family's writer gets: the pools' figures (one per shown pool) and the prefix. */
typedef struct PromInput
{
	const char *prefix;
	DbpoolPoolFigures *pools;
	int			npools;
	bool		worker_up;
} PromInput;

typedef void (*PromWriter) (StringInfo buf, const char *name, const PromInput *in, int arg);

/* One metric family: name after "<prefix>_", type, help, writer and its argument. */
typedef struct PromFamily
{
	const char *name;
	const char *type;
	const char *help;
	PromWriter	write;
	int			arg;
} PromFamily;

/* ---------- writing samples ---------- */

/* Append a label value, escaped as the text format asks (backslash, quote, newline). */
static void
append_label_value(StringInfo buf, const char *v)
{
	const char *p;

	for (p = v; *p; p++)
	{
		if (*p == '\\')
			appendStringInfoString(buf, "\\\\");
		else if (*p == '"')
			appendStringInfoString(buf, "\\\"");
		else if (*p == '\n')
			appendStringInfoString(buf, "\\n");
		else
			appendStringInfoChar(buf, *p);
	}
}

/* Append a sample value: integers as such, NaN and infinities by their names. */
static void
append_value(StringInfo buf, double v)
{
	if (isnan(v))
		appendStringInfoString(buf, "NaN");
	else if (isinf(v))
		appendStringInfoString(buf, v > 0 ? "+Inf" : "-Inf");
	else if (v == rint(v) && fabs(v) < 1e15)
		appendStringInfo(buf, "%.0f", v);
	else
		appendStringInfo(buf, "%.15g", v);
}

/*
 * Append one sample: name, the labels of pool (NULL: none) and up to one more
 * label (NULL: none), then the value.
 */
static void
sample(StringInfo buf, const char *name, const char *suffix, const char *pool,
	   const char *key, const char *val, double v)
{
	appendStringInfoString(buf, name);
	if (suffix)
		appendStringInfoString(buf, suffix);
	if (pool || key)
	{
		appendStringInfoChar(buf, '{');
		if (pool)
		{
			appendStringInfoString(buf, "pool=\"");
			append_label_value(buf, pool);
			appendStringInfoChar(buf, '"');
		}
		if (key)
		{
			appendStringInfo(buf, "%s%s=\"", pool ? "," : "", key);
			append_label_value(buf, val);
			appendStringInfoChar(buf, '"');
		}
		appendStringInfoChar(buf, '}');
	}
	appendStringInfoChar(buf, ' ');
	append_value(buf, v);
	appendStringInfoChar(buf, '\n');
}

/* ---------- the families' writers ---------- */

/* The per-pool gauges, by index (arg). */
enum
{
	G_UP, G_MAX, G_WAITING, G_UTILIZATION, G_OLDEST_WAIT, G_ON_BACKUP, G_STATS_RESET,
	G_LEAKS
};

/* A pool counts as up unless it is down or its latest health check failed. */
static bool
pool_up(const DbpoolPoolFigures *f)
{
	return f->state != DBPOOL_POOL_DOWN && !(f->health.at != 0 && !f->health.ok);
}

/* A timestamp as Unix time in seconds. */
static double
unix_seconds(TimestampTz t)
{
	return t / (double) USECS_PER_SEC +
		(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * (double) SECS_PER_DAY;
}

/* One gauge per pool. */
static void
write_pool_gauge(StringInfo buf, const char *name, const PromInput *in, int arg)
{
	int			i;

	for (i = 0; i < in->npools; i++)
	{
		const DbpoolPoolFigures *f = &in->pools[i];
		double		v = 0;

		switch (arg)
		{
			case G_UP:
				v = pool_up(f) ? 1 : 0;
				break;
			case G_MAX:
				v = f->max_size;
				break;
			case G_WAITING:
				v = f->waiting;
				break;
			case G_UTILIZATION:
				v = f->utilization;
				break;
			case G_OLDEST_WAIT:
				v = f->oldest_wait_ms < 0 ? 0 : f->oldest_wait_ms / 1000.0;
				break;
			case G_ON_BACKUP:
				v = f->on_backup ? 1 : 0;
				break;
			case G_STATS_RESET:
				v = f->stats_reset ? unix_seconds(f->stats_reset) : 0;
				break;
			case G_LEAKS:
				v = f->leaks_suspected;
				break;
		}
		sample(buf, name, NULL, f->name, NULL, NULL, v);
	}
}

/* The pool's state: one series per state, 1 for the current one. */
static void
write_pool_state(StringInfo buf, const char *name, const PromInput *in, int arg)
{
	static const DbpoolPoolState states[] = {
		DBPOOL_POOL_CONNECTING, DBPOOL_POOL_OK, DBPOOL_POOL_DEGRADED, DBPOOL_POOL_DOWN,
		DBPOOL_POOL_DROPPING
	};
	int			i,
				s;

	for (i = 0; i < in->npools; i++)
		for (s = 0; s < (int) lengthof(states); s++)
			sample(buf, name, NULL, in->pools[i].name, "state",
				   DbpoolPoolStateName(states[s]), in->pools[i].state == states[s] ? 1 : 0);
}

/* Connections by state (they add up to the pool's total). */
static void
write_connections(StringInfo buf, const char *name, const PromInput *in, int arg)
{
	int			i;

	for (i = 0; i < in->npools; i++)
	{
		const DbpoolPoolFigures *f = &in->pools[i];

		sample(buf, name, NULL, f->name, "state", "active", f->active);
		sample(buf, name, NULL, f->name, "state", "idle", f->idle);
		sample(buf, name, NULL, f->name, "state", "connecting", f->connecting);
	}
}

/* One counter per pool: DbpoolCounterNames[arg]. */
static void
write_counter(StringInfo buf, const char *name, const PromInput *in, int arg)
{
	int			i;

	for (i = 0; i < in->npools; i++)
		sample(buf, name, NULL, in->pools[i].name, NULL, NULL,
			   (double) in->pools[i].counters[arg]);
}

/* A latency histogram (arg 0: query, 1: acquire), in seconds, from the cumulative buckets. */
static void
write_histogram(StringInfo buf, const char *name, const PromInput *in, int arg)
{
	int			i,
				e;

	for (i = 0; i < in->npools; i++)
	{
		const DbpoolPoolFigures *f = &in->pools[i];
		const DbpoolLatencyFigures *l = arg == 0 ? &f->query : &f->acquire;
		uint64		cum = 0;
		int			b = 0;

		for (e = 0; e < NUM_LE_EDGES; e++)
		{
			char		le[32];
			int			len;

			/* fine buckets 0 .. le_edges[e] hold the durations below its bound */
			for (; b <= le_edges[e]; b++)
				cum += l->cumulative[b];
			/* the bound in seconds, exactly: 6 decimals, trailing zeros cut */
			len = snprintf(le, sizeof(le), "%.6f", DbpoolHistBounds[le_edges[e]] / 1e6);
			while (len > 1 && le[len - 1] == '0')
				le[--len] = '\0';
			if (le[len - 1] == '.')
				le[--len] = '\0';
			sample(buf, name, "_bucket", f->name, "le", le, (double) cum);
		}
		sample(buf, name, "_bucket", f->name, "le", "+Inf", (double) l->cumulative_n);
		sample(buf, name, "_sum", f->name, NULL, NULL, l->cumulative_sum_ms / 1000.0);
		sample(buf, name, "_count", f->name, NULL, NULL, (double) l->cumulative_n);
	}
}

/*
 * The latest health check of each pool that had one (arg 0: the health
 * query's duration, only when it ran; 1: 1 if it passed; 2: when it ended).
 */
static void
write_health(StringInfo buf, const char *name, const PromInput *in, int arg)
{
	int			i;

	for (i = 0; i < in->npools; i++)
	{
		const DbpoolHealthResult *h = &in->pools[i].health;

		if (h->at == 0 || (arg == 0 && h->latency_us < 0))
			continue;
		sample(buf, name, NULL, in->pools[i].name, NULL, NULL,
			   arg == 0 ? h->latency_us / 1e6 : arg == 1 ? (h->ok ? 1 : 0) : unix_seconds(h->at));
	}
}

/*
 * The firing alerts of each rule with a live alert (pending or firing), by
 * rule and severity: how many pools it fires for.  Rule names are checked
 * names ([A-Za-z0-9_.-]), but escaped all the same.
 */
static void
write_alerts_firing(StringInfo buf, const char *name, const PromInput *in, int arg)
{
	DbpoolAlertShared *a = palloc(sizeof(DbpoolAlertShared));
	int			i,
				j;

	DbpoolAlertsSnapshot(a);
	for (i = 0; i < a->nlive; i++)
	{
		const DbpoolAlert *x = &a->live[i];
		int			firing = 0;
		bool		seen = false;

		for (j = 0; j < i && !seen; j++)
			seen = strcmp(a->live[j].rule, x->rule) == 0 && a->live[j].severity == x->severity;
		if (seen)
			continue;			/* counted with its first alert */
		for (j = i; j < a->nlive; j++)
			if (strcmp(a->live[j].rule, x->rule) == 0 && a->live[j].severity == x->severity &&
				a->live[j].state == DBPOOL_ALERT_FIRING)
				firing++;
		appendStringInfo(buf, "%s{alertname=\"", name);
		append_label_value(buf, x->rule);
		appendStringInfo(buf, "\",severity=\"%s\"} ", DbpoolAlertSeverityNames[x->severity]);
		append_value(buf, firing);
		appendStringInfoChar(buf, '\n');
	}
	pfree(a);
}

/* Whether the dbpool worker serves (arg unused). */
static void
write_worker_up(StringInfo buf, const char *name, const PromInput *in, int arg)
{
	sample(buf, name, NULL, NULL, NULL, NULL, in->worker_up ? 1 : 0);
}

/* The build: dbpool's and PostgreSQL's versions. */
static void
write_build_info(StringInfo buf, const char *name, const PromInput *in, int arg)
{
	appendStringInfo(buf, "%s{version=\"%s\",pg_version=\"%s\"} 1\n", name, DBPOOL_VERSION,
					 PG_VERSION);
}

/*
 * Every family but the counters (written from DbpoolCounterNames after
 * these).
 */
static const PromFamily families[] = {
	{"build_info", "gauge", "dbpool's version and PostgreSQL's; always 1.", write_build_info, 0},
	{"worker_up", "gauge", "1 while the dbpool worker serves, else 0.", write_worker_up, 0},
	{"pool_up", "gauge", "1 unless the pool is down or its latest health check failed.",
	write_pool_gauge, G_UP},
	{"pool_state", "gauge", "The pool's state: 1 for the current one, 0 for the others.",
	write_pool_state, 0},
	{"pool_on_backup", "gauge", "1 while the pool serves from its backup target.",
	write_pool_gauge, G_ON_BACKUP},
	{"connections", "gauge", "Connections of the pool by state.", write_connections, 0},
	{"connections_max", "gauge", "The pool's max_size.", write_pool_gauge, G_MAX},
	{"waiting_requests", "gauge", "Requests waiting for a connection.", write_pool_gauge,
	G_WAITING},
	{"connection_utilization", "gauge", "Active connections / max_size (0..1).",
	write_pool_gauge, G_UTILIZATION},
	{"oldest_wait_seconds", "gauge",
		"How long the oldest waiting request has waited; 0 when none waits.",
	write_pool_gauge, G_OLDEST_WAIT},
	{"stats_reset_timestamp_seconds", "gauge",
		"When the pool's counters and histograms started (Unix time).",
	write_pool_gauge, G_STATS_RESET},
	{"query_duration_seconds", "histogram",
		"Requests from sending to completion, since the pool's stats reset.",
	write_histogram, 0},
	{"acquire_duration_seconds", "histogram",
		"Time to get a connection, since the pool's stats reset.", write_histogram, 1},
	{"leaks_suspected", "gauge",
		"Connections busy with one request longer than leak_threshold_ms now.",
	write_pool_gauge, G_LEAKS},
	{"health_check_duration_seconds", "gauge",
		"The health query's duration in the pool's latest health check.", write_health, 0},
	{"health_check_success", "gauge", "1 if the pool's latest health check passed, else 0.",
	write_health, 1},
	{"health_check_timestamp_seconds", "gauge",
		"When the pool's latest health check ended (Unix time).", write_health, 2},
	{"alerts_firing", "gauge",
		"Pools a dbpool alert rule fires for, by rule and severity (rules with a live alert).",
	write_alerts_firing, 0},
};

/* Help texts of the counters, by DbpoolCounter. */
static const char *const counter_help[] = {
	"Requests that ended, however.",
	"Requests answered with an error.",
	"Requests that got no connection within acquire_timeout_ms.",
	"Requests ended by query_timeout_ms.",
	"Requests their session abandoned (cancel, timeout, exit).",
	"Executions slower than slow_query_ms.",
	"Rows retrieved or affected.",
	"Connections established.",
	"Connection attempts that failed.",
	"Connections closed by idle_timeout_ms.",
	"Connections closed by max_lifetime_ms.",
	"Connections closed broken, or because their cleanup failed.",
	"Connections closed because max_size was lowered or their slot went to another pool.",
	"Connections closed because the conninfo or owner changed.",
	"Connections closed because the pool was dropped.",
	"Connections found closed by the server while idle or before use.",
	"Requests given another connection before they were sent.",
	"Connections closed because they carried a large value.",
	"Remote cancels that could not start.",
	"Remote cancels given up on while in flight.",
	"Connections flagged as suspected leaks.",
};

StaticAssertDecl(lengthof(counter_help) == DBPOOL_NUM_COUNTERS,
				 "every counter needs a help text");

/* Append a family's HELP and TYPE lines and its samples. */
static void
write_family(StringInfo buf, const PromInput *in, const char *name, const char *type,
			 const char *help, PromWriter write, int arg)
{
	char	   *full = psprintf("%s_%s", in->prefix, name);

	appendStringInfo(buf, "# HELP %s %s\n# TYPE %s %s\n", full, help, full, type);
	write(buf, full, in, arg);
	pfree(full);
}

/* ---------- reading the pools ---------- */

/*
 * The figures of every pool shown: a pool being dropped is left out when its
 * name is in use again, so no two pools give the same labels.
 */
static DbpoolPoolFigures *
read_pools(int *npools)
{
	DbpoolPoolSlot *slots;
	DbpoolPoolFigures *figs;
	int			n,
				i;

	slots = DbpoolRegistryCopy(&n);
	figs = palloc0(sizeof(DbpoolPoolFigures) * Max(n, 1));
	*npools = 0;
	for (i = 0; i < n; i++)
	{
		if (DbpoolFindSlot(slots, n, slots[i].name, true) != &slots[i])
			continue;
		DbpoolReadPoolFigures(&slots[i], &figs[(*npools)++]);
	}
	pfree(slots);
	return figs;
}

/* Append the whole exposition, every name starting with prefix. */
void
DbpoolPrometheusRender(StringInfo buf, const char *prefix)
{
	PromInput	in;
	uint32		gen;
	PGPROC	   *proc;
	int			i;

	in.prefix = prefix;
	in.pools = read_pools(&in.npools);
	in.worker_up = DbpoolWorkerStatus(&gen, &proc) != 0;
	for (i = 0; i < (int) lengthof(families); i++)
		write_family(buf, &in, families[i].name, families[i].type, families[i].help,
					 families[i].write, families[i].arg);
	for (i = 0; i < DBPOOL_NUM_COUNTERS; i++)
	{
		char	   *name = psprintf("%s_total", DbpoolCounterNames[i]);

		write_family(buf, &in, name, "counter", counter_help[i], write_counter, i);
		pfree(name);
	}
	pfree(in.pools);
}

/* ---------- health ---------- */

/* Append the JSON list of the pools (not dropping) that are up (or not). */
static void
health_list(StringInfo buf, const DbpoolPoolFigures *figs, int n, bool up)
{
	bool		first = true;
	int			i;

	appendStringInfoChar(buf, '[');
	for (i = 0; i < n; i++)
	{
		if (figs[i].state == DBPOOL_POOL_DROPPING || pool_up(&figs[i]) != up)
			continue;
		appendStringInfoString(buf, first ? "" : ", ");
		first = false;
		if (up)
		{
			escape_json(buf, figs[i].name);
			continue;
		}
		appendStringInfoString(buf, "{\"pool\": ");
		escape_json(buf, figs[i].name);
		/* no error texts here: the endpoint has no user to check their privilege against */
		appendStringInfoString(buf, figs[i].state == DBPOOL_POOL_DOWN ?
							   ", \"error\": \"pool is down\"}" :
							   ", \"error\": \"its latest health check failed\"}");
	}
	appendStringInfoChar(buf, ']');
}

/*
 * The health of the pools, as dbpool_health() words it: healthy when no pool
 * is unhealthy (also with no pools), unhealthy when every pool is, degraded
 * otherwise.  A pool is unhealthy when it is not up (pool_up); pools
 * being dropped do not count.  Appends a JSON body to buf; returns the status.
 */
DbpoolHealthStatus
DbpoolHealthSummary(StringInfo buf)
{
	DbpoolPoolFigures *figs;
	DbpoolHealthStatus status;
	int			n,
				i,
				counted = 0,
				unhealthy = 0;

	figs = read_pools(&n);
	for (i = 0; i < n; i++)
	{
		if (figs[i].state == DBPOOL_POOL_DROPPING)
			continue;
		counted++;
		if (!pool_up(&figs[i]))
			unhealthy++;
	}
	status = DbpoolHealthStatusOf(unhealthy, counted);

	appendStringInfo(buf, "{\"status\": \"%s\", \"healthy_pools\": ",
					 DbpoolHealthStatusName(status));
	health_list(buf, figs, n, true);
	appendStringInfoString(buf, ", \"unhealthy_pools\": ");
	health_list(buf, figs, n, false);
	appendStringInfoString(buf, ", \"timestamp\": ");
	DbpoolJsonUtc(buf, GetCurrentTimestamp());	/* as dbpool_health() writes it */
	appendStringInfoString(buf, "}\n");
	pfree(figs);
	return status;
}

/* ---------- SQL ---------- */

/* dbpool_prometheus(): the exposition the endpoint serves, as text. */
Datum
dbpool_prometheus(PG_FUNCTION_ARGS)
{
	StringInfoData buf;

	DbpoolCheckLoaded();
	initStringInfo(&buf);
	DbpoolPrometheusRender(&buf, DbpoolMetricsPrefix);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(buf.data, buf.len));
}
