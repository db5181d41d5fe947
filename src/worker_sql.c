/*
 * worker_sql.c
 *		The worker's own transactions, each short and on its own
 *		(DbpoolWorkerRun): the configuration read (config.c), the client texts
 *		of leak detection (leak.c), and the writes: NOTIFY dbpool_alerts
 *		(alerts.c) and a pool's new max_size in dbpool_config (resize.c),
 *		never on a hot standby (the callers check).
 *
 * Each runs with lock_timeout 50 ms and search_path pg_catalog, pg_temp.  An
 * error (a lock held too long, a full notification queue at commit, ...) is
 * caught: the transaction is aborted and the caller told; the worker and
 * its state go on.
 *
 * How PostgreSQL 15 delivers a NOTIFY from a background worker:
 * Async_Notify queues it in the transaction; PreCommit_Notify writes it to
 * the shared queue (this needs an xid, which it assigns, and may fail when the
 * queue is full), and AtCommit_Notify signals the listening backends, all
 * inside CommitTransactionCommand.  Nothing else is needed (PostgreSQL 15 has
 * no ProcessCompletedNotifies); listeners must be connected to
 * dbpool.database, as notifications stay in their database.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"

#include "dbpool.h"
#include "worker.h"

#define WORKER_SQL_LOCK_TIMEOUT "50"	/* ms the worker's SQL may wait for a lock */

/*
 * Run fn(arg) in a transaction of the worker's own: SPI connected, a
 * snapshot, lock_timeout 50 ms, search_path pg_catalog, pg_temp (the worker
 * runs as superuser: nothing from user schemas may be resolved), and
 * activity shown in pg_stat_activity meanwhile.  fn's result is returned.
 * An error is caught: the transaction is aborted and false returned, with a
 * copy of the error in *error (the caller frees it) when error is not NULL.
 * Every transaction of the worker runs through here: the configuration read
 * (config.c), leak detection's client texts (leak.c), NOTIFY and max_size
 * writes (below).
 */
bool
DbpoolWorkerRun(DbpoolWorkerRunFn fn, void *arg, const char *activity, ErrorData **error)
{
	MemoryContext old = CurrentMemoryContext;
	volatile bool ok = true;

	if (error)
		*error = NULL;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		(void) set_config_option("lock_timeout", WORKER_SQL_LOCK_TIMEOUT, PGC_SUSET,
								 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
		(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		pgstat_report_activity(STATE_RUNNING, activity);
		ok = fn(arg);
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
		if (error)
			*error = edata;
		else
			FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	pgstat_report_activity(STATE_IDLE, NULL);
	return ok;
}

/* DbpoolWorkerRun for a write: an error is logged (WARNING) and the worker goes on. */
static bool
run_guarded(DbpoolWorkerRunFn fn, void *arg, const char *what)
{
	ErrorData  *edata;

	if (DbpoolWorkerRun(fn, arg, what, &edata))
		return true;
	if (edata)
	{
		ereport(WARNING,
				(errmsg("dbpool: could not %s: %s", what, edata->message),
				 errdetail("The dbpool worker goes on without it.")));
		FreeErrorData(edata);
	}
	return false;
}

typedef struct NotifyArgs
{
	const char *channel;
	const char *payload;
} NotifyArgs;

/* Queue the notification; it is sent when the transaction commits. */
static bool
do_notify(void *arg)
{
	NotifyArgs *a = arg;

	Async_Notify(a->channel, a->payload);
	return true;
}

/* NOTIFY channel, payload, in a transaction of its own; false if it failed (logged). */
bool
DbpoolWorkerNotify(const char *channel, const char *payload)
{
	NotifyArgs	a = {channel, payload};

	return run_guarded(do_notify, &a, "send NOTIFY dbpool_alerts");
}

typedef struct MaxSizeArgs
{
	const char *pool;
	int			old_max;
	int			new_max;
} MaxSizeArgs;

/* UPDATE the pool's row, only if its max_size is still old_max. */
static bool
do_write_max_size(void *arg)
{
	MaxSizeArgs *a = arg;
	char	   *schema = DbpoolExtensionSchema();
	Oid			types[3] = {TEXTOID, INT4OID, INT4OID};
	Datum		values[3];

	if (schema == NULL)
		return false;
	values[0] = CStringGetTextDatum(a->pool);
	values[1] = Int32GetDatum(a->old_max);
	values[2] = Int32GetDatum(a->new_max);
	if (SPI_execute_with_args(psprintf("UPDATE %s.dbpool_config SET max_size = $3 "
									   "WHERE name OPERATOR(pg_catalog.=) $1 "
									   "AND max_size OPERATOR(pg_catalog.=) $2", schema),
							  3, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "dbpool: could not update the pool configuration");
	return SPI_processed == 1;
}

/*
 * Write max_size new_max for pool to dbpool_config, if it is still old_max
 * there; false if it was not written (changed meanwhile, or an error, logged).
 * The table's trigger makes the worker re-read the configuration at commit.
 */
bool
DbpoolWorkerWriteMaxSize(const char *pool, int old_max, int new_max)
{
	MaxSizeArgs a = {pool, old_max, new_max};

	return run_guarded(do_write_max_size, &a, "write a pool's max_size to dbpool_config");
}
