/*
 * dbpool.h
 *		Declarations shared by every part of dbpool: GUCs, limits, pool
 *		settings, connection strings, the shared-memory layout, and the
 *		backend's handshakes with the worker.  The record format is proto.h's,
 *		the statistics stats.h's, the worker's private structures worker.h's.
 *
 * Who runs what:
 *	- the postmaster, at load: dbpool.c (GUCs, hooks, worker registration)
 *	  and shmem.c;
 *	- the "dbpool metrics" process, when dbpool.metrics_port is set:
 *	  metrics_http.c (the HTTP listener) and prometheus.c (its texts, also
 *	  dbpool_prometheus() in backends);
 *	- client backends: query.c and channel.c (a query's backend half),
 *	  sync.c (waits on the worker), admin.c (administration), figures.c
 *	  (derived figures), views.c and detail.c (their SQL renderers),
 *	  health_sql.c (dbpool_health), diagnose.c, client_status.c, tune.c;
 *	- the dbpool worker (declared in worker.h): worker.c (start-up, loop),
 *	  config.c (reading the configuration, reconciling), standby.c (noticing
 *	  replicated changes on a hot standby), channel_worker.c,
 *	  pool.c, conn.c, conn_query.c, conn_reset.c, stmtcache.c, cancel.c
 *	  (whose threads run libpq only), resolve.c (whose threads run
 *	  getaddrinfo only), janitor.c, health.c (health checks), leak.c,
 *	  autoscale.c, resize.c, worker_sql.c, and the writing halves of
 *	  stats.c, slowlog.c and alerts.c (declared in alerts.h) and the reading
 *	  half of alert_rules.c;
 *	- both: settings.c, conninfo.c, proto.c, text.c, the reading halves of
 *	  stats.c, slowlog.c and alerts.c, and alert_rules.c's check trigger.
 */
#ifndef DBPOOL_H
#define DBPOOL_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/s_lock.h"
#include "storage/shm_mq.h"

#define DBPOOL_NAME_LEN			64		/* pool names: 1..63 characters */
#define DBPOOL_MAX_GRANTEES		64		/* usage grants per pool kept in shmem */
#define DBPOOL_CONNINFO_LEN		1024	/* redacted conninfo shown in views */
#define DBPOOL_TEXT_SETTING_LEN	1024	/* text settings such as reset_query */
#define DBPOOL_REQUEST_QUEUE_SIZE 8192	/* backend -> worker queue, per backend */
#define DBPOOL_WORKER_WAIT_MS	4000	/* how long a caller waits for the worker */
#define DBPOOL_DROP_GRACE_MS	10000	/* queries of a dropped pool may finish */
#define DBPOOL_CANCEL_GRACE_MS	5000	/* a cancelled query must end by then */
#define DBPOOL_MAX_MESSAGE_BYTES (256 * 1024 * 1024)	/* a request or a row, at most */
/*
 * A request, row, error or notice larger than this is a large value: the
 * connection that carried it is closed after the request instead of going
 * back to its pool (libpq's buffers only grow), and the worker's own buffers
 * that held it are freed and the memory given back to the system.
 */
#define DBPOOL_LARGE_MESSAGE_BYTES (1024 * 1024)
/* A request travels to the worker in pieces of at most this size. */
#define DBPOOL_REQUEST_PIECE_BYTES (DBPOOL_REQUEST_QUEUE_SIZE / 2)
#define DBPOOL_PASSWORD_MASK	"********"
#define DBPOOL_MAX_SETTINGS		32		/* room in view rows for settings */
#define DBPOOL_LOG_INTERVAL_MS	60000	/* repeated log lines: at most once a minute */
#define DBPOOL_STYLE_LEN		64		/* room for a DateStyle or IntervalStyle value */
#define DBPOOL_MAX_LOOKUPS		64		/* host name lookup threads at once, all pools */
#define DBPOOL_MAX_LOOKUP_ADDRS	16		/* addresses of one host name that are tried */
#define DBPOOL_LOOKUP_MAX_AGE_MS 60000	/* a lookup older than this is not joined */
#define DBPOOL_CLIENT_CHECK_MS	1000	/* client_connection_check_interval of foreign sessions */

/* GUCs (dbpool.c) */
extern char *DbpoolDatabase;
extern int	DbpoolMaxPools;
extern int	DbpoolMaxConnections;
extern int	DbpoolQueueSizeKb;
extern int	DbpoolStatementCacheSize;
extern int	DbpoolBackendSpinUs;
extern int	DbpoolSlowQueryLogSize;
extern bool DbpoolLoadedAtStartup;
extern double DbpoolDiagnoseLatencyP99Ms;	/* dbpool_diagnose's thresholds (diagnose.c) */
extern double DbpoolDiagnoseErrorRate;
extern double DbpoolDiagnoseUtilization;
extern double DbpoolDiagnoseAcquireP99Ms;
extern int	DbpoolDiagnoseReconnectsPerMinute;
extern int	DbpoolAutoscaleWindowS;
extern int	DbpoolAutoscaleCooldownS;
extern double DbpoolAutoscaleUpUtilization;
extern double DbpoolAutoscaleUpQps;
extern double DbpoolAutoscaleDownUtilization;
extern double DbpoolAutoscaleDownQps;
extern int	DbpoolMetricsPort;
extern char *DbpoolMetricsListenAddress;
extern char *DbpoolMetricsBearerToken;
extern char *DbpoolMetricsPrefix;

#define DBPOOL_VERSION			"1.0"	/* the extension's version, for build_info */

/* ---------- pool settings (settings.c) ---------- */

/*
 * Every tunable pool setting, except name, conninfo and backup_conninfo.  To add a setting:
 * add a field here, a row to DbpoolSettingDescs[] in settings.c, a parameter
 * of dbpool_create_pool (same position, before backup_conninfo, its last), a
 * column of the configuration table and of dbpool_pools in dbpool--*.sql.
 * Nothing else changes.
 */
typedef struct DbpoolSettings
{
	int			min_size;
	int			max_size;
	int			acquire_timeout_ms;
	int			query_timeout_ms;
	int			idle_timeout_ms;
	int			max_lifetime_ms;
	char		reset_query[DBPOOL_TEXT_SETTING_LEN];	/* "" = none */
	int			slow_query_ms;	/* 0 = no slow-query log */
	int			retry_base_ms;	/* first reconnect delay after a failed attempt */
	int			retry_max_ms;	/* longest reconnect delay */
	int			retry_attempts; /* failed attempts in a row that make the pool down */
	int			down_probe_interval_ms; /* how often a down pool is probed */
	int			validation_interval_ms; /* idle longer: checked by a round trip before use;
										 * 0 = never */
	int			failback_after_ms;	/* on the backup, back to the primary once it has
									 * answered this long; 0 = not by itself */
	char		health_query[DBPOOL_TEXT_SETTING_LEN];	/* run by health checks; never "" */
	int			health_timeout_ms;	/* a health check's deadline */
	int			health_check_interval_ms;	/* background probes; 0 = none */
	int			health_max_latency_ms;	/* deep check: the health query's latency below */
	double		health_max_utilization; /* deep check: utilization below */
	double		health_max_error_rate;	/* deep check: 60 s error rate below */
	int			leak_threshold_ms;	/* busy with one request longer: a suspected leak;
									 * 0 = no detection */
	bool		autoscale;		/* the worker resizes max_size from utilization and QPS */
	int			max_size_limit; /* autoscaling and scale_up never go above */
	int			max_size_floor; /* autoscaling never goes below; 0 = min(10, max_size) */
} DbpoolSettings;

typedef enum DbpoolSettingType
{
	DBPOOL_SETTING_INT,			/* SQL int */
	DBPOOL_SETTING_TEXT,		/* SQL text; "" = NULL = none, unless it has a default */
	DBPOOL_SETTING_REAL,		/* SQL float8, finite, within [min_real, max_real] */
	DBPOOL_SETTING_BOOL			/* SQL boolean; default_int is its default */
} DbpoolSettingType;

typedef struct DbpoolSettingDesc
{
	const char *name;			/* SQL name: parameter, jsonb key, column */
	DbpoolSettingType type;
	size_t		offset;			/* within DbpoolSettings */
	int			default_int;
	int			min_int;
	double		default_real;
	double		min_real;
	double		max_real;
	const char *default_text;	/* NULL: none (the setting may be NULL) */
} DbpoolSettingDesc;

extern const DbpoolSettingDesc DbpoolSettingDescs[];
extern const int DbpoolNumSettings;

extern void DbpoolSettingsDefaults(DbpoolSettings *s);
extern int *DbpoolSettingInt(DbpoolSettings *s, const DbpoolSettingDesc *d);
extern char *DbpoolSettingText(DbpoolSettings *s, const DbpoolSettingDesc *d);
extern double *DbpoolSettingReal(DbpoolSettings *s, const DbpoolSettingDesc *d);
extern double DbpoolSettingRealValue(const char *name, const char *text);
extern bool *DbpoolSettingBool(DbpoolSettings *s, const DbpoolSettingDesc *d);
extern int	DbpoolMaxSizeFloor(const DbpoolSettings *s);
extern void DbpoolValidateSettings(const DbpoolSettings *s);
extern void DbpoolValidateName(const char *name);

/* ---------- connection strings (conninfo.c) ---------- */

/* libpq's connection parameters for a pool, built from its conninfo (worker). */
typedef struct DbpoolConnParams
{
	MemoryContext cxt;			/* holds the arrays; NULL until first built */
	const char **keywords;		/* NULL if the conninfo does not parse */
	const char **values;
	int			connect_timeout_ms; /* enforced by the worker, never unbounded */

	/*
	 * The host entries, when at least one is a name the worker looks up
	 * itself (resolve.c) and hands libpq as hostaddr; nhosts is 0 when none
	 * is (IP addresses, socket paths, hostaddr given, a service file).
	 */
	int			nhosts;
	char	  **hosts;			/* each entry of host */
	char	  **hostaddrs;		/* each entry of hostaddr ("" = none) */
	char	  **ports;			/* each entry of port; NULL if port has at most one */
	char	  **lookup;			/* the name to look up for each entry, NULL if none */
	int			options_at;		/* index of "options" in the arrays */
	const char *options_plain;	/* the conninfo's own options, NULL if none */
	bool		client_check_off;	/* not sent: refused, or a service file's options apply */
} DbpoolConnParams;

struct pg_conn;					/* libpq's PGconn */

extern void DbpoolValidateConninfo(const char *conninfo, bool owner_is_superuser);
extern char *DbpoolRedactConninfo(const char *conninfo);
extern bool DbpoolConninfoBuildParams(const char *conninfo, DbpoolConnParams *p,
									  MemoryContext parent);
extern int	DbpoolConninfoAttemptParams(const DbpoolConnParams *p, const char *const *addrs,
										const char ***keywords, const char ***values);
extern bool DbpoolConninfoDropClientCheck(DbpoolConnParams *p);
extern bool DbpoolConninfoPasswordRuleMet(struct pg_conn *pg, bool owner_is_superuser);

/* ---------- texts kept in shared memory and relayed (text.c) ---------- */

#define DBPOOL_TEXT_CUT_MARK	"..."	/* ends a text cut to fit its room */

extern char *DbpoolTextUtf8(const char *text, int len, int encoding);
extern void DbpoolTextStore(char *dst, Size size, const char *text, int len);
extern char *DbpoolTextRender(const char *utf8, int len);
extern char *DbpoolTextShow(const char *utf8);

/* ---------- a local session as pg_stat_activity shows it (client_status.c) ---------- */

typedef struct DbpoolClientInfo
{
	bool		found;			/* a session has that pid */
	Oid			userid;			/* its role */
	char	   *application_name;	/* canonical UTF-8; NULL if empty */
	char	   *query;			/* its current or last query, the same */
} DbpoolClientInfo;

extern bool DbpoolClientStatus(int pid, DbpoolClientInfo *ci);

/* ---------- shared memory (shmem.c) ---------- */

typedef enum DbpoolPoolState
{
	DBPOOL_POOL_CONNECTING,		/* no connection has succeeded yet, none failed */
	DBPOOL_POOL_OK,				/* serving, no connection failure since the last success */
	DBPOOL_POOL_DEGRADED,		/* connection attempts fail, retrying with backoff; or
								 * serving from its backup */
	DBPOOL_POOL_DOWN,			/* retry_attempts failed in a row and nothing serves:
								 * requests fail at once, probes retry */
	DBPOOL_POOL_DROPPING		/* dropped; in-flight queries finishing */
} DbpoolPoolState;

/* One pool in the registry.  Written by the worker only. */
typedef struct DbpoolPoolSlot
{
	bool		in_use;
	int			index;			/* its own place in pools[], and in stats[] */
	DbpoolPoolState state;
	uint64		pool_id;		/* unique for the life of the server */
	char		name[DBPOOL_NAME_LEN];
	Oid			owner;
	int			ngrantees;
	Oid			grantees[DBPOOL_MAX_GRANTEES];
	TimestampTz created_at;
	DbpoolSettings settings;	/* its texts as shown: canonical UTF-8 (text.c) */
	char		conninfo[DBPOOL_CONNINFO_LEN];	/* password redacted; canonical UTF-8 */
	char		backup_conninfo[DBPOOL_CONNINFO_LEN];	/* the same; "" = none */
	bool		on_backup;		/* serving from the backup (a single store by the worker) */
	pg_atomic_uint32 ops_pending;	/* manual operations asked for (ops.c) */
	pg_atomic_uint64 health_requested;	/* health checks asked for (health.c) */

} DbpoolPoolSlot;

typedef enum DbpoolChannelState
{
	DBPOOL_CHANNEL_FREE,		/* queues not in use; the backend may create them */
	DBPOOL_CHANNEL_ACTIVE,		/* created by the backend, attached to the worker */
	DBPOOL_CHANNEL_ABANDONED	/* backend left mid-request; worker must free it */
} DbpoolChannelState;

/* One backend's channel; the two queues follow it in memory. */
typedef struct DbpoolChannel
{
	slock_t		mutex;			/* protects the fields below */
	DbpoolChannelState state;
	uint32		worker_gen;		/* worker generation the queues were made for */
	uint32		attach_seq;		/* bumped each time the backend makes queues */
	PGPROC	   *backend;
	pid_t		backend_pid;
} DbpoolChannel;

typedef struct DbpoolShared
{
	LWLock	   *lock;			/* protects the pool registry */
	slock_t		mutex;			/* protects worker_pid, worker_proc, worker_gen,
								 * database_checked, last_wait_log */
	pid_t		worker_pid;		/* 0 when no worker is serving */
	PGPROC	   *worker_proc;
	uint32		worker_gen;		/* bumped at every worker start */
	bool		database_checked;	/* dbpool.database was seen to exist */
	TimestampTz last_wait_log;	/* rate limit for "waiting for ..." lines */
	pg_atomic_uint64 config_requested;	/* bumped by committed admin changes */
	pg_atomic_uint64 config_applied;	/* last request the worker applied */
	pg_atomic_uint64 config_committed;	/* the request of the latest committed change */
	pg_atomic_uint64 registry_gen;	/* bumped after every change a lookup could see */
	pg_atomic_uint64 reset_requested;	/* bumped by dbpool_reset_stats() */
	pg_atomic_uint64 reset_applied;	/* the last request the worker has applied */
	pg_atomic_uint64 ops_requested;	/* bumped by dbpool_restart_pool/cleanup_pool */
	pg_atomic_uint64 ops_applied;	/* the last request the worker has applied */
	pg_atomic_uint64 health_doorbell;	/* bumped after health_requested (health.c) */
	uint64		next_pool_id;	/* worker only */
	uint64		next_conn_id;	/* worker only */
	int			nchannels;
	Size		channel_stride;
	pg_atomic_uint64 *pending;	/* bitmap: channels with news for the worker */
	char	   *channels;		/* nchannels * channel_stride bytes */
	struct DbpoolPoolStats *stats;	/* max_pools, parallel to pools[] (stats.c) */
	char	   *conn_entries;	/* max_connections DbpoolConnEntry (stats.c) */
	Size		conn_entry_stride;
	struct DbpoolSlowLog *slowlog;	/* the slow-query ring (slowlog.c) */
	struct DbpoolAlertShared *alerts;	/* the alerts (alerts.c) */
	DbpoolPoolSlot pools[FLEXIBLE_ARRAY_MEMBER];	/* dbpool.max_pools */
} DbpoolShared;

extern DbpoolShared *DbpoolShmem;

extern void DbpoolShmemRequest(void);
extern void DbpoolShmemStartup(void);
extern DbpoolChannel *DbpoolChannelAt(int index);
extern shm_mq *DbpoolChannelRequestQueue(DbpoolChannel *ch);
extern shm_mq *DbpoolChannelResponseQueue(DbpoolChannel *ch);
extern Size DbpoolResponseQueueSize(void);
extern void DbpoolChannelMarkPending(int index);
extern void DbpoolRegistryChanged(void);
extern DbpoolPoolSlot *DbpoolRegistryCopy(int *n);

/* ---------- module (dbpool.c) and administration (admin.c) ---------- */

extern void DbpoolCheckLoaded(void);
extern void DbpoolCheckConfigDatabase(void);
extern char *DbpoolExtensionSchema(void);
extern void DbpoolNotNullArg(FunctionCallInfo fcinfo, int n, const char *what);
extern char *DbpoolTextArg(FunctionCallInfo fcinfo, int n, const char *what);

/* ---------- a backend's handshakes with the worker (sync.c) ---------- */

extern pid_t DbpoolWorkerStatus(uint32 *gen, PGPROC **proc);
extern void DbpoolBackendSleep(long ms);
extern void DbpoolWakeWorker(void);
extern void DbpoolWaitForWorker(void);
extern bool DbpoolWaitForCounter(pg_atomic_uint64 *counter, uint64 target, int timeout_ms);
extern uint64 DbpoolRequestReconcile(void);
extern void DbpoolWaitForReconcile(uint64 target);
extern void DbpoolNoteCommittedConfig(uint64 target);
extern void DbpoolWaitForCommittedConfig(void);

/* ---------- the backend's half of the channel (channel.c) ---------- */

extern uint32 DbpoolChannelOpen(void);
extern void DbpoolChannelSend(const char *data, Size len);
extern void DbpoolChannelReceive(const char **data, Size *len);
extern void DbpoolChannelAbandon(void);

#endif							/* DBPOOL_H */
