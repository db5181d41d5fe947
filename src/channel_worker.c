/*
 * channel_worker.c
 *		The worker's half of the channels (the backend's half is channel.c;
 *		the bytes that travel are proto.c's).
 *
 * The pending bitmap says which channels have news: the worker attaches to
 * new queues, frees abandoned channels, and takes requests (in pieces, put
 * together here), which it hands to their pool.  Responses accumulate in the
 * channel's out buffer and are sent with nowait; a full queue parks the
 * channel on the worker's blocked list (backpressure) and the message is
 * offered again, unchanged, once the backend has read.  Buffers that a large
 * message grew are freed when their request ends.  The channel's states and their rules are at the top of
 * shmem.c.
 */
#include "postgres.h"

#include "port/pg_bitutils.h"
#include "storage/spin.h"
#include "utils/memutils.h"

#include "dbpool.h"
#include "proto.h"
#include "worker.h"

WorkerChannel *DbpoolWorkerChannels = NULL;

/* Allocate the worker's view of every channel. */
void
DbpoolWorkerChannelsInit(void)
{
	int			i;

	DbpoolWorkerChannels = MemoryContextAllocZero(DbpoolWorkerContext,
												  sizeof(WorkerChannel) * DbpoolShmem->nchannels);
	for (i = 0; i < DbpoolShmem->nchannels; i++)
	{
		WorkerChannel *ch = &DbpoolWorkerChannels[i];
		MemoryContext old = MemoryContextSwitchTo(DbpoolWorkerContext);

		ch->index = i;
		initStringInfo(&ch->msg);
		initStringInfo(&ch->out);
		initStringInfo(&ch->sending);
		MemoryContextSwitchTo(old);
	}
}

/* Give back a buffer that a large message grew (over DBPOOL_LARGE_MESSAGE_BYTES), and empty it. */
static void
shrink_buffer(StringInfo buf)
{
	if (buf->maxlen > DBPOOL_LARGE_MESSAGE_BYTES)
	{
		pfree(buf->data);
		buf->data = MemoryContextAlloc(DbpoolWorkerContext, 8192);
		buf->maxlen = 8192;
		DbpoolWorkerFreedLarge();
	}
	resetStringInfo(buf);
}

/*
 * The request is over (answered or dropped): give back the room a large one
 * took, its message and its parameter array.  The texts in ch->req point
 * into the message and are not used after this.
 */
static void
release_request(WorkerChannel *ch)
{
	ch->msg_total = 0;
	shrink_buffer(&ch->msg);
	if (ch->params_alloc > 1024)
	{
		pfree(ch->req.params);
		ch->req.params = NULL;
		ch->params_alloc = 0;
		DbpoolWorkerFreedLarge();
	}
}

/* Forget the current request: off the wait queue, off its connection. */
static void
drop_request(WorkerChannel *ch)
{
	if (ch->state != REQ_NONE)
		DbpoolStatsRequestEnd(ch, ch->conn, NULL, NULL, true, -1);	/* unless answered */
	if (ch->state == REQ_WAITING)
		DbpoolPoolForget(ch);
	else if (ch->state == REQ_RUNNING && ch->conn)
		DbpoolConnOrphan(ch->conn);
	ch->state = REQ_NONE;
	ch->conn = NULL;
	ch->pool = NULL;
	release_request(ch);
	shrink_buffer(&ch->out);
	shrink_buffer(&ch->sending);
	ch->out_final = ch->sending_final = false;
	if (ch->blocked)
	{
		dlist_delete(&ch->blocked_node);
		ch->blocked = false;
	}
}

/* Drop the request and our handles on a channel. */
static void
worker_detach(WorkerChannel *ch)
{
	drop_request(ch);
	if (ch->attached)
	{
		shm_mq_detach(ch->inq);
		shm_mq_detach(ch->outq);
		ch->inq = ch->outq = NULL;
		ch->attached = false;
	}
}

/* Detach from every channel (worker exit): the backends' waits end at once. */
void
DbpoolWorkerDetachAll(void)
{
	int			i;

	if (DbpoolWorkerChannels == NULL)
		return;
	for (i = 0; i < DbpoolShmem->nchannels; i++)
		if (DbpoolWorkerChannels[i].attached)
			worker_detach(&DbpoolWorkerChannels[i]);
}

/*
 * Make room for a request of total bytes (from its first piece): a large
 * one gets exactly its size, not the next power of two.
 */
static void
start_request(WorkerChannel *ch, Size total)
{
	if (ch->msg.maxlen < (int) total + 1)
	{
		Size		size = Max(total + 1, 8192);

		pfree(ch->msg.data);
		ch->msg.data = MemoryContextAlloc(DbpoolWorkerContext, size);
		ch->msg.maxlen = (int) size;
	}
	resetStringInfo(&ch->msg);
	ch->msg_total = total;
}

/*
 * Take the pieces of a request off the channel's queue, as many as are there
 * (proto.h); once it is whole, hand it to its pool.  Pieces that cannot be
 * a request's mean the channel is not to be trusted: drop our handles (the
 * backend's send fails, and it abandons the channel).
 */
static void
receive_request(WorkerChannel *ch)
{
	WorkerPool *pool;

	for (;;)
	{
		Size		nbytes;
		void	   *data;
		Size		total;
		shm_mq_result r = shm_mq_receive(ch->inq, &nbytes, &data, true);

		if (r == SHM_MQ_WOULD_BLOCK)
			return;				/* the rest comes with the next pending bit */
		if (r == SHM_MQ_DETACHED)
		{
			worker_detach(ch);
			return;
		}
		if (ch->msg_total == 0)
		{
			if (!DbpoolProtoRequestLength(data, nbytes, &total))
			{
				elog(LOG, "dbpool: a malformed request arrived on channel %d", ch->index);
				worker_detach(ch);
				return;
			}
			start_request(ch, total);
		}
		if (nbytes > ch->msg_total - ch->msg.len)
		{
			elog(LOG, "dbpool: a malformed request arrived on channel %d", ch->index);
			worker_detach(ch);
			return;
		}
		appendBinaryStringInfo(&ch->msg, data, nbytes);
		if ((Size) ch->msg.len == ch->msg_total)
			break;
	}
	ch->msg_total = 0;
	ch->state = REQ_RUNNING;	/* answered by dbpool itself unless submitted */
	if (!DbpoolProtoParseRequest(ch->msg.data, ch->msg.len, &ch->req, &ch->params_alloc,
								 DbpoolWorkerContext))
	{
		DbpoolChannelError(ch, ERRCODE_INTERNAL_ERROR, "malformed dbpool request", NULL, NULL);
		return;
	}
	pool = DbpoolPoolBySlot(ch->req.slot, ch->req.pool_id);
	if (pool == NULL || pool->dropping)
	{
		DbpoolChannelError(ch, ERRCODE_UNDEFINED_OBJECT, "the pool was dropped", NULL, NULL);
		return;
	}
	ch->state = REQ_NONE;
	ch->retried = false;
	DbpoolPoolSubmit(pool, ch);
}

/* Look at one channel the bitmap flagged: attach, free, or take a request. */
static void
process_channel(WorkerChannel *ch, uint32 mygen)
{
	DbpoolChannel *sh = DbpoolChannelAt(ch->index);
	DbpoolChannelState st;
	uint32		gen,
				seq;
	PGPROC	   *backend;

	SpinLockAcquire(&sh->mutex);
	st = sh->state;
	gen = sh->worker_gen;
	seq = sh->attach_seq;
	backend = sh->backend;
	SpinLockRelease(&sh->mutex);

	if (ch->attached && (st != DBPOOL_CHANNEL_ACTIVE || gen != mygen || seq != ch->attach_seq))
		worker_detach(ch);
	if (st == DBPOOL_CHANNEL_ABANDONED && gen == mygen)
	{
		SpinLockAcquire(&sh->mutex);
		if (sh->attach_seq == seq)
			sh->state = DBPOOL_CHANNEL_FREE;
		SpinLockRelease(&sh->mutex);
		if (backend)
			SetLatch(&backend->procLatch);
		return;
	}
	if (!ch->attached && st == DBPOOL_CHANNEL_ACTIVE && gen == mygen)
	{
		MemoryContext old = MemoryContextSwitchTo(DbpoolWorkerContext);

		ch->inq = shm_mq_attach(DbpoolChannelRequestQueue(sh), NULL, NULL);
		ch->outq = shm_mq_attach(DbpoolChannelResponseQueue(sh), NULL, NULL);
		MemoryContextSwitchTo(old);
		ch->attached = true;
		ch->attach_seq = seq;
		ch->backend = backend;
		SpinLockAcquire(&sh->mutex);
		ch->backend_pid = sh->backend_pid;
		SpinLockRelease(&sh->mutex);
	}
	if (ch->attached && ch->state == REQ_NONE)
		receive_request(ch);
}

/* Handle every channel whose pending bit is set. */
void
DbpoolWorkerProcessPending(void)
{
	int			nwords = (DbpoolShmem->nchannels + 63) / 64;
	uint32		mygen;
	int			w;

	SpinLockAcquire(&DbpoolShmem->mutex);
	mygen = DbpoolShmem->worker_gen;
	SpinLockRelease(&DbpoolShmem->mutex);

	for (w = 0; w < nwords; w++)
	{
		uint64		bits;

		if (pg_atomic_read_u64(&DbpoolShmem->pending[w]) == 0)
			continue;
		bits = pg_atomic_exchange_u64(&DbpoolShmem->pending[w], 0);
		while (bits)
		{
			int			b = pg_rightmost_one_pos64(bits);

			bits &= bits - 1;
			if (w * 64 + b < DbpoolShmem->nchannels)
				process_channel(&DbpoolWorkerChannels[w * 64 + b], mygen);
		}
	}
}

/*
 * Send what is buffered.  True when all is gone (or the client is), false
 * when the queue is full: call again once the backend has read.
 */
bool
DbpoolChannelFlush(WorkerChannel *ch)
{
	for (;;)
	{
		shm_mq_result r;

		if (ch->sending.len == 0)
		{
			StringInfoData tmp;

			if (ch->out.len == 0)
				return true;
			tmp = ch->sending;
			ch->sending = ch->out;
			ch->out = tmp;
			ch->sending_final = ch->out_final;
			ch->out_final = false;
		}
		r = shm_mq_send(ch->outq, ch->sending.len, ch->sending.data, true, true);
		if (r == SHM_MQ_WOULD_BLOCK)
			return false;
		if (r == SHM_MQ_DETACHED)
		{
			/* the client left; its abandon will free the channel */
			drop_request(ch);
			return true;
		}
		shrink_buffer(&ch->sending);
		if (ch->sending_final)
		{
			ch->sending_final = false;
			DbpoolChannelFinishRequest(ch);
			return true;
		}
	}
}

/* Send what is buffered, or park the channel on the blocked list. */
void
DbpoolChannelReply(WorkerChannel *ch)
{
	if (ch->blocked)
		return;
	if (!DbpoolChannelFlush(ch))
	{
		ch->blocked = true;
		DbpoolWorkerBlocked(ch);
	}
}

/* The final record is on its way: the channel is ready for the next request. */
void
DbpoolChannelFinishRequest(WorkerChannel *ch)
{
	Assert(ch->state != REQ_WAITING);
	ch->state = REQ_NONE;
	ch->conn = NULL;
	ch->pool = NULL;
	ch->out_final = false;
	release_request(ch);
}

/* Append the final 'C' record. */
void
DbpoolChannelAddComplete(WorkerChannel *ch, const char *status)
{
	DbpoolProtoPutComplete(&ch->out, status);
	ch->out_final = true;
}

/* Append a final record built elsewhere (an 'E'). */
void
DbpoolChannelAddFinal(WorkerChannel *ch, const StringInfo rec)
{
	appendBinaryStringInfo(&ch->out, rec->data, rec->len);
	ch->out_final = true;
}

/* Answer the current request with an error made by dbpool itself (an ERRCODE_* value). */
void
DbpoolChannelError(WorkerChannel *ch, int sqlerrcode, const char *message,
				   const char *detail, const char *hint)
{
	shrink_buffer(&ch->out);
	DbpoolProtoPutError(&ch->out, sqlerrcode, message, detail, hint, NULL);
	ch->out_final = true;
	DbpoolChannelReply(ch);
}
