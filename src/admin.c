/*
 * admin.c
 *		Pool administration: create, alter, drop, grant and revoke usage.
 *
 * The configuration table in dbpool.database is the truth.  These functions
 * check privileges in C, validate everything, and change the table through
 * SPI as the bootstrap superuser (the table is not readable by others).  A
 * statement trigger on the tables notes any change (theirs, a restore's, a
 * direct edit's); at commit a transaction callback wakes the worker, which
 * reconciles, and every session's next lookup waits for that
 * (DbpoolWaitForCommittedConfig).
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "dbpool.h"

PG_FUNCTION_INFO_V1(dbpool_create_pool);
PG_FUNCTION_INFO_V1(dbpool_alter_pool);
PG_FUNCTION_INFO_V1(dbpool_drop_pool);
PG_FUNCTION_INFO_V1(dbpool_grant_usage);
PG_FUNCTION_INFO_V1(dbpool_revoke_usage);
PG_FUNCTION_INFO_V1(dbpool_config_trigger);

static bool config_changed = false;
static bool xact_callback_registered = false;

/* At commit of a transaction that changed pools, wake the worker to reconcile. */
static void
admin_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (config_changed)
				DbpoolNoteCommittedConfig(DbpoolRequestReconcile());
			config_changed = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:	/* COMMIT PREPARED: a lookup miss or the refresh finds it */
			config_changed = false;
			break;
		default:
			break;
	}
}

/* Remember that this transaction changed the configuration. */
static void
mark_changed(void)
{
	if (DbpoolShmem == NULL)
		return;					/* not preloaded (a restore, say): no worker to tell */
	if (!xact_callback_registered)
	{
		RegisterXactCallback(admin_xact_callback, NULL);
		xact_callback_registered = true;
	}
	config_changed = true;
}

/*
 * Raise 25006 on a hot standby: the configuration is replicated from the
 * primary, and is changed there.
 */
static void
check_not_in_recovery(void)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot change dbpool pools during recovery"),
				 errdetail("This server is a standby; its pools come from the primary's configuration."),
				 errhint("Change them on the primary server.")));
}

/* Raise 55000 unless we are in dbpool.database. */
void
DbpoolCheckConfigDatabase(void)
{
	char	   *db = get_database_name(MyDatabaseId);

	if (db == NULL || strcmp(db, DbpoolDatabase) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pools can only be administered in database \"%s\"", DbpoolDatabase),
				 errhint("Connect to database \"%s\" (the dbpool.database setting) to create, alter or drop pools.",
						 DbpoolDatabase)));
}

/*
 * Error context callback of the functions that take a conninfo: whatever
 * they report (their own errors, PostgreSQL's inside them, at any level)
 * leaves the statement, which may hold a password, out of the server log's
 * STATEMENT line.
 */
static void
hide_statement(void *arg)
{
	errhidestmt(true);
}

/* Start hiding the statement from the log (hide_statement) until hide_end. */
static void
hide_begin(ErrorContextCallback *cb)
{
	cb->callback = hide_statement;
	cb->arg = NULL;
	cb->previous = error_context_stack;
	error_context_stack = cb;
}

/* Undo hide_begin (an error unwinds the context stack by itself). */
static void
hide_end(ErrorContextCallback *cb)
{
	error_context_stack = cb->previous;
}

/* Raise 22004 naming argument n of an SQL function (what) if it is NULL. */
void
DbpoolNotNullArg(FunctionCallInfo fcinfo, int n, const char *what)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
}

/* Argument n of an SQL function, as text; 22004 naming it (what) if it is NULL. */
char *
DbpoolTextArg(FunctionCallInfo fcinfo, int n, const char *what)
{
	DbpoolNotNullArg(fcinfo, n, what);
	return text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/* The extension's schema, quoted, or NULL if it is not installed here.  Needs SPI. */
char *
DbpoolExtensionSchema(void)
{
	bool		isnull;

	if (SPI_execute("SELECT n.nspname FROM pg_catalog.pg_extension e "
					"JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace "
					"WHERE e.extname OPERATOR(pg_catalog.=) 'dbpool'", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "dbpool: could not look up the extension's schema");
	if (SPI_processed == 0)
		return NULL;
	return pstrdup(quote_identifier(NameStr(*DatumGetName(SPI_getbinval(SPI_tuptable->vals[0],
																		 SPI_tuptable->tupdesc,
																		 1, &isnull)))));
}

/* The schema-qualified name of one of the extension's tables.  Needs SPI. */
static char *
ext_table(const char *table)
{
	char	   *schema = DbpoolExtensionSchema();

	if (schema == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"dbpool\" is not installed in this database")));
	return psprintf("%s.%s", schema, table);
}

/* State saved while SPI runs as the bootstrap superuser. */
typedef struct AdminSpi
{
	Oid			saved_user;
	int			saved_sec;
	int			nest;
} AdminSpi;

/*
 * Connect SPI as the bootstrap superuser, with a safe search_path.  After
 * this, GetUserId() and superuser() describe the bootstrap superuser: use
 * s->saved_user for the caller.
 */
static void
spi_begin(AdminSpi *s)
{
	GetUserIdAndSecContext(&s->saved_user, &s->saved_sec);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID, s->saved_sec | SECURITY_LOCAL_USERID_CHANGE);
	s->nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/* Undo spi_begin. */
static void
spi_end(AdminSpi *s)
{
	SPI_finish();
	AtEOXact_GUC(true, s->nest);
	SetUserIdAndSecContext(s->saved_user, s->saved_sec);
}

/* Run a statement with text/int/regrole parameters; returns SPI_processed. */
static uint64
spi_run(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expect)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc != expect)
		elog(ERROR, "dbpool: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
	return SPI_processed;
}

/* Raise 42501 unless the caller is a superuser or has the owner's privileges. */
static void
check_owner(const char *pool, Oid owner, Oid caller)
{
	if (!superuser_arg(caller) && !has_privs_of_role(caller, owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of pool \"%s\"", pool)));
}

/* Lock a pool's row and return its owner; 42704 if there is none.  Needs spi_begin. */
static Oid
lock_pool(const char *pool)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(pool)};
	bool		isnull;

	if (spi_run(psprintf("SELECT owner::pg_catalog.oid FROM %s WHERE name = $1 FOR UPDATE",
						 ext_table("dbpool_config")),
				1, types, values, NULL, SPI_OK_SELECT) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("pool \"%s\" does not exist", pool)));
	return DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* Copy a text setting, refusing values that do not fit. */
static void
set_text_setting(DbpoolSettings *s, const DbpoolSettingDesc *d, const char *v)
{
	if (strlen(v) >= DBPOOL_TEXT_SETTING_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for %s", d->name),
				 errdetail("%s is limited to %d bytes.", d->name, DBPOOL_TEXT_SETTING_LEN - 1)));
	strlcpy(DbpoolSettingText(s, d), v, DBPOOL_TEXT_SETTING_LEN);
}

/*
 * The number of pools in the configuration table, exactly: the table is
 * locked against other writers until this transaction ends (its lock
 * conflicts with itself and with INSERT and DELETE), and the rows are
 * counted with a snapshot taken after the lock, so that under REPEATABLE READ
 * too a pool another transaction committed meanwhile is counted.  Needs
 * spi_begin.
 */
static int64
count_pools_locked(void)
{
	char	   *table = ext_table("dbpool_config");
	SPIPlanPtr	plan;
	bool		isnull;

	spi_run(psprintf("LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE", table),
			0, NULL, NULL, NULL, SPI_OK_UTILITY);
	plan = SPI_prepare(psprintf("SELECT count(*) FROM %s", table), 0, NULL);
	if (plan == NULL ||
		SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "dbpool: could not count the pools");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* Write name, conninfo, backup_conninfo (NULL: none) and settings: INSERT (owner given) or UPDATE. */
static uint64
write_pool(const char *name, const char *conninfo, const char *backup, const DbpoolSettings *s,
		   Oid owner)
{
	int			n = 3 + DbpoolNumSettings + (OidIsValid(owner) ? 1 : 0);
	Oid		   *types = palloc(sizeof(Oid) * n);
	Datum	   *values = palloc(sizeof(Datum) * n);
	char	   *nulls = palloc(n + 1);
	StringInfoData cols,
				params,
				sets;
	int			i;

	initStringInfo(&cols);
	initStringInfo(&params);
	initStringInfo(&sets);
	memset(nulls, ' ', n);
	nulls[n] = '\0';
	types[0] = TEXTOID;
	values[0] = CStringGetTextDatum(name);
	types[1] = TEXTOID;
	values[1] = CStringGetTextDatum(conninfo);
	types[2] = TEXTOID;
	values[2] = backup ? CStringGetTextDatum(backup) : (Datum) 0;
	if (backup == NULL)
		nulls[2] = 'n';
	for (i = 0; i < DbpoolNumSettings; i++)
	{
		const DbpoolSettingDesc *d = &DbpoolSettingDescs[i];
		int			a = 3 + i;

		appendStringInfo(&cols, ", %s", d->name);
		appendStringInfo(&params, ", $%d", a + 1);
		appendStringInfo(&sets, ", %s = $%d", d->name, a + 1);
		if (d->type == DBPOOL_SETTING_INT)
		{
			types[a] = INT4OID;
			values[a] = Int32GetDatum(*DbpoolSettingInt((DbpoolSettings *) s, d));
		}
		else if (d->type == DBPOOL_SETTING_REAL)
		{
			types[a] = FLOAT8OID;
			values[a] = Float8GetDatum(*DbpoolSettingReal((DbpoolSettings *) s, d));
		}
		else if (d->type == DBPOOL_SETTING_BOOL)
		{
			types[a] = BOOLOID;
			values[a] = BoolGetDatum(*DbpoolSettingBool((DbpoolSettings *) s, d));
		}
		else
		{
			const char *v = DbpoolSettingText((DbpoolSettings *) s, d);

			types[a] = TEXTOID;
			values[a] = CStringGetTextDatum(v);
			if (v[0] == '\0')
				nulls[a] = 'n';
		}
	}
	if (OidIsValid(owner))
	{
		types[n - 1] = REGROLEOID;
		values[n - 1] = ObjectIdGetDatum(owner);
		return spi_run(psprintf("INSERT INTO %s (name, conninfo, backup_conninfo, owner%s) "
								"VALUES ($1, $2, $3, $%d%s) ON CONFLICT (name) DO NOTHING",
								ext_table("dbpool_config"), cols.data, n, params.data),
					   n, types, values, nulls, SPI_OK_INSERT);
	}
	return spi_run(psprintf("UPDATE %s SET conninfo = $2, backup_conninfo = $3%s WHERE name = $1",
							ext_table("dbpool_config"), sets.data),
				   n, types, values, nulls, SPI_OK_UPDATE);
}

/*
 * dbpool_create_pool(name, conninfo, settings..., backup_conninfo): define a
 * pool owned by the caller.
 */
Datum
dbpool_create_pool(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *conninfo;
	char	   *backup = NULL;
	DbpoolSettings s;
	AdminSpi	spi;
	ErrorContextCallback hide;
	int			i;

	hide_begin(&hide);
	DbpoolCheckLoaded();
	check_not_in_recovery();
	DbpoolCheckConfigDatabase();
	name = DbpoolTextArg(fcinfo, 0, "pool name");
	conninfo = DbpoolTextArg(fcinfo, 1, "conninfo");
	DbpoolValidateName(name);
	DbpoolSettingsDefaults(&s);
	for (i = 0; i < DbpoolNumSettings; i++)
	{
		const DbpoolSettingDesc *d = &DbpoolSettingDescs[i];

		if (d->type == DBPOOL_SETTING_TEXT)
		{
			if (!PG_ARGISNULL(2 + i))
				set_text_setting(&s, d, text_to_cstring(PG_GETARG_TEXT_PP(2 + i)));
		}
		else if (PG_ARGISNULL(2 + i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be null", d->name)));
		else if (d->type == DBPOOL_SETTING_REAL)
			*DbpoolSettingReal(&s, d) = PG_GETARG_FLOAT8(2 + i);
		else if (d->type == DBPOOL_SETTING_BOOL)
			*DbpoolSettingBool(&s, d) = PG_GETARG_BOOL(2 + i);
		else
			*DbpoolSettingInt(&s, d) = PG_GETARG_INT32(2 + i);
	}
	if (!PG_ARGISNULL(2 + DbpoolNumSettings))
		backup = text_to_cstring(PG_GETARG_TEXT_PP(2 + DbpoolNumSettings));
	DbpoolValidateSettings(&s);
	DbpoolValidateConninfo(conninfo, superuser());
	if (backup)
		DbpoolValidateConninfo(backup, superuser());

	/* from here on SPI runs as the bootstrap superuser: the caller is spi.saved_user */
	spi_begin(&spi);
	if (count_pools_locked() >= DbpoolMaxPools)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("cannot create pool \"%s\": dbpool.max_pools (%d) pools exist", name,
						DbpoolMaxPools),
				 errhint("Drop a pool, or raise dbpool.max_pools and restart the server.")));
	if (write_pool(name, conninfo, backup, &s, spi.saved_user) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("pool \"%s\" already exists", name)));
	spi_end(&spi);
	hide_end(&hide);
	PG_RETURN_VOID();
}

/* Parse a jsonb number as an int setting, or raise 22023. */
static int
int_value(const char *key, const char *type, const char *text)
{
	char	   *end;
	long		v;

	errno = 0;
	v = (strcmp(type, "number") == 0) ? strtol(text, &end, 10) : 0;
	if (strcmp(type, "number") != 0 || *end != '\0' || errno != 0 || v < PG_INT32_MIN ||
		v > PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for %s: %s", key, text ? text : "null"),
				 errdetail("%s takes an integer.", key)));
	return (int) v;
}

/* dbpool_alter_pool(name, options jsonb): change any settings and the conninfo, live. */
Datum
dbpool_alter_pool(PG_FUNCTION_ARGS)
{
	char	   *name;
	Jsonb	   *options;
	AdminSpi	spi;
	Oid			owner;
	char	   *conninfo;
	char	   *backup;
	DbpoolSettings s;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	Oid			jtypes[1] = {JSONBOID};
	Datum		jvalues[1];
	SPITupleTable *tt;
	uint64		n,
				r;
	int			i;
	ErrorContextCallback hide;

	hide_begin(&hide);
	DbpoolCheckLoaded();
	check_not_in_recovery();
	DbpoolCheckConfigDatabase();
	name = DbpoolTextArg(fcinfo, 0, "pool name");
	DbpoolNotNullArg(fcinfo, 1, "options");
	options = PG_GETARG_JSONB_P(1);
	if (!JB_ROOT_IS_OBJECT(options))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a JSON object"),
				 errhint("For example '{\"max_size\": 20}'.")));

	spi_begin(&spi);
	owner = lock_pool(name);
	check_owner(name, owner, spi.saved_user);

	/* current values */
	values[0] = CStringGetTextDatum(name);
	{
		StringInfoData cols;

		initStringInfo(&cols);
		for (i = 0; i < DbpoolNumSettings; i++)
			appendStringInfo(&cols, ", %s", DbpoolSettingDescs[i].name);
		spi_run(psprintf("SELECT conninfo, backup_conninfo%s FROM %s WHERE name = $1", cols.data,
						 ext_table("dbpool_config")),
				1, types, values, NULL, SPI_OK_SELECT);
	}
	tt = SPI_tuptable;
	conninfo = SPI_getvalue(tt->vals[0], tt->tupdesc, 1);
	backup = SPI_getvalue(tt->vals[0], tt->tupdesc, 2);
	DbpoolSettingsDefaults(&s);
	for (i = 0; i < DbpoolNumSettings; i++)
	{
		const DbpoolSettingDesc *d = &DbpoolSettingDescs[i];
		char	   *v = SPI_getvalue(tt->vals[0], tt->tupdesc, 3 + i);

		if (v == NULL)
			continue;
		if (d->type == DBPOOL_SETTING_INT)
			*DbpoolSettingInt(&s, d) = pg_strtoint32(v);
		else if (d->type == DBPOOL_SETTING_REAL)
			*DbpoolSettingReal(&s, d) = DbpoolSettingRealValue(d->name, v);
		else if (d->type == DBPOOL_SETTING_BOOL)
			*DbpoolSettingBool(&s, d) = (strcmp(v, "t") == 0);
		else
			set_text_setting(&s, d, v);
	}

	/* apply the options */
	jvalues[0] = JsonbPGetDatum(options);
	n = spi_run("SELECT key, jsonb_typeof(value), value #>> '{}' FROM jsonb_each($1) ORDER BY key",
				1, jtypes, jvalues, NULL, SPI_OK_SELECT);
	tt = SPI_tuptable;
	for (r = 0; r < n; r++)
	{
		char	   *key = SPI_getvalue(tt->vals[r], tt->tupdesc, 1);
		char	   *type = SPI_getvalue(tt->vals[r], tt->tupdesc, 2);
		char	   *text = SPI_getvalue(tt->vals[r], tt->tupdesc, 3);
		bool		known = false;

		if (strcmp(key, "conninfo") == 0)
		{
			if (strcmp(type, "string") != 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for conninfo"),
						 errdetail("conninfo takes a string.")));
			conninfo = text;
			continue;
		}
		if (strcmp(key, "backup_conninfo") == 0)
		{
			if (strcmp(type, "string") != 0 && strcmp(type, "null") != 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for backup_conninfo"),
						 errdetail("backup_conninfo takes a string, or null for none.")));
			backup = strcmp(type, "null") == 0 ? NULL : text;
			continue;
		}
		for (i = 0; i < DbpoolNumSettings && !known; i++)
		{
			const DbpoolSettingDesc *d = &DbpoolSettingDescs[i];

			if (strcmp(key, d->name) != 0)
				continue;
			known = true;
			if (d->type == DBPOOL_SETTING_INT)
				*DbpoolSettingInt(&s, d) = int_value(key, type, text);
			else if (d->type == DBPOOL_SETTING_REAL)
			{
				if (strcmp(type, "number") != 0)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("invalid value for %s: %s", key, text ? text : "null"),
							 errdetail("%s takes a number.", key)));
				*DbpoolSettingReal(&s, d) = DbpoolSettingRealValue(key, text);
			}
			else if (d->type == DBPOOL_SETTING_BOOL)
			{
				if (strcmp(type, "boolean") != 0)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("invalid value for %s: %s", key, text ? text : "null"),
							 errdetail("%s takes true or false.", key)));
				*DbpoolSettingBool(&s, d) = (strcmp(text, "true") == 0);
			}
			else if (strcmp(type, "null") == 0)
				set_text_setting(&s, d, "");
			else if (strcmp(type, "string") == 0)
				set_text_setting(&s, d, text);
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for %s", key),
						 errdetail("%s takes a string or null.", key)));
		}
		if (!known)
		{
			StringInfoData valid;

			initStringInfo(&valid);
			appendStringInfoString(&valid, "conninfo, backup_conninfo");
			for (i = 0; i < DbpoolNumSettings; i++)
				appendStringInfo(&valid, ", %s", DbpoolSettingDescs[i].name);
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown pool setting \"%s\"", key),
					 errhint("Valid settings: %s.", valid.data)));
		}
	}
	DbpoolValidateSettings(&s);
	DbpoolValidateConninfo(conninfo, superuser_arg(owner));
	if (backup)
		DbpoolValidateConninfo(backup, superuser_arg(owner));
	write_pool(name, conninfo, backup, &s, InvalidOid);
	spi_end(&spi);
	hide_end(&hide);
	PG_RETURN_VOID();
}

/* dbpool_drop_pool(name): remove a pool; running queries get a grace period. */
Datum
dbpool_drop_pool(PG_FUNCTION_ARGS)
{
	char	   *name;
	AdminSpi	spi;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	DbpoolCheckLoaded();
	check_not_in_recovery();
	DbpoolCheckConfigDatabase();
	name = DbpoolTextArg(fcinfo, 0, "pool name");
	spi_begin(&spi);
	check_owner(name, lock_pool(name), spi.saved_user);
	values[0] = CStringGetTextDatum(name);
	spi_run(psprintf("DELETE FROM %s WHERE name = $1", ext_table("dbpool_config")),
			1, types, values, NULL, SPI_OK_DELETE);
	spi_end(&spi);
	PG_RETURN_VOID();
}

/* Shared body of grant and revoke. */
static void
change_usage(FunctionCallInfo fcinfo, bool grant)
{
	char	   *name;
	Oid			role;
	AdminSpi	spi;
	Oid			types[2] = {TEXTOID, REGROLEOID};
	Datum		values[2];

	DbpoolCheckLoaded();
	check_not_in_recovery();
	DbpoolCheckConfigDatabase();
	name = DbpoolTextArg(fcinfo, 0, "pool name");
	DbpoolNotNullArg(fcinfo, 1, "role");
	role = PG_GETARG_OID(1);
	spi_begin(&spi);
	check_owner(name, lock_pool(name), spi.saved_user);
	values[0] = CStringGetTextDatum(name);
	values[1] = ObjectIdGetDatum(role);
	if (grant)
		spi_run(psprintf("INSERT INTO %s (pool, role) VALUES ($1, $2) ON CONFLICT DO NOTHING",
						 ext_table("dbpool_grant")),
				2, types, values, NULL, SPI_OK_INSERT);
	else
		spi_run(psprintf("DELETE FROM %s WHERE pool = $1 AND role = $2",
						 ext_table("dbpool_grant")),
				2, types, values, NULL, SPI_OK_DELETE);
	spi_end(&spi);
}

/*
 * Statement trigger on the configuration tables: whatever writes them (these
 * functions, a restore, a direct edit) makes the worker re-read at commit.
 */
Datum
dbpool_config_trigger(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("dbpool_config_trigger must be called as a trigger")));
	mark_changed();
	return PointerGetDatum(NULL);
}

/* dbpool_grant_usage(pool, role): let role run queries on the pool. */
Datum
dbpool_grant_usage(PG_FUNCTION_ARGS)
{
	change_usage(fcinfo, true);
	PG_RETURN_VOID();
}

/* dbpool_revoke_usage(pool, role): take that back. */
Datum
dbpool_revoke_usage(PG_FUNCTION_ARGS)
{
	change_usage(fcinfo, false);
	PG_RETURN_VOID();
}
