/*
 * health_sql.c
 *		dbpool_health() and dbpool_health(pool), in backends: ask the worker
 *		for a check of each pool (health.c runs them, and states the rules of
 *		the shared counters), wait for all of them with one deadline, and
 *		render the results as jsonb.
 *
 * Calls share checks, so that calling in a loop cannot flood the targets: a
 * pool whose latest check ended less than DBPOOL_HEALTH_FRESH_MS ago is
 * answered with it; a pool with a request in flight (health_requested >
 * health_done) is answered by that request's check; only otherwise is a new
 * check asked for.  Anyone may call both functions: they show what
 * dbpool_pools and dbpool_metrics show, error texts by the views' rule (the
 * pool owner's texts: figures.c).
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/float.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "figures.h"
#include "stats.h"

#define DBPOOL_HEALTH_FRESH_MS		1000	/* a check this recent answers without a new one */
#define DBPOOL_HEALTH_MARGIN_MS		1000	/* the wait beyond the longest health_timeout_ms */
#define DBPOOL_HEALTH_POLL_MS		10	/* the wait's steps */

PG_FUNCTION_INFO_V1(dbpool_health);
PG_FUNCTION_INFO_V1(dbpool_health_pool);

/* One pool's check, as a call sees it. */
typedef struct PoolCheck
{
	DbpoolPoolSlot *slot;		/* in the call's copy of the registry */
	uint64		target;			/* the health_done to wait for; 0: none */
	bool		answered;		/* result holds the answer */
	bool		gone;			/* dropped or replaced meanwhile: left out */
	DbpoolHealthResult result;
} PoolCheck;

/* Copy the pool's latest result and health_done; false if the pool is gone. */
static bool
read_health(DbpoolPoolSlot *slot, DbpoolPoolStats *buf, DbpoolHealthResult *r, uint64 *done)
{
	if (!DbpoolPoolStatsSnapshot(slot->index, slot->pool_id, buf))
		return false;
	*r = buf->health;
	*done = buf->health_done;
	return true;
}

/*
 * Ask for a check of c's pool unless a recent one answers it or one asked
 * for is in flight; true if the worker must look.
 */
static bool
ask(PoolCheck *c, DbpoolPoolStats *buf, TimestampTz now)
{
	pg_atomic_uint64 *requested = &DbpoolShmem->pools[c->slot->index].health_requested;
	uint64		done;
	uint64		req;

	if (!read_health(c->slot, buf, &c->result, &done))
	{
		c->gone = true;
		return false;
	}
	if (c->result.at != 0 &&
		!TimestampDifferenceExceeds(c->result.at, now, DBPOOL_HEALTH_FRESH_MS))
	{
		c->answered = true;		/* recent enough: share it */
		return false;
	}
	req = pg_atomic_read_u64(requested);
	if (req > done)
		c->target = req;		/* join the check in flight */
	else
		c->target = pg_atomic_add_fetch_u64(requested, 1);
	return true;
}

/*
 * Ask for the checks of n pools at once, then wait for all of them until one
 * deadline: the longest health_timeout_ms among them plus a margin.  A pool
 * the worker has not answered by then gets a failed result; the worker
 * going away or restarting is an error.
 */
static void
run_checks(PoolCheck *checks, int n)
{
	DbpoolPoolStats *buf = palloc(sizeof(DbpoolPoolStats));
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz deadline;
	uint32		gen,
				gen_now;
	PGPROC	   *proc;
	int			longest = 0;
	bool		ring = false;
	int			i;

	DbpoolWaitForWorker();
	(void) DbpoolWorkerStatus(&gen, &proc);
	for (i = 0; i < n; i++)
	{
		if (ask(&checks[i], buf, now))
			ring = true;
		longest = Max(longest, checks[i].slot->settings.health_timeout_ms);
	}
	if (ring)
	{
		pg_atomic_fetch_add_u64(&DbpoolShmem->health_doorbell, 1);
		DbpoolWakeWorker();
	}
	deadline = TimestampTzPlusMilliseconds(now, longest + DBPOOL_HEALTH_MARGIN_MS);
	for (;;)
	{
		int			waiting = 0;

		for (i = 0; i < n; i++)
		{
			PoolCheck  *c = &checks[i];
			DbpoolHealthResult r;
			uint64		done;

			if (c->answered || c->gone)
				continue;
			if (!read_health(c->slot, buf, &r, &done))
				c->gone = true;
			else if (done >= c->target)
			{
				c->result = r;
				c->answered = true;
			}
			else
				waiting++;
		}
		if (waiting == 0)
			break;
		if (DbpoolWorkerStatus(&gen_now, &proc) == 0 || gen_now != gen)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("the dbpool worker exited during the health check"),
					 errhint("Call dbpool_health() again once the worker has restarted.")));
		if (GetCurrentTimestamp() >= deadline)
			break;
		DbpoolBackendSleep(DBPOOL_HEALTH_POLL_MS);
	}
	for (i = 0; i < n; i++)
	{
		PoolCheck  *c = &checks[i];
		char	   *text;

		if (c->answered || c->gone)
			continue;
		/* the worker did not answer in time: a failed check, said so */
		memset(&c->result, 0, sizeof(c->result));
		c->result.at = GetCurrentTimestamp();
		c->result.kind = DBPOOL_HEALTH_ON_DEMAND;
		c->result.latency_us = -1;
		text = psprintf("the dbpool worker did not answer the health check within %d ms",
						longest + DBPOOL_HEALTH_MARGIN_MS);
		DbpoolTextStore(c->result.error, sizeof(c->result.error), text, strlen(text));
		c->answered = true;
	}
	pfree(buf);
}

/* Append a float8, or null when it is not finite. */
static void
json_float(StringInfo buf, double v)
{
	if (isfinite(v))
		appendStringInfoString(buf, float8out_internal(v));
	else
		appendStringInfoString(buf, "null");
}

/* The jsonb of a document built as text. */
static Datum
as_jsonb(StringInfo buf)
{
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf->data));
}

/* The call's copy of the registry, as of the latest committed configuration change. */
static DbpoolPoolSlot *
registry(int *n)
{
	DbpoolCheckLoaded();
	DbpoolWaitForCommittedConfig();
	return DbpoolRegistryCopy(n);
}

/*
 * dbpool_health(): a check of every pool at once.  {"status", "healthy_pools",
 * "unhealthy_pools": [{"pool", "error"}], "pools": {name: {"ok", "state",
 * "latency_ms", "checked_at", "saturated", "kind"}}, "timestamp"}; status is
 * healthy when no pool fails (or there are none), unhealthy when all do,
 * degraded otherwise.  Pools being dropped are left out.
 */
Datum
dbpool_health(PG_FUNCTION_ARGS)
{
	DbpoolPoolSlot *slots;
	PoolCheck  *checks;
	StringInfoData buf;
	int			nslots,
				n = 0,
				shown = 0,
				failed = 0,
				i;
	bool		first;

	slots = registry(&nslots);
	checks = palloc0(sizeof(PoolCheck) * Max(nslots, 1));
	for (i = 0; i < nslots; i++)
		if (slots[i].state != DBPOOL_POOL_DROPPING)
			checks[n++].slot = &slots[i];
	run_checks(checks, n);

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"healthy_pools\":[");
	first = true;
	for (i = 0; i < n; i++)
	{
		PoolCheck  *c = &checks[i];

		if (c->gone)
			continue;
		shown++;
		if (!c->result.ok)
		{
			failed++;
			continue;
		}
		if (!first)
			appendStringInfoChar(&buf, ',');
		first = false;
		escape_json(&buf, c->slot->name);
	}
	appendStringInfoString(&buf, "],\"unhealthy_pools\":[");
	first = true;
	for (i = 0; i < n; i++)
	{
		PoolCheck  *c = &checks[i];

		if (c->gone || c->result.ok)
			continue;
		if (!first)
			appendStringInfoChar(&buf, ',');
		first = false;
		appendStringInfoString(&buf, "{\"pool\":");
		escape_json(&buf, c->slot->name);
		appendStringInfoString(&buf, ",\"error\":");
		DbpoolJsonString(&buf, DbpoolHealthShownError(&c->result, c->slot->owner));
		appendStringInfoChar(&buf, '}');
	}
	appendStringInfoString(&buf, "],\"pools\":{");
	first = true;
	for (i = 0; i < n; i++)
	{
		PoolCheck  *c = &checks[i];
		DbpoolPoolState state;

		if (c->gone)
			continue;
		if (!first)
			appendStringInfoChar(&buf, ',');
		first = false;
		/* the state now (a single store, read without the lock), as the check left it */
		state = DbpoolShmem->pools[c->slot->index].state;
		DbpoolJsonKey(&buf, c->slot->name);
		appendStringInfo(&buf, "{\"ok\":%s,\"state\":\"%s\",\"latency_ms\":",
						 c->result.ok ? "true" : "false", DbpoolPoolStateName(state));
		DbpoolJsonMs(&buf, DbpoolHealthLatencyMs(&c->result));
		appendStringInfoString(&buf, ",\"checked_at\":");
		DbpoolJsonUtc(&buf, c->result.at);
		appendStringInfo(&buf, ",\"saturated\":%s,\"kind\":\"%s\"}",
						 c->result.saturated ? "true" : "false",
						 DbpoolHealthKindName(c->result.kind));
	}
	appendStringInfo(&buf, "},\"status\":\"%s\",\"timestamp\":",
					 DbpoolHealthStatusName(DbpoolHealthStatusOf(failed, shown)));
	DbpoolJsonUtc(&buf, GetCurrentTimestamp());
	appendStringInfoChar(&buf, '}');
	PG_RETURN_DATUM(as_jsonb(&buf));
}

/*
 * Append the pool's figures as dbpool_metrics has them (its columns as keys),
 * the health check's error under the text rule of a pool owned by owner.
 */
static void
json_metrics(StringInfo buf, const DbpoolPoolFigures *f, Oid owner)
{
	const DbpoolRateFigures *minute = &f->rates[DBPOOL_RATE_60S];

	appendStringInfo(buf, "{\"state\":\"%s\",\"total_connections\":%d,\"active_connections\":%d,"
					 "\"idle_connections\":%d,\"max_size\":%d,\"connection_utilization\":",
					 DbpoolPoolStateName(f->state), f->total, f->active, f->idle, f->max_size);
	json_float(buf, f->utilization);
	appendStringInfo(buf, ",\"waiting_queue_length\":%d,\"acquire_latency_p50_ms\":", f->waiting);
	DbpoolJsonMs(buf, f->acquire.window_ms[DBPOOL_P50]);
	appendStringInfoString(buf, ",\"acquire_latency_p99_ms\":");
	DbpoolJsonMs(buf, f->acquire.window_ms[DBPOOL_P99]);
	appendStringInfo(buf, ",\"queries_total\":" UINT64_FORMAT ",\"errors_total\":" UINT64_FORMAT
					 ",\"queries_per_second\":",
					 f->counters[DBPOOL_C_QUERIES], f->counters[DBPOOL_C_ERRORS]);
	json_float(buf, minute->queries_per_second);
	appendStringInfoString(buf, ",\"latency_p50_ms\":");
	DbpoolJsonMs(buf, f->query.window_ms[DBPOOL_P50]);
	appendStringInfoString(buf, ",\"latency_p95_ms\":");
	DbpoolJsonMs(buf, f->query.window_ms[DBPOOL_P95]);
	appendStringInfoString(buf, ",\"latency_p99_ms\":");
	DbpoolJsonMs(buf, f->query.window_ms[DBPOOL_P99]);
	appendStringInfoString(buf, ",\"error_rate\":");
	json_float(buf, minute->error_rate);
	appendStringInfo(buf, ",\"slow_queries_count\":" UINT64_FORMAT ",\"timeouts_total\":" UINT64_FORMAT
					 ",\"stats_reset\":",
					 f->counters[DBPOOL_C_SLOW], f->timeouts);
	DbpoolJsonUtc(buf, f->stats_reset);
	appendStringInfo(buf, ",\"connecting_connections\":%d,\"oldest_wait_ms\":", f->connecting);
	DbpoolJsonMs(buf, f->oldest_wait_ms);
	appendStringInfo(buf, ",\"cancels_total\":" UINT64_FORMAT ",\"last_health_check_at\":",
					 f->counters[DBPOOL_C_CANCELS]);
	DbpoolJsonUtc(buf, f->health.at);
	appendStringInfo(buf, ",\"last_health_check_ok\":%s,\"last_health_check_latency_ms\":",
					 f->health.at == 0 ? "null" : f->health.ok ? "true" : "false");
	DbpoolJsonMs(buf, f->health_latency_ms);
	appendStringInfoString(buf, ",\"last_health_check_error\":");
	DbpoolJsonString(buf, DbpoolHealthShownError(&f->health, owner));
	appendStringInfoChar(buf, '}');
}

/*
 * dbpool_health(pool): the deep check of one pool, after a fresh check (the
 * same sharing rule).  {"pool", "overall_healthy", "checks": {"connectivity":
 * {"ok", "error", ...}, "performance": {"ok", "latency_ms", "threshold_ms"},
 * "resource_usage": {"ok", "utilization", "threshold"}, "error_rate": {"ok",
 * "error_rate", "threshold"}}, "metrics": {...}}.  Each check passes when its
 * figure is below its threshold (the pool's health_max_* settings).
 */
Datum
dbpool_health_pool(PG_FUNCTION_ARGS)
{
	DbpoolPoolSlot *slots;
	DbpoolPoolSlot *p;
	DbpoolPoolFigures *f = palloc(sizeof(DbpoolPoolFigures));
	PoolCheck	check = {0};
	StringInfoData buf;
	char	   *name;
	double		latency_ms;
	double		error_rate;
	bool		connectivity,
				performance,
				resources,
				errors;
	int			n;

	DbpoolCheckLoaded();
	name = DbpoolTextArg(fcinfo, 0, "pool name");
	slots = registry(&n);
	p = DbpoolFindSlot(slots, n, name, false);
	check.slot = p;
	run_checks(&check, 1);
	if (check.gone)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("pool \"%s\" was dropped during its health check", p->name)));
	DbpoolReadPoolFigures(p, f);

	latency_ms = DbpoolHealthLatencyMs(&check.result);
	error_rate = f->rates[DBPOOL_RATE_60S].error_rate;
	connectivity = check.result.ok;
	performance = connectivity && latency_ms >= 0 &&
		latency_ms < p->settings.health_max_latency_ms;
	resources = f->utilization < p->settings.health_max_utilization;
	errors = error_rate < p->settings.health_max_error_rate;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"pool\":");
	escape_json(&buf, p->name);
	appendStringInfo(&buf, ",\"overall_healthy\":%s,\"checks\":{",
					 connectivity && performance && resources && errors ? "true" : "false");
	appendStringInfo(&buf, "\"connectivity\":{\"ok\":%s,\"error\":", connectivity ? "true" : "false");
	DbpoolJsonString(&buf, DbpoolHealthShownError(&check.result, p->owner));
	appendStringInfoString(&buf, ",\"checked_at\":");
	DbpoolJsonUtc(&buf, check.result.at);
	appendStringInfo(&buf, ",\"saturated\":%s,\"kind\":\"%s\"}",
					 check.result.saturated ? "true" : "false",
					 DbpoolHealthKindName(check.result.kind));
	appendStringInfo(&buf, ",\"performance\":{\"ok\":%s,\"latency_ms\":",
					 performance ? "true" : "false");
	DbpoolJsonMs(&buf, latency_ms);
	appendStringInfo(&buf, ",\"threshold_ms\":%d}", p->settings.health_max_latency_ms);
	appendStringInfo(&buf, ",\"resource_usage\":{\"ok\":%s,\"utilization\":",
					 resources ? "true" : "false");
	json_float(&buf, f->utilization);
	appendStringInfoString(&buf, ",\"threshold\":");
	json_float(&buf, p->settings.health_max_utilization);
	appendStringInfo(&buf, "},\"error_rate\":{\"ok\":%s,\"error_rate\":", errors ? "true" : "false");
	json_float(&buf, error_rate);
	appendStringInfoString(&buf, ",\"threshold\":");
	json_float(&buf, p->settings.health_max_error_rate);
	appendStringInfoString(&buf, "}},\"metrics\":");
	json_metrics(&buf, f, p->owner);
	appendStringInfoChar(&buf, '}');
	PG_RETURN_DATUM(as_jsonb(&buf));
}
