/*
 * alerts.c
 *		Alerts: the worker's evaluation of the rules (alert_rules.c) every
 *		second, with Prometheus's semantics, the alerts in shared memory and
 *		their consistent copies, and what happens when one fires or resolves:
 *		a LOG line, NOTIFY dbpool_alerts (worker_sql.c), and the rule's action
 *		(scale_up, resize.c).
 *
 * Each second, for each enabled rule and each pool it names (NULL: every
 * pool that is not being dropped), the metric is taken from the pool's
 * figures (figures.c, computed from the worker's own statistics block, so the
 * same figures as dbpool_metrics) and compared with the threshold:
 *	- true, no alert yet: pending, since now;
 *	- true, pending for at least for_seconds: firing (for_seconds 0: at once);
 *	- false: a pending alert is dropped, a firing one resolved (it moves to
 *	  the history of resolved alerts);
 *	- the rule deleted or disabled, or the pool gone: the same as false.
 * A latency with no sample in the last 60 s makes the condition false.
 * scale_up acts when the alert fires and again at most once a minute while it
 * fires (DBPOOL_SCALE_UP_EVERY_MS).
 *
 * Shared memory (DbpoolAlertShared, alerts.h): the worker is the only writer,
 * and publishes each evaluation's result inside one write bracketed by the
 * changecount (as stats.c's blocks); a reader copies the whole struct until
 * the copy is consistent (DbpoolReadConsistent), so any process (the view,
 * the Prometheus exposition) sees one evaluation.  At most DBPOOL_MAX_ALERTS
 * live alerts (more are not tracked; logged once a minute) and the last
 * DBPOOL_ALERT_HISTORY resolved ones.  A new worker starts with no live
 * alerts (they become pending again) and keeps the history.
 *
 * On a hot standby an alert that fires or resolves is logged, nothing is
 * sent (NOTIFY needs a transaction id).
 */
#include "postgres.h"

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "storage/shmem.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "figures.h"
#include "worker.h"

#define EVAL_INTERVAL_MS	1000

/* A live alert in worker memory: the shared one plus bookkeeping. */
typedef struct LiveAlert
{
	DbpoolAlert a;
	bool		seen;			/* its rule and pool were evaluated this time */
	bool		at_cap_logged;	/* scale_up found the pool at its cap (logged once) */
} LiveAlert;

/* What happened to an alert in one evaluation, told after it is published. */
typedef struct AlertEvent
{
	DbpoolAlert a;
} AlertEvent;

static LiveAlert *live = NULL;	/* worker memory, DBPOOL_MAX_ALERTS */
static int	nlive = 0;
static TimestampTz next_eval = 0;
static TimestampTz full_logged = 0;

/* ---------- shared memory and readers ---------- */

/* Shared memory for the alerts. */
Size
DbpoolAlertsShmemSize(void)
{
	return MAXALIGN(sizeof(DbpoolAlertShared));
}

/* Place (and on first use initialize) the alerts at base. */
void
DbpoolAlertsShmemInit(char *base, bool found)
{
	DbpoolShmem->alerts = (DbpoolAlertShared *) base;
	if (found)
		return;
	memset(base, 0, sizeof(DbpoolAlertShared));
	pg_atomic_init_u32(&DbpoolShmem->alerts->changecount, 0);
}

/* A consistent copy of the alerts (any process). */
void
DbpoolAlertsSnapshot(DbpoolAlertShared *copy)
{
	DbpoolReadConsistent(&DbpoolShmem->alerts->changecount, copy, DbpoolShmem->alerts,
						 sizeof(DbpoolAlertShared));
}

/* An alert state's SQL name. */
const char *
DbpoolAlertStateName(DbpoolAlertState state)
{
	switch (state)
	{
		case DBPOOL_ALERT_PENDING:
			return "pending";
		case DBPOOL_ALERT_FIRING:
			return "firing";
		case DBPOOL_ALERT_RESOLVED:
			return "resolved";
	}
	return "unknown";
}

/* ---------- the worker ---------- */

/* Worker start: no live alerts (they are evaluated afresh); the history stays. */
void
DbpoolAlertsInit(void)
{
	DbpoolAlertShared *sh = DbpoolShmem->alerts;

	live = MemoryContextAllocZero(DbpoolWorkerContext, sizeof(LiveAlert) * DBPOOL_MAX_ALERTS);
	nlive = 0;
	DbpoolBeginWrite(&sh->changecount);
	sh->nlive = 0;
	sh->evaluated_at = 0;
	DbpoolEndWrite(&sh->changecount);
}

/* The value of a metric in a pool's figures; false when it has none (no sample). */
static bool
metric_value(DbpoolAlertMetric m, const DbpoolPoolFigures *f, double *v)
{
	switch (m)
	{
		case DBPOOL_M_UTILIZATION:
			*v = f->utilization;
			return true;
		case DBPOOL_M_LATENCY_P99:
			*v = f->query.window_ms[DBPOOL_P99];
			return *v >= 0;
		case DBPOOL_M_ACQUIRE_P99:
			*v = f->acquire.window_ms[DBPOOL_P99];
			return *v >= 0;
		case DBPOOL_M_ERROR_RATE:
			*v = f->rates[DBPOOL_RATE_60S].error_rate;
			return true;
		case DBPOOL_M_QPS:
			*v = f->rates[DBPOOL_RATE_60S].queries_per_second;
			return true;
		case DBPOOL_M_WAITING:
			*v = f->waiting;
			return true;
		case DBPOOL_M_DOWN:
			*v = f->state == DBPOOL_POOL_DOWN ? 1 : 0;
			return true;
		case DBPOOL_NUM_METRICS:
			break;
	}
	return false;
}

/* Whether value compares to threshold as the rule says. */
static bool
compare(DbpoolAlertComparison c, double value, double threshold)
{
	switch (c)
	{
		case DBPOOL_CMP_GT:
			return value > threshold;
		case DBPOOL_CMP_GE:
			return value >= threshold;
		case DBPOOL_CMP_LT:
			return value < threshold;
		case DBPOOL_CMP_LE:
			return value <= threshold;
		case DBPOOL_CMP_EQ:
			return value == threshold;
		case DBPOOL_CMP_NE:
			return value != threshold;
		case DBPOOL_NUM_COMPARISONS:
			break;
	}
	return false;
}

/* The live alert of a rule on a pool, or NULL. */
static LiveAlert *
find_live(const char *rule, const char *pool)
{
	int			i;

	for (i = 0; i < nlive; i++)
		if (strcmp(live[i].a.rule, rule) == 0 && strcmp(live[i].a.pool, pool) == 0)
			return &live[i];
	return NULL;
}

/* Copy a rule's current definition into its alert. */
static void
take_rule(DbpoolAlert *a, const DbpoolAlertRule *r)
{
	a->metric = r->metric;
	a->comparison = r->comparison;
	a->threshold = r->threshold;
	a->for_seconds = r->for_seconds;
	a->severity = r->severity;
	a->action = r->action;
}

/* The JSON payload of NOTIFY dbpool_alerts for an alert. */
static char *
payload(const DbpoolAlert *a)
{
	StringInfoData s;
	char		ts[MAXDATELEN + 1];

	initStringInfo(&s);
	appendStringInfoString(&s, "{\"rule\": ");
	escape_json(&s, a->rule);
	appendStringInfoString(&s, ", \"pool\": ");
	escape_json(&s, a->pool);
	appendStringInfo(&s, ", \"state\": \"%s\", \"value\": %.15g, \"threshold\": %.15g, "
					 "\"severity\": \"%s\", \"metric\": \"%s\", \"comparison\": \"%s\", "
					 "\"action\": \"%s\", \"since\": \"%s\"",
					 DbpoolAlertStateName(a->state), a->value, a->threshold,
					 DbpoolAlertSeverityNames[a->severity], DbpoolAlertMetricNames[a->metric],
					 DbpoolAlertComparisonNames[a->comparison], DbpoolAlertActionNames[a->action],
					 JsonEncodeDateTime(ts, TimestampTzGetDatum(a->since), TIMESTAMPTZOID, NULL));
	if (a->fired_at)
		appendStringInfo(&s, ", \"fired_at\": \"%s\"",
						 JsonEncodeDateTime(ts, TimestampTzGetDatum(a->fired_at),
											TIMESTAMPTZOID, NULL));
	if (a->resolved_at)
		appendStringInfo(&s, ", \"resolved_at\": \"%s\"",
						 JsonEncodeDateTime(ts, TimestampTzGetDatum(a->resolved_at),
											TIMESTAMPTZOID, NULL));
	appendStringInfoChar(&s, '}');
	return s.data;
}

/* Log that an alert fired or resolved (when it happens). */
static void
log_event(const DbpoolAlert *a)
{
	if (a->state == DBPOOL_ALERT_FIRING)
		ereport(LOG,
				(errmsg("dbpool: alert \"%s\" is firing for pool \"%s\": %s %g %s %g for %d s (%s)",
						a->rule, a->pool, DbpoolAlertMetricNames[a->metric], a->value,
						DbpoolAlertComparisonNames[a->comparison], a->threshold,
						a->for_seconds, DbpoolAlertSeverityNames[a->severity])));
	else
		ereport(LOG,
				(errmsg("dbpool: alert \"%s\" resolved for pool \"%s\": %s %g (the rule: %s %g)",
						a->rule, a->pool, DbpoolAlertMetricNames[a->metric], a->value,
						DbpoolAlertComparisonNames[a->comparison], a->threshold)));
}

/* Run a firing alert's action if it is due (scale_up: at once, then once a minute). */
static void
act(LiveAlert *l, WorkerPool *pool, TimestampTz now)
{
	DbpoolAlert *a = &l->a;
	int			new_max;

	if (a->action != DBPOOL_ACTION_SCALE_UP || pool == NULL || pool->dropping)
		return;
	if (a->last_action_at != 0 &&
		now < TimestampTzPlusMilliseconds(a->last_action_at, DBPOOL_SCALE_UP_EVERY_MS))
		return;
	new_max = DbpoolScaleUpSize(&pool->settings);
	if (new_max == pool->settings.max_size)
	{
		if (!l->at_cap_logged)
			ereport(LOG,
					(errmsg("dbpool: alert \"%s\" on pool \"%s\": scale_up finds max_size %d at its limit",
							a->rule, a->pool, pool->settings.max_size),
					 errdetail("max_size_limit is %d, dbpool.max_connections %d.",
							   pool->settings.max_size_limit, DbpoolMaxConnections)));
		l->at_cap_logged = true;
		a->last_action_at = now;
		return;
	}
	/* an attempt counts whether it worked or not: a failing write is retried a minute later */
	(void) DbpoolResizePool(pool, new_max,
							psprintf("scale_up by alert \"%s\" (%s %g %s %g)", a->rule,
									 DbpoolAlertMetricNames[a->metric], a->value,
									 DbpoolAlertComparisonNames[a->comparison], a->threshold));
	a->last_action_at = now;
}

/* Remove live alert i, keeping the rest in order. */
static void
remove_live(int i)
{
	memmove(&live[i], &live[i + 1], sizeof(LiveAlert) * (nlive - i - 1));
	nlive--;
}

/* Evaluate one rule on one pool whose figures are f. */
static void
evaluate(const DbpoolAlertRule *r, WorkerPool *pool, const DbpoolPoolFigures *f,
		 TimestampTz now, List **events)
{
	LiveAlert  *l = find_live(r->name, pool->name);
	double		v = 0;
	bool		has = metric_value(r->metric, f, &v);
	bool		holds = has && compare(r->comparison, v, r->threshold);

	if (l == NULL)
	{
		if (!holds)
			return;
		if (nlive >= DBPOOL_MAX_ALERTS)
		{
			if (full_logged == 0 ||
				TimestampDifferenceExceeds(full_logged, now, DBPOOL_LOG_INTERVAL_MS))
				ereport(WARNING,
						(errmsg("dbpool: %d alerts are pending or firing; alert \"%s\" on pool \"%s\" is not tracked",
								DBPOOL_MAX_ALERTS, r->name, pool->name)));
			full_logged = now;
			return;
		}
		l = &live[nlive++];
		memset(l, 0, sizeof(*l));
		strlcpy(l->a.rule, r->name, sizeof(l->a.rule));
		strlcpy(l->a.pool, pool->name, sizeof(l->a.pool));
		l->a.state = DBPOOL_ALERT_PENDING;
		l->a.since = now;
	}
	l->seen = true;
	take_rule(&l->a, r);
	if (has)
		l->a.value = v;
	if (!holds)
	{
		l->seen = false;		/* ends below, with the alerts not seen */
		return;
	}
	if (l->a.state == DBPOOL_ALERT_PENDING &&
		now >= TimestampTzPlusMilliseconds(l->a.since, (int64) r->for_seconds * 1000))
	{
		DbpoolAlert *e = palloc(sizeof(DbpoolAlert));

		l->a.state = DBPOOL_ALERT_FIRING;
		l->a.fired_at = now;
		*e = l->a;
		*events = lappend(*events, e);
		log_event(e);
	}
	if (l->a.state == DBPOOL_ALERT_FIRING)
		act(l, pool, now);
}

/* Whether a rule applies to a pool. */
static bool
applies(const DbpoolAlertRule *r, WorkerPool *pool)
{
	return !pool->dropping && (r->pool[0] == '\0' || strcmp(r->pool, pool->name) == 0);
}

/*
 * End the live alerts not seen in this evaluation: a firing one is resolved
 * (into *resolved and *events), a pending one dropped.
 */
static void
end_unseen(TimestampTz now, List **resolved, List **events)
{
	int			i = 0;

	while (i < nlive)
	{
		if (live[i].seen)
		{
			i++;
			continue;
		}
		if (live[i].a.state == DBPOOL_ALERT_FIRING)
		{
			DbpoolAlert *e = palloc(sizeof(DbpoolAlert));

			*e = live[i].a;
			e->state = DBPOOL_ALERT_RESOLVED;
			e->resolved_at = now;
			*resolved = lappend(*resolved, e);
			*events = lappend(*events, e);
			log_event(e);
		}
		remove_live(i);
	}
}

/* Publish the live alerts and the newly resolved ones in one write. */
static void
publish(TimestampTz now, List *resolved)
{
	DbpoolAlertShared *sh = DbpoolShmem->alerts;
	ListCell   *lc;
	int			i;

	DbpoolBeginWrite(&sh->changecount);
	for (i = 0; i < nlive; i++)
		sh->live[i] = live[i].a;
	sh->nlive = nlive;
	foreach(lc, resolved)
		sh->resolved[sh->nresolved++ % DBPOOL_ALERT_HISTORY] = *(DbpoolAlert *) lfirst(lc);
	sh->evaluated_at = now;
	DbpoolEndWrite(&sh->changecount);
}

/*
 * Evaluate every rule on every pool, once a second (the housekeeping tick
 * calls this more often), logging what fires and resolves; publish; then
 * NOTIFY each of those, unless on a hot standby.
 */
void
DbpoolAlertsTick(TimestampTz now)
{
	int			nrules;
	const DbpoolAlertRule *rules = DbpoolAlertRules(&nrules);
	DbpoolPoolFigures *f;
	List	   *resolved = NIL;
	List	   *events = NIL;
	dlist_iter	it;
	ListCell   *lc;
	int			i;

	if (next_eval != 0 && now < next_eval)
	{
		DbpoolWorkerDeadline(next_eval);
		return;
	}
	next_eval = TimestampTzPlusMilliseconds(now, EVAL_INTERVAL_MS);
	DbpoolWorkerDeadline(next_eval);
	if (live == NULL)
		DbpoolAlertsInit();
	for (i = 0; i < nlive; i++)
		live[i].seen = false;
	f = palloc(sizeof(DbpoolPoolFigures));
	dlist_foreach(it, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, it.cur);
		bool		have_figures = false;

		for (i = 0; i < nrules; i++)
		{
			if (!applies(&rules[i], pool))
				continue;
			if (!have_figures)
			{
				/* the worker writes these alone: its own reads need no copy */
				DbpoolComputePoolFigures(&DbpoolShmem->pools[pool->slot],
										 &DbpoolShmem->stats[pool->slot], now, f);
				have_figures = true;
			}
			evaluate(&rules[i], pool, f, now, &events);
		}
	}
	pfree(f);
	end_unseen(now, &resolved, &events);
	publish(now, resolved);
	/* after publishing, so that a listener that reads dbpool_alerts sees them */
	if (!RecoveryInProgress())
		foreach(lc, events)
			(void) DbpoolWorkerNotify(DBPOOL_ALERT_NOTIFY_CHANNEL, payload(lfirst(lc)));
}
