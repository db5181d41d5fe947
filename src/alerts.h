/*
 * alerts.h
 *		Alert rules, alerts and the worker's automatic sizing: the rules as the
 *		worker holds them (alert_rules.c reads and checks them), the alerts in
 *		shared memory (alerts.c evaluates them and is their only writer;
 *		anyone may copy them with DbpoolAlertsSnapshot), and the worker's
 *		changes of a pool's max_size (resize.c, for the scale_up action and
 *		autoscale.c) with the short transactions they and NOTIFY run in
 *		(worker_sql.c).
 */
#ifndef DBPOOL_ALERTS_H
#define DBPOOL_ALERTS_H

#include "dbpool.h"

#define DBPOOL_MAX_ALERTS		256 /* pending and firing alerts at once */
#define DBPOOL_ALERT_HISTORY	100 /* resolved alerts kept */
#define DBPOOL_ALERT_WORD_LEN	16	/* metric, comparison, severity, action names */
#define DBPOOL_ALERT_NOTIFY_CHANNEL "dbpool_alerts"
#define DBPOOL_SCALE_UP_EVERY_MS 60000	/* scale_up: at most once a minute per alert */

typedef enum DbpoolAlertMetric
{
	DBPOOL_M_UTILIZATION,
	DBPOOL_M_LATENCY_P99,
	DBPOOL_M_ACQUIRE_P99,
	DBPOOL_M_ERROR_RATE,
	DBPOOL_M_QPS,
	DBPOOL_M_WAITING,
	DBPOOL_M_DOWN,
	DBPOOL_NUM_METRICS
} DbpoolAlertMetric;

typedef enum DbpoolAlertComparison
{
	DBPOOL_CMP_GT,
	DBPOOL_CMP_GE,
	DBPOOL_CMP_LT,
	DBPOOL_CMP_LE,
	DBPOOL_CMP_EQ,
	DBPOOL_CMP_NE,
	DBPOOL_NUM_COMPARISONS
} DbpoolAlertComparison;

typedef enum DbpoolAlertSeverity
{
	DBPOOL_SEV_INFO,
	DBPOOL_SEV_WARNING,
	DBPOOL_SEV_CRITICAL,
	DBPOOL_NUM_SEVERITIES
} DbpoolAlertSeverity;

typedef enum DbpoolAlertAction
{
	DBPOOL_ACTION_NONE,
	DBPOOL_ACTION_SCALE_UP,
	DBPOOL_NUM_ACTIONS
} DbpoolAlertAction;

extern const char *const DbpoolAlertMetricNames[DBPOOL_NUM_METRICS];
extern const char *const DbpoolAlertComparisonNames[DBPOOL_NUM_COMPARISONS];
extern const char *const DbpoolAlertSeverityNames[DBPOOL_NUM_SEVERITIES];
extern const char *const DbpoolAlertActionNames[DBPOOL_NUM_ACTIONS];

/* One enabled rule, as the worker holds it (worker memory). */
typedef struct DbpoolAlertRule
{
	char		name[DBPOOL_NAME_LEN];
	DbpoolAlertMetric metric;
	DbpoolAlertComparison comparison;
	double		threshold;
	int			for_seconds;
	DbpoolAlertSeverity severity;
	char		pool[DBPOOL_NAME_LEN];	/* "" = every pool */
	DbpoolAlertAction action;
} DbpoolAlertRule;

typedef enum DbpoolAlertState
{
	DBPOOL_ALERT_PENDING,		/* the condition holds, not yet for for_seconds */
	DBPOOL_ALERT_FIRING,
	DBPOOL_ALERT_RESOLVED		/* it fired, and the condition no longer holds */
} DbpoolAlertState;

/* One alert: a rule's condition on one pool.  Its texts are ASCII names. */
typedef struct DbpoolAlert
{
	char		rule[DBPOOL_NAME_LEN];
	char		pool[DBPOOL_NAME_LEN];
	DbpoolAlertState state;
	DbpoolAlertMetric metric;
	DbpoolAlertComparison comparison;
	DbpoolAlertSeverity severity;
	DbpoolAlertAction action;
	int			for_seconds;
	double		value;			/* at the last evaluation (resolved: when it resolved) */
	double		threshold;
	TimestampTz since;			/* when the condition started to hold */
	TimestampTz fired_at;		/* 0: not fired (pending) */
	TimestampTz resolved_at;	/* 0: not resolved */
	TimestampTz last_action_at; /* 0: no action taken */
} DbpoolAlert;

/*
 * The alerts in shared memory.  The worker is the only writer, each change
 * bracketed by changecount (DbpoolBeginWrite/DbpoolEndWrite, stats.h); a
 * reader copies the whole struct with DbpoolAlertsSnapshot, so its copy is
 * one evaluation's result.
 */
typedef struct DbpoolAlertShared
{
	pg_atomic_uint32 changecount;
	int			nlive;			/* live[0 .. nlive-1]: pending and firing */
	uint64		nresolved;		/* resolved ever; the next goes at nresolved % HISTORY */
	TimestampTz evaluated_at;	/* the last evaluation; 0: none yet */
	DbpoolAlert live[DBPOOL_MAX_ALERTS];
	DbpoolAlert resolved[DBPOOL_ALERT_HISTORY];
} DbpoolAlertShared;

/* alerts.c: shared memory and readers (any process) */
extern Size DbpoolAlertsShmemSize(void);
extern void DbpoolAlertsShmemInit(char *base, bool found);
extern void DbpoolAlertsSnapshot(DbpoolAlertShared *copy);
extern const char *DbpoolAlertStateName(DbpoolAlertState state);

/* alert_rules.c: parsing names (any process) */
extern int	DbpoolAlertWord(const char *const *names, int n, const char *word);

#endif							/* DBPOOL_ALERTS_H */
