/*
 * worker.c
 *		The dbpool worker: start-up (waiting for dbpool.database to exist),
 *		the exit callback, and the event loop with its WaitEventSet.
 *
 * One process, one loop.  It waits on a WaitEventSet holding its latch, the
 * postmaster's death and every connection's socket, with a timeout from the
 * earliest deadline (DbpoolWorkerDeadline), and then runs its phases in
 * order (see DbpoolWorkerMain): signals and interrupts, the configuration
 * (config.c), connections whose host name lookup ended (conn.c, resolve.c),
 * results of connections with socket events (first, so that a
 * finished connection serves the next waiter at once: conn*.c), new requests
 * from the channels the pending bitmap names (channel_worker.c), responses a
 * full queue held back, statistics resets, manual operations (ops.c), the
 * health checks dbpool_health() asked for (health.c), pools waiting for room
 * under the global cap (pool.c), and housekeeping when a deadline is due
 * (janitor.c).
 * After large values were freed, the next iteration gives free heap memory
 * back to the system (trim_if_freed_large).
 *
 * It never waits on the network (non-blocking libpq; cancels and host name
 * lookups in threads, cancel.c and resolve.c) and never raises an ERROR for
 * a remote or client problem.  Its blocking work is the short read of the
 * configuration table (config.c) and its short write transactions (NOTIFY,
 * max_size changes: worker_sql.c).
 */
#include "postgres.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/procsignal.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

#define TICK_MS				1000

PGDLLEXPORT void DbpoolWorkerMain(Datum main_arg);

MemoryContext DbpoolWorkerContext = NULL;
dlist_head	DbpoolWorkerPools = DLIST_STATIC_INIT(DbpoolWorkerPools);
int			DbpoolWorkerTotalConns = 0;
bool		DbpoolWorkerServeNeeded = false;
bool		DbpoolWorkerCapBlocked = false;	/* a pool waits for room under the global cap */
bool		DbpoolWorkerWaitCapped = false;	/* the last wait returned as many events as it could take */

static bool sockets_changed = true;
static dlist_head blocked_channels = DLIST_STATIC_INIT(blocked_channels);

/*
 * The loop's work follows the connections that have something to do, not all
 * of them: ready_conns holds those the last wait reported (or that must be
 * driven without an event), dirty_conns those whose wanted socket events may
 * have changed since they were registered.  A connection leaves both when it
 * is closed (DbpoolWorkerConnForget).
 */
static dlist_head ready_conns = DLIST_STATIC_INIT(ready_conns);
static dlist_head dirty_conns = DLIST_STATIC_INIT(dirty_conns);
static TimestampTz next_tick = 0;
static WaitEventSet *wait_set = NULL;
static MemoryContext loop_cxt = NULL;
static bool freed_large = false;
static int	freed_conns = 0;	/* connections closed since the last trim */

/* Connections changed sockets: rebuild the wait set before the next wait. */
void
DbpoolWorkerSocketsChanged(void)
{
	sockets_changed = true;
}

/* Drive conn in this loop iteration (its socket was reported, or it must go on without an event). */
void
DbpoolWorkerConnReady(WorkerConn *conn)
{
	if (!conn->on_ready)
	{
		dlist_push_tail(&ready_conns, &conn->ready_node);
		conn->on_ready = true;
	}
}

/* conn's wanted socket events may have changed: look at them before the next wait. */
void
DbpoolWorkerConnDirty(WorkerConn *conn)
{
	if (!conn->on_dirty)
	{
		dlist_push_tail(&dirty_conns, &conn->dirty_node);
		conn->on_dirty = true;
	}
}

/* conn is being closed: take it off the ready and dirty lists. */
void
DbpoolWorkerConnForget(WorkerConn *conn)
{
	if (conn->on_ready)
		dlist_delete(&conn->ready_node);
	if (conn->on_dirty)
		dlist_delete(&conn->dirty_node);
	conn->on_ready = conn->on_dirty = false;
}

/* A channel's queue is full: retry its response when the backend reads. */
void
DbpoolWorkerBlocked(WorkerChannel *ch)
{
	if (ch->conn)
		DbpoolWorkerConnDirty(ch->conn);	/* it stops reading its socket */
	dlist_push_tail(&blocked_channels, &ch->blocked_node);
}

/* Make sure housekeeping runs no later than t. */
void
DbpoolWorkerDeadline(TimestampTz t)
{
	if (t != 0 && (next_tick == 0 || t < next_tick))
		next_tick = t;
}

/* Something large was freed: give free memory back to the system before the next wait. */
void
DbpoolWorkerFreedLarge(void)
{
	freed_large = true;
}

/*
 * A connection was closed: each holds some 30 kB of libpq buffers and
 * statement cache, so closing many (a pool of hundreds dropped or shrunk)
 * frees enough heap to be worth giving back.
 */
void
DbpoolWorkerFreedConn(void)
{
	if (++freed_conns >= 64)
	{
		freed_conns = 0;
		freed_large = true;
	}
}

/*
 * After large buffers were freed: glibc keeps freed heap memory for reuse
 * unless told (only chunks above its mmap threshold go back by themselves),
 * so the worker would keep the size of the largest values it ever held.
 * Not done on every iteration: malloc_trim walks the whole heap.
 */
static void
trim_if_freed_large(void)
{
	if (!freed_large)
		return;
	freed_large = false;
	freed_conns = 0;
#ifdef __GLIBC__
	(void) malloc_trim(0);
#endif
}

/* True at most once a minute, across worker restarts, for "still waiting" lines. */
bool
DbpoolWaitLogDue(void)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		due;

	SpinLockAcquire(&DbpoolShmem->mutex);
	due = DbpoolShmem->last_wait_log == 0 ||
		TimestampDifferenceExceeds(DbpoolShmem->last_wait_log, now, DBPOOL_LOG_INTERVAL_MS);
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
		if (DbpoolWaitLogDue())
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

/*
 * Exit callback: stop serving, cancel the remote commands in flight, close
 * connections, release every channel (its clients get their error now),
 * then wait a bounded time for the cancels to be delivered.
 */
static void
worker_exit(int code, Datum arg)
{
	SpinLockAcquire(&DbpoolShmem->mutex);
	DbpoolShmem->worker_pid = 0;
	DbpoolShmem->worker_proc = NULL;
	SpinLockRelease(&DbpoolShmem->mutex);
	DbpoolExitCancelStart();
	DbpoolPoolCloseAll();
	DbpoolWorkerDetachAll();
	DbpoolExitCancelWait();
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

/*
 * Bring the wait set in line with what each dirty connection wants: modify
 * its event in place, or rebuild the set when a socket leaves or joins it.
 */
static void
update_wait_set(void)
{
	while (!dlist_is_empty(&dirty_conns))
	{
		WorkerConn *conn = dlist_container(WorkerConn, dirty_node, dlist_pop_head_node(&dirty_conns));
		uint32		want;

		conn->on_dirty = false;
		if (sockets_changed)
			continue;			/* the rebuild looks at every connection */
		want = DbpoolConnWantedEvents(conn);
		if (want == conn->wait_events)
			continue;
		if (want == 0 || conn->wait_pos < 0)
		{
			sockets_changed = true;
			continue;
		}
		ModifyWaitEvent(wait_set, conn->wait_pos, want, NULL);
		conn->wait_events = want;
	}
	if (sockets_changed)
		rebuild_wait_set();
}

/*
 * Drive the connections that are ready: those the last wait reported, and
 * those that must go on without an event.  Only while a cancel is queued or
 * awaited does this look at every connection (to retry or finish them).
 */
static void
process_connections(void)
{
	if (DbpoolCancelsQueued > 0 || DbpoolAwaitingCancels > 0)
	{
		dlist_mutable_iter pit;

		dlist_foreach_modify(pit, &DbpoolWorkerPools)
		{
			WorkerPool *pool = dlist_container(WorkerPool, node, pit.cur);
			dlist_mutable_iter cit;

			dlist_foreach_modify(cit, &pool->conns)
			{
				WorkerConn *conn = dlist_container(WorkerConn, pool_node, cit.cur);

				if (DbpoolCancelsQueued > 0 && conn->cancel_queued)
					DbpoolConnRetryCancel(conn);
				if (DbpoolAwaitingCancels > 0 && DbpoolConnPollCancel(conn))
					continue;
			}
		}
	}
	while (!dlist_is_empty(&ready_conns))
	{
		WorkerConn *conn = dlist_container(WorkerConn, ready_node, dlist_pop_head_node(&ready_conns));

		conn->on_ready = false;
		if (conn->readable || conn->writable)
			DbpoolConnProcess(conn);
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

/* Start-up once connected: empty registry, exit callback, then publish ourselves. */
static void
worker_start(void)
{
	int			i;

	pgstat_report_appname("dbpool worker");

	/*
	 * libpq reads these from the environment the postmaster was started with
	 * and would set them in every foreign session, over the foreign
	 * database's and role's own settings (application_name, DateStyle,
	 * TimeZone, anything in PGOPTIONS): the callers' SQL must mean what it
	 * means on the foreign server.
	 */
	unsetenv("PGAPPNAME");
	unsetenv("PGDATESTYLE");
	unsetenv("PGGEQO");
	unsetenv("PGOPTIONS");
	unsetenv("PGTZ");

	DbpoolWorkerContext = AllocSetContextCreate(TopMemoryContext, "dbpool worker",
												ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(DbpoolWorkerContext);
	DbpoolWorkerChannelsInit();
	DbpoolStatsConnInit();
	DbpoolAlertsInit();

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
}

/* Wait for the latch, a socket or the next deadline (at most TICK_MS); mark ready sockets. */
static void
wait_for_events(void)
{
	WaitEvent	events[64];
	TimestampTz now;
	long		timeout;
	int			n,
				i;

	update_wait_set();
	now = GetCurrentTimestamp();
	if (next_tick == 0)
		next_tick = TimestampTzPlusMilliseconds(now, TICK_MS);
	timeout = next_tick <= now ? 0 : (long) ((next_tick - now + 999) / 1000);
	timeout = Min(timeout, TICK_MS);
	if (!dlist_is_empty(&ready_conns))
		timeout = 0;			/* some must go on without an event */
	n = WaitEventSetWait(wait_set, timeout, events, lengthof(events), PG_WAIT_EXTENSION);
	DbpoolWorkerWaitCapped = n == lengthof(events);
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
			DbpoolWorkerConnReady(conn);
		}
	}
}

/* Serve signals and the interrupts others wait for; false when we must shut down. */
static bool
serve_interrupts(void)
{
	if (ShutdownRequestPending)
		return false;

	/*
	 * Our SIGTERM handler sets ShutdownRequestPending, so ProcDiePending
	 * comes from a recovery conflict on a hot standby that ends every session
	 * of our database (DROP DATABASE replayed): replay waits for us to go.
	 */
	if (ProcDiePending)
	{
		ereport(LOG,
				(errmsg("dbpool worker terminating because of a conflict with recovery")));
		return false;
	}
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}

	/*
	 * Serve the interrupts other backends wait for (DROP DATABASE waits for
	 * every process to absorb a barrier), without CHECK_FOR_INTERRUPTS: a
	 * cancel aimed at the worker must not end it and every pool with it.
	 */
	if (ProcSignalBarrierPending)
		ProcessProcSignalBarrier();
	if (LogMemoryContextPending)
		ProcessLogMemoryContextInterrupt();
	QueryCancelPending = false;
	return true;
}

/* Housekeeping (janitor.c) when its deadline is due. */
static void
housekeeping_if_due(void)
{
	TimestampTz now = GetCurrentTimestamp();

	if (now < next_tick)
		return;
	next_tick = TimestampTzPlusMilliseconds(now, TICK_MS);
	DbpoolJanitorTick(now);
	if (DbpoolWorkerServeNeeded)
		DbpoolPoolServeAll();
}

/* Entry point of the dbpool background worker. */
void
DbpoolWorkerMain(Datum main_arg)
{
	bool		checked;

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
	worker_start();

	/* what one iteration allocates in passing (error texts, ...) is freed at the next */
	loop_cxt = AllocSetContextCreate(DbpoolWorkerContext, "dbpool loop", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
		trim_if_freed_large();
		wait_for_events();
		if (!serve_interrupts())
			break;
		DbpoolConfigMaybeReload(GetCurrentTimestamp());
		DbpoolConnLookupsPoll();

		/*
		 * Results first: a connection that finishes serves the next waiter at
		 * once, so the foreign server is not left idle while we read new
		 * requests.
		 */
		process_connections();
		DbpoolWorkerProcessPending();
		process_blocked();
		DbpoolStatsApplyResets();
		DbpoolOpsApply();
		DbpoolHealthApply();
		if (DbpoolWorkerServeNeeded)
			DbpoolPoolServeAll();
		housekeeping_if_due();
	}

	ereport(LOG, (errmsg("dbpool worker shutting down")));
	/* exit 1 so that the postmaster restarts us (it does not while shutting down) */
	proc_exit(1);
}
