/*
 * diagnose.c
 *		dbpool_diagnose(pool): a diagnosis of one pool as one jsonb document
 *		(backend side).  It reads the pool's figures (figures.c), its
 *		connections and its slow queries, and finds the issues the operations
 *		guide names, each with its severity, a description that gives the
 *		measured figure and the threshold, and recommendations that name the
 *		setting, GUC or query to look at.  The thresholds are the
 *		dbpool.diagnose_* GUCs (dbpool.c), which any session may set.
 *
 *	{"pool", "overall_health": "healthy" | "degraded", "issues": [...],
 *	 "suspicious_connections": [...], "slow_queries": [...],
 *	 "recommendations": [...]}
 *
 * Anyone may call it: it shows what dbpool_metrics, dbpool_connections and
 * dbpool_slow_queries show, with their text rules.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "figures.h"
#include "stats.h"

PG_FUNCTION_INFO_V1(dbpool_diagnose);

#define DIAGNOSE_SLOW_QUERIES	10	/* the slowest entries shown */

/* One issue found. */
typedef struct Issue
{
	const char *type;
	const char *severity;		/* critical, high, medium */
	char	   *description;
	List	   *recommendations;	/* of char * */
} Issue;

/* Add an issue to *issues. */
static Issue *
add_issue(List **issues, const char *type, const char *severity, char *description)
{
	Issue	   *i = palloc0(sizeof(Issue));

	i->type = type;
	i->severity = severity;
	i->description = description;
	*issues = lappend(*issues, i);
	return i;
}

/* Add a recommendation to an issue. */
static void
recommend(Issue *i, char *text)
{
	i->recommendations = lappend(i->recommendations, text);
}

/* Append a JSON array of strings. */
static void
json_strings(StringInfo buf, List *strings)
{
	ListCell   *lc;

	appendStringInfoChar(buf, '[');
	foreach(lc, strings)
	{
		if (lc != list_head(strings))
			appendStringInfoChar(buf, ',');
		escape_json(buf, (char *) lfirst(lc));
	}
	appendStringInfoChar(buf, ']');
}

/* The state issues: pool_down (critical) and pool_degraded (medium). */
static void
state_issues(List **issues, const DbpoolPoolSlot *p, const DbpoolPoolFigures *f)
{
	const DbpoolSettings *s = &p->settings;
	Issue	   *i;

	if (f->state == DBPOOL_POOL_DOWN)
	{
		i = add_issue(issues, "pool_down", "critical",
					  psprintf("Pool \"%s\" is down: its last %d connection attempts in a row failed (retry_attempts %d) and nothing serves it, so requests fail at once while a probe tries every %d ms (down_probe_interval_ms); %llu connection attempts failed since the statistics were reset.",
							   p->name, s->retry_attempts, s->retry_attempts,
							   s->down_probe_interval_ms,
							   (unsigned long long) f->counters[DBPOOL_C_CONN_FAILURES]));
		recommend(i, psprintf("Check that the target of pool \"%s\" accepts connections: SELECT conninfo, backup_conninfo FROM dbpool_pools WHERE name = '%s'; the server log has the connection failures (\"dbpool: could not connect\").",
							  p->name, p->name));
		recommend(i, psprintf("Once the target is back, SELECT dbpool_cleanup_pool('%s') makes the next request connect at once instead of waiting for the next probe.",
							  p->name));
		if (p->backup_conninfo[0] == '\0')
			recommend(i, psprintf("Give the pool a standby to fail over to: SELECT dbpool_alter_pool('%s', '{\"backup_conninfo\": \"host=... dbname=...\"}').",
								  p->name));
	}
	else if (f->state == DBPOOL_POOL_DEGRADED)
	{
		if (p->on_backup)
		{
			i = add_issue(issues, "pool_degraded", "medium",
						  psprintf("Pool \"%s\" is degraded: it serves from its backup target (backup_conninfo) because its primary failed; it returns to the primary once the primary has answered for failback_after_ms (%d ms).",
								   p->name, s->failback_after_ms));
			recommend(i, psprintf("Bring the primary of pool \"%s\" back (SELECT conninfo FROM dbpool_pools WHERE name = '%s'); SELECT dbpool_restart_pool('%s') returns to it at once.",
								  p->name, p->name, p->name));
		}
		else
		{
			i = add_issue(issues, "pool_degraded", "medium",
						  psprintf("Pool \"%s\" is degraded: connection attempts fail and are retried with backoff (retry_base_ms %d, retry_max_ms %d); after retry_attempts (%d) failures in a row with nothing serving, the pool is down. %llu connection attempts failed since the statistics were reset.",
								   p->name, s->retry_base_ms, s->retry_max_ms, s->retry_attempts,
								   (unsigned long long) f->counters[DBPOOL_C_CONN_FAILURES]));
			recommend(i, psprintf("Check that the target of pool \"%s\" accepts connections: SELECT conninfo FROM dbpool_pools WHERE name = '%s'; the server log has the connection failures (\"dbpool: could not connect\").",
								  p->name, p->name));
			recommend(i, "Check the target's max_connections: a pool may be refused once the server is full (SELECT count(*) FROM pg_stat_activity on the target).");
		}
	}
}

/* The load issues: high_latency, high_error_rate, saturation, long_waits. */
static void
load_issues(List **issues, const DbpoolPoolSlot *p, const DbpoolPoolFigures *f)
{
	const DbpoolSettings *s = &p->settings;
	const DbpoolRateFigures *minute = &f->rates[DBPOOL_RATE_60S];
	double		p99 = f->query.window_ms[DBPOOL_P99];
	double		acquire_p99 = f->acquire.window_ms[DBPOOL_P99];
	Issue	   *i;

	if (p99 >= 0 && p99 > DbpoolDiagnoseLatencyP99Ms)
	{
		i = add_issue(issues, "high_latency", "high",
					  psprintf("The query latency p99 of the last 60 s is %.1f ms (%llu queries), above dbpool.diagnose_latency_p99_ms (%g ms).",
							   p99, (unsigned long long) f->query.window_n,
							   DbpoolDiagnoseLatencyP99Ms));
		if (s->slow_query_ms > 0)
			recommend(i, psprintf("Look at the slowest queries: SELECT * FROM dbpool_slow_queries('%s', 10); then at their plans on the target (EXPLAIN ANALYZE).",
								  p->name));
		else
			recommend(i, psprintf("Turn the slow-query log on to see which queries are slow: SELECT dbpool_alter_pool('%s', '{\"slow_query_ms\": %d}').",
								  p->name, Max((int) DbpoolDiagnoseLatencyP99Ms, 1)));
		recommend(i, "Check the load of the foreign server (its pg_stat_activity, locks and I/O): latency is measured from sending the query to its last row.");
		if (s->query_timeout_ms == 0)
			recommend(i, psprintf("Bound runaway queries with query_timeout_ms: SELECT dbpool_alter_pool('%s', '{\"query_timeout_ms\": 30000}').",
								  p->name));
	}
	if (minute->queries_per_second > 0 && minute->error_rate > DbpoolDiagnoseErrorRate)
	{
		i = add_issue(issues, "high_error_rate", "critical",
					  psprintf("The error rate of the last 60 s is %.4f (%.3f errors per second of %.3f queries per second), above dbpool.diagnose_error_rate (%g).",
							   minute->error_rate, minute->errors_per_second,
							   minute->queries_per_second, DbpoolDiagnoseErrorRate));
		recommend(i, psprintf("See the errors: SELECT conn_id, last_error FROM dbpool_connections WHERE pool = '%s' AND last_error IS NOT NULL; and the timeouts in dbpool_metrics (timeouts_total).",
							  p->name));
		recommend(i, "Check the callers' queries and the foreign server's log: errors the target reports are relayed with its SQLSTATE.");
	}
	if (f->utilization > DbpoolDiagnoseUtilization)
	{
		i = add_issue(issues, "saturation", "high",
					  psprintf("The utilization (connections busy with a request / max_size) is %.2f: %d of max_size %d connections are busy and %d requests wait; above dbpool.diagnose_utilization (%g).",
							   f->utilization, f->active, f->max_size, f->waiting,
							   DbpoolDiagnoseUtilization));
		recommend(i, psprintf("Raise max_size (SELECT dbpool_alter_pool('%s', '{\"max_size\": %d}')), within dbpool.max_connections (%d, all pools together) and the target's max_connections.",
							  p->name, Max(f->max_size * 2, f->max_size + 1), DbpoolMaxConnections));
		recommend(i, psprintf("Look for long requests holding connections: SELECT conn_id, client_pid, active_seconds, client_query FROM dbpool_connections WHERE pool = '%s' AND state = 'active'.",
							  p->name));
	}
	if (acquire_p99 >= 0 && acquire_p99 > DbpoolDiagnoseAcquireP99Ms)
	{
		i = add_issue(issues, "long_waits", "medium",
					  psprintf("The acquire latency p99 of the last 60 s (the wait for a connection) is %.1f ms, above dbpool.diagnose_acquire_p99_ms (%g ms); %d requests wait now.",
							   acquire_p99, DbpoolDiagnoseAcquireP99Ms, f->waiting));
		recommend(i, psprintf("Raise max_size (SELECT dbpool_alter_pool('%s', '{\"max_size\": %d}')), within dbpool.max_connections (%d, all pools together) and the target's max_connections.",
							  p->name, Max(f->max_size * 2, f->max_size + 1), DbpoolMaxConnections));
		if (s->min_size < s->max_size)
			recommend(i, psprintf("Keep more connections open (min_size %d): SELECT dbpool_alter_pool('%s', '{\"min_size\": %d}'), so that bursts do not wait for new connections.",
								  s->min_size, p->name, s->max_size));
	}
}

/* The connection issues: connection_leak, frequent_reconnects. */
static void
connection_issues(List **issues, const DbpoolPoolSlot *p, const DbpoolPoolFigures *f)
{
	const DbpoolSettings *s = &p->settings;
	int64		beyond = (int64) f->conns_created_60s - s->min_size;
	Issue	   *i;

	if (f->leaks_suspected > 0)
	{
		i = add_issue(issues, "connection_leak", "high",
					  psprintf("%d connections have been busy with one request longer than leak_threshold_ms (%d ms): suspected leaks (%llu suspected since the statistics were reset).",
							   f->leaks_suspected, s->leak_threshold_ms,
							   (unsigned long long) f->counters[DBPOOL_C_LEAKS_SUSPECTED]));
		recommend(i, psprintf("Find the clients: SELECT conn_id, client_pid, application_name, client_query, active_seconds FROM dbpool_connections WHERE pool = '%s' AND suspected_leak (suspicious_connections lists them too).",
							  p->name));
		recommend(i, "Fix the caller that keeps its request open, or end it: SELECT pg_cancel_backend(client_pid), or pg_terminate_backend(client_pid).");
		if (s->query_timeout_ms == 0)
			recommend(i, psprintf("Bound requests with query_timeout_ms: SELECT dbpool_alter_pool('%s', '{\"query_timeout_ms\": %d}').",
								  p->name, Max(s->leak_threshold_ms, 1000)));
	}
	if (beyond > DbpoolDiagnoseReconnectsPerMinute)
	{
		i = add_issue(issues, "frequent_reconnects", "medium",
					  psprintf("%llu connections were established in the last 60 s, %lld beyond min_size (%d), above dbpool.diagnose_reconnects_per_minute (%d).",
							   (unsigned long long) f->conns_created_60s, (long long) beyond,
							   s->min_size, DbpoolDiagnoseReconnectsPerMinute));
		recommend(i, psprintf("See why connections close: the closed_* counters of SELECT dbpool_detailed_metrics('%s') -> 'counters', and the broken ones in the server log.",
							  p->name));
		if (s->idle_timeout_ms > 0)
			recommend(i, psprintf("If idle_timeout_ms (%d ms) closes connections that are needed again soon, raise it or min_size: SELECT dbpool_alter_pool('%s', '{\"idle_timeout_ms\": %d}').",
								  s->idle_timeout_ms, p->name,
								  s->idle_timeout_ms > INT_MAX / 4 ? INT_MAX : s->idle_timeout_ms * 4));
		if (s->max_lifetime_ms > 0)
			recommend(i, psprintf("If max_lifetime_ms (%d ms) is short, raise it: SELECT dbpool_alter_pool('%s', '{\"max_lifetime_ms\": %d}').",
								  s->max_lifetime_ms, p->name,
								  s->max_lifetime_ms > INT_MAX / 4 ? INT_MAX : s->max_lifetime_ms * 4));
		recommend(i, "Connections closed as broken or after errors point at the network or the target (idle session timeouts, restarts): check the foreign server's log.");
	}
}

/* Append the pool's suspected leaks: [{conn_id, client_pid, active_seconds, ...}]. */
static void
json_suspicious(StringInfo buf, const DbpoolPoolSlot *p, TimestampTz now)
{
	DbpoolConnEntry *entries;
	int			n = DbpoolConnSnapshot(&entries);
	bool		first = true;
	int			i;

	appendStringInfoChar(buf, '[');
	for (i = 0; i < n; i++)
	{
		DbpoolConnEntry *e = DbpoolConnEntryIn(entries, i);
		DbpoolConnFigures c;

		if (e->pool_slot != p->index || e->pool_id != p->pool_id || !e->suspected_leak)
			continue;
		DbpoolComputeConnFigures(e, now, &c);
		if (!first)
			appendStringInfoChar(buf, ',');
		first = false;
		appendStringInfo(buf, "{\"conn_id\":" UINT64_FORMAT ",\"client_pid\":", c.conn_id);
		if (c.client_pid)
			appendStringInfo(buf, "%d", c.client_pid);
		else
			appendStringInfoString(buf, "null");
		appendStringInfo(buf, ",\"active_seconds\":%.3f,\"application_name\":", c.active_seconds);
		DbpoolJsonString(buf, c.application_name);
		appendStringInfoString(buf, ",\"client_query\":");
		DbpoolJsonString(buf, c.client_query);
		appendStringInfoString(buf, ",\"last_query\":");
		DbpoolJsonString(buf, c.last_query);
		appendStringInfoChar(buf, '}');
	}
	appendStringInfoChar(buf, ']');
}

/* Append the pool's slowest recent entries of the slow-query log, since its reset. */
static void
json_slow(StringInfo buf, const DbpoolPoolSlot *p, uint64 seq_at_reset)
{
	DbpoolSlowEntry *entries;
	DbpoolSlowEntry **keep;
	int			n = DbpoolSlowSnapshot(&entries);
	int			nkeep = 0;
	int			i;

	keep = palloc(sizeof(DbpoolSlowEntry *) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		DbpoolSlowEntry *e = (DbpoolSlowEntry *) ((char *) entries +
												  DbpoolShmem->slowlog->stride * i);

		if (e->pool_id == p->pool_id && e->seq >= seq_at_reset)
			keep[nkeep++] = e;
	}
	qsort(keep, nkeep, sizeof(DbpoolSlowEntry *), DbpoolSlowestFirst);

	appendStringInfoChar(buf, '[');
	for (i = 0; i < nkeep && i < DIAGNOSE_SLOW_QUERIES; i++)
	{
		DbpoolSlowEntry *e = keep[i];
		char	   *role = GetUserNameFromId(e->role, true);

		if (i > 0)
			appendStringInfoChar(buf, ',');
		appendStringInfoString(buf, "{\"query\":");
		escape_json(buf, DbpoolShownText(e->query, e->role));
		appendStringInfo(buf, ",\"duration_ms\":%.3f,\"started_at\":",
						 DbpoolRoundMs(e->duration_us / 1000.0));
		DbpoolJsonTime(buf, e->started_at);
		appendStringInfo(buf, ",\"client_pid\":%d,\"role\":", e->client_pid);
		DbpoolJsonString(buf, role);
		appendStringInfo(buf, ",\"rows\":" INT64_FORMAT ",\"sqlstate\":", e->rows);
		DbpoolJsonString(buf, e->sqlstate[0] ? e->sqlstate : NULL);
		appendStringInfoChar(buf, '}');
	}
	appendStringInfoChar(buf, ']');
}

/* dbpool_diagnose(pool): the diagnosis of one pool. */
Datum
dbpool_diagnose(PG_FUNCTION_ARGS)
{
	DbpoolPoolSlot *slots;
	DbpoolPoolSlot *p;
	DbpoolPoolStats *stats = palloc(sizeof(DbpoolPoolStats));
	DbpoolPoolFigures *f = palloc(sizeof(DbpoolPoolFigures));
	List	   *issues = NIL;
	List	   *all = NIL;
	StringInfoData buf;
	ListCell   *lc;
	int			nslots;
	char	   *name;

	DbpoolCheckLoaded();
	name = DbpoolTextArg(fcinfo, 0, "pool name");
	DbpoolWaitForCommittedConfig();
	slots = DbpoolRegistryCopy(&nslots);
	p = DbpoolFindSlot(slots, nslots, name, false);
	DbpoolSlotStats(p, stats);
	DbpoolComputePoolFigures(p, stats, GetCurrentTimestamp(), f);

	state_issues(&issues, p, f);
	load_issues(&issues, p, f);
	connection_issues(&issues, p, f);

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"pool\":");
	escape_json(&buf, p->name);
	appendStringInfo(&buf, ",\"overall_health\":\"%s\",\"issues\":[",
					 issues ? "degraded" : "healthy");
	foreach(lc, issues)
	{
		Issue	   *i = (Issue *) lfirst(lc);
		ListCell   *r;

		if (lc != list_head(issues))
			appendStringInfoChar(&buf, ',');
		appendStringInfo(&buf, "{\"type\":\"%s\",\"severity\":\"%s\",\"description\":",
						 i->type, i->severity);
		escape_json(&buf, i->description);
		appendStringInfoString(&buf, ",\"recommendations\":");
		json_strings(&buf, i->recommendations);
		appendStringInfoChar(&buf, '}');
		foreach(r, i->recommendations)
		{
			char	   *text = (char *) lfirst(r);
			ListCell   *seen;
			bool		dup = false;

			foreach(seen, all)
				if (strcmp((char *) lfirst(seen), text) == 0)
					dup = true;
			if (!dup)
				all = lappend(all, text);
		}
	}
	appendStringInfoString(&buf, "],\"suspicious_connections\":");
	json_suspicious(&buf, p, f->now);
	appendStringInfoString(&buf, ",\"slow_queries\":");
	json_slow(&buf, p, stats->slow_seq_at_reset);
	appendStringInfoString(&buf, ",\"recommendations\":");
	json_strings(&buf, all);
	appendStringInfoChar(&buf, '}');
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
