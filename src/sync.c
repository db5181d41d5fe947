/*
 * sync.c
 *		A backend's handshakes with the worker, every wait bounded and
 *		interruptible: is a worker serving (and wait a little for one), wake
 *		it, ask it to re-read the configuration and wait until it has, wait
 *		for the latest committed configuration change, wait for a counter it
 *		moves (dbpool_reset_stats).
 *
 * The counters (config_requested, config_applied, config_committed,
 * reset_requested, reset_applied) and the worker identity live in
 * DbpoolShared; their rules are at the top of shmem.c.  The worker's side of
 * the configuration handshake is config.c.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#include "dbpool.h"

/* Read the worker's pid (0: none serving), generation and PGPROC. */
pid_t
DbpoolWorkerStatus(uint32 *gen, PGPROC **proc)
{
	pid_t		pid;

	SpinLockAcquire(&DbpoolShmem->mutex);
	pid = DbpoolShmem->worker_pid;
	*gen = DbpoolShmem->worker_gen;
	*proc = DbpoolShmem->worker_proc;
	SpinLockRelease(&DbpoolShmem->mutex);
	return pid;
}

/* Sleep on our latch for at most ms milliseconds, then check for interrupts. */
void
DbpoolBackendSleep(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms,
					 PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/* Set the worker's latch, if a worker is running. */
void
DbpoolWakeWorker(void)
{
	PGPROC	   *proc;

	SpinLockAcquire(&DbpoolShmem->mutex);
	proc = DbpoolShmem->worker_pid != 0 ? DbpoolShmem->worker_proc : NULL;
	SpinLockRelease(&DbpoolShmem->mutex);
	if (proc)
		SetLatch(&proc->procLatch);
}

/* Raise 57P03 unless the worker is serving, after waiting for it a bounded time. */
void
DbpoolWaitForWorker(void)
{
	TimestampTz deadline = 0;
	uint32		gen;
	PGPROC	   *proc;

	while (DbpoolWorkerStatus(&gen, &proc) == 0)
	{
		if (deadline == 0)
			deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DBPOOL_WORKER_WAIT_MS);
		else if (GetCurrentTimestamp() >= deadline)
			ereport(ERROR,
					(errcode(ERRCODE_CANNOT_CONNECT_NOW),
					 errmsg("the dbpool worker is not running"),
					 errdetail("No dbpool worker answered within %d ms.", DBPOOL_WORKER_WAIT_MS),
					 errhint("The worker may be starting or restarting; the server log says why. "
							 "It serves only after database \"%s\" (dbpool.database) exists.",
							 DbpoolDatabase)));
		DbpoolBackendSleep(20);
	}
}

/* Wait until the worker moves *counter to target or beyond; false after timeout_ms. */
bool
DbpoolWaitForCounter(pg_atomic_uint64 *counter, uint64 target, int timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	while (pg_atomic_read_u64(counter) < target)
	{
		if (GetCurrentTimestamp() >= deadline)
			return false;
		DbpoolBackendSleep(2);
	}
	pg_read_barrier();			/* what the worker did before moving it */
	return true;
}

/* Ask the worker to re-read the configuration table; returns the request to wait for. */
uint64
DbpoolRequestReconcile(void)
{
	uint64		target = pg_atomic_add_fetch_u64(&DbpoolShmem->config_requested, 1);

	DbpoolWakeWorker();
	return target;
}

/* Wait (bounded) until the worker has applied reconcile request target. */
void
DbpoolWaitForReconcile(uint64 target)
{
	if (pg_atomic_read_u64(&DbpoolShmem->config_applied) >= target)
		return;
	DbpoolWaitForWorker();
	DbpoolWakeWorker();
	if (!DbpoolWaitForCounter(&DbpoolShmem->config_applied, target, DBPOOL_WORKER_WAIT_MS))
		ereport(WARNING,
				(errmsg("the dbpool worker has not applied the latest pool configuration yet"),
				 errdetail("Using the configuration it applied last.")));
}

/* Record that a committed change made reconcile request target. */
void
DbpoolNoteCommittedConfig(uint64 target)
{
	uint64		cur = pg_atomic_read_u64(&DbpoolShmem->config_committed);

	while (cur < target &&
		   !pg_atomic_compare_exchange_u64(&DbpoolShmem->config_committed, &cur, target))
		;
}

/* Wait (bounded) until the worker has applied every committed configuration change. */
void
DbpoolWaitForCommittedConfig(void)
{
	DbpoolWaitForReconcile(pg_atomic_read_u64(&DbpoolShmem->config_committed));
}
