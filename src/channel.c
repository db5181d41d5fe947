/*
 * channel.c
 *		The backend <-> worker protocol over each backend's pair of shm_mqs.
 *
 * Backend side: a session makes its queues once (DbpoolChannelOpen) and
 * reuses them for every request.  A request that ends early on the backend
 * side (error, cancel, exit) abandons the channel: the backend detaches, and
 * the worker cancels the remote query, drops its handles and frees the
 * channel for the next request.  Nothing here waits without a deadline or
 * without watching for the worker's death.
 *
 * Worker side: the pending bitmap says which channels have news; responses
 * are sent with nowait, and a full queue parks the channel on the worker's
 * blocked list (backpressure) until the backend reads.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "port/pg_bitutils.h"
#include "storage/ipc.h"
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

/* ---------- backend side ---------- */

static shm_mq_handle *my_inq = NULL;	/* requests we send */
static shm_mq_handle *my_outq = NULL;	/* responses we receive */
static bool my_attached = false;
static uint32 my_gen = 0;
static PGPROC *my_worker = NULL;	/* the worker the queues were made for */
static bool exit_callback_registered = false;

/* This backend's channel index. */
static int
my_channel_index(void)
{
	if (MyBackendId <= 0 || MyBackendId > DbpoolShmem->nchannels)
		elog(ERROR, "dbpool: backend id %d has no channel", MyBackendId);
	return MyBackendId - 1;
}

/* Read the worker's pid, generation and PGPROC. */
static pid_t
worker_status(uint32 *gen, PGPROC **proc)
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
static void
backend_wait(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms,
					 PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/* Raise 57P03 unless the worker is serving, after waiting for it a bounded time. */
void
DbpoolWaitForWorker(void)
{
	TimestampTz deadline = 0;
	uint32		gen;
	PGPROC	   *proc;

	while (worker_status(&gen, &proc) == 0)
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
		backend_wait(20);
	}
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

/* Wait until the worker moves *counter to target or beyond; false after timeout_ms. */
bool
DbpoolWaitForCounter(pg_atomic_uint64 *counter, uint64 target, int timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	while (pg_atomic_read_u64(counter) < target)
	{
		if (GetCurrentTimestamp() >= deadline)
			return false;
		backend_wait(2);
	}
	pg_read_barrier();			/* what the worker did before moving it */
	return true;
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

	if (worker_status(&gen, &wproc) == 0)
	{
		DbpoolWaitForWorker();
		(void) worker_status(&gen, &wproc);
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
		backend_wait(5);
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

	if (worker_status(&gen, &proc) == 0 || gen != my_gen)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("the dbpool worker exited while serving this request"),
				 errhint("The request may or may not have run on the foreign server.")));
}

/*
 * Send one request message, waiting (interruptibly) while the queue is full.
 * The pending bit must be set only once the message is in the queue, then
 * the worker woken: a bit set earlier could be cleared by a worker that finds
 * no message yet, and the wake-up shm_mq gives on completion would find no
 * bit.  The worker's latch comes from DbpoolChannelOpen, without the shared
 * spinlock.
 */
void
DbpoolChannelSend(const char *data, Size len)
{
	int			idx = my_channel_index();

	for (;;)
	{
		shm_mq_result r = shm_mq_send(my_inq, len, data, true, true);

		if (r == SHM_MQ_SUCCESS)
			break;
		check_worker_alive();
		if (r == SHM_MQ_DETACHED)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("the dbpool worker closed this session's channel")));
		DbpoolChannelMarkPending(idx);	/* a partial message: let it drain */
		SetLatch(&my_worker->procLatch);
		backend_wait(1000);
	}
	DbpoolChannelMarkPending(idx);
	SetLatch(&my_worker->procLatch);
}

/* Receive one response message; *data stays valid until the next call. */
void
DbpoolChannelReceive(const char **data, Size *len)
{
	for (;;)
	{
		Size		nbytes;
		void	   *ptr;
		shm_mq_result r = shm_mq_receive(my_outq, &nbytes, &ptr, true);

		if (r == SHM_MQ_SUCCESS)
		{
			*data = ptr;
			*len = nbytes;
			return;
		}
		check_worker_alive();
		if (r == SHM_MQ_DETACHED)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("the dbpool worker closed this session's channel")));
		backend_wait(1000);
	}
}

/* ---------- worker side ---------- */

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
		initStringInfo(&ch->req);
		initStringInfo(&ch->out);
		initStringInfo(&ch->sending);
		MemoryContextSwitchTo(old);
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
	resetStringInfo(&ch->out);
	resetStringInfo(&ch->sending);
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

/* Read a native int32 at *p and advance; false if it would pass end. */
static bool
read_int32(const char **p, const char *end, int32 *v)
{
	if (end - *p < 4)
		return false;
	memcpy(v, *p, 4);
	*p += 4;
	return true;
}

/* Parse the request in ch->req into ch's fields; false if malformed. */
static bool
parse_request(WorkerChannel *ch, int32 *slot, uint64 *pool_id)
{
	const char *p = ch->req.data;
	const char *end = p + ch->req.len;
	int32		len;
	int			i;

	if (end - p < 1 + 4 + 8 + 4)
		return false;
	ch->kind = *p++;
	memcpy(slot, p, 4);
	p += 4;
	memcpy(pool_id, p, 8);
	p += 8;
	memcpy(&ch->user, p, sizeof(Oid));
	p += sizeof(Oid);
	if (!read_int32(&p, end, &ch->nparams) || !read_int32(&p, end, &len) ||
		len < 0 || end - p < len + 1)
		return false;
	ch->sql = p;
	p += len + 1;
	if (ch->nparams > ch->params_alloc)
	{
		int			n = Max(ch->nparams, 16);

		ch->params = ch->params ? repalloc(ch->params, n * sizeof(char *)) :
			MemoryContextAlloc(DbpoolWorkerContext, n * sizeof(char *));
		ch->params_alloc = n;
	}
	for (i = 0; i < ch->nparams; i++)
	{
		if (!read_int32(&p, end, &len))
			return false;
		if (len < 0)
		{
			ch->params[i] = NULL;
			continue;
		}
		if (end - p < len + 1)
			return false;
		ch->params[i] = p;
		p += len + 1;
	}
	return true;
}

/* Take a request off the channel's queue, if there is one, and hand it to its pool. */
static void
receive_request(WorkerChannel *ch)
{
	Size		nbytes;
	void	   *data;
	int32		slot;
	uint64		pool_id;
	WorkerPool *pool;
	shm_mq_result r = shm_mq_receive(ch->inq, &nbytes, &data, true);

	if (r == SHM_MQ_WOULD_BLOCK)
		return;
	if (r == SHM_MQ_DETACHED)
	{
		worker_detach(ch);
		return;
	}
	resetStringInfo(&ch->req);
	appendBinaryStringInfo(&ch->req, data, nbytes);
	if (ch->req.maxlen > 1024 * 1024 && nbytes < 64 * 1024)
	{
		/* do not keep a huge buffer after one huge request */
		pfree(ch->req.data);
		ch->req.data = MemoryContextAlloc(DbpoolWorkerContext, 1024);
		ch->req.maxlen = 1024;
		resetStringInfo(&ch->req);
		appendBinaryStringInfo(&ch->req, data, nbytes);
	}
	ch->state = REQ_RUNNING;	/* answered by dbpool itself unless submitted */
	if (!parse_request(ch, &slot, &pool_id))
	{
		DbpoolChannelError(ch, "XX000", "malformed dbpool request", NULL, NULL);
		return;
	}
	pool = DbpoolPoolBySlot(slot, pool_id);
	if (pool == NULL || pool->dropping)
	{
		DbpoolChannelError(ch, "42704", "the pool was dropped", NULL, NULL);
		return;
	}
	ch->state = REQ_NONE;
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

/* Give back a buffer that one huge message grew. */
static void
shrink_buffer(StringInfo buf)
{
	if (buf->maxlen > 1024 * 1024)
	{
		pfree(buf->data);
		buf->data = MemoryContextAlloc(DbpoolWorkerContext, 8192);
		buf->maxlen = 8192;
	}
	resetStringInfo(buf);
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
}

/* Append a length-prefixed string (NULL is sent as empty). */
static void
put_text(StringInfo s, const char *v)
{
	int32		len = v ? strlen(v) : 0;

	DbpoolPutInt32(s, len);
	if (len > 0)
		appendBinaryStringInfo(s, v, len);
}

/* Append a 'T' record. */
void
DbpoolChannelAddRowDesc(WorkerChannel *ch, int natts)
{
	appendStringInfoChar(&ch->out, DBPOOL_REC_ROWDESC);
	DbpoolPutInt32(&ch->out, natts);
}

/* Append a 'D' record for row of res. */
void
DbpoolChannelAddRow(WorkerChannel *ch, const PGresult *res, int row)
{
	int			natts = PQnfields(res);
	int			i;

	appendStringInfoChar(&ch->out, DBPOOL_REC_ROW);
	for (i = 0; i < natts; i++)
	{
		if (PQgetisnull(res, row, i))
			DbpoolPutInt32(&ch->out, -1);
		else
		{
			int			len = PQgetlength(res, row, i);

			DbpoolPutInt32(&ch->out, len);
			appendBinaryStringInfo(&ch->out, PQgetvalue(res, row, i), len);
		}
	}
}

/* Append the final 'C' record. */
void
DbpoolChannelAddComplete(WorkerChannel *ch, const char *status)
{
	appendStringInfoChar(&ch->out, DBPOOL_REC_COMPLETE);
	put_text(&ch->out, status);
	ch->out_final = true;
}

/* Append a prepared final record (an 'E'). */
void
DbpoolChannelAddRecord(WorkerChannel *ch, const StringInfo rec)
{
	appendBinaryStringInfo(&ch->out, rec->data, rec->len);
	ch->out_final = true;
}

/* Build an 'E' record. */
void
DbpoolErrorRecord(StringInfo buf, const char *sqlstate, const char *message,
				  const char *detail, const char *hint, const char *context)
{
	char		state[5] = {'X', 'X', '0', '0', '0'};

	if (sqlstate && strlen(sqlstate) == 5)
		memcpy(state, sqlstate, 5);
	resetStringInfo(buf);
	appendStringInfoChar(buf, DBPOOL_REC_ERROR);
	appendBinaryStringInfo(buf, state, 5);
	put_text(buf, message);
	put_text(buf, detail);
	put_text(buf, hint);
	put_text(buf, context);
}

/* Build an 'E' record from a failed libpq result. */
void
DbpoolErrorRecordFromResult(StringInfo buf, const PGresult *res)
{
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	char	   *fallback = NULL;

	if (msg == NULL)
	{
		fallback = pstrdup(PQresultErrorMessage(res));
		msg = fallback[0] ? pchomp(fallback) : "unknown remote error";
	}
	DbpoolErrorRecord(buf,
					  PQresultErrorField(res, PG_DIAG_SQLSTATE),
					  msg,
					  PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL),
					  PQresultErrorField(res, PG_DIAG_MESSAGE_HINT),
					  PQresultErrorField(res, PG_DIAG_CONTEXT));
}

/* Answer the current request with an error made by dbpool itself. */
void
DbpoolChannelError(WorkerChannel *ch, const char *sqlstate, const char *message,
				   const char *detail, const char *hint)
{
	StringInfoData rec;

	initStringInfo(&rec);
	DbpoolErrorRecord(&rec, sqlstate, message, detail, hint, NULL);
	resetStringInfo(&ch->out);
	DbpoolChannelAddRecord(ch, &rec);
	pfree(rec.data);
	DbpoolChannelReply(ch);
}
