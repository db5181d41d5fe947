/*
 * channel.c
 *		The backend's half of the channel: this session's pair of shm_mqs to
 *		the worker (the worker's half is channel_worker.c; the bytes that
 *		travel are proto.c's).
 *
 * A session makes its queues once (DbpoolChannelOpen) and reuses them for
 * every request.  A request that ends early on the backend side (error,
 * cancel, exit) abandons the channel: the backend detaches, and the worker
 * cancels the remote query, drops its handles and frees the channel for the
 * next request.  Nothing here waits without a deadline or without watching
 * for the worker's death.  The channel's states and their rules are at the
 * top of shmem.c.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "dbpool.h"

static shm_mq_handle *my_inq = NULL;	/* requests we send */
static shm_mq_handle *my_outq = NULL;	/* responses we receive */
static bool my_attached = false;
static uint32 my_gen = 0;
static PGPROC *my_worker = NULL;	/* the worker the queues were made for */
static bool exit_callback_registered = false;
static TimestampTz my_sent_at = 0;	/* when the request was sent; 0 once answered */
static double my_reply_us = -1;	/* how soon first replies came lately (-1: unknown) */

/* This backend's channel index. */
static int
my_channel_index(void)
{
	if (MyBackendId <= 0 || MyBackendId > DbpoolShmem->nchannels)
		elog(ERROR, "dbpool: backend id %d has no channel", MyBackendId);
	return MyBackendId - 1;
}

/* Detach our handles and tell the worker; safe to call in any state. */
void
DbpoolChannelAbandon(void)
{
	DbpoolChannel *ch;
	int			idx;

	if (!my_attached)
		return;
	my_attached = false;
	idx = my_channel_index();
	ch = DbpoolChannelAt(idx);
	shm_mq_detach(my_inq);
	shm_mq_detach(my_outq);
	my_inq = my_outq = NULL;
	SpinLockAcquire(&ch->mutex);
	ch->state = DBPOOL_CHANNEL_ABANDONED;
	SpinLockRelease(&ch->mutex);
	DbpoolChannelMarkPending(idx);
	DbpoolWakeWorker();
}

/* before_shmem_exit: main-memory queues are not detached on exit by themselves. */
static void
channel_exit_callback(int code, Datum arg)
{
	if (DbpoolShmem != NULL)
		DbpoolChannelAbandon();
}

/* Make sure this session has queues attached to the running worker; return its generation. */
uint32
DbpoolChannelOpen(void)
{
	int			idx = my_channel_index();
	DbpoolChannel *ch = DbpoolChannelAt(idx);
	TimestampTz deadline;
	uint32		gen;
	PGPROC	   *wproc;
	shm_mq	   *req;
	shm_mq	   *resp;
	MemoryContext old;

	if (DbpoolWorkerStatus(&gen, &wproc) == 0)
	{
		DbpoolWaitForWorker();
		(void) DbpoolWorkerStatus(&gen, &wproc);
	}
	if (my_attached && my_gen == gen)
		return gen;
	if (my_attached)
		DbpoolChannelAbandon(); /* made for a worker that is gone */

	/* the worker must first let go of queues it knew */
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DBPOOL_WORKER_WAIT_MS);
	for (;;)
	{
		bool		busy;

		SpinLockAcquire(&ch->mutex);
		busy = ch->state != DBPOOL_CHANNEL_FREE && ch->worker_gen == gen;
		SpinLockRelease(&ch->mutex);
		if (!busy)
			break;
		if (GetCurrentTimestamp() >= deadline)
			ereport(ERROR,
					(errcode(ERRCODE_CANNOT_CONNECT_NOW),
					 errmsg("the dbpool worker did not release this session's channel within %d ms",
							DBPOOL_WORKER_WAIT_MS)));
		DbpoolChannelMarkPending(idx);
		DbpoolWakeWorker();
		DbpoolBackendSleep(5);
	}

	if (!exit_callback_registered)
	{
		before_shmem_exit(channel_exit_callback, (Datum) 0);
		exit_callback_registered = true;
	}

	req = shm_mq_create(DbpoolChannelRequestQueue(ch), DBPOOL_REQUEST_QUEUE_SIZE);
	resp = shm_mq_create(DbpoolChannelResponseQueue(ch), DbpoolResponseQueueSize());
	shm_mq_set_sender(req, MyProc);
	shm_mq_set_receiver(req, wproc);
	shm_mq_set_sender(resp, wproc);
	shm_mq_set_receiver(resp, MyProc);
	old = MemoryContextSwitchTo(TopMemoryContext);
	my_inq = shm_mq_attach(req, NULL, NULL);
	my_outq = shm_mq_attach(resp, NULL, NULL);
	MemoryContextSwitchTo(old);

	SpinLockAcquire(&ch->mutex);
	ch->state = DBPOOL_CHANNEL_ACTIVE;
	ch->worker_gen = gen;
	ch->attach_seq++;
	ch->backend = MyProc;
	ch->backend_pid = MyProcPid;
	SpinLockRelease(&ch->mutex);
	my_attached = true;
	my_gen = gen;
	my_worker = wproc;
	return gen;
}

/* Raise an error if the worker we are attached to is gone. */
static void
check_worker_alive(void)
{
	uint32		gen;
	PGPROC	   *proc;

	if (DbpoolWorkerStatus(&gen, &proc) == 0 || gen != my_gen)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("the dbpool worker exited while serving this request"),
				 errhint("The request may or may not have run on the foreign server.")));
}

/* Send one piece of a request, waiting (interruptibly) while the queue is full. */
static void
send_piece(int idx, const char *data, Size len)
{
	for (;;)
	{
		shm_mq_result r = shm_mq_send(my_inq, len, data, true, true);

		if (r == SHM_MQ_SUCCESS)
			return;
		check_worker_alive();
		if (r == SHM_MQ_DETACHED)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("the dbpool worker closed this session's channel")));
		DbpoolChannelMarkPending(idx);	/* a partial request: let it drain */
		SetLatch(&my_worker->procLatch);
		DbpoolBackendSleep(1000);
	}
}

/*
 * Send one request, in pieces of at most DBPOOL_REQUEST_PIECE_BYTES: the
 * worker puts them together in a buffer it frees after a large request,
 * whereas a shm_mq handle would keep one as large as the largest message it
 * ever received (proto.h).  The pending bit must be set only once a piece is
 * in the queue, then the worker woken: a bit set earlier could be cleared by
 * a worker that finds no message yet, and the wake-up shm_mq gives on
 * completion would find no bit.  The worker's latch comes from
 * DbpoolChannelOpen, without the shared spinlock.
 */
void
DbpoolChannelSend(const char *data, Size len)
{
	int			idx = my_channel_index();
	Size		off = 0;

	do
	{
		Size		n = Min(len - off, (Size) DBPOOL_REQUEST_PIECE_BYTES);

		send_piece(idx, data + off, n);
		off += n;
	} while (off < len);
	DbpoolChannelMarkPending(idx);
	SetLatch(&my_worker->procLatch);
	if (DbpoolBackendSpinUs > 0)
		my_sent_at = GetCurrentTimestamp();
}

/*
 * Poll the response queue, without sleeping, while replies came sooner than
 * dbpool.backend_spin_us lately, for about twice as long as they took: a
 * reply caught here needs no wake-up.  Stops at an interrupt.
 */
static shm_mq_result
spin_receive(Size *nbytes, void **ptr)
{
	TimestampTz deadline;
	shm_mq_result r;
	int			i;

	if (DbpoolBackendSpinUs <= 0 || my_reply_us < 0 || my_reply_us >= DbpoolBackendSpinUs)
		return SHM_MQ_WOULD_BLOCK;
	deadline = GetCurrentTimestamp() + Min(DbpoolBackendSpinUs, (int) (2 * my_reply_us) + 10);
	for (i = 1;; i++)
	{
		r = shm_mq_receive(my_outq, nbytes, ptr, true);
		if (r != SHM_MQ_WOULD_BLOCK || InterruptPending)
			return r;
		SPIN_DELAY();
		if (i % 16 == 0 && GetCurrentTimestamp() >= deadline)
			return r;
	}
}

/* A reply came: how soon, into the running average the spinning follows. */
static void
note_reply(void)
{
	double		us;

	if (my_sent_at == 0)
		return;
	us = (double) (GetCurrentTimestamp() - my_sent_at);
	my_sent_at = 0;
	my_reply_us = my_reply_us < 0 ? us : my_reply_us * 0.875 + us * 0.125;
}

/* Receive one response message; *data stays valid until the next call. */
void
DbpoolChannelReceive(const char **data, Size *len)
{
	bool		spun = false;

	for (;;)
	{
		Size		nbytes;
		void	   *ptr;
		shm_mq_result r = shm_mq_receive(my_outq, &nbytes, &ptr, true);

		if (r == SHM_MQ_WOULD_BLOCK && !spun)
		{
			spun = true;
			r = spin_receive(&nbytes, &ptr);
		}
		if (r == SHM_MQ_SUCCESS)
		{
			note_reply();
			*data = ptr;
			*len = nbytes;
			return;
		}
		check_worker_alive();
		if (r == SHM_MQ_DETACHED)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("the dbpool worker closed this session's channel")));
		DbpoolBackendSleep(1000);
	}
}
