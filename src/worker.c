/*
 * worker.c
 *		The dbpool worker: start-up, the event loop, and reading the pool
 *		configuration table.
 *
 * One process, one loop.  It waits on a WaitEventSet holding its latch, the
 * postmaster's death and every connection's socket, with a timeout from the
 * earliest deadline.  On each wake it: reads the configuration if a change
 * was committed, drives every connection that has socket events (first, so
 * that a finished connection serves the next waiter at once), takes requests
 * from the channels the pending bitmap names, retries responses that a full
 * queue held back, and runs housekeeping when a deadline is due.
 *
 * It never waits on the network (non-blocking libpq; cancels in threads,
 * cancel.c) and never raises an ERROR for a remote or client problem.  Its
 * blocking work is the short read of the configuration table, done with a
 * 50 ms lock_timeout and retries backing off to 16 s, so that a lock on the
 * table stalls the pools for at most 50 ms now and then, and the
 * host name lookup inside PQconnectStartParams (use hostaddr to avoid it).
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/procsignal.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

#define TICK_MS				1000
#define REFRESH_MS			60000	/* re-read the configuration at least this often */
#define REFRESH_NO_EXT_MS	10000	/* ... while the extension does not exist */
#define RETRY_MIN_MS		1000	/* after a failed read, doubling ... */
#define RETRY_MAX_MS		16000	/* ... up to this */
#define CONFIG_LOCK_TIMEOUT	"50"	/* ms the read may wait for a lock on the table */
#define RECONCILE_MIN_GAP_MS 25		/* requested re-reads: at most one per this */
#define WAIT_LOG_INTERVAL_MS 60000

PGDLLEXPORT void DbpoolWorkerMain(Datum main_arg);

MemoryContext DbpoolWorkerContext = NULL;
dlist_head	DbpoolWorkerPools = DLIST_STATIC_INIT(DbpoolWorkerPools);
int			DbpoolWorkerTotalConns = 0;
bool		DbpoolWorkerServeNeeded = false;
bool		DbpoolWorkerCapBlocked = false;	/* a pool waits for room under the global cap */

static bool sockets_changed = true;
static dlist_head blocked_channels = DLIST_STATIC_INIT(blocked_channels);
static TimestampTz next_tick = 0;
static WaitEventSet *wait_set = NULL;
static TimestampTz next_refresh = 0;
static TimestampTz last_read_error_log = 0;
static TimestampTz retry_at = 0;	/* after a failed read, not before this */
static int	retry_ms = 0;
static TimestampTz last_reconcile = 0;
static MemoryContext loop_cxt = NULL;

/* Connections changed sockets: rebuild the wait set before the next wait. */
void
DbpoolWorkerSocketsChanged(void)
{
	sockets_changed = true;
}

/* A channel's queue is full: retry its response when the backend reads. */
void
DbpoolWorkerBlocked(WorkerChannel *ch)
{
	dlist_push_tail(&blocked_channels, &ch->blocked_node);
}

/* Make sure housekeeping runs no later than t. */
void
DbpoolWorkerDeadline(TimestampTz t)
{
	if (t != 0 && (next_tick == 0 || t < next_tick))
		next_tick = t;
}

/* True at most once a minute, across worker restarts, for "still waiting" lines. */
static bool
wait_log_due(void)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		due;

	SpinLockAcquire(&DbpoolShmem->mutex);
	due = DbpoolShmem->last_wait_log == 0 ||
		TimestampDifferenceExceeds(DbpoolShmem->last_wait_log, now, WAIT_LOG_INTERVAL_MS);
	if (due)
		DbpoolShmem->last_wait_log = now;
	SpinLockRelease(&DbpoolShmem->mutex);
	return due;
}

/* Whether dbpool.database exists, by a heap scan (no database selected: no index scans). */
static bool
database_exists(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	StartTransactionCommand();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (!found && (tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
		found = strcmp(NameStr(((Form_pg_database) GETSTRUCT(tup))->datname), DbpoolDatabase) == 0;
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return found;
}

/*
 * Without a database yet: wait until dbpool.database exists, then exit so
 * that the restarted worker connects to it.  Connecting to a missing database
 * would be FATAL and loop through restarts.
 */
static void
wait_for_database(void)
{
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	for (;;)
	{
		if (database_exists())
		{
			SpinLockAcquire(&DbpoolShmem->mutex);
			DbpoolShmem->database_checked = true;
			SpinLockRelease(&DbpoolShmem->mutex);
			proc_exit(1);		/* restarted after bgw_restart_time (1 s), connected to it */
		}
		if (wait_log_due())
			ereport(LOG,
					(errmsg("dbpool: waiting for database \"%s\" (dbpool.database) to be created",
							DbpoolDatabase)));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 2000,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (ShutdownRequestPending)
			proc_exit(1);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}

/* Exit callback: stop serving, close connections, release every channel. */
static void
worker_exit(int code, Datum arg)
{
	SpinLockAcquire(&DbpoolShmem->mutex);
	DbpoolShmem->worker_pid = 0;
	DbpoolShmem->worker_proc = NULL;
	SpinLockRelease(&DbpoolShmem->mutex);
	DbpoolPoolCloseAll();
	DbpoolWorkerDetachAll();
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

		d = SPI_getbinval(tup, desc, 7 + i, &isnull);
		if (isnull)
			continue;
		if (sd->type == DBPOOL_SETTING_INT)
			*DbpoolSettingInt(&cfg->settings, sd) = DatumGetInt32(d);
		else
			strlcpy(DbpoolSettingText(&cfg->settings, sd), TextDatumGetCString(d),
					DBPOOL_TEXT_SETTING_LEN);
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
					 "WHERE g.pool OPERATOR(pg_catalog.=) c.name)",
					 qs);
	for (i = 0; i < DbpoolNumSettings; i++)
		appendStringInfo(&sql, ", c.%s", DbpoolSettingDescs[i].name);
	appendStringInfo(&sql, " FROM %s.dbpool_config c ORDER BY c.name", qs);
	return sql.data;
}

/*
 * Read the configuration table into *configs (allocated in cxt).  False if
 * the read failed; *ext_missing tells whether the extension is absent.
 */
static bool
read_config(MemoryContext cxt, List **configs, bool *ext_missing)
{
	MemoryContext old = CurrentMemoryContext;
	volatile bool ok = true;

	*configs = NIL;
	*ext_missing = false;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		char	   *schema;

		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		(void) set_config_option("lock_timeout", CONFIG_LOCK_TIMEOUT, PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		/* we run as superuser: nothing from user schemas may be resolved */
		(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		pgstat_report_activity(STATE_RUNNING, "dbpool: reading the pool configuration");
		schema = DbpoolExtensionSchema();
		if (schema == NULL)
			*ext_missing = true;
		else
		{
			uint64		i;

			if (SPI_execute(config_query(schema), true, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not read the dbpool configuration");
			for (i = 0; i < SPI_processed; i++)
			{
				MemoryContext spi = MemoryContextSwitchTo(cxt);

				*configs = lappend(*configs,
								   config_from_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc));
				MemoryContextSwitchTo(spi);
			}
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(old);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		if (last_read_error_log == 0 ||
			TimestampDifferenceExceeds(last_read_error_log, GetCurrentTimestamp(), WAIT_LOG_INTERVAL_MS))
		{
			ereport(WARNING,
					(errmsg("dbpool: could not read the pool configuration: %s", edata->message),
					 errdetail("The worker keeps the pools it has and tries again.")));
			last_read_error_log = GetCurrentTimestamp();
		}
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	pgstat_report_activity(STATE_IDLE, NULL);
	return ok;
}

/* Read the configuration and make the pools match it. */
static void
reconcile(void)
{
	uint64		target = pg_atomic_read_u64(&DbpoolShmem->config_requested);
	MemoryContext cxt = AllocSetContextCreate(DbpoolWorkerContext, "dbpool reconcile",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	List	   *configs;
	bool		ext_missing;
	TimestampTz now = GetCurrentTimestamp();

	if (!read_config(cxt, &configs, &ext_missing))
	{
		retry_ms = retry_ms == 0 ? RETRY_MIN_MS : Min(retry_ms * 2, RETRY_MAX_MS);
		retry_at = TimestampTzPlusMilliseconds(now, retry_ms);
		DbpoolWorkerDeadline(retry_at);
		MemoryContextSwitchTo(old);
		MemoryContextDelete(cxt);
		return;
	}
	if (ext_missing && wait_log_due())
		ereport(LOG,
				(errmsg("dbpool: waiting for CREATE EXTENSION dbpool in database \"%s\"",
						DbpoolDatabase)));
	DbpoolPoolReconcile(configs);
	retry_at = 0;
	retry_ms = 0;
	pg_atomic_write_u64(&DbpoolShmem->config_applied, target);
	next_refresh = TimestampTzPlusMilliseconds(now, ext_missing ? REFRESH_NO_EXT_MS : REFRESH_MS);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}

/* Build the wait set afresh: latch, postmaster death, each socket that wants events. */
static void
rebuild_wait_set(void)
{
	dlist_iter	pit;

	if (wait_set)
		FreeWaitEventSet(wait_set);
	wait_set = CreateWaitEventSet(DbpoolWorkerContext, 2 + DbpoolWorkerTotalConns);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	dlist_foreach(pit, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, pit.cur);
		dlist_iter	cit;

		dlist_foreach(cit, &pool->conns)
		{
			WorkerConn *conn = dlist_container(WorkerConn, pool_node, cit.cur);

			conn->wait_events = DbpoolConnWantedEvents(conn);
			conn->wait_pos = conn->wait_events == 0 ? -1 :
				AddWaitEventToSet(wait_set, conn->wait_events, conn->sock, NULL, conn);
		}
	}
	sockets_changed = false;
}

/* Bring the wait set in line with what each connection wants, rebuilding if needed. */
static void
update_wait_set(void)
{
	dlist_iter	pit;

	if (!sockets_changed)
	{
		dlist_foreach(pit, &DbpoolWorkerPools)
		{
			WorkerPool *pool = dlist_container(WorkerPool, node, pit.cur);
			dlist_iter	cit;

			dlist_foreach(cit, &pool->conns)
			{
				WorkerConn *conn = dlist_container(WorkerConn, pool_node, cit.cur);
				uint32		want = DbpoolConnWantedEvents(conn);

				if (want == conn->wait_events)
					continue;
				if (want == 0 || conn->wait_pos < 0)
				{
					sockets_changed = true;
					break;
				}
				ModifyWaitEvent(wait_set, conn->wait_pos, want, NULL);
				conn->wait_events = want;
			}
			if (sockets_changed)
				break;
		}
	}
	if (sockets_changed)
		rebuild_wait_set();
}

/* Drive every connection that the last wait reported (or that a cancel thread finished). */
static void
process_connections(void)
{
	dlist_mutable_iter pit;

	dlist_foreach_modify(pit, &DbpoolWorkerPools)
	{
		WorkerPool *pool = dlist_container(WorkerPool, node, pit.cur);
		dlist_mutable_iter cit;

		dlist_foreach_modify(cit, &pool->conns)
		{
			WorkerConn *conn = dlist_container(WorkerConn, pool_node, cit.cur);

			if (DbpoolAwaitingCancels > 0 && DbpoolConnPollCancel(conn))
				continue;
			if (conn->readable || conn->writable)
				DbpoolConnProcess(conn);
		}
	}
}

/* Retry held-back responses; a channel that drains lets its connection read on. */
static void
process_blocked(void)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &blocked_channels)
	{
		WorkerChannel *ch = dlist_container(WorkerChannel, blocked_node, it.cur);

		if (!DbpoolChannelFlush(ch))
			continue;
		if (ch->blocked)
		{
			dlist_delete(&ch->blocked_node);
			ch->blocked = false;
		}
		if (ch->conn)
			DbpoolConnProcess(ch->conn);
	}
}

/* Entry point of the dbpool background worker. */
void
DbpoolWorkerMain(Datum main_arg)
{
	WaitEvent	events[64];
	bool		checked;
	int			i;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	SpinLockAcquire(&DbpoolShmem->mutex);
	checked = DbpoolShmem->database_checked;
	DbpoolShmem->database_checked = false;	/* set again once connected */
	SpinLockRelease(&DbpoolShmem->mutex);
	if (!checked)
		wait_for_database();

	BackgroundWorkerInitializeConnection(DbpoolDatabase, NULL, 0);
	pgstat_report_appname("dbpool worker");

	/*
	 * libpq reads these from the environment the postmaster was started with
	 * and would override the remote session settings dbpool relies on
	 * (application_name, DateStyle for parsing values).
	 */
	unsetenv("PGAPPNAME");
	unsetenv("PGDATESTYLE");
	unsetenv("PGGEQO");

	DbpoolWorkerContext = AllocSetContextCreate(TopMemoryContext, "dbpool worker",
												ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(DbpoolWorkerContext);
	DbpoolWorkerChannelsInit();
	DbpoolStatsConnInit();

	/* a previous worker's pools are gone with it: start empty and read the table */
	LWLockAcquire(DbpoolShmem->lock, LW_EXCLUSIVE);
	for (i = 0; i < DbpoolMaxPools; i++)
		DbpoolShmem->pools[i].in_use = false;
	LWLockRelease(DbpoolShmem->lock);
	DbpoolRegistryChanged();

	before_shmem_exit(worker_exit, (Datum) 0);
	SpinLockAcquire(&DbpoolShmem->mutex);
	DbpoolShmem->database_checked = true;
	DbpoolShmem->worker_gen++;
	DbpoolShmem->worker_proc = MyProc;
	DbpoolShmem->worker_pid = MyProcPid;
	SpinLockRelease(&DbpoolShmem->mutex);
	ereport(LOG, (errmsg("dbpool worker started (database \"%s\")", DbpoolDatabase)));

	/* what one iteration allocates in passing (error texts, ...) is freed at the next */
	loop_cxt = AllocSetContextCreate(DbpoolWorkerContext, "dbpool loop", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		TimestampTz now;
		long		timeout;
		int			n;

		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
		update_wait_set();
		now = GetCurrentTimestamp();
		if (next_tick == 0)
			next_tick = TimestampTzPlusMilliseconds(now, TICK_MS);
		timeout = next_tick <= now ? 0 : (long) ((next_tick - now + 999) / 1000);
		timeout = Min(timeout, TICK_MS);
		n = WaitEventSetWait(wait_set, timeout, events, lengthof(events), PG_WAIT_EXTENSION);
		for (i = 0; i < n; i++)
		{
			WaitEvent  *ev = &events[i];

			if (ev->events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			else if (ev->user_data)
			{
				WorkerConn *conn = (WorkerConn *) ev->user_data;

				if (ev->events & WL_SOCKET_READABLE)
					conn->readable = true;
				if (ev->events & WL_SOCKET_WRITEABLE)
					conn->writable = true;
			}
		}
		if (ShutdownRequestPending)
			break;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		/*
		 * Serve the interrupts other backends wait for (DROP DATABASE waits
		 * for every process to absorb a barrier), without CHECK_FOR_INTERRUPTS:
		 * a cancel aimed at the worker must not end it and every pool with it.
		 */
		if (ProcSignalBarrierPending)
			ProcessProcSignalBarrier();
		if (LogMemoryContextPending)
			ProcessLogMemoryContextInterrupt();
		QueryCancelPending = false;

		now = GetCurrentTimestamp();
		/*
		 * A committed change or a lookup miss asks for a re-read; misses are
		 * anyone's to make, so requests are served at most once per
		 * RECONCILE_MIN_GAP_MS (all pending ones at once).
		 */
		if (pg_atomic_read_u64(&DbpoolShmem->config_requested) >
			pg_atomic_read_u64(&DbpoolShmem->config_applied) &&
			now < TimestampTzPlusMilliseconds(last_reconcile, RECONCILE_MIN_GAP_MS))
			DbpoolWorkerDeadline(TimestampTzPlusMilliseconds(last_reconcile, RECONCILE_MIN_GAP_MS));
		else if ((now >= next_refresh ||
				  pg_atomic_read_u64(&DbpoolShmem->config_requested) >
				  pg_atomic_read_u64(&DbpoolShmem->config_applied)) &&
				 now >= retry_at)
		{
			last_reconcile = now;
			reconcile();
		}

		/*
		 * Results first: a connection that finishes serves the next waiter at
		 * once, so the foreign server is not left idle while we read new
		 * requests.
		 */
		process_connections();
		DbpoolWorkerProcessPending();
		process_blocked();
		DbpoolStatsApplyResets();
		if (DbpoolWorkerServeNeeded)
			DbpoolPoolServeAll();

		now = GetCurrentTimestamp();
		if (now >= next_tick)
		{
			next_tick = TimestampTzPlusMilliseconds(now, TICK_MS);
			DbpoolPoolTick(now);
			if (DbpoolWorkerServeNeeded)
				DbpoolPoolServeAll();
		}
	}

	ereport(LOG, (errmsg("dbpool worker shutting down")));
	/* exit 1 so that the postmaster restarts us (it does not while shutting down) */
	proc_exit(1);
}
