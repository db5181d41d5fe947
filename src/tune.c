/*
 * tune.c
 *		dbpool_tune_timeouts: the operations guide's timeout rule applied to a
 *		pool's measured latency.  query_timeout_ms = max(3 x p95, 1000 ms) and
 *		acquire_timeout_ms = half of it, where p95 is the pool's own query
 *		latency over the last 60 s (figures.c), or, when the pool served no
 *		query in that window, the same after ten runs of its health_query
 *		through the pool, as the caller.  The recommendation is
 *		written (through dbpool_alter_pool, so with its checks: owner or
 *		superuser, in dbpool.database) only when asked.
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "dbpool.h"
#include "figures.h"

PG_FUNCTION_INFO_V1(dbpool_tune_timeouts);

extern Datum dbpool_exec(PG_FUNCTION_ARGS);
extern Datum dbpool_alter_pool(PG_FUNCTION_ARGS);

#define TUNE_HEALTH_RUNS		10		/* runs of the health query without traffic */
#define TUNE_MIN_QUERY_TIMEOUT_MS 1000	/* the rule's floor */
#define TUNE_P95_FACTOR			3

/* Run sql on pool once through dbpool_exec, as the caller. */
static void
run_exec(text *pool, text *sql)
{
	LOCAL_FCINFO(fcinfo, 3);

	InitFunctionCallInfoData(*fcinfo, NULL, 3, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = PointerGetDatum(pool);
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = PointerGetDatum(sql);
	fcinfo->args[1].isnull = false;
	fcinfo->args[2].value = (Datum) 0;
	fcinfo->args[2].isnull = true;
	(void) dbpool_exec(fcinfo);
}

/*
 * dbpool_tune_timeouts(pool, apply DEFAULT false): the current and the
 * recommended query_timeout_ms and acquire_timeout_ms, the p95 and the
 * samples they come from; with apply, the recommendation is written.
 */
Datum
dbpool_tune_timeouts(PG_FUNCTION_ARGS)
{
	DbpoolPoolSlot *slots;
	DbpoolPoolSlot *slot;
	DbpoolPoolFigures *f;
	int			nslots;
	char	   *name;
	bool		apply;
	double		p95;
	uint64		samples;
	const char *source;
	int			query_ms,
				acquire_ms;
	StringInfoData buf;

	DbpoolCheckLoaded();
	name = DbpoolTextArg(fcinfo, 0, "pool name");
	DbpoolNotNullArg(fcinfo, 1, "apply");
	apply = PG_GETARG_BOOL(1);
	DbpoolWaitForCommittedConfig();
	slots = DbpoolRegistryCopy(&nslots);
	slot = DbpoolFindSlot(slots, nslots, name, false);

	f = palloc(sizeof(DbpoolPoolFigures));
	DbpoolReadPoolFigures(slot, f);
	source = "queries";
	if (f->query.window_n == 0)
	{
		text	   *pool = cstring_to_text(name);
		text	   *sql = cstring_to_text(DbpoolTextShow(slot->settings.health_query));
		int			i;

		/*
		 * No traffic: make some, and measure it as any query is measured
		 * (from its send to its last row, not the wait for a connection).
		 */
		for (i = 0; i < TUNE_HEALTH_RUNS; i++)
			run_exec(pool, sql);
		DbpoolReadPoolFigures(slot, f);
		source = "health_query";
	}
	p95 = Max(f->query.window_ms[DBPOOL_P95], 0);
	samples = f->query.window_n;
	query_ms = (int) Min(ceil(Max(TUNE_P95_FACTOR * p95, TUNE_MIN_QUERY_TIMEOUT_MS)), PG_INT32_MAX);
	acquire_ms = (query_ms + 1) / 2;

	if (apply)
	{
		char	   *options = psprintf("{\"query_timeout_ms\": %d, \"acquire_timeout_ms\": %d}",
									   query_ms, acquire_ms);

		DirectFunctionCall2(dbpool_alter_pool, CStringGetTextDatum(name),
							DirectFunctionCall1(jsonb_in, CStringGetDatum(options)));
	}

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"pool\":");
	escape_json(&buf, name);
	appendStringInfo(&buf, ",\"source\":\"%s\",\"samples\":" UINT64_FORMAT ",\"p95_ms\":%.3f,"
					 "\"current\":{\"query_timeout_ms\":%d,\"acquire_timeout_ms\":%d},"
					 "\"recommended\":{\"query_timeout_ms\":%d,\"acquire_timeout_ms\":%d},"
					 "\"applied\":%s}",
					 source, samples, p95,
					 slot->settings.query_timeout_ms, slot->settings.acquire_timeout_ms,
					 query_ms, acquire_ms, apply ? "true" : "false");
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
