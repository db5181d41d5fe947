/*
 * detail.c
 *		dbpool_detailed_metrics(): everything dbpool knows of a pool as one
 *		jsonb document: settings (password masked), gauges, counters, rates,
 *		percentiles, the histogram buckets and the connections.
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "figures.h"
#include "stats.h"

PG_FUNCTION_INFO_V1(dbpool_detailed_metrics);

/* Append a JSON string key followed by a colon. */
static void
key(StringInfo buf, const char *k)
{
	escape_json(buf, k);
	appendStringInfoChar(buf, ':');
}

/* Append a UTF8 text as a JSON string in the database encoding. */
static void
json_text(StringInfo buf, const char *utf8)
{
	escape_json(buf, pg_any_to_server(utf8, strlen(utf8), PG_UTF8));
}

/* Append a timestamp as a JSON string, or null for 0. */
static void
json_time(StringInfo buf, TimestampTz t)
{
	if (t == 0)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, timestamptz_to_str(t));
}

/* Append a latency in ms, or null when there is no sample (-1). */
static void
json_ms(StringInfo buf, double ms)
{
	if (ms < 0)
		appendStringInfoString(buf, "null");
	else
		appendStringInfo(buf, "%.3f", DbpoolRoundMs(ms));
}

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
json_latency(StringInfo buf, const DbpoolHist *cumulative, const uint64 *window, uint64 window_n)
{
	uint64		n = 0;
	int			b;

	for (b = 0; b < DBPOOL_HIST_BUCKETS; b++)
		n += cumulative->count[b];
	appendStringInfo(buf, "{\"last_60s\":{\"count\":" UINT64_FORMAT, window_n);
	appendStringInfoString(buf, ",\"p50_ms\":");
	json_ms(buf, DbpoolHistPercentile(window, window_n, 0.50));
	appendStringInfoString(buf, ",\"p95_ms\":");
	json_ms(buf, DbpoolHistPercentile(window, window_n, 0.95));
	appendStringInfoString(buf, ",\"p99_ms\":");
	json_ms(buf, DbpoolHistPercentile(window, window_n, 0.99));
	appendStringInfoString(buf, ",\"buckets\":");
	json_buckets(buf, window);
	appendStringInfo(buf, "},\"cumulative\":{\"count\":" UINT64_FORMAT ",\"sum_ms\":%.3f",
					 n, cumulative->sum_us / 1000.0);
	appendStringInfoString(buf, ",\"buckets\":");
	json_buckets(buf, cumulative->count);
	appendStringInfoString(buf, "}}");
}

/* Append the settings of a pool, conninfo with its password masked. */
static void
json_settings(StringInfo buf, DbpoolPoolSlot *p)
{
	char	   *owner = GetUserNameFromId(p->owner, true);
	int			i;

	appendStringInfoChar(buf, '{');
	key(buf, "conninfo");
	escape_json(buf, p->conninfo);
	for (i = 0; i < DbpoolNumSettings; i++)
	{
		const DbpoolSettingDesc *d = &DbpoolSettingDescs[i];

		appendStringInfoChar(buf, ',');
		key(buf, d->name);
		if (d->type == DBPOOL_SETTING_INT)
			appendStringInfo(buf, "%d", *DbpoolSettingInt(&p->settings, d));
		else if (DbpoolSettingText(&p->settings, d)[0] == '\0')
			appendStringInfoString(buf, "null");
		else
			escape_json(buf, DbpoolSettingText(&p->settings, d));
	}
	appendStringInfoChar(buf, ',');
	key(buf, "owner");
	if (owner)
		escape_json(buf, owner);
	else
		appendStringInfoString(buf, "null");
	appendStringInfoString(buf, ",\"created_at\":");
	json_time(buf, p->created_at);
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
		DbpoolConnEntry *e = (DbpoolConnEntry *) ((char *) entries +
												  DbpoolShmem->conn_entry_stride * i);
		bool		may_see = DbpoolMaySeeText(e->last_role);
		int64		active_us = e->active_us;

		if (e->pool_slot != p->index || e->pool_id != p->pool_id)
			continue;
		if (e->state == DBPOOL_CONN_ACTIVE)
			active_us += Max(now - e->state_since, 0);
		if (!first)
			appendStringInfoChar(buf, ',');
		first = false;
		appendStringInfo(buf, "{\"conn_id\":" UINT64_FORMAT ",\"state\":\"%s\"",
						 e->conn_id, DbpoolConnStateName(e->state));
		if (e->client_pid)
			appendStringInfo(buf, ",\"client_pid\":%d", e->client_pid);
		else
			appendStringInfoString(buf, ",\"client_pid\":null");
		if (e->remote_pid)
			appendStringInfo(buf, ",\"remote_pid\":%d", e->remote_pid);
		else
			appendStringInfoString(buf, ",\"remote_pid\":null");
		appendStringInfoString(buf, ",\"created_at\":");
		json_time(buf, e->created_at);
		appendStringInfoString(buf, ",\"state_since\":");
		json_time(buf, e->state_since);
		appendStringInfo(buf, ",\"active_seconds\":%.6f,\"queries_served\":" UINT64_FORMAT,
						 active_us / 1000000.0, e->queries_served);
		appendStringInfoString(buf, ",\"last_query\":");
		if (e->last_query[0] == '\0')
			appendStringInfoString(buf, "null");
		else if (may_see)
			json_text(buf, e->last_query);
		else
			escape_json(buf, DBPOOL_INSUFFICIENT_PRIVILEGE);
		appendStringInfoString(buf, ",\"last_error\":");
		if (e->last_error[0] == '\0')
			appendStringInfoString(buf, "null");
		else if (DbpoolMaySeeText(e->last_error_role))
			json_text(buf, e->last_error);
		else
			escape_json(buf, DBPOOL_INSUFFICIENT_PRIVILEGE);
		appendStringInfoChar(buf, '}');
	}
	appendStringInfoChar(buf, ']');
}

/* Append one pool's document. */
static void
json_pool(StringInfo buf, DbpoolPoolSlot *p, DbpoolConnEntry *entries, int nentries)
{
	DbpoolPoolStats *s = palloc(sizeof(DbpoolPoolStats));
	DbpoolWindowFigures *w = palloc(sizeof(DbpoolWindowFigures));
	static const int secs[] = {1, 10, 60};
	TimestampTz now;
	int			i;

	DbpoolSlotStats(p, s);
	now = GetCurrentTimestamp();
	DbpoolWindowSum(s, now, w);

	appendStringInfoChar(buf, '{');
	key(buf, "pool");
	escape_json(buf, p->name);
	appendStringInfo(buf, ",\"state\":\"%s\",\"stats_reset\":", DbpoolPoolStateName(p->state));
	json_time(buf, s->stats_reset);
	appendStringInfoString(buf, ",\"settings\":");
	json_settings(buf, p);

	appendStringInfo(buf, ",\"gauges\":{\"total_connections\":%d,\"active_connections\":%d,"
					 "\"idle_connections\":%d,\"connecting_connections\":%d,\"max_size\":%d,"
					 "\"connection_utilization\":%.6f,\"waiting_queue_length\":%d,\"oldest_wait_ms\":",
					 s->total, s->active, s->idle, s->connecting, p->settings.max_size,
					 p->settings.max_size > 0 ? (double) s->active / p->settings.max_size : 0,
					 s->waiting);
	json_ms(buf, s->oldest_wait_since ? Max(now - s->oldest_wait_since, 0) / 1000.0 : -1);
	appendStringInfoString(buf, "},\"counters\":{");
	for (i = 0; i < DBPOOL_NUM_COUNTERS; i++)
		appendStringInfo(buf, "%s\"%s\":" UINT64_FORMAT, i ? "," : "",
						 DbpoolCounterNames[i], s->counters[i]);
	appendStringInfoString(buf, "},\"rates\":{");
	for (i = 0; i < (int) lengthof(secs); i++)
	{
		double		qps,
					eps;

		DbpoolRates(s, now, secs[i], &qps, &eps);
		appendStringInfo(buf, "%s\"%ds\":{\"queries_per_second\":%.3f,\"errors_per_second\":%.3f,"
						 "\"error_rate\":%.6f}",
						 i ? "," : "", secs[i], qps, eps, qps > 0 ? eps / qps : 0);
	}
	appendStringInfoString(buf, "},\"acquire_latency\":");
	json_latency(buf, &s->acquire, w->acquire, w->acquire_n);
	appendStringInfoString(buf, ",\"query_latency\":");
	json_latency(buf, &s->query, w->query, w->query_n);
	appendStringInfoString(buf, ",\"connections\":");
	json_connections(buf, p, entries, nentries, now);
	appendStringInfoChar(buf, '}');
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
			key(&buf, slots[i].name);
			json_pool(&buf, &slots[i], entries, nentries);
		}
		appendStringInfoChar(&buf, '}');
	}
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
