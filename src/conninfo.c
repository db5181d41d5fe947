/*
 * conninfo.c
 *		Connection strings: parse, validate (the password rule and the options
 *		a non-superuser's pool may not use), redact for display, and build the
 *		keyword arrays libpq connects with.  Backends validate and redact; the
 *		worker builds the arrays and checks the password rule after connecting.
 *
 * The password rule is dblink's: a pool owned by a non-superuser must carry
 * its own password, and the server must have asked for it, so that no one
 * borrows the local server's peer or trust access to a foreign one.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "libpq-fe.h"
#include "utils/memutils.h"

#include "dbpool.h"

/*
 * Connection options a non-superuser's pool may not use: they fetch
 * credentials from the server's files, or would let its owner probe which
 * files exist there.
 */
static const char *const forbidden_options[] = {
	"passfile", "service", "sslcert", "sslkey", "sslpassword", "sslrootcert", "sslcrl",
	"sslcrldir", "gssdelegation", NULL
};

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

/* Whether the conninfo, or the environment libpq reads, names a service file entry. */
static bool
service_named(PQconninfoOption *opts)
{
	PQconninfoOption *o;
	const char *env = getenv("PGSERVICE");

	for (o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "service") == 0 && o->val != NULL && o->val[0] != '\0')
			return true;
	return env != NULL && env[0] != '\0';
}

/*
 * Build libpq's keyword/value arrays into p: our defaults, the conninfo's
 * options, then what we force: client_encoding UTF8, and the startup option
 * client_connection_check_interval ahead of the conninfo's own options, so
 * that a foreign session whose client is gone (the worker killed) ends its
 * query (not when a service file may hold options and the conninfo has
 * none: libpq would take ours instead of the file's).  Nothing that changes what SQL means: the foreign database's and
 * role's settings apply to the callers' SQL.  The arrays live in p->cxt
 * (made under parent on first use, reset on every rebuild).  On a conninfo
 * libpq cannot parse the arrays are left NULL and false is returned:
 * connection attempts then fail with a clear error instead of reaching an
 * old target.
 */
bool
DbpoolConninfoBuildParams(const char *conninfo, DbpoolConnParams *p, MemoryContext parent)
{
	static const char *const defaults[][2] = {
		{"connect_timeout", "10"},
		{"keepalives", "1"},
		{"keepalives_idle", "30"},
		{"keepalives_interval", "10"},
		{"keepalives_count", "3"},
	};
	PQconninfoOption *opts;
	PQconninfoOption *o;
	char	   *err = NULL;
	int			n = 0,
				max = lengthof(defaults) + 4;
	int			connect_timeout = 10;
	MemoryContext old;
	int			i;

	if (p->cxt == NULL)
		p->cxt = AllocSetContextCreate(parent, "dbpool pool params", ALLOCSET_SMALL_SIZES);
	MemoryContextReset(p->cxt);
	p->keywords = p->values = NULL;
	p->options_at = -1;
	p->options_plain = NULL;
	p->client_check_off = false;

	opts = PQconninfoParse(conninfo, &err);
	if (opts == NULL)
	{
		if (err)
			PQfreemem(err);
		return false;
	}
	for (o = opts; o->keyword; o++)
		max++;
	old = MemoryContextSwitchTo(p->cxt);
	p->keywords = palloc0(sizeof(char *) * max);
	p->values = palloc0(sizeof(char *) * max);
	for (i = 0; i < (int) lengthof(defaults); i++)
	{
		p->keywords[n] = defaults[i][0];
		p->values[n++] = defaults[i][1];
	}
	for (o = opts; o->keyword; o++)
	{
		if (o->val == NULL || strcmp(o->keyword, "client_encoding") == 0)
			continue;
		if (strcmp(o->keyword, "connect_timeout") == 0)
			connect_timeout = atoi(o->val);
		if (strcmp(o->keyword, "options") == 0)
		{
			p->options_at = n;
			p->options_plain = pstrdup(o->val);
		}
		p->keywords[n] = pstrdup(o->keyword);
		p->values[n++] = pstrdup(o->val);
	}
	if (p->options_at < 0 && service_named(opts))
		p->client_check_off = true; /* our options would hide the service file's */
	else
	{
		if (p->options_at < 0)
		{
			p->options_at = n;
			p->keywords[n] = "options";
			p->values[n++] = "";
		}
		/* ours first, so that the conninfo's own -c client_connection_check_interval wins */
		p->values[p->options_at] = psprintf("-c client_connection_check_interval=%d%s%s",
											DBPOOL_CLIENT_CHECK_MS,
											p->options_plain ? " " : "",
											p->options_plain ? p->options_plain : "");
	}
	p->keywords[n] = "fallback_application_name";
	p->values[n++] = "dbpool";
	p->keywords[n] = "client_encoding";
	p->values[n++] = "UTF8";
	p->keywords[n] = NULL;
	p->values[n] = NULL;
	MemoryContextSwitchTo(old);
	/* libpq treats 1 as 2 and <= 0 as none; we enforce it ourselves, never unbounded */
	p->connect_timeout_ms = (connect_timeout <= 0 ? 10 : Max(connect_timeout, 2)) * 1000;
	PQconninfoFree(opts);
	return true;
}

/*
 * The foreign server refused the startup option that sets
 * client_connection_check_interval (before 14, or a platform without it, or
 * a proxy that takes no options): connect with the conninfo's own options
 * from now on.  False if they were already the conninfo's own.
 */
bool
DbpoolConninfoDropClientCheck(DbpoolConnParams *p)
{
	if (p->keywords == NULL || p->options_at < 0 || p->client_check_off)
		return false;
	p->values[p->options_at] = p->options_plain ? p->options_plain : "";
	p->client_check_off = true;
	return true;
}

/* After connecting: whether the password rule holds (a superuser's pool, or a password was used). */
bool
DbpoolConninfoPasswordRuleMet(PGconn *pg, bool owner_is_superuser)
{
	return owner_is_superuser || PQconnectionUsedPassword(pg);
}
