/*
 * shmem.c
 *		dbpool's shared memory: its size, layout and initialization, the pool
 *		registry, and the addressing of each backend's channel and of the
 *		pending bitmap.  The owner of the rules below.
 *
 * Layout (one ShmemInitStruct, "dbpool"):
 *	DbpoolShared, with dbpool.max_pools DbpoolPoolSlots
 *	the pending bitmap: one bit per channel, pg_atomic_uint64 words
 *	MaxBackends channels, each a DbpoolChannel, a request shm_mq of
 *	DBPOOL_REQUEST_QUEUE_SIZE bytes and a response shm_mq of dbpool.queue_size
 *	the statistics, connection table and slow-query ring (stats.c, whose
 *	header states their rules)
 *	the alerts (alerts.c, whose header states their rules)
 *
 * Locking and ownership rules:
 *	- The pool registry (pools[]) is written only by the worker, under
 *	  DbpoolShmem->lock in exclusive mode.  Backends read it under the lock in
 *	  shared mode and copy what they need; they never keep pointers into it.
 *	  The state (an int) in a slot is written by the worker without the
 *	  lock; readers may see it a moment stale.
 *	- worker_pid, worker_proc, worker_gen, database_checked and last_wait_log
 *	  are protected by DbpoolShmem->mutex (a spinlock: a few loads/stores).
 *	- config_requested is bumped by a backend that needs the worker to re-read
 *	  the configuration (its transaction changed it, or a lookup missed);
 *	  config_applied, the last request the worker has applied, is written by
 *	  the worker only.  config_committed holds the request of the latest
 *	  committed change (raised, never lowered, by a compare-and-exchange
 *	  loop): every lookup waits for it, so a committed change is seen by the
 *	  very next statement anywhere; a miss waits only for its own request.
 *	- Channel i belongs to the backend with BackendId i + 1.  Its state is
 *	  protected by the channel's spinlock and moves only:
 *		FREE -> ACTIVE			backend, after creating the queues
 *		ACTIVE -> ABANDONED		backend, leaving a request unfinished or exiting
 *		ABANDONED -> FREE		worker, once it has dropped its handles
 *	  A backend may also recreate queues in any state when worker_gen shows
 *	  that the worker which knew them is gone.  Queues live in main shared
 *	  memory: they are never detached automatically, hence the exit callbacks
 *	  in channel.c and worker.c.
 *	- registry_gen is bumped by the worker (fetch-add, a full barrier) after
 *	  every change to what a lookup reads: a slot's identity, owner or
 *	  grantees (under the lock), or its state (DROPPING).  It is bumped before
 *	  config_applied moves past the change.  A backend may keep what it read
 *	  of a slot for as long as registry_gen is unchanged (query.c).
 *	- The pending bitmap is set by backends (fetch-or) and cleared by the
 *	  worker (exchange); a set bit says "look at this channel".
 *	- reset_requested and reset_applied work as config_requested and
 *	  config_applied, for dbpool_reset_stats (stats.c states the rest);
 *	  ops_requested and ops_applied, with each slot's ops_pending, for
 *	  dbpool_restart_pool and dbpool_cleanup_pool (ops.c states the rest).
 *	- Each slot's health_requested and health_doorbell are dbpool_health()'s
 *	  requests of health checks (health.c states their rules).
 *	- next_pool_id and next_conn_id are the worker's alone.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#include "alerts.h"
#include "dbpool.h"
#include "stats.h"

DbpoolShared *DbpoolShmem = NULL;

/* Size of one backend's response queue, from dbpool.queue_size. */
Size
DbpoolResponseQueueSize(void)
{
	return MAXALIGN((Size) DbpoolQueueSizeKb * 1024);
}

/* Size of one channel: header plus both queues. */
static Size
channel_stride(void)
{
	return MAXALIGN(sizeof(DbpoolChannel)) + MAXALIGN(DBPOOL_REQUEST_QUEUE_SIZE) +
		DbpoolResponseQueueSize();
}

/* Number of 64-bit words in the pending bitmap. */
static int
pending_words(void)
{
	return (MaxBackends + 63) / 64;
}

/* Size of the header with its pool slots. */
static Size
header_size(void)
{
	return MAXALIGN(add_size(offsetof(DbpoolShared, pools),
							 mul_size(sizeof(DbpoolPoolSlot), DbpoolMaxPools)));
}

/* Total shared memory dbpool needs. */
static Size
dbpool_shmem_size(void)
{
	Size		size = header_size();

	size = add_size(size, MAXALIGN(mul_size(sizeof(pg_atomic_uint64), pending_words())));
	size = add_size(size, mul_size(channel_stride(), MaxBackends));
	size = add_size(size, DbpoolStatsShmemSize());
	size = add_size(size, DbpoolAlertsShmemSize());
	return size;
}

/* shmem_request_hook: reserve memory and the registry's LWLock. */
void
DbpoolShmemRequest(void)
{
	RequestAddinShmemSpace(dbpool_shmem_size());
	RequestNamedLWLockTranche("dbpool", 1);
}

/* shmem_startup_hook: create (postmaster) or attach to (EXEC_BACKEND) the memory. */
void
DbpoolShmemStartup(void)
{
	bool		found;
	char	   *base;
	int			i;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	base = ShmemInitStruct("dbpool", dbpool_shmem_size(), &found);
	DbpoolShmem = (DbpoolShared *) base;
	if (!found)
	{
		memset(base, 0, header_size());
		DbpoolShmem->lock = &(GetNamedLWLockTranche("dbpool"))->lock;
		SpinLockInit(&DbpoolShmem->mutex);
		pg_atomic_init_u64(&DbpoolShmem->config_requested, 1);
		pg_atomic_init_u64(&DbpoolShmem->config_applied, 0);
		pg_atomic_init_u64(&DbpoolShmem->config_committed, 0);
		pg_atomic_init_u64(&DbpoolShmem->registry_gen, 1);
		pg_atomic_init_u64(&DbpoolShmem->reset_requested, 0);
		pg_atomic_init_u64(&DbpoolShmem->reset_applied, 0);
		pg_atomic_init_u64(&DbpoolShmem->ops_requested, 0);
		pg_atomic_init_u64(&DbpoolShmem->ops_applied, 0);
		pg_atomic_init_u64(&DbpoolShmem->health_doorbell, 0);
		DbpoolShmem->next_pool_id = 1;
		for (i = 0; i < DbpoolMaxPools; i++)
		{
			DbpoolShmem->pools[i].index = i;
			pg_atomic_init_u32(&DbpoolShmem->pools[i].ops_pending, 0);
			pg_atomic_init_u64(&DbpoolShmem->pools[i].health_requested, 0);
		}
	}
	/* pointers are per process (EXEC_BACKEND maps elsewhere): always recompute */
	DbpoolShmem->pending = (pg_atomic_uint64 *) (base + header_size());
	DbpoolShmem->channels = base + header_size() +
		MAXALIGN(sizeof(pg_atomic_uint64) * pending_words());
	DbpoolShmem->channel_stride = channel_stride();
	DbpoolShmem->nchannels = MaxBackends;
	DbpoolStatsShmemInit(DbpoolShmem->channels + channel_stride() * MaxBackends, found);
	DbpoolAlertsShmemInit(DbpoolShmem->channels + channel_stride() * MaxBackends +
						  DbpoolStatsShmemSize(), found);
	if (!found)
	{
		for (i = 0; i < pending_words(); i++)
			pg_atomic_init_u64(&DbpoolShmem->pending[i], 0);
		for (i = 0; i < MaxBackends; i++)
		{
			DbpoolChannel *ch = DbpoolChannelAt(i);

			memset(ch, 0, sizeof(DbpoolChannel));
			SpinLockInit(&ch->mutex);
			ch->state = DBPOOL_CHANNEL_FREE;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* The channel of the backend with BackendId index + 1. */
DbpoolChannel *
DbpoolChannelAt(int index)
{
	Assert(index >= 0 && index < DbpoolShmem->nchannels);
	return (DbpoolChannel *) (DbpoolShmem->channels + DbpoolShmem->channel_stride * index);
}

/* The channel's backend -> worker queue. */
shm_mq *
DbpoolChannelRequestQueue(DbpoolChannel *ch)
{
	return (shm_mq *) ((char *) ch + MAXALIGN(sizeof(DbpoolChannel)));
}

/* The channel's worker -> backend queue. */
shm_mq *
DbpoolChannelResponseQueue(DbpoolChannel *ch)
{
	return (shm_mq *) ((char *) ch + MAXALIGN(sizeof(DbpoolChannel)) +
					   MAXALIGN(DBPOOL_REQUEST_QUEUE_SIZE));
}

/* Tell the worker that channel index has news (a request, an attach, an abandon). */
void
DbpoolChannelMarkPending(int index)
{
	pg_atomic_fetch_or_u64(&DbpoolShmem->pending[index / 64],
						   UINT64CONST(1) << (index % 64));
}

/* Worker: a lookup could now see something else in the registry. */
void
DbpoolRegistryChanged(void)
{
	(void) pg_atomic_fetch_add_u64(&DbpoolShmem->registry_gen, 1);
}

/* Copy every registry slot in use (under the shared lock); *n gets how many. */
DbpoolPoolSlot *
DbpoolRegistryCopy(int *n)
{
	DbpoolPoolSlot *copy = palloc(sizeof(DbpoolPoolSlot) * DbpoolMaxPools);
	int			i;

	*n = 0;
	LWLockAcquire(DbpoolShmem->lock, LW_SHARED);
	for (i = 0; i < DbpoolMaxPools; i++)
		if (DbpoolShmem->pools[i].in_use)
			memcpy(&copy[(*n)++], &DbpoolShmem->pools[i], sizeof(DbpoolPoolSlot));
	LWLockRelease(DbpoolShmem->lock);
	return copy;
}
