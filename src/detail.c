/*
 * detail.c
 *		dbpool_detailed_metrics(): everything dbpool knows of a pool as one
 *		jsonb document: settings (password masked), gauges, counters, rates,
 *		percentiles, the histogram buckets and the connections.  It renders
 *		the figures of figures.c.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "figures.h"
#include "stats.h"

PG_FUNCTION_INFO_V1(dbpool_detailed_metrics);

/* The keys of the DbpoolPercentile values. */
static const char *const percentile_keys[DBPOOL_NUM_PERCENTILES] = {"p50_ms", "p95_ms", "p99_ms"};

/* Append the non-empty buckets of a histogram: [{lower_ms, upper_ms, count}, ...]. */
static void
json_buckets(StringInfo buf, const uint64 *count)
{
	bool		first = true;
	int			b;

	appendStringInfoChar(buf, '[');
	for (b = 0; b < DBPOOL_HIST_BUCKETS; b++)
	{
		if (count[b] == 0)
			continue;
		if (!first)
			appendStringInfoChar(buf, ',');
		first = false;
		appendStringInfo(buf, "{\"lower_ms\":%.3f,\"upper_ms\":",
						 b == 0 ? 0.0 : DbpoolHistBounds[b - 1] / 1000.0);
		if (b < DBPOOL_HIST_BOUNDS)
			appendStringInfo(buf, "%.3f", DbpoolHistBounds[b] / 1000.0);
		else
			appendStringInfoString(buf, "null");
		appendStringInfo(buf, ",\"count\":" UINT64_FORMAT "}", count[b]);
	}
	appendStringInfoChar(buf, ']');
}

/* Append one latency: percentiles over the window, then both histograms. */
static void
json_latency(StringInfo buf, const DbpoolLatencyFigures *l)
{
	int			i;

	appendStringInfo(buf, "{\"last_60s\":{\"count\":" UINT64_FORMAT, l->window_n);
	for (i = 0; i < DBPOOL_NUM_PERCENTILES; i++)
	{
		appendStringInfo(buf, ",\"%s\":", percentile_keys[i]);
		DbpoolJsonMs(buf, l->window_ms[i]);
	}
	appendStringInfoString(buf, ",\"buckets\":");
	json_buckets(buf, l->window);
	appendStringInfo(buf, "},\"cumulative\":{\"count\":" UINT64_FORMAT ",\"sum_ms\":%.3f",
					 l->cumulative_n, l->cumulative_sum_ms);
	appendStringInfoString(buf, ",\"buckets\":");
	json_buckets(buf, l->cumulative);
	appendStringInfoString(buf, "}}");
}

/* Append the settings of a pool, conninfo with its password masked. */
static void
json_settings(StringInfo buf, DbpoolPoolSlot *p)
{
	char	   *owner = GetUserNameFromId(p->owner, true);
	int			i;

	appendStringInfoChar(buf, '{');
	DbpoolJsonKey(buf, "conninfo");
	escape_json(buf, DbpoolTextShow(p->conninfo));
	appendStringInfoChar(buf, ',');
	DbpoolJsonKey(buf, "backup_conninfo");
	if (p->backup_conninfo[0])
		escape_json(buf, DbpoolTextShow(p->backup_conninfo));
	else
		appendStringInfoString(buf, "null");
	for (i = 0; i < DbpoolNumSettings; i++)
	{
		const DbpoolSettingDesc *d = &DbpoolSettingDescs[i];

		appendStringInfoChar(buf, ',');
		DbpoolJsonKey(buf, d->name);
		if (d->type == DBPOOL_SETTING_INT)
			appendStringInfo(buf, "%d", *DbpoolSettingInt(&p->settings, d));
		else if (d->type == DBPOOL_SETTING_REAL)
			appendStringInfoString(buf, float8out_internal(*DbpoolSettingReal(&p->settings, d)));
		else if (d->type == DBPOOL_SETTING_BOOL)
			appendStringInfoString(buf, *DbpoolSettingBool(&p->settings, d) ? "true" : "false");
		else if (DbpoolSettingText(&p->settings, d)[0] == '\0')
			appendStringInfoString(buf, "null");
		else
			escape_json(buf, DbpoolTextShow(DbpoolSettingText(&p->settings, d)));
	}
	appendStringInfoChar(buf, ',');
	DbpoolJsonKey(buf, "owner");
	if (owner)
		escape_json(buf, owner);
	else
		appendStringInfoString(buf, "null");
	appendStringInfoString(buf, ",\"created_at\":");
	DbpoolJsonTime(buf, p->created_at);
	appendStringInfoChar(buf, '}');
}

/* Append the pool's connections. */
static void
json_connections(StringInfo buf, DbpoolPoolSlot *p, DbpoolConnEntry *entries, int n,
				 TimestampTz now)
{
	bool		first = true;
	int			i;

	appendStringInfoChar(buf, '[');
	for (i = 0; i < n; i++)
	{
		DbpoolConnEntry *e = DbpoolConnEntryIn(entries, i);
		DbpoolConnFigures f;

		if (e->pool_slot != p->index || e->pool_id != p->pool_id)
			continue;
		DbpoolComputeConnFigures(e, now, &f);
		if (!first)
			appendStringInfoChar(buf, ',');
		first = false;
		appendStringInfo(buf, "{\"conn_id\":" UINT64_FORMAT ",\"state\":\"%s\"",
						 f.conn_id, f.state);
		if (f.client_pid)
			appendStringInfo(buf, ",\"client_pid\":%d", f.client_pid);
		else
			appendStringInfoString(buf, ",\"client_pid\":null");
		if (f.remote_pid)
			appendStringInfo(buf, ",\"remote_pid\":%d", f.remote_pid);
		else
			appendStringInfoString(buf, ",\"remote_pid\":null");
		appendStringInfoString(buf, ",\"created_at\":");
		DbpoolJsonTime(buf, f.created_at);
		appendStringInfoString(buf, ",\"state_since\":");
		DbpoolJsonTime(buf, f.state_since);
		appendStringInfo(buf, ",\"active_seconds\":%.6f,\"queries_served\":" UINT64_FORMAT,
						 f.active_seconds, f.queries_served);
		appendStringInfoString(buf, ",\"last_query\":");
		DbpoolJsonString(buf, f.last_query);
		appendStringInfoString(buf, ",\"last_error\":");
		DbpoolJsonString(buf, f.last_error);
		appendStringInfoString(buf, ",\"application_name\":");
		DbpoolJsonString(buf, f.application_name);
		appendStringInfoString(buf, ",\"client_query\":");
		DbpoolJsonString(buf, f.client_query);
		appendStringInfo(buf, ",\"suspected_leak\":%s", f.suspected_leak ? "true" : "false");
		appendStringInfoChar(buf, '}');
	}
	appendStringInfoChar(buf, ']');
}

/* Append one pool's document. */
static void
json_pool(StringInfo buf, DbpoolPoolSlot *p, DbpoolConnEntry *entries, int nentries)
{
	DbpoolPoolFigures *f = palloc(sizeof(DbpoolPoolFigures));
	int			i;

	DbpoolReadPoolFigures(p, f);

	appendStringInfoChar(buf, '{');
	DbpoolJsonKey(buf, "pool");
	escape_json(buf, f->name);
	appendStringInfo(buf, ",\"state\":\"%s\",\"target\":\"%s\",\"stats_reset\":",
					 DbpoolPoolStateName(f->state), p->on_backup ? "backup" : "primary");
	DbpoolJsonTime(buf, f->stats_reset);
	appendStringInfoString(buf, ",\"settings\":");
	json_settings(buf, p);

	appendStringInfo(buf, ",\"gauges\":{\"total_connections\":%d,\"active_connections\":%d,"
					 "\"idle_connections\":%d,\"connecting_connections\":%d,\"max_size\":%d,"
					 "\"connection_utilization\":%.6f,\"waiting_queue_length\":%d,"
					 "\"leaks_suspected\":%d,\"oldest_wait_ms\":",
					 f->total, f->active, f->idle, f->connecting, f->max_size,
					 f->utilization, f->waiting, f->leaks_suspected);
	DbpoolJsonMs(buf, f->oldest_wait_ms);
	appendStringInfoString(buf, "},\"counters\":{");
	for (i = 0; i < DBPOOL_NUM_COUNTERS; i++)
		appendStringInfo(buf, "%s\"%s\":" UINT64_FORMAT, i ? "," : "",
						 DbpoolCounterNames[i], f->counters[i]);
	appendStringInfoString(buf, "},\"rates\":{");
	for (i = 0; i < DBPOOL_NUM_RATE_WINDOWS; i++)
	{
		const DbpoolRateFigures *r = &f->rates[i];

		appendStringInfo(buf, "%s\"%ds\":{\"queries_per_second\":%.3f,\"errors_per_second\":%.3f,"
						 "\"error_rate\":%.6f}",
						 i ? "," : "", DbpoolRateWindowSecs[i], r->queries_per_second,
						 r->errors_per_second, r->error_rate);
	}
	appendStringInfoString(buf, "},\"acquire_latency\":");
	json_latency(buf, &f->acquire);
	appendStringInfoString(buf, ",\"query_latency\":");
	json_latency(buf, &f->query);
	appendStringInfoString(buf, ",\"connections\":");
	json_connections(buf, p, entries, nentries, f->now);
	appendStringInfoChar(buf, '}');
	pfree(f);
}

/*
 * dbpool_detailed_metrics(pool DEFAULT NULL): one pool's document, or with
 * NULL an object of every pool's, keyed by name.  A pool being dropped is
 * shown while its name is not in use again.
 */
Datum
dbpool_detailed_metrics(PG_FUNCTION_ARGS)
{
	DbpoolPoolSlot *slots;
	DbpoolConnEntry *entries;
	StringInfoData buf;
	int			nslots,
				nentries,
				i;

	DbpoolCheckLoaded();
	DbpoolWaitForCommittedConfig();
	slots = DbpoolRegistryCopy(&nslots);
	nentries = DbpoolConnSnapshot(&entries);
	initStringInfo(&buf);
	if (!PG_ARGISNULL(0))
		json_pool(&buf, DbpoolFindSlot(slots, nslots, text_to_cstring(PG_GETARG_TEXT_PP(0)), true),
				  entries, nentries);
	else
	{
		bool		first = true;

		appendStringInfoChar(&buf, '{');
		for (i = 0; i < nslots; i++)
		{
			/* a pool being dropped, unless its name is in use again */
			if (DbpoolFindSlot(slots, nslots, slots[i].name, true) != &slots[i])
				continue;
			if (!first)
				appendStringInfoChar(&buf, ',');
			first = false;
			DbpoolJsonKey(&buf, slots[i].name);
			json_pool(&buf, &slots[i], entries, nentries);
		}
		appendStringInfoChar(&buf, '}');
	}
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
