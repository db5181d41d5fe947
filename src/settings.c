/*
 * settings.c
 *		Pool settings: their table of descriptors, defaults, validation, and
 *		the checks and redaction of connection strings.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "libpq-fe.h"

#include "dbpool.h"

#define INT_SETTING(field, def, min) \
	{#field, DBPOOL_SETTING_INT, offsetof(DbpoolSettings, field), def, min}
#define TEXT_SETTING(field) \
	{#field, DBPOOL_SETTING_TEXT, offsetof(DbpoolSettings, field), 0, 0}

/* In the order of dbpool_create_pool's parameters after name and conninfo. */
const DbpoolSettingDesc DbpoolSettingDescs[] = {
	INT_SETTING(min_size, 1, 0),
	INT_SETTING(max_size, 10, 1),
	INT_SETTING(acquire_timeout_ms, 5000, 0),
	INT_SETTING(query_timeout_ms, 0, 0),
	INT_SETTING(idle_timeout_ms, 600000, 0),
	INT_SETTING(max_lifetime_ms, 3600000, 0),
	TEXT_SETTING(reset_query),
	INT_SETTING(slow_query_ms, 1000, 0),
};
const int	DbpoolNumSettings = lengthof(DbpoolSettingDescs);

/*
 * Connection options a non-superuser's pool may not use: they fetch
 * credentials from the server's files, or would let its owner probe which
 * files exist there.
 */
static const char *const forbidden_options[] = {
	"passfile", "service", "sslcert", "sslkey", "sslpassword", "sslrootcert", "sslcrl",
	"sslcrldir", "gssdelegation", NULL
};

/* Fill s with every setting's default. */
void
DbpoolSettingsDefaults(DbpoolSettings *s)
{
	int			i;

	memset(s, 0, sizeof(*s));
	for (i = 0; i < DbpoolNumSettings; i++)
		if (DbpoolSettingDescs[i].type == DBPOOL_SETTING_INT)
			*DbpoolSettingInt(s, &DbpoolSettingDescs[i]) = DbpoolSettingDescs[i].default_int;
}

/* The int field that d describes. */
int *
DbpoolSettingInt(DbpoolSettings *s, const DbpoolSettingDesc *d)
{
	Assert(d->type == DBPOOL_SETTING_INT);
	return (int *) ((char *) s + d->offset);
}

/* The text field that d describes (DBPOOL_TEXT_SETTING_LEN bytes). */
char *
DbpoolSettingText(DbpoolSettings *s, const DbpoolSettingDesc *d)
{
	Assert(d->type == DBPOOL_SETTING_TEXT);
	return (char *) s + d->offset;
}

/* Raise 22023 naming the first setting out of range. */
void
DbpoolValidateSettings(const DbpoolSettings *s)
{
	int			i;

	for (i = 0; i < DbpoolNumSettings; i++)
	{
		const DbpoolSettingDesc *d = &DbpoolSettingDescs[i];

		if (d->type == DBPOOL_SETTING_INT)
		{
			int			v = *DbpoolSettingInt((DbpoolSettings *) s, d);

			if (v < d->min_int)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for %s: %d", d->name, v),
						 errdetail("%s must be at least %d.", d->name, d->min_int)));
		}
	}
	if (s->min_size > s->max_size)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for min_size: %d", s->min_size),
				 errdetail("min_size must not exceed max_size (%d).", s->max_size)));
	if (s->max_size > DbpoolMaxConnections)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for max_size: %d", s->max_size),
				 errdetail("max_size must not exceed dbpool.max_connections (%d).",
						   DbpoolMaxConnections)));
}

/* Raise 22023 unless name is 1..63 characters of [A-Za-z0-9_.-]. */
void
DbpoolValidateName(const char *name)
{
	size_t		len = strlen(name);
	const char *p;

	if (len == 0 || len >= DBPOOL_NAME_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid pool name \"%s\"", name),
				 errdetail("A pool name has 1 to %d characters.", DBPOOL_NAME_LEN - 1)));
	for (p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			  (*p >= '0' && *p <= '9') || *p == '_' || *p == '.' || *p == '-'))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid pool name \"%s\"", name),
					 errdetail("A pool name may contain only letters, digits, \"_\", \".\" and \"-\".")));
}

/* Parse conninfo or raise 22023 with libpq's reason (which never echoes a password). */
static PQconninfoOption *
parse_conninfo(const char *conninfo)
{
	char	   *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &err);

	if (opts == NULL)
	{
		char	   *msg = err ? pstrdup(err) : pstrdup("out of memory");

		if (err)
			PQfreemem(err);
		/* libpq may echo the string: never when it could hold a password */
		if (strstr(conninfo, "password") != NULL || strstr(conninfo, "://") != NULL)
			msg = pstrdup("libpq could not parse it; its message is withheld because the string may contain a password.");
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for conninfo"),
				 errdetail("%s", pchomp(msg))));
	}
	return opts;
}

/*
 * Check a connection string: it must parse, and a pool owned by a
 * non-superuser must carry its own password and nothing that fetches
 * credentials from the server's files (the dblink rule).
 */
void
DbpoolValidateConninfo(const char *conninfo, bool owner_is_superuser)
{
	PQconninfoOption *opts = parse_conninfo(conninfo);
	PQconninfoOption *o;
	bool		has_password = false;

	for (o = opts; o->keyword; o++)
	{
		const char *const *f;

		if (o->val == NULL || o->val[0] == '\0')
			continue;
		if (strcmp(o->keyword, "password") == 0)
			has_password = true;
		if (owner_is_superuser)
			continue;
		for (f = forbidden_options; *f; f++)
			if (strcmp(o->keyword, *f) == 0)
			{
				PQconninfoFree(opts);
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("connection option \"%s\" is not allowed in a pool owned by a non-superuser",
								*f),
						 errdetail("It would let the pool use files of the server's operating system user.")));
			}
	}
	PQconninfoFree(opts);
	if (!owner_is_superuser && !has_password)
		ereport(ERROR,
				(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg("password is required"),
				 errdetail("Non-superusers must provide a password in the connection string.")));
}

/* The conninfo in key=value form with the password replaced by ********. */
char *
DbpoolRedactConninfo(const char *conninfo)
{
	PQconninfoOption *opts = parse_conninfo(conninfo);
	PQconninfoOption *o;
	StringInfoData buf;

	initStringInfo(&buf);
	for (o = opts; o->keyword; o++)
	{
		const char *v;

		if (o->val == NULL)
			continue;
		/* libpq marks secret options (password, sslpassword, ...) with dispchar '*' */
		v = (o->dispchar && o->dispchar[0] == '*') ? DBPOOL_PASSWORD_MASK : o->val;
		if (buf.len > 0)
			appendStringInfoChar(&buf, ' ');
		appendStringInfo(&buf, "%s=", o->keyword);
		if (v[0] == '\0' || strpbrk(v, " '\\\t\n") != NULL)
		{
			appendStringInfoChar(&buf, '\'');
			for (; *v; v++)
			{
				if (*v == '\'' || *v == '\\')
					appendStringInfoChar(&buf, '\\');
				appendStringInfoChar(&buf, *v);
			}
			appendStringInfoChar(&buf, '\'');
		}
		else
			appendStringInfoString(&buf, v);
	}
	PQconninfoFree(opts);
	return buf.data;
}
