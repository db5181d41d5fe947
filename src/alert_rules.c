/*
 * alert_rules.c
 *		The alert rules table, dbpool_alert_rules: the names a rule may use,
 *		the check of every row written (a BEFORE INSERT OR UPDATE trigger,
 *		22023 naming the column), and the worker's read of the enabled rules,
 *		made inside config.c's read of the configuration (same transaction,
 *		same trigger to announce a change at commit).
 *
 * The worker holds the rules it read in its own memory (DbpoolAlertRules);
 * alerts.c evaluates them.  A row the worker cannot use (written with the
 * triggers off, say) is skipped with a WARNING.
 */
#include "postgres.h"

#include <math.h>

#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "dbpool.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(dbpool_alert_rule_check);

const char *const DbpoolAlertMetricNames[DBPOOL_NUM_METRICS] = {
	"utilization", "latency_p99_ms", "acquire_p99_ms", "error_rate", "qps", "waiting", "down"
};
const char *const DbpoolAlertComparisonNames[DBPOOL_NUM_COMPARISONS] = {
	">", ">=", "<", "<=", "=", "!="
};
const char *const DbpoolAlertSeverityNames[DBPOOL_NUM_SEVERITIES] = {
	"info", "warning", "critical"
};
const char *const DbpoolAlertActionNames[DBPOOL_NUM_ACTIONS] = {
	"none", "scale_up"
};

/* The worker's enabled rules (worker memory). */
static DbpoolAlertRule *rules = NULL;
static int	nrules = 0;

/* The index of word among names[0..n-1], or -1. */
int
DbpoolAlertWord(const char *const *names, int n, const char *word)
{
	int			i;

	for (i = 0; i < n; i++)
		if (strcmp(names[i], word) == 0)
			return i;
	return -1;
}

/* "a, b, c" */
static char *
word_list(const char *const *names, int n)
{
	StringInfoData s;
	int			i;

	initStringInfo(&s);
	for (i = 0; i < n; i++)
		appendStringInfo(&s, "%s%s", i > 0 ? ", " : "", names[i]);
	return s.data;
}

/* Whether name is 1..63 characters of [A-Za-z0-9_.-], as pool names are. */
static bool
valid_name(const char *name)
{
	size_t		len = strlen(name);
	const char *p;

	if (len == 0 || len >= DBPOOL_NAME_LEN)
		return false;
	for (p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			  (*p >= '0' && *p <= '9') || *p == '_' || *p == '.' || *p == '-'))
			return false;
	return true;
}

/* A column's text value, or NULL (NULL: the NOT NULL constraint reports it). */
static char *
text_column(HeapTuple tup, TupleDesc desc, const char *col)
{
	return SPI_getvalue(tup, desc, SPI_fnumber(desc, col));
}

/* Raise 22023 for a word column whose value is not one of names. */
static void
check_word(HeapTuple tup, TupleDesc desc, const char *col, const char *const *names, int n)
{
	char	   *v = text_column(tup, desc, col);

	if (v != NULL && DbpoolAlertWord(names, n, v) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for %s: \"%s\"", col, v),
				 errdetail("%s must be one of: %s.", col, word_list(names, n))));
}

/*
 * Trigger on dbpool_alert_rules, BEFORE INSERT OR UPDATE FOR EACH ROW: the
 * row must be a rule the worker can evaluate.  22023 naming the column.
 */
Datum
dbpool_alert_rule_check(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	tup;
	TupleDesc	desc;
	char	   *v;
	bool		isnull;
	Datum		d;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || TRIGGER_FIRED_BY_DELETE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("dbpool_alert_rule_check must be called as a BEFORE INSERT OR UPDATE row trigger")));
	tup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	desc = RelationGetDescr(td->tg_relation);

	v = text_column(tup, desc, "name");
	if (v != NULL && !valid_name(v))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for name: \"%s\"", v),
				 errdetail("A rule name has 1 to %d letters, digits, \"_\", \".\" or \"-\".",
						   DBPOOL_NAME_LEN - 1)));
	check_word(tup, desc, "metric", DbpoolAlertMetricNames, DBPOOL_NUM_METRICS);
	check_word(tup, desc, "comparison", DbpoolAlertComparisonNames, DBPOOL_NUM_COMPARISONS);
	d = SPI_getbinval(tup, desc, SPI_fnumber(desc, "threshold"), &isnull);
	if (!isnull && (isnan(DatumGetFloat8(d)) || isinf(DatumGetFloat8(d))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for threshold: %g", DatumGetFloat8(d)),
				 errdetail("threshold must be a finite number.")));
	d = SPI_getbinval(tup, desc, SPI_fnumber(desc, "for_seconds"), &isnull);
	if (!isnull && DatumGetInt32(d) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for for_seconds: %d", DatumGetInt32(d)),
				 errdetail("for_seconds must be at least 0.")));
	check_word(tup, desc, "severity", DbpoolAlertSeverityNames, DBPOOL_NUM_SEVERITIES);
	v = text_column(tup, desc, "pool");
	if (v != NULL && !valid_name(v))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for pool: \"%s\"", v),
				 errdetail("pool is a pool name (1 to %d letters, digits, \"_\", \".\" or \"-\"), or NULL for every pool.",
						   DBPOOL_NAME_LEN - 1)));
	check_word(tup, desc, "action", DbpoolAlertActionNames, DBPOOL_NUM_ACTIONS);
	return PointerGetDatum(tup);
}

/* ---------- the worker ---------- */

/* One row of the read as a rule; false (and a WARNING) if it is not usable. */
static bool
rule_from_row(HeapTuple tup, TupleDesc desc, DbpoolAlertRule *r)
{
	char	   *name = SPI_getvalue(tup, desc, 1);
	char	   *words[4];
	int			idx[4];
	char	   *pool = SPI_getvalue(tup, desc, 7);
	bool		isnull;
	int			i;

	words[0] = SPI_getvalue(tup, desc, 2);
	words[1] = SPI_getvalue(tup, desc, 3);
	words[2] = SPI_getvalue(tup, desc, 6);
	words[3] = SPI_getvalue(tup, desc, 8);
	idx[0] = words[0] ? DbpoolAlertWord(DbpoolAlertMetricNames, DBPOOL_NUM_METRICS, words[0]) : -1;
	idx[1] = words[1] ? DbpoolAlertWord(DbpoolAlertComparisonNames, DBPOOL_NUM_COMPARISONS, words[1]) : -1;
	idx[2] = words[2] ? DbpoolAlertWord(DbpoolAlertSeverityNames, DBPOOL_NUM_SEVERITIES, words[2]) : -1;
	idx[3] = words[3] ? DbpoolAlertWord(DbpoolAlertActionNames, DBPOOL_NUM_ACTIONS, words[3]) : -1;
	memset(r, 0, sizeof(*r));
	r->threshold = DatumGetFloat8(SPI_getbinval(tup, desc, 4, &isnull));
	r->for_seconds = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
	for (i = 0; i < 4; i++)
		if (idx[i] < 0)
			break;
	if (name == NULL || !valid_name(name) || i < 4 || isnan(r->threshold) ||
		isinf(r->threshold) || r->for_seconds < 0 || (pool != NULL && !valid_name(pool)))
	{
		ereport(WARNING,
				(errmsg("dbpool: alert rule \"%s\" is not valid and is ignored",
						name ? name : "(null)"),
				 errhint("Update the rule: its check trigger says what is wrong.")));
		return false;
	}
	strlcpy(r->name, name, sizeof(r->name));
	r->metric = idx[0];
	r->comparison = idx[1];
	r->severity = idx[2];
	r->action = idx[3];
	if (pool)
		strlcpy(r->pool, pool, sizeof(r->pool));
	return true;
}

/*
 * Read the enabled rules (worker, inside config.c's read: SPI connected, a
 * snapshot, search_path pg_catalog); allocated in cxt.  *n gets how many.
 */
DbpoolAlertRule *
DbpoolAlertRulesRead(const char *schema, MemoryContext cxt, int *n)
{
	DbpoolAlertRule *out;
	uint64		i;

	if (SPI_execute(psprintf("SELECT name, metric, comparison, threshold, for_seconds, severity, "
							 "pool, action FROM %s.dbpool_alert_rules WHERE enabled ORDER BY name",
							 schema), true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the dbpool alert rules");
	out = MemoryContextAllocZero(cxt, sizeof(DbpoolAlertRule) * Max(SPI_processed, 1));
	*n = 0;
	for (i = 0; i < SPI_processed; i++)
		if (rule_from_row(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &out[*n]))
			(*n)++;
	return out;
}

/* Make these the worker's rules (copied into worker memory). */
void
DbpoolAlertRulesSet(const DbpoolAlertRule *r, int n)
{
	if (rules)
		pfree(rules);
	rules = MemoryContextAlloc(DbpoolWorkerContext, sizeof(DbpoolAlertRule) * Max(n, 1));
	if (n > 0)
		memcpy(rules, r, sizeof(DbpoolAlertRule) * n);
	nrules = n;
}

/* The worker's enabled rules; *n gets how many. */
const DbpoolAlertRule *
DbpoolAlertRules(int *n)
{
	*n = nrules;
	return rules;
}
