/*
 * worker.h
 *		The dbpool worker's private structures.  Everything here lives in the
 *		worker's own memory (DbpoolWorkerContext) and is touched only by the
 *		worker's single thread; the cancel threads of cancel.c and the lookup
 *		threads of resolve.c see none of it.
 */
#ifndef DBPOOL_WORKER_H
#define DBPOOL_WORKER_H

#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "libpq-fe.h"
#include "nodes/pg_list.h"

#include "alerts.h"
#include "dbpool.h"
#include "proto.h"
#include "stats.h"

typedef struct WorkerConn WorkerConn;
typedef struct WorkerPool WorkerPool;
typedef struct DbpoolCancel DbpoolCancel;
typedef struct DbpoolLookup DbpoolLookup;

/*
 * One target of a pool: its conninfo (the primary) or its backup_conninfo,
 * the libpq parameters built from it, and the host name lookup its
 * connections wait for (conn.c).
 */
typedef struct WorkerTarget
{
	WorkerPool *pool;
	bool		backup;			/* the backup_conninfo, not the conninfo */
	char	   *conninfo;		/* with password: worker memory only; NULL = none */
	DbpoolConnParams params;	/* built from conninfo (conninfo.c) */
	DbpoolLookup *lookup;		/* NULL if none in flight */
	TimestampTz lookup_started;
	dlist_node	lookup_node;	/* in conn.c's list of targets with a lookup */
} WorkerTarget;

/* One SQL text in a connection's prepared-statement cache (stmtcache.c). */
typedef struct StmtEntry
{
	dlist_node	node;			/* in StmtCache.lru, most recent first */
	uint32		hash;
	int			nparams;
	size_t		len;
	char	   *sql;
	uint32		uses;			/* requests that asked for this text */
	uint32		id;				/* the name is dbpool_s<id>, while prepared */
	bool		prepared;		/* exists on the server under that name */
	bool		failed;			/* its PREPARE failed: always run it unnamed */
} StmtEntry;

typedef struct StmtCache
{
	dlist_head	lru;
	int			n;
	uint32		next_id;
	uint32	   *dealloc;		/* ids to DEALLOCATE at the next cleanup */
	int			ndealloc;
	int			maxdealloc;
	int			nsent;			/* ids in the DEALLOCATE step in flight */
	bool		one_by_one;		/* a batch failed: send the rest singly */
} StmtCache;

/* A request's place in its life. */
typedef enum RequestState
{
	REQ_NONE,					/* no request on this channel */
	REQ_WAITING,				/* in its pool's wait queue */
	REQ_RUNNING					/* on a connection */
} RequestState;

/* The worker's view of one backend's channel, and the request on it. */
typedef struct WorkerChannel
{
	int			index;
	bool		attached;
	uint32		attach_seq;
	shm_mq_handle *inq;			/* requests from the backend */
	shm_mq_handle *outq;		/* responses to the backend */
	PGPROC	   *backend;
	pid_t		backend_pid;

	/* the current request */
	RequestState state;
	StringInfoData msg;			/* the request, put together from its pieces */
	Size		msg_total;		/* its length while pieces are still due; 0 otherwise */
	DbpoolRequest req;			/* decoded; its texts point into msg */
	int			params_alloc;	/* room in req.params */
	WorkerPool *pool;
	WorkerConn *conn;
	dlist_node	wait_node;		/* in pool->waiters while REQ_WAITING */
	TimestampTz enqueued_at;	/* when it joined the wait queue; 0 if it did not wait */
	TimestampTz started_at;		/* when a connection started it; 0 until then */
	bool		counted;		/* its end is in the statistics */
	bool		retried;		/* given another connection once already (not sent) */
	TimestampTz acquire_deadline;

	/*
	 * The response: records accumulate in out; a message being sent sits in
	 * sending and must be offered again unchanged while the queue is full.
	 */
	StringInfoData out;
	bool		out_final;		/* out holds the final record */
	StringInfoData sending;
	bool		sending_final;
	dlist_node	blocked_node;	/* in the worker's blocked list while out is pending */
	bool		blocked;
} WorkerChannel;

/*
 * What a connection in CONN_CLEANUP is doing; the first four run in this
 * order.  SETTINGS comes last so that it also mends what a reset_query such
 * as DISCARD ALL set back; it is also the set-up of a new connection.
 */
typedef enum CleanupStep
{
	CLEANUP_NONE = 0,
	CLEANUP_ROLLBACK,			/* a request left a transaction open */
	CLEANUP_DEALLOCATE,			/* statements that fell out of the cache */
	CLEANUP_RESET,				/* the pool's reset_query */
	CLEANUP_SETTINGS,			/* DateStyle, IntervalStyle or client_encoding differ from
								 * what the connection keeps */
	CLEANUP_AWAIT_CANCEL,		/* waiting for the cancel thread before reuse */
	CLEANUP_HEALTH				/* not a cleanup: its pool's health query (health.c), with
								 * the check's deadline; the usual cleanup follows */
} CleanupStep;

typedef enum ConnState
{
	CONN_CONNECTING,
	CONN_IDLE,
	CONN_ACTIVE,				/* running a request (or draining an orphaned one) */
	CONN_CLEANUP				/* ROLLBACK or reset_query after a request */
} ConnState;

/*
 * What a connection runs before a request (conn_query.c), the request
 * following when it is answered: a round trip that checks a connection idle
 * longer than validation_interval_ms, or the role reset before a request of
 * another local role (which checks the connection too).
 */
typedef enum ConnPrelude
{
	PRELUDE_NONE = 0,
	PRELUDE_VALIDATE,
	PRELUDE_ROLE_RESET
} ConnPrelude;

/* One outbound connection. */
struct WorkerConn
{
	dlist_node	pool_node;		/* in pool->conns */
	dlist_node	idle_node;		/* in pool->idle while on_idle_list */
	bool		on_idle_list;	/* IDLE and waiting in pool->idle (not just connected) */
	WorkerPool *pool;
	WorkerTarget *target;		/* &pool->primary or &pool->backup */
	bool		probe;			/* a probe of the primary while on the backup (failover.c):
								 * closed once connected, never serves, not in the gauges */
	PGconn	   *pg;
	ConnState	state;
	pgsocket	sock;
	int			wait_pos;		/* position in the WaitEventSet, -1 if none */
	uint32		wait_events;	/* events registered there */
	bool		readable;		/* reported by the last wait */
	bool		writable;
	dlist_node	ready_node;		/* in the worker's ready list while on_ready */
	bool		on_ready;		/* to be driven in this loop iteration */
	dlist_node	dirty_node;		/* in the worker's dirty list while on_dirty */
	bool		on_dirty;		/* its wanted socket events may have changed */
	PostgresPollingStatusType poll;	/* while CONN_CONNECTING */
	bool		resolving;		/* CONN_CONNECTING, waiting for its pool's host name
								 * lookup (pg is NULL until it ends) */
	bool		client_check;	/* its startup packet set client_connection_check_interval */
	bool		flushing;		/* output not yet flushed */
	TimestampTz created_at;
	TimestampTz state_since;
	TimestampTz deadline;		/* connect, query, cancel or drop deadline; 0 = none */
	uint32		conninfo_gen;	/* pool->conninfo_gen when opened */
	uint32		restart_gen;	/* pool->restart_gen when opened */
	uint64		requests_served;
	bool		retire;			/* close instead of returning to the pool */
	bool		large;			/* carried a large value: libpq's buffers grew, so
								 * close it after the request (DBPOOL_CLOSE_LARGE) */
	DbpoolCloseReason retire_reason;	/* ... and why */
	int			entry;			/* its DbpoolConnEntry, -1 if none */
	uint64		conn_id;
	int32		remote_pid;
	int64		active_us;		/* time spent serving earlier requests */
	int64		rows;			/* rows retrieved or affected by the current request */

	/*
	 * The settings the connection keeps between requests: ISO output with the
	 * foreign session's own field order, its own IntervalStyle ("" = the
	 * server did not say).
	 */
	char		datestyle[DBPOOL_STYLE_LEN];
	char		intervalstyle[DBPOOL_STYLE_LEN];

	/* the request */
	WorkerChannel *ch;			/* NULL once orphaned (client gone or answered) */
	bool		orphaned;		/* the results are drained and dropped */
	DbpoolCancel *cancel;		/* a cancel request in flight */
	bool		cancel_queued;	/* orphaned, waiting for room to start its cancel */
	bool		has_fd;			/* holds an AcquireExternalFD reservation */
	bool		result_started;	/* a 'T' was sent for the current result set */
	char		status[64];		/* command status of the last statement */
	StringInfoData error;		/* the first error record, if any */
	CleanupStep cleanup_step;

	/* prepared statements (stmtcache.c) */
	StmtCache	stmts;
	StmtEntry  *stmt;			/* the current request's entry, NULL if none */
	bool		preparing;		/* its PREPARE is in flight; the query follows */
	ConnPrelude prelude;		/* a validation or role reset in flight; the request follows */
	Oid			served_role;	/* local role of the last request since the last role
								 * reset; InvalidOid if none */
	bool		stmt_retry;		/* it failed at Bind: run it again unnamed */
	bool		stmt_lost;		/* ... because the server no longer has it */

	bool		health;			/* runs its pool's health check, or was opened for one
								 * (health.c) */
	TimestampTz health_idle_since;	/* taken idle for a check: since when it was idle (it
									 * goes back as it was); 0 otherwise */
	/* leak detection (leak.c) */
	bool		leak_suspected; /* flagged: busy with one request past leak_threshold_ms */
	TimestampTz leak_since;		/* ... since then: the request's start */
};

/* One pool: its settings, connections and waiting requests. */
struct WorkerPool
{
	dlist_node	node;			/* in the worker's list of pools */
	int			slot;			/* index in DbpoolShmem->pools */
	uint64		pool_id;
	char		name[DBPOOL_NAME_LEN];
	DbpoolSettings settings;
	WorkerTarget primary;		/* conninfo */
	WorkerTarget backup;		/* backup_conninfo; its conninfo NULL if none */
	uint32		conninfo_gen;	/* bumped when connections must be replaced (a change of
								 * conninfo, failover, failback, restart) */
	bool		owner_is_superuser;
	bool		stmt_cache_allowed;	/* its reset_query keeps prepared statements */
	bool		dropping;
	TimestampTz drop_deadline;
	uint32		restart_gen;	/* bumped by dbpool_restart_pool (ops.c) */
	TimestampTz restart_deadline;	/* older queries are cancelled after it */

	dlist_head	conns;
	dlist_head	idle;			/* most recently used first */
	dlist_head	waiters;		/* FIFO */
	int			nconns;
	int			nidle;
	int			nconnecting;
	int			nwaiting;

	/*
	 * Reconnecting (pool.c): after a failed attempt the next one waits for
	 * next_connect_at (exponential backoff with jitter), one at a time; after
	 * retry_attempts failures in a row with nothing serving the pool is down:
	 * requests fail at once with the last failure, and a probe tries every
	 * down_probe_interval_ms.  The first success clears it all.
	 */
	TimestampTz next_connect_at;
	int			failures;		/* failed attempts since the last success */
	bool		down;
	bool		ever_connected;
	int			last_sqlerrcode;	/* the last failure, for requests while down */
	char	   *last_message;	/* (worker memory) */
	char	   *last_detail;
	char	   *last_hint;
	TimestampTz last_failure_log;	/* connect failures log at most once a minute */

	int			nleaks;			/* connections flagged as suspected leaks (leak.c) */

	bool		cancel_skip_logged; /* a skipped cancel was logged (once per pool) */
	bool		cancel_abandon_logged;	/* ... an abandoned one */

	/*
	 * Failover (failover.c): on_backup while the backup target serves; a
	 * probe of the primary every down_probe_interval_ms meanwhile, and
	 * primary_up_since, the first of the probes in a row that connected (0:
	 * the last one failed, or none yet).
	 */
	bool		on_backup;
	WorkerConn *probe;			/* the probe in flight, NULL if none */
	TimestampTz next_probe_at;
	TimestampTz primary_up_since;

	/*
	 * Health checks (health.c): the one in flight, if health_busy, and the
	 * requests of dbpool_health() it answers; the latest background probe's
	 * result, for checks answered while the pool is saturated.
	 */
	bool		health_busy;
	bool		health_on_demand;	/* asked for (else a background probe) */
	WorkerConn *health_conn;	/* the connection running it or opened for it; NULL if none */
	TimestampTz health_deadline;
	TimestampTz health_query_at;	/* when its health query was sent */
	uint64		health_seq;		/* the last request of health_requested a check covers */
	TimestampTz health_last;	/* when the latest check ended (or the pool was created) */
	DbpoolHealthResult last_probe;	/* at 0: no background probe yet */
	struct DbpoolAutoscale *autoscale;	/* autoscale.c's samples; NULL until used */
};

/* worker.c */
extern MemoryContext DbpoolWorkerContext;
extern dlist_head DbpoolWorkerPools;
extern int	DbpoolWorkerTotalConns;
extern bool DbpoolWorkerServeNeeded;
extern bool DbpoolWorkerCapBlocked;
extern bool DbpoolWorkerWaitCapped;
extern void DbpoolWorkerSocketsChanged(void);
extern void DbpoolWorkerConnReady(WorkerConn *conn);
extern void DbpoolWorkerConnDirty(WorkerConn *conn);
extern void DbpoolWorkerConnForget(WorkerConn *conn);
extern void DbpoolWorkerBlocked(WorkerChannel *ch);
extern void DbpoolWorkerDeadline(TimestampTz t);
extern void DbpoolWorkerFreedLarge(void);
extern void DbpoolWorkerFreedConn(void);
extern bool DbpoolWaitLogDue(void);

/* config.c */
extern void DbpoolConfigMaybeReload(TimestampTz now);

/* standby.c */
extern bool DbpoolStandbyConfigChanged(TimestampTz now);

/* channel_worker.c */
extern WorkerChannel *DbpoolWorkerChannels;
extern void DbpoolWorkerChannelsInit(void);
extern void DbpoolWorkerProcessPending(void);
extern void DbpoolWorkerDetachAll(void);
extern bool DbpoolChannelFlush(WorkerChannel *ch);
extern void DbpoolChannelReply(WorkerChannel *ch);
extern void DbpoolChannelAddComplete(WorkerChannel *ch, const char *status);
extern void DbpoolChannelAddFinal(WorkerChannel *ch, const StringInfo rec);
extern void DbpoolChannelFinishRequest(WorkerChannel *ch);
extern void DbpoolChannelError(WorkerChannel *ch, int sqlerrcode, const char *message,
							   const char *detail, const char *hint);

/* pool.c */
extern WorkerPool *DbpoolPoolFind(const char *name);
extern WorkerPool *DbpoolPoolBySlot(int slot, uint64 pool_id);
extern void DbpoolPoolSubmit(WorkerPool *pool, WorkerChannel *ch);
extern bool DbpoolPoolRetry(WorkerConn *conn);
extern void DbpoolPoolForget(WorkerChannel *ch);
extern void DbpoolPoolFailWaiter(WorkerChannel *ch, int sqlerrcode, int also,
								 const char *message, const char *detail, const char *hint);
extern void DbpoolPoolFailWaiters(WorkerPool *pool, int sqlerrcode, const char *message,
								  const char *detail, const char *hint);
extern void DbpoolPoolGrow(WorkerPool *pool);
extern bool DbpoolConnShouldRetire(WorkerConn *conn, TimestampTz now, DbpoolCloseReason *reason);
extern void DbpoolPoolRelease(WorkerConn *conn);
extern void DbpoolPoolConnFailed(WorkerPool *pool, int sqlerrcode, const char *message,
								 const char *detail, const char *hint);
extern void DbpoolPoolConnClosed(WorkerPool *pool);
extern void DbpoolPoolConnected(WorkerPool *pool);
extern bool DbpoolPoolMayConnect(WorkerPool *pool);
extern void DbpoolPoolResetFailures(WorkerPool *pool);
extern void DbpoolPoolServeAll(void);
extern void DbpoolPoolPublish(WorkerPool *pool);
extern void DbpoolPoolCloseAll(void);

/* failover.c */
extern WorkerTarget *DbpoolPoolTarget(WorkerPool *pool);
extern bool DbpoolFailoverNeeded(WorkerPool *pool);
extern void DbpoolFailoverToBackup(WorkerPool *pool);
extern void DbpoolPoolUsePrimary(WorkerPool *pool);
extern void DbpoolFailoverProbed(WorkerPool *pool, bool ok, const char *error);
extern void DbpoolFailoverTick(WorkerPool *pool, TimestampTz now);

/* ops.c */
extern void DbpoolOpsApply(void);

/* janitor.c */
extern void DbpoolJanitorTick(TimestampTz now);

/* health.c */
extern void DbpoolHealthApply(void);
extern void DbpoolHealthTick(WorkerPool *pool, TimestampTz now);
extern bool DbpoolHealthConnReady(WorkerConn *conn);
extern void DbpoolHealthStepDone(WorkerConn *conn);
extern void DbpoolHealthConnFailed(WorkerConn *conn, const char *message, const char *detail);
extern void DbpoolHealthRelease(WorkerConn *conn);
/* leak.c */
extern void DbpoolLeakTick(WorkerPool *pool, TimestampTz now);
extern void DbpoolLeakEnded(WorkerConn *conn, const char *how);
/* alert_rules.c (the worker's read), alerts.c (evaluation), autoscale.c */
extern DbpoolAlertRule *DbpoolAlertRulesRead(const char *schema, MemoryContext cxt, int *n);
extern void DbpoolAlertRulesSet(const DbpoolAlertRule *r, int n);
extern const DbpoolAlertRule *DbpoolAlertRules(int *n);
extern void DbpoolAlertsInit(void);
extern void DbpoolAlertsTick(TimestampTz now);
extern void DbpoolAutoscaleTick(WorkerPool *pool, TimestampTz now);
extern void DbpoolAutoscaleForget(WorkerPool *pool);

/* resize.c: the worker's own changes of max_size; worker_sql.c: its transactions */
extern int	DbpoolScaleUpSize(const DbpoolSettings *s);
extern bool DbpoolResizePool(WorkerPool *pool, int new_max, const char *why);
extern void DbpoolResizeOverride(const char *name, DbpoolSettings *s);
extern void DbpoolResizeForget(const char *name);
typedef bool (*DbpoolWorkerRunFn) (void *arg);
extern bool DbpoolWorkerRun(DbpoolWorkerRunFn fn, void *arg, const char *activity,
							ErrorData **error);
extern bool DbpoolWorkerNotify(const char *channel, const char *payload);
extern bool DbpoolWorkerWriteMaxSize(const char *pool, int old_max, int new_max);

/* conn.c: a connection's life */
extern WorkerConn *DbpoolConnOpen(WorkerPool *pool);
extern WorkerConn *DbpoolConnOpenProbe(WorkerPool *pool);
extern void DbpoolConnSetState(WorkerConn *conn, ConnState state);
extern char *DbpoolConnErrorText(WorkerConn *conn);
extern bool DbpoolConnFlushSent(WorkerConn *conn, int ok);
extern void DbpoolConnDrainNotifies(WorkerConn *conn);
extern void DbpoolConnProcess(WorkerConn *conn);
extern bool DbpoolConnIdleAlive(WorkerConn *conn);
extern void DbpoolConnClose(WorkerConn *conn, DbpoolCloseReason reason);
extern void DbpoolConnCheckDeadline(WorkerConn *conn, TimestampTz now);
extern uint32 DbpoolConnWantedEvents(WorkerConn *conn);
extern void DbpoolConnLookupsPoll(void);
extern void DbpoolConnForgetLookup(WorkerTarget *target);

/* conn_query.c: one request on a connection */
extern void DbpoolConnStart(WorkerConn *conn, WorkerChannel *ch);
extern void DbpoolConnProcessResults(WorkerConn *conn);
extern void DbpoolConnOrphan(WorkerConn *conn);
extern void DbpoolConnRetryCancel(WorkerConn *conn);
extern void DbpoolConnUnqueueCancel(WorkerConn *conn);
extern void DbpoolConnFailRequest(WorkerConn *conn, int sqlerrcode, int also,
								  const char *message, const char *detail, const char *hint);

/* conn_reset.c: cleanup between requests */
extern int	DbpoolAwaitingCancels;
extern void DbpoolConnSetUp(WorkerConn *conn);
extern const char *DbpoolConnReportedStyle(WorkerConn *conn, const char *name);
extern char *DbpoolConnRoleResetSQL(WorkerConn *conn);
extern void DbpoolConnResetStart(WorkerConn *conn, PGTransactionStatusType ts);
extern void DbpoolConnResetStepDone(WorkerConn *conn);
extern void DbpoolConnRunHealthQuery(WorkerConn *conn);
extern bool DbpoolConnPollCancel(WorkerConn *conn);

/* stmtcache.c */
extern void DbpoolStmtInit(StmtCache *cache);
extern StmtEntry *DbpoolStmtLookup(StmtCache *cache, const char *sql, int nparams);
extern StmtEntry *DbpoolStmtForRequest(StmtCache *cache, bool allowed, const char *sql,
									   int nparams);
extern bool DbpoolStmtShouldPrepare(const StmtEntry *e);
extern bool DbpoolStmtBindFailed(StmtCache *cache, StmtEntry *e, const PGresult *res,
								 bool *lost);
extern void DbpoolStmtName(StmtCache *cache, StmtEntry *e, char *buf, size_t size);
extern void DbpoolStmtEvict(StmtCache *cache, StmtEntry *e);
extern bool DbpoolStmtCacheAllowed(const char *reset_query);
extern void DbpoolStmtTrim(StmtCache *cache, int limit);
extern void DbpoolStmtLost(StmtCache *cache, StmtEntry *e);
extern bool DbpoolStmtHasDeallocate(StmtCache *cache);
extern char *DbpoolStmtDeallocateSQL(StmtCache *cache);
extern void DbpoolStmtDeallocateDone(StmtCache *cache, bool ok);
extern void DbpoolStmtFree(StmtCache *cache);

/* stats.c, slowlog.c (worker side) */
extern void DbpoolStatsPoolCreated(WorkerPool *pool);
extern void DbpoolStatsGauges(WorkerPool *pool);
extern void DbpoolStatsCount(WorkerPool *pool, DbpoolCounter c);
extern void DbpoolStatsConnCreated(WorkerPool *pool);
extern void DbpoolStatsLeaks(WorkerPool *pool, int32 n);
extern void DbpoolStatsAcquired(WorkerChannel *ch);
extern void DbpoolStatsRequestEnd(WorkerChannel *ch, WorkerConn *conn, const char *sqlstate,
								  const char *message, bool cancelled, int also);
extern void DbpoolStatsConnInit(void);
extern void DbpoolStatsConnOpened(WorkerConn *conn);
extern void DbpoolStatsConnUpdate(WorkerConn *conn);
extern void DbpoolStatsConnQuery(WorkerConn *conn, WorkerChannel *ch);
extern void DbpoolStatsConnLeak(WorkerConn *conn);
extern void DbpoolStatsConnError(WorkerConn *conn, const char *message, Oid role);
extern void DbpoolStatsConnClosed(WorkerConn *conn);
extern void DbpoolSlowLogAdd(WorkerPool *pool, WorkerChannel *ch, TimestampTz ended_at,
							 int64 us, int64 rows, const char *sqlstate);

/* exit_cancel.c */
extern void DbpoolExitCancelStart(void);
extern void DbpoolExitCancelWait(void);

/* cancel.c */
extern int	DbpoolCancelsQueued;
extern DbpoolCancel *DbpoolCancelStart(WorkerConn *conn, bool *busy);
extern bool DbpoolCancelDone(DbpoolCancel *c);
extern bool DbpoolCancelForget(DbpoolCancel *c);
extern void DbpoolCancelGaveUp(WorkerPool *pool, bool abandoned);

/* resolve.c */
extern DbpoolLookup *DbpoolLookupStart(char *const *names, int n, const char **why);
extern bool DbpoolLookupDone(DbpoolLookup *l);
extern const char *DbpoolLookupResult(DbpoolLookup *l, int i, char **error);
extern void DbpoolLookupForget(DbpoolLookup *l);

#endif							/* DBPOOL_WORKER_H */
