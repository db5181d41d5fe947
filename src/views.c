/*
 * views.c
 *		The functions behind dbpool's views.
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "dbpool.h"

PG_FUNCTION_INFO_V1(dbpool_pools);

/* A pool state's SQL name. */
static const char *
state_name(DbpoolPoolState state)
{
	switch (state)
	{
		case DBPOOL_POOL_CONNECTING:
			return "connecting";
		case DBPOOL_POOL_READY:
			return "ready";
		case DBPOOL_POOL_UNREACHABLE:
			return "unreachable";
		case DBPOOL_POOL_DROPPING:
			return "dropping";
	}
	return "unknown";
}

/* dbpool_pools(): one row per pool, conninfo with its password masked. */
Datum
dbpool_pools(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DbpoolPoolSlot *copy;
	int			n = 0;
	int			i,
				j;

	DbpoolCheckLoaded();
	InitMaterializedSRF(fcinfo, 0);
	DbpoolWaitForCommittedConfig();

	copy = palloc(sizeof(DbpoolPoolSlot) * DbpoolMaxPools);
	LWLockAcquire(DbpoolShmem->lock, LW_SHARED);
	for (i = 0; i < DbpoolMaxPools; i++)
		if (DbpoolShmem->pools[i].in_use)
			memcpy(&copy[n++], &DbpoolShmem->pools[i], sizeof(DbpoolPoolSlot));
	LWLockRelease(DbpoolShmem->lock);

	for (i = 0; i < n; i++)
	{
		DbpoolPoolSlot *p = &copy[i];
		Datum		values[5 + DBPOOL_MAX_SETTINGS];
		bool		nulls[5 + DBPOOL_MAX_SETTINGS] = {0};
		int			c = 0;
		char	   *owner = GetUserNameFromId(p->owner, true);

		values[c++] = CStringGetTextDatum(p->name);
		values[c++] = CStringGetTextDatum(p->conninfo);
		for (j = 0; j < DbpoolNumSettings; j++)
		{
			const DbpoolSettingDesc *d = &DbpoolSettingDescs[j];

			if (d->type == DBPOOL_SETTING_INT)
				values[c] = Int32GetDatum(*DbpoolSettingInt(&p->settings, d));
			else
			{
				char	   *v = DbpoolSettingText(&p->settings, d);

				values[c] = CStringGetTextDatum(v);
				nulls[c] = (v[0] == '\0');
			}
			c++;
		}
		if (owner)
			values[c] = DirectFunctionCall1(namein, CStringGetDatum(owner));
		else
			nulls[c] = true;
		c++;
		values[c++] = CStringGetTextDatum(state_name(p->state));
		values[c++] = TimestampTzGetDatum(p->created_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
