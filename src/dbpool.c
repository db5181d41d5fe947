/*
 * dbpool.c
 *		Module load: GUCs, shared-memory hooks and the registration of the
 *		worker and, when dbpool.metrics_port is set, of the metrics process.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/guc.h"

#include "dbpool.h"
#include "stats.h"

PG_MODULE_MAGIC;

char	   *DbpoolDatabase = NULL;
int			DbpoolMaxPools = 32;
int			DbpoolMaxConnections = 256;
int			DbpoolQueueSizeKb = 64;
int			DbpoolStatementCacheSize = 100;
int			DbpoolBackendSpinUs = 0;
int			DbpoolSlowQueryLogSize = 1000;
bool		DbpoolLoadedAtStartup = false;
double		DbpoolDiagnoseLatencyP99Ms = 1000;
double		DbpoolDiagnoseErrorRate = 0.05;
double		DbpoolDiagnoseUtilization = 0.9;
double		DbpoolDiagnoseAcquireP99Ms = 100;
int			DbpoolDiagnoseReconnectsPerMinute = 10;
int			DbpoolAutoscaleWindowS = 60;
int			DbpoolAutoscaleCooldownS = 60;
double		DbpoolAutoscaleUpUtilization = 0.8;
double		DbpoolAutoscaleUpQps = 1000;
double		DbpoolAutoscaleDownUtilization = 0.3;
double		DbpoolAutoscaleDownQps = 100;
int			DbpoolMetricsPort = 0;
char	   *DbpoolMetricsListenAddress = NULL;
char	   *DbpoolMetricsBearerToken = NULL;
char	   *DbpoolMetricsPrefix = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

/* dbpool.metrics_prefix must start a Prometheus metric name: [a-zA-Z_:][a-zA-Z0-9_:]*. */
static bool
check_metrics_prefix(char **newval, void **extra, GucSource source)
{
	const char *p;

	for (p = *newval; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' || *p == ':' ||
			  (p != *newval && *p >= '0' && *p <= '9')))
			break;
	if (**newval == '\0' || *p != '\0' || strlen(*newval) > 100)
	{
		GUC_check_errdetail("A metric name prefix has 1 to 100 characters: letters, digits, "
							"\"_\" and \":\", not starting with a digit.");
		return false;
	}
	return true;
}

/* Show dbpool.metrics_bearer_token masked: it is never shown, only whether it is set. */
static const char *
show_bearer_token(void)
{
	return DbpoolMetricsBearerToken && DbpoolMetricsBearerToken[0] ? DBPOOL_PASSWORD_MASK : "";
}

/* Define the endpoint's GUCs, and register its process when dbpool.metrics_port is set. */
static void
define_metrics(void)
{
	BackgroundWorker worker;

	DefineCustomIntVariable("dbpool.metrics_port",
							"TCP port of the metrics endpoint (GET /metrics, GET /health).",
							"0 (the default) starts no endpoint.",
							&DbpoolMetricsPort, 0, 0, 65535,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("dbpool.metrics_listen_address",
							   "Address the metrics endpoint listens on.",
							   "A host name or IP address; \"*\" for every address.",
							   &DbpoolMetricsListenAddress, "127.0.0.1",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("dbpool.metrics_bearer_token",
							   "Token the metrics endpoint requires (Authorization: Bearer).",
							   "Empty (the default): no token is required.",
							   &DbpoolMetricsBearerToken, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, show_bearer_token);
	DefineCustomStringVariable("dbpool.metrics_prefix",
							   "Prefix of every metric name of the endpoint and dbpool_prometheus().",
							   NULL, &DbpoolMetricsPrefix, "dbpool",
							   PGC_SIGHUP, 0, check_metrics_prefix, NULL, NULL);
	if (DbpoolMetricsPort == 0)
		return;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;	/* no database */
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "dbpool");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "DbpoolMetricsMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "dbpool metrics");
	snprintf(worker.bgw_type, BGW_MAXLEN, "dbpool metrics");
	RegisterBackgroundWorker(&worker);
}

/* Chain to the previous shmem_request_hook, then ask for our memory. */
static void
dbpool_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	DbpoolShmemRequest();
}

/* Chain to the previous shmem_startup_hook, then set up our memory. */
static void
dbpool_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	DbpoolShmemStartup();
}

/* The autoscaling policy's window, cooldown and thresholds (autoscale.c); reloadable. */
static void
define_autoscale_gucs(void)
{
	DefineCustomIntVariable("dbpool.autoscale_window_s",
							"Seconds of utilization and QPS that autoscaling looks at.",
							"A pool with autoscale on is resized from its mean utilization and "
							"its queries per second over this window.",
							&DbpoolAutoscaleWindowS, 60, 1, 60,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("dbpool.autoscale_cooldown_s",
							"Seconds after an autoscaling change before the next one.",
							NULL, &DbpoolAutoscaleCooldownS, 60, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomRealVariable("dbpool.autoscale_up_utilization",
							 "Autoscaling grows a pool whose mean utilization is above this ...",
							 NULL, &DbpoolAutoscaleUpUtilization, 0.8, 0.0, 1.0,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("dbpool.autoscale_up_qps",
							 "... and whose queries per second are above this.",
							 NULL, &DbpoolAutoscaleUpQps, 1000, 0.0, 1e9,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("dbpool.autoscale_down_utilization",
							 "Autoscaling shrinks a pool whose mean utilization is below this ...",
							 NULL, &DbpoolAutoscaleDownUtilization, 0.3, 0.0, 1.0,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("dbpool.autoscale_down_qps",
							 "... and whose queries per second are below this.",
							 NULL, &DbpoolAutoscaleDownQps, 100, 0.0, 1e9,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/* The thresholds of dbpool_diagnose (diagnose.c): any session may set them. */
static void
define_diagnose_gucs(void)
{
	DefineCustomRealVariable("dbpool.diagnose_latency_p99_ms",
							 "dbpool_diagnose: query latency p99 (last 60 s) above which a pool has high_latency.",
							 NULL, &DbpoolDiagnoseLatencyP99Ms, 1000, 0, 1e9,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("dbpool.diagnose_error_rate",
							 "dbpool_diagnose: error rate (last 60 s) above which a pool has high_error_rate.",
							 NULL, &DbpoolDiagnoseErrorRate, 0.05, 0, 1,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("dbpool.diagnose_utilization",
							 "dbpool_diagnose: utilization (busy connections / max_size) above which a pool has saturation.",
							 NULL, &DbpoolDiagnoseUtilization, 0.9, 0, 1,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("dbpool.diagnose_acquire_p99_ms",
							 "dbpool_diagnose: acquire latency p99 (last 60 s) above which a pool has long_waits.",
							 NULL, &DbpoolDiagnoseAcquireP99Ms, 100, 0, 1e9,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dbpool.diagnose_reconnects_per_minute",
							"dbpool_diagnose: connections established in the last 60 s beyond min_size above which a pool has frequent_reconnects.",
							NULL, &DbpoolDiagnoseReconnectsPerMinute, 10, 0, INT_MAX,
							PGC_USERSET, 0, NULL, NULL, NULL);
}

/* Define the GUCs and, when preloaded, reserve shared memory and register the worker. */
void
_PG_init(void)
{
	BackgroundWorker worker;

	if (!process_shared_preload_libraries_in_progress)
		return;					/* every function will say so: DbpoolCheckLoaded */

	DefineCustomStringVariable("dbpool.database",
							   "Database that holds the pool configuration.",
							   "The dbpool worker connects to it; pools are administered there.",
							   &DbpoolDatabase, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dbpool.max_pools",
							"Maximum number of pools.",
							NULL, &DbpoolMaxPools, 32, 1, 10000,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dbpool.max_connections",
							"Maximum number of foreign connections of all pools together.",
							NULL, &DbpoolMaxConnections, 256, 1, 100000,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dbpool.queue_size",
							"Size of each session's result queue from the worker.",
							"Rows stream through it; a full queue makes the worker stop "
							"reading the foreign socket until the session catches up.",
							&DbpoolQueueSizeKb, 64, 8, 1024 * 1024,
							PGC_POSTMASTER, GUC_UNIT_KB, NULL, NULL, NULL);
	DefineCustomIntVariable("dbpool.statement_cache_size",
							"Parameterized statements each foreign connection keeps prepared.",
							"A text used twice on a connection is prepared there and then only "
							"bound; 0 runs every statement unnamed.  A change applies to "
							"statements cached from then on.",
							&DbpoolStatementCacheSize, 100, 0, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dbpool.slow_query_log_size",
							"Slow executions kept for dbpool_slow_queries, all pools together.",
							"A ring in shared memory: the oldest entry makes room for the newest; "
							"0 keeps none.",
							&DbpoolSlowQueryLogSize, 1000, 0, 100000,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dbpool.backend_spin_us",
							"How long a session polls for the worker's reply before it sleeps, at most.",
							"Adaptive: a session polls only while replies came sooner than this "
							"lately, and for about twice as long as they took; a reply caught "
							"while polling costs no wake-up.  0 never polls.",
							&DbpoolBackendSpinUs, 0, 0, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	define_diagnose_gucs();
	define_autoscale_gucs();
	define_metrics();
	MarkGUCPrefixReserved("dbpool");
	DbpoolHistInit();

	DbpoolLoadedAtStartup = true;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = dbpool_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = dbpool_shmem_startup;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* on a hot standby too: it serves the replicated configuration (standby.c) */
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "dbpool");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "DbpoolWorkerMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "dbpool worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "dbpool worker");
	RegisterBackgroundWorker(&worker);
}

/* Raise 55000 unless the library was loaded through shared_preload_libraries. */
void
DbpoolCheckLoaded(void)
{
	if (!DbpoolLoadedAtStartup || DbpoolShmem == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("dbpool must be loaded via shared_preload_libraries"),
				 errhint("Add dbpool to shared_preload_libraries in postgresql.conf and restart the server.")));
}
