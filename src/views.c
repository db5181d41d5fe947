/*
 * views.c
 *		The functions behind dbpool's views (dbpool_pools, dbpool_metrics,
 *		dbpool_connections, dbpool_slow_queries, dbpool_alerts) and
 *		dbpool_reset_stats().
 *		They read copies: the registry under its shared lock, the statistics
 *		through stats.c's consistent snapshots; they render the figures
 *		figures.c derives from those.
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "alerts.h"
#include "dbpool.h"
#include "figures.h"
#include "stats.h"

PG_FUNCTION_INFO_V1(dbpool_pools);
PG_FUNCTION_INFO_V1(dbpool_metrics);
PG_FUNCTION_INFO_V1(dbpool_connections);
PG_FUNCTION_INFO_V1(dbpool_slow_queries);
PG_FUNCTION_INFO_V1(dbpool_reset_stats);
PG_FUNCTION_INFO_V1(dbpool_alerts);

/* The columns of each function's rows, as dbpool--1.0.sql declares them. */
#define DBPOOL_POOLS_FIXED_COLS		7	/* and one per setting */
#define DBPOOL_METRICS_COLS			29
#define DBPOOL_CONNECTIONS_COLS		14
#define DBPOOL_SLOW_QUERIES_COLS	8
#define DBPOOL_ALERTS_COLS			14

/*
 * The registry slot of the live pool of that name; with dropping, of a pool
 * being dropped if there is no live one.  42704 if there is none.
 */
DbpoolPoolSlot *
DbpoolFindSlot(DbpoolPoolSlot *slots, int n, const char *name, bool dropping)
{
	DbpoolPoolSlot *dropped = NULL;
	int			i;

	for (i = 0; i < n; i++)
	{
		if (strcmp(slots[i].name, name) != 0)
			continue;
		if (slots[i].state != DBPOOL_POOL_DROPPING)
			return &slots[i];
		dropped = &slots[i];
	}
	if (dropping && dropped)
		return dropped;
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("pool \"%s\" does not exist", name),
			 errhint("dbpool_pools lists the pools.")));
	return NULL;
}

/* The registry slot holding pool_id, or NULL. */
static DbpoolPoolSlot *
slot_by_id(DbpoolPoolSlot *slots, int n, int index, uint64 pool_id)
{
	int			i;

	for (i = 0; i < n; i++)
		if (slots[i].index == index && slots[i].pool_id == pool_id)
			return &slots[i];
	return NULL;
}

/*
 * Start a set-returning function's rows: a materialized result whose rows
 * must have ncols columns, then a copy of the registry as of the latest
 * committed configuration change (*nslots slots).
 */
static DbpoolPoolSlot *
begin_rows(FunctionCallInfo fcinfo, int ncols, int *nslots)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (rsinfo->setDesc->natts != ncols)
		elog(ERROR, "incorrect number of output arguments");
	DbpoolWaitForCommittedConfig();
	return DbpoolRegistryCopy(nslots);
}

/* Add a row to a set-returning function's result; c: the columns set, all of them. */
static void
put_row(ReturnSetInfo *rsinfo, Datum *values, bool *nulls, int c)
{
	Assert(c == rsinfo->setDesc->natts);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/* A text Datum of s, or (*isnull) NULL when there is none. */
static Datum
text_or_null(const char *s, bool *isnull)
{
	*isnull = (s == NULL);
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

/* dbpool_pools(): one row per pool, conninfo with its password masked. */
Datum
dbpool_pools(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DbpoolPoolSlot *copy;
	int			n;
	int			i,
				j;

	DbpoolCheckLoaded();
	Assert(DbpoolNumSettings <= DBPOOL_MAX_SETTINGS);
	copy = begin_rows(fcinfo, DBPOOL_POOLS_FIXED_COLS + DbpoolNumSettings, &n);

	for (i = 0; i < n; i++)
	{
		DbpoolPoolSlot *p = &copy[i];
		Datum		values[DBPOOL_POOLS_FIXED_COLS + DBPOOL_MAX_SETTINGS];
		bool		nulls[DBPOOL_POOLS_FIXED_COLS + DBPOOL_MAX_SETTINGS] = {0};
		int			c = 0;
		char	   *owner = GetUserNameFromId(p->owner, true);

		values[c++] = CStringGetTextDatum(p->name);
		values[c++] = CStringGetTextDatum(DbpoolTextShow(p->conninfo));
		values[c] = text_or_null(p->backup_conninfo[0] ? DbpoolTextShow(p->backup_conninfo) : NULL,
								 &nulls[c]);
		c++;
		for (j = 0; j < DbpoolNumSettings; j++)
		{
			const DbpoolSettingDesc *d = &DbpoolSettingDescs[j];

			if (d->type == DBPOOL_SETTING_INT)
				values[c] = Int32GetDatum(*DbpoolSettingInt(&p->settings, d));
			else if (d->type == DBPOOL_SETTING_REAL)
				values[c] = Float8GetDatum(*DbpoolSettingReal(&p->settings, d));
			else if (d->type == DBPOOL_SETTING_BOOL)
				values[c] = BoolGetDatum(*DbpoolSettingBool(&p->settings, d));
			else
			{
				char	   *v = DbpoolSettingText(&p->settings, d);

				nulls[c] = (v[0] == '\0');
				if (!nulls[c])
					values[c] = CStringGetTextDatum(DbpoolTextShow(v));
			}
			c++;
		}
		if (owner)
			values[c] = DirectFunctionCall1(namein, CStringGetDatum(owner));
		else
			nulls[c] = true;
		c++;
		values[c++] = CStringGetTextDatum(DbpoolPoolStateName(p->state));
		values[c++] = CStringGetTextDatum(p->on_backup ? "backup" : "primary");
		values[c++] = TimestampTzGetDatum(p->created_at);
		put_row(rsinfo, values, nulls, c);
	}
	return (Datum) 0;
}

/* Set a float8 column to a latency in ms, or NULL when there is no sample (-1). */
static void
put_ms(Datum *values, bool *nulls, int c, double ms)
{
	if (ms < 0)
		nulls[c] = true;
	else
		values[c] = Float8GetDatum(ms);
}

/* dbpool_metrics(): one row per pool, the figures an operator looks at first. */
Datum
dbpool_metrics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DbpoolPoolSlot *slots;
	DbpoolPoolFigures *f = palloc(sizeof(DbpoolPoolFigures));
	int			n,
				i;

	DbpoolCheckLoaded();
	slots = begin_rows(fcinfo, DBPOOL_METRICS_COLS, &n);

	for (i = 0; i < n; i++)
	{
		Datum		values[DBPOOL_METRICS_COLS];
		bool		nulls[DBPOOL_METRICS_COLS] = {0};
		const DbpoolRateFigures *minute;
		int			c = 0;

		DbpoolReadPoolFigures(&slots[i], f);
		minute = &f->rates[DBPOOL_RATE_60S];
		values[c++] = CStringGetTextDatum(f->name);
		values[c++] = CStringGetTextDatum(DbpoolPoolStateName(f->state));
		values[c++] = Int32GetDatum(f->total);
		values[c++] = Int32GetDatum(f->active);
		values[c++] = Int32GetDatum(f->idle);
		values[c++] = Int32GetDatum(f->max_size);
		values[c++] = Float8GetDatum(f->utilization);
		values[c++] = Int32GetDatum(f->waiting);
		put_ms(values, nulls, c++, f->acquire.window_ms[DBPOOL_P50]);
		put_ms(values, nulls, c++, f->acquire.window_ms[DBPOOL_P99]);
		values[c++] = Int64GetDatum(f->counters[DBPOOL_C_QUERIES]);
		values[c++] = Int64GetDatum(f->counters[DBPOOL_C_ERRORS]);
		values[c++] = Float8GetDatum(minute->queries_per_second);
		put_ms(values, nulls, c++, f->query.window_ms[DBPOOL_P50]);
		put_ms(values, nulls, c++, f->query.window_ms[DBPOOL_P95]);
		put_ms(values, nulls, c++, f->query.window_ms[DBPOOL_P99]);
		values[c++] = Float8GetDatum(minute->error_rate);
		values[c++] = Int64GetDatum(f->counters[DBPOOL_C_SLOW]);
		values[c++] = Int64GetDatum(f->timeouts);
		if (f->stats_reset)
			values[c] = TimestampTzGetDatum(f->stats_reset);
		else
			nulls[c] = true;
		c++;
		values[c++] = Int32GetDatum(f->connecting);
		put_ms(values, nulls, c++, f->oldest_wait_ms);
		values[c++] = Int64GetDatum(f->counters[DBPOOL_C_CANCELS]);
		/* the latest health check: all NULL before the first */
		nulls[c] = nulls[c + 1] = f->health.at == 0;
		values[c++] = TimestampTzGetDatum(f->health.at);
		values[c++] = BoolGetDatum(f->health.ok);
		put_ms(values, nulls, c++, f->health_latency_ms);
		values[c] = text_or_null(DbpoolHealthShownError(&f->health, slots[i].owner), &nulls[c]);
		c++;
		values[c++] = Int32GetDatum(f->leaks_suspected);
		values[c++] = Int64GetDatum(f->counters[DBPOOL_C_LEAKS_SUSPECTED]);
		put_row(rsinfo, values, nulls, c);
	}
	return (Datum) 0;
}

/* dbpool_connections(): one row per outbound connection. */
Datum
dbpool_connections(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DbpoolPoolSlot *slots;
	DbpoolConnEntry *entries;
	int			nslots,
				n,
				i;
	TimestampTz now;

	DbpoolCheckLoaded();
	slots = begin_rows(fcinfo, DBPOOL_CONNECTIONS_COLS, &nslots);
	n = DbpoolConnSnapshot(&entries);
	now = GetCurrentTimestamp();

	for (i = 0; i < n; i++)
	{
		DbpoolConnEntry *e = DbpoolConnEntryIn(entries, i);
		DbpoolPoolSlot *p = slot_by_id(slots, nslots, e->pool_slot, e->pool_id);
		DbpoolConnFigures f;
		Datum		values[DBPOOL_CONNECTIONS_COLS];
		bool		nulls[DBPOOL_CONNECTIONS_COLS] = {0};
		int			c = 0;

		if (p == NULL)
			continue;			/* its pool is gone */
		DbpoolComputeConnFigures(e, now, &f);
		values[c++] = CStringGetTextDatum(p->name);
		values[c++] = Int64GetDatum(f.conn_id);
		values[c++] = CStringGetTextDatum(f.state);
		values[c] = Int32GetDatum(f.client_pid);
		nulls[c++] = f.client_pid == 0;
		values[c] = Int32GetDatum(f.remote_pid);
		nulls[c++] = f.remote_pid == 0;
		values[c++] = TimestampTzGetDatum(f.created_at);
		values[c++] = TimestampTzGetDatum(f.state_since);
		values[c++] = Float8GetDatum(f.active_seconds);
		values[c++] = Int64GetDatum(f.queries_served);
		values[c] = text_or_null(f.last_query, &nulls[c]);
		c++;
		values[c] = text_or_null(f.last_error, &nulls[c]);
		c++;
		values[c] = text_or_null(f.application_name, &nulls[c]);
		c++;
		values[c] = text_or_null(f.client_query, &nulls[c]);
		c++;
		values[c++] = BoolGetDatum(f.suspected_leak);
		put_row(rsinfo, values, nulls, c);
	}
	return (Datum) 0;
}

/*
 * dbpool_slow_queries() and dbpool_slow_queries(pool, lim): the slow
 * executions still in the ring, of live pools since their stats_reset.
 * Without arguments (the view), newest first; with a pool (NULL: every
 * pool), the lim slowest (NULL: all).
 */
Datum
dbpool_slow_queries(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		by_pool = PG_NARGS() > 0;
	DbpoolPoolSlot *slots;
	DbpoolPoolSlot *only = NULL;
	DbpoolSlowEntry *entries;
	DbpoolSlowEntry **keep;
	DbpoolPoolStats *s = palloc(sizeof(DbpoolPoolStats));
	uint64	   *seq_at_reset;
	int64		lim = -1;
	int			nslots,
				n,
				nkeep = 0,
				i;

	DbpoolCheckLoaded();
	if (by_pool && !PG_ARGISNULL(1))
	{
		lim = PG_GETARG_INT32(1);
		if (lim < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("lim must not be negative")));
	}
	slots = begin_rows(fcinfo, DBPOOL_SLOW_QUERIES_COLS, &nslots);
	if (by_pool && !PG_ARGISNULL(0))
		only = DbpoolFindSlot(slots, nslots, text_to_cstring(PG_GETARG_TEXT_PP(0)), false);

	/* entries before a pool's last reset are hidden */
	seq_at_reset = palloc0(sizeof(uint64) * nslots);
	for (i = 0; i < nslots; i++)
	{
		DbpoolSlotStats(&slots[i], s);
		seq_at_reset[i] = s->slow_seq_at_reset;
	}

	n = DbpoolSlowSnapshot(&entries);
	keep = palloc(sizeof(DbpoolSlowEntry *) * Max(n, 1));
	for (i = n - 1; i >= 0; i--)
	{
		DbpoolSlowEntry *e = (DbpoolSlowEntry *) ((char *) entries +
												  DbpoolShmem->slowlog->stride * i);
		int			j;

		for (j = 0; j < nslots; j++)
			if (slots[j].pool_id == e->pool_id)
				break;
		if (j == nslots || e->seq < seq_at_reset[j])
			continue;
		if (only && only->pool_id != e->pool_id)
			continue;
		keep[nkeep++] = e;
	}
	if (by_pool)
		qsort(keep, nkeep, sizeof(DbpoolSlowEntry *), DbpoolSlowestFirst);

	for (i = 0; i < nkeep && (lim < 0 || i < lim); i++)
	{
		DbpoolSlowEntry *e = keep[i];
		Datum		values[DBPOOL_SLOW_QUERIES_COLS];
		bool		nulls[DBPOOL_SLOW_QUERIES_COLS] = {0};
		char	   *role = GetUserNameFromId(e->role, true);
		int			c = 0;

		values[c++] = CStringGetTextDatum(e->pool);
		values[c++] = CStringGetTextDatum(DbpoolShownText(e->query, e->role));
		values[c++] = Float8GetDatum(DbpoolRoundMs(e->duration_us / 1000.0));
		values[c++] = TimestampTzGetDatum(e->started_at);
		values[c++] = Int32GetDatum(e->client_pid);
		if (role)
			values[c] = DirectFunctionCall1(namein, CStringGetDatum(role));
		else
			nulls[c] = true;
		c++;
		values[c++] = Int64GetDatum(e->rows);
		if (e->sqlstate[0])
			values[c] = CStringGetTextDatum(e->sqlstate);
		else
			nulls[c] = true;
		c++;
		put_row(rsinfo, values, nulls, c);
	}
	return (Datum) 0;
}

/*
 * dbpool_reset_stats(pool DEFAULT NULL): start a pool's figures (and its slow
 * queries) afresh; NULL: every pool the caller owns (a superuser: all).  The
 * worker applies it; this waits until it has.
 */
Datum
dbpool_reset_stats(PG_FUNCTION_ARGS)
{
	DbpoolPoolSlot *slots;
	int			n,
				i;
	uint64		target;
	Oid			me = GetUserId();

	DbpoolCheckLoaded();
	DbpoolWaitForCommittedConfig();
	slots = DbpoolRegistryCopy(&n);
	if (!PG_ARGISNULL(0))
	{
		char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
		DbpoolPoolSlot *p = DbpoolFindSlot(slots, n, name, false);

		if (!superuser() && !has_privs_of_role(me, p->owner))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("must be owner of pool \"%s\"", name),
					 errdetail("Only a pool's owner or a superuser may reset its statistics.")));
		pg_atomic_write_u32(&DbpoolShmem->stats[p->index].reset_pending, 1);
	}
	else
	{
		for (i = 0; i < n; i++)
			if (superuser() || has_privs_of_role(me, slots[i].owner))
				pg_atomic_write_u32(&DbpoolShmem->stats[slots[i].index].reset_pending, 1);
	}
	/* a full barrier: the worker that sees the request sees the marks */
	target = pg_atomic_add_fetch_u64(&DbpoolShmem->reset_requested, 1);
	DbpoolWaitForWorker();
	DbpoolWakeWorker();
	if (!DbpoolWaitForCounter(&DbpoolShmem->reset_applied, target, DBPOOL_WORKER_WAIT_MS))
		ereport(WARNING,
				(errmsg("the dbpool worker has not reset the statistics yet"),
				 errdetail("It will when it next wakes up.")));
	PG_RETURN_VOID();
}

/* A timestamptz Datum, or NULL for 0. */
static Datum
time_or_null(TimestampTz t, bool *isnull)
{
	*isnull = (t == 0);
	return TimestampTzGetDatum(t);
}

/* One row of dbpool_alerts.  Its texts are ASCII names (alerts.h): valid in any encoding. */
static void
put_alert(ReturnSetInfo *rsinfo, const DbpoolAlert *a)
{
	Datum		values[DBPOOL_ALERTS_COLS];
	bool		nulls[DBPOOL_ALERTS_COLS] = {0};
	int			c = 0;

	values[c++] = CStringGetTextDatum(a->rule);
	values[c++] = CStringGetTextDatum(a->pool);
	values[c++] = CStringGetTextDatum(DbpoolAlertStateName(a->state));
	values[c++] = TimestampTzGetDatum(a->since);
	values[c++] = Float8GetDatum(a->value);
	values[c++] = Float8GetDatum(a->threshold);
	values[c++] = CStringGetTextDatum(DbpoolAlertSeverityNames[a->severity]);
	values[c++] = CStringGetTextDatum(DbpoolAlertMetricNames[a->metric]);
	values[c++] = CStringGetTextDatum(DbpoolAlertComparisonNames[a->comparison]);
	values[c++] = Int32GetDatum(a->for_seconds);
	values[c] = time_or_null(a->fired_at, &nulls[c]);
	c++;
	values[c] = time_or_null(a->resolved_at, &nulls[c]);
	c++;
	values[c++] = CStringGetTextDatum(DbpoolAlertActionNames[a->action]);
	values[c] = time_or_null(a->last_action_at, &nulls[c]);
	c++;
	put_row(rsinfo, values, nulls, c);
}

/*
 * dbpool_alerts(): the pending and firing alerts of the last evaluation, then
 * the resolved ones kept, the latest first.
 */
Datum
dbpool_alerts(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DbpoolAlertShared *copy;
	uint64		i,
				first;

	DbpoolCheckLoaded();
	InitMaterializedSRF(fcinfo, 0);
	if (rsinfo->setDesc->natts != DBPOOL_ALERTS_COLS)
		elog(ERROR, "incorrect number of output arguments");
	copy = palloc(sizeof(DbpoolAlertShared));
	DbpoolAlertsSnapshot(copy);
	for (i = 0; i < (uint64) copy->nlive && i < DBPOOL_MAX_ALERTS; i++)
		put_alert(rsinfo, &copy->live[i]);
	first = copy->nresolved > DBPOOL_ALERT_HISTORY ? copy->nresolved - DBPOOL_ALERT_HISTORY : 0;
	for (i = copy->nresolved; i > first; i--)
		put_alert(rsinfo, &copy->resolved[(i - 1) % DBPOOL_ALERT_HISTORY]);
	pfree(copy);
	return (Datum) 0;
}
