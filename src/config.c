/*
 * config.c
 *		The worker's side of the configuration: when to read the tables
 *		dbpool_config and dbpool_grant, reading them, and reconciling the live
 *		pools with what they say (create, apply settings and conninfo, drop).
 *		The same read takes the enabled alert rules (alert_rules.c).
 *		The backend's side (asking for a read and waiting for it) is sync.c's;
 *		the writers are admin.c's functions and anything that edits the tables.
 *
 * A read is due when a backend asked for one (config_requested moved past
 * config_applied: a committed change, a lookup miss), at most once per
 * RECONCILE_MIN_GAP_MS; on a hot standby, when standby.c sees that replay
 * changed the tables (and once after promotion); and every REFRESH_MS
 * regardless, for what no commit announces (DROP EXTENSION, an owner's
 * superuser status, COMMIT PREPARED).  Reading writes nothing, so it works
 * the same during recovery.
 * It runs in a short transaction with lock_timeout 50 ms; a failed read keeps
 * the pools as they are and is retried after 1 s, doubling up to 16 s.
 *
 * The read runs as the bootstrap superuser with search_path pg_catalog,
 * pg_temp and every operator qualified, so nothing from a user schema runs.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

#define REFRESH_MS			60000	/* re-read the configuration at least this often */
#define REFRESH_NO_EXT_MS	10000	/* ... while the extension does not exist */
#define RETRY_MIN_MS		1000	/* after a failed read, doubling ... */
#define RETRY_MAX_MS		16000	/* ... up to this */
#define RECONCILE_MIN_GAP_MS 25		/* requested re-reads: at most one per this */

/* A pool's configuration as read from the table. */
typedef struct PoolConfig
{
	char		name[DBPOOL_NAME_LEN];
	char	   *conninfo;
	char	   *backup_conninfo;	/* NULL = none */
	DbpoolSettings settings;
	/* as the registry shows them: canonical UTF-8 (text.c), made inside the read */
	char	   *shown_conninfo;
	char	   *shown_backup_conninfo;	/* NULL = none */
	char	   *shown_text[DBPOOL_MAX_SETTINGS];	/* text settings by descriptor; NULL: none */
	Oid			owner;
	bool		owner_is_superuser;
	TimestampTz created_at;
	int			ngrantees;
	Oid			grantees[DBPOOL_MAX_GRANTEES];
} PoolConfig;

static TimestampTz next_refresh = 0;
static TimestampTz last_read_error_log = 0;
static TimestampTz retry_at = 0;	/* after a failed read, not before this */
static int	retry_ms = 0;
static TimestampTz last_reload = 0;
static bool replay_changed = false;	/* standby.c saw a replicated change not read yet */

/* A conninfo as shown (canonical UTF-8) with its password masked ("" for none). */
static char *
redact(const char *conninfo)
{
	char	   *redacted = NULL;
	MemoryContext old = CurrentMemoryContext;

	if (conninfo == NULL)
		return "";
	/* the table's conninfo was validated when written; redaction cannot fail */
	PG_TRY();
	{
		redacted = DbpoolRedactConninfo(conninfo);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		FlushErrorState();
		redacted = pstrdup("(invalid)");
	}
	PG_END_TRY();
	return redacted;
}

/*
 * Write a pool's configuration into its registry slot: its texts in their
 * canonical form, cut to their room with a mark.
 */
static void
publish_config(WorkerPool *pool, const PoolConfig *cfg)
{
	DbpoolPoolSlot *slot = &DbpoolShmem->pools[pool->slot];
	char	   *redacted = redact(cfg->shown_conninfo);
	char	   *backup = redact(cfg->shown_backup_conninfo);
	int			i;

	LWLockAcquire(DbpoolShmem->lock, LW_EXCLUSIVE);
	slot->in_use = true;
	slot->pool_id = pool->pool_id;
	strlcpy(slot->name, cfg->name, sizeof(slot->name));
	slot->owner = cfg->owner;
	slot->ngrantees = cfg->ngrantees;
	memcpy(slot->grantees, cfg->grantees, sizeof(Oid) * cfg->ngrantees);
	slot->created_at = cfg->created_at;
	slot->settings = cfg->settings;
	for (i = 0; i < DbpoolNumSettings; i++)
		if (cfg->shown_text[i])
			DbpoolTextStore(DbpoolSettingText(&slot->settings, &DbpoolSettingDescs[i]),
							DBPOOL_TEXT_SETTING_LEN, cfg->shown_text[i],
							strlen(cfg->shown_text[i]));
	DbpoolTextStore(slot->conninfo, sizeof(slot->conninfo), redacted, strlen(redacted));
	DbpoolTextStore(slot->backup_conninfo, sizeof(slot->backup_conninfo), backup,
					strlen(backup));
	LWLockRelease(DbpoolShmem->lock);
	DbpoolRegistryChanged();
	DbpoolPoolPublish(pool);
}

/* Start dropping a pool: waiters fail now, running queries get a grace period. */
static void
start_drop(WorkerPool *pool)
{
	dlist_mutable_iter it;

	pool->dropping = true;
	pool->drop_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DBPOOL_DROP_GRACE_MS);
	DbpoolWorkerDeadline(pool->drop_deadline);
	DbpoolPoolFailWaiters(pool, ERRCODE_UNDEFINED_OBJECT,
						  psprintf("pool \"%s\" was dropped", pool->name), NULL, NULL);
	dlist_foreach_modify(it, &pool->conns)
	{
		WorkerConn *conn = dlist_container(WorkerConn, pool_node, it.cur);

		if (conn->state == CONN_IDLE || conn->state == CONN_CONNECTING)
			DbpoolConnClose(conn, DBPOOL_CLOSE_DROP);
	}
	DbpoolPoolPublish(pool);
}

/* Create a pool from its configuration; NULL if the registry is full. */
static WorkerPool *
create_pool(const PoolConfig *cfg)
{
	WorkerPool *pool;
	int			slot = -1;
	int			i;

	for (i = 0; i < DbpoolMaxPools; i++)
		if (!DbpoolShmem->pools[i].in_use)
		{
			slot = i;
			break;
		}
	if (slot < 0)
	{
		ereport(WARNING,
				(errmsg("dbpool: pool \"%s\" is not loaded: dbpool.max_pools (%d) pools exist",
						cfg->name, DbpoolMaxPools)));
		return NULL;
	}
	pool = MemoryContextAllocZero(DbpoolWorkerContext, sizeof(WorkerPool));
	pool->slot = slot;
	pool->pool_id = DbpoolShmem->next_pool_id++;
	strlcpy(pool->name, cfg->name, sizeof(pool->name));
	dlist_init(&pool->conns);
	dlist_init(&pool->idle);
	dlist_init(&pool->waiters);
	pool->primary.pool = pool->backup.pool = pool;
	pool->backup.backup = true;
	pool->health_last = GetCurrentTimestamp();	/* the first probe after an interval */
	/* requests marked for the slot's previous pool are not for this one */
	pg_atomic_write_u32(&DbpoolShmem->pools[slot].ops_pending, 0);
	pg_atomic_write_u64(&DbpoolShmem->pools[slot].health_requested, 0);
	dlist_push_tail(&DbpoolWorkerPools, &pool->node);
	DbpoolStatsPoolCreated(pool);
	return pool;
}

/* Give target the conninfo of the table (NULL: none); whether it changed. */
static bool
set_target(WorkerPool *pool, WorkerTarget *target, const char *conninfo)
{
	if (target->conninfo == NULL ? conninfo == NULL :
		conninfo != NULL && strcmp(target->conninfo, conninfo) == 0)
		return false;
	/* a lookup of the old host names is of no use (apply_config closes its connections) */
	DbpoolConnForgetLookup(target);
	if (target->conninfo)
		pfree(target->conninfo);
	target->conninfo = NULL;
	if (conninfo == NULL)
		return true;
	target->conninfo = MemoryContextStrdup(DbpoolWorkerContext, conninfo);
	if (!DbpoolConninfoBuildParams(target->conninfo, &target->params, DbpoolWorkerContext))
		ereport(WARNING, (errmsg("dbpool: pool \"%s\" has an invalid %s", pool->name,
								 target->backup ? "backup_conninfo" : "conninfo")));
	return true;
}

/*
 * Apply one pool's configuration (new or changed) to the live pool.  A
 * change of conninfo replaces the connections to the primary; a pool on its
 * backup goes back to its primary when either conninfo changes.
 */
static void
apply_config(WorkerPool *pool, const PoolConfig *cfg)
{
	bool		demoted = pool->owner_is_superuser && !cfg->owner_is_superuser;
	bool		primary_changed = set_target(pool, &pool->primary, cfg->conninfo);
	bool		backup_changed = set_target(pool, &pool->backup, cfg->backup_conninfo);
	dlist_mutable_iter it;

	pool->settings = cfg->settings;
	pool->stmt_cache_allowed = DbpoolStmtCacheAllowed(cfg->settings.reset_query);
	pool->owner_is_superuser = cfg->owner_is_superuser;
	if (demoted)
		pool->conninfo_gen++;	/* its connections passed a check the owner would not now */
	if (pool->on_backup && (primary_changed || backup_changed))
		DbpoolPoolUsePrimary(pool);
	else if (primary_changed)
	{
		pool->conninfo_gen++;
		DbpoolPoolResetFailures(pool);
	}
	/* idle connections that no longer fit (old conninfo, smaller size) close now */
	dlist_foreach_modify(it, &pool->conns)
	{
		WorkerConn *conn = dlist_container(WorkerConn, pool_node, it.cur);
		DbpoolCloseReason reason;

		if (conn->state == CONN_IDLE && DbpoolConnShouldRetire(conn, GetCurrentTimestamp(), &reason))
			DbpoolConnClose(conn, reason);
		else if (conn->state == CONN_CONNECTING &&
				 (conn->conninfo_gen != pool->conninfo_gen ||
				  (conn->probe && primary_changed)))
			DbpoolConnClose(conn, DBPOOL_CLOSE_UNCOUNTED);
	}
	publish_config(pool, cfg);
	DbpoolPoolGrow(pool);		/* a bigger max_size serves waiters at once */
}

/* Make the live pools match the configuration table. */
static void
reconcile_pools(List *configs)
{
	dlist_mutable_iter it;
	ListCell   *lc;

	/* pools no longer configured are dropped */
	dlist_foreach_modify(it, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, it.cur);
		bool		found = false;

		if (pool->dropping)
			continue;
		foreach(lc, configs)
			if (strcmp(((PoolConfig *) lfirst(lc))->name, pool->name) == 0)
				found = true;
		if (!found)
			start_drop(pool);
	}
	foreach(lc, configs)
	{
		PoolConfig *cfg = lfirst(lc);
		WorkerPool *pool = DbpoolPoolFind(cfg->name);

		DbpoolResizeOverride(cfg->name, &cfg->settings);	/* a standby's own sizing */
		if (pool == NULL)
			pool = create_pool(cfg);
		if (pool != NULL)
			apply_config(pool, cfg);
	}
	DbpoolWorkerServeNeeded = true;
	DbpoolWorkerDeadline(GetCurrentTimestamp());	/* min_size at once */
}

/* Copy one row of the configuration query into a PoolConfig. */
static PoolConfig *
config_from_row(HeapTuple tup, TupleDesc desc)
{
	PoolConfig *cfg = palloc0(sizeof(PoolConfig));
	bool		isnull;
	Datum		d;
	int			i;

	strlcpy(cfg->name, SPI_getvalue(tup, desc, 1), sizeof(cfg->name));
	cfg->conninfo = SPI_getvalue(tup, desc, 2);
	cfg->shown_conninfo = DbpoolTextUtf8(cfg->conninfo, strlen(cfg->conninfo),
										 GetDatabaseEncoding());
	cfg->backup_conninfo = SPI_getvalue(tup, desc, 7);	/* NULL if null */
	if (cfg->backup_conninfo)
		cfg->shown_backup_conninfo = DbpoolTextUtf8(cfg->backup_conninfo,
													strlen(cfg->backup_conninfo),
													GetDatabaseEncoding());
	cfg->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
	cfg->owner_is_superuser = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
	cfg->created_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
	d = SPI_getbinval(tup, desc, 6, &isnull);
	if (!isnull)
	{
		ArrayType  *arr = DatumGetArrayTypeP(d);
		Datum	   *elems;
		int			n;

		deconstruct_array(arr, OIDOID, sizeof(Oid), true, TYPALIGN_INT, &elems, NULL, &n);
		cfg->ngrantees = Min(n, DBPOOL_MAX_GRANTEES);
		if (n > DBPOOL_MAX_GRANTEES)
			ereport(WARNING,
					(errmsg("dbpool: pool \"%s\" has %d usage grants; only %d are honoured",
							cfg->name, n, DBPOOL_MAX_GRANTEES),
					 errhint("Grant usage to a group role instead.")));
		for (i = 0; i < cfg->ngrantees; i++)
			cfg->grantees[i] = DatumGetObjectId(elems[i]);
	}
	DbpoolSettingsDefaults(&cfg->settings);
	for (i = 0; i < DbpoolNumSettings; i++)
	{
		const DbpoolSettingDesc *sd = &DbpoolSettingDescs[i];

		d = SPI_getbinval(tup, desc, 8 + i, &isnull);
		if (isnull)
			continue;
		if (sd->type == DBPOOL_SETTING_INT)
			*DbpoolSettingInt(&cfg->settings, sd) = DatumGetInt32(d);
		else if (sd->type == DBPOOL_SETTING_REAL)
			*DbpoolSettingReal(&cfg->settings, sd) = DatumGetFloat8(d);
		else if (sd->type == DBPOOL_SETTING_BOOL)
			*DbpoolSettingBool(&cfg->settings, sd) = DatumGetBool(d);
		else
		{
			char	   *v = TextDatumGetCString(d);

			strlcpy(DbpoolSettingText(&cfg->settings, sd), v, DBPOOL_TEXT_SETTING_LEN);
			cfg->shown_text[i] = DbpoolTextUtf8(v, strlen(v), GetDatabaseEncoding());
		}
	}
	return cfg;
}

/* The query that reads the configuration of every pool. */
static char *
config_query(const char *schema)
{
	StringInfoData sql;
	const char *qs = schema;	/* already quoted */
	int			i;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT c.name, c.conninfo, c.owner::pg_catalog.oid, "
					 "COALESCE((SELECT r.rolsuper FROM pg_catalog.pg_authid r "
					 "WHERE r.oid OPERATOR(pg_catalog.=) c.owner::pg_catalog.oid), false), "
					 "c.created_at, "
					 "ARRAY(SELECT g.role::pg_catalog.oid FROM %s.dbpool_grant g "
					 "WHERE g.pool OPERATOR(pg_catalog.=) c.name), c.backup_conninfo",
					 qs);
	for (i = 0; i < DbpoolNumSettings; i++)
		appendStringInfo(&sql, ", c.%s", DbpoolSettingDescs[i].name);
	appendStringInfo(&sql, " FROM %s.dbpool_config c ORDER BY c.name", qs);
	return sql.data;
}

/* What read_config_in gets and fills. */
typedef struct ConfigRead
{
	MemoryContext cxt;
	List	   *configs;
	bool		ext_missing;
	DbpoolAlertRule *rules;
	int			nrules;
} ConfigRead;

/* Read every pool's configuration and the alert rules (inside DbpoolWorkerRun). */
static bool
read_config_in(void *arg)
{
	ConfigRead *r = arg;
	char	   *schema = DbpoolExtensionSchema();
	uint64		i;

	if (schema == NULL)
	{
		r->ext_missing = true;
		return true;
	}
	if (SPI_execute(config_query(schema), true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the dbpool configuration");
	for (i = 0; i < SPI_processed; i++)
	{
		MemoryContext spi = MemoryContextSwitchTo(r->cxt);

		r->configs = lappend(r->configs,
							 config_from_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc));
		MemoryContextSwitchTo(spi);
	}
	r->rules = DbpoolAlertRulesRead(schema, r->cxt, &r->nrules);
	return true;
}

/*
 * Read the configuration table into *configs (allocated in cxt).  False if
 * the read failed; *ext_missing tells whether the extension is absent.
 */
static bool
read_config(MemoryContext cxt, List **configs, bool *ext_missing, DbpoolAlertRule **rules,
			int *nrules)
{
	ConfigRead	r = {cxt, NIL, false, NULL, 0};
	ErrorData  *edata;

	if (!DbpoolWorkerRun(read_config_in, &r, "dbpool: reading the pool configuration", &edata))
	{
		if (last_read_error_log == 0 ||
			TimestampDifferenceExceeds(last_read_error_log, GetCurrentTimestamp(), DBPOOL_LOG_INTERVAL_MS))
		{
			ereport(WARNING,
					(errmsg("dbpool: could not read the pool configuration: %s",
							edata ? edata->message : "unknown error"),
					 errdetail("The worker keeps the pools it has and tries again.")));
			last_read_error_log = GetCurrentTimestamp();
		}
		if (edata)
			FreeErrorData(edata);
		return false;
	}
	*configs = r.configs;
	*ext_missing = r.ext_missing;
	*rules = r.rules;
	*nrules = r.nrules;
	return true;
}

/* Read the configuration and make the pools match it. */
static void
reload(void)
{
	uint64		target = pg_atomic_read_u64(&DbpoolShmem->config_requested);
	MemoryContext cxt = AllocSetContextCreate(DbpoolWorkerContext, "dbpool reconcile",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	List	   *configs;
	bool		ext_missing;
	DbpoolAlertRule *rules;
	int			nrules;
	TimestampTz now = GetCurrentTimestamp();

	if (!read_config(cxt, &configs, &ext_missing, &rules, &nrules))
	{
		retry_ms = retry_ms == 0 ? RETRY_MIN_MS : Min(retry_ms * 2, RETRY_MAX_MS);
		retry_at = TimestampTzPlusMilliseconds(now, retry_ms);
		DbpoolWorkerDeadline(retry_at);
		MemoryContextSwitchTo(old);
		MemoryContextDelete(cxt);
		return;
	}
	if (ext_missing && DbpoolWaitLogDue())
		ereport(LOG,
				(errmsg("dbpool: waiting for CREATE EXTENSION dbpool in database \"%s\"",
						DbpoolDatabase)));
	reconcile_pools(configs);
	DbpoolAlertRulesSet(rules, nrules);
	replay_changed = false;
	retry_at = 0;
	retry_ms = 0;
	pg_atomic_write_u64(&DbpoolShmem->config_applied, target);
	next_refresh = TimestampTzPlusMilliseconds(now, ext_missing ? REFRESH_NO_EXT_MS : REFRESH_MS);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}

/*
 * Re-read the configuration if a backend asked for it, replay changed it
 * (standby.c) or the refresh is due; a request made within
 * RECONCILE_MIN_GAP_MS of the last read waits for the gap (all pending
 * requests are served by one read).
 */
void
DbpoolConfigMaybeReload(TimestampTz now)
{
	bool		requested = pg_atomic_read_u64(&DbpoolShmem->config_requested) >
		pg_atomic_read_u64(&DbpoolShmem->config_applied);
	TimestampTz gap_end = TimestampTzPlusMilliseconds(last_reload, RECONCILE_MIN_GAP_MS);

	if (DbpoolStandbyConfigChanged(now))
		replay_changed = true;
	if (requested && now < gap_end)
		DbpoolWorkerDeadline(gap_end);
	else if ((requested || replay_changed || now >= next_refresh) && now >= retry_at)
	{
		last_reload = now;
		reload();
	}
}
