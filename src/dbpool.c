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
int			DbpoolSlowQueryLogSize = 1000;
bool		DbpoolLoadedAtStartup = false;
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
