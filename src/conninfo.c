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
 *
 * Host names: libpq would resolve them with a blocking getaddrinfo inside
 * the worker's loop.  So the worker resolves them first (resolve.c), and an
 * attempt's keywords name every address found as hostaddr beside its host
 * name (which libpq still uses for TLS, SNI, Kerberos and the password file).
 */
#include "postgres.h"

#include <arpa/inet.h>

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

/* Split a comma-separated list as libpq does (no quoting, no trimming); *n gets the count. */
static char **
split_list(const char *s, int *n)
{
	char	  **items;
	const char *c;
	int			i = 0;

	*n = 1;
	for (c = s; *c; c++)
		if (*c == ',')
			(*n)++;
	items = palloc(sizeof(char *) * *n);
	for (;;)
	{
		const char *end = strchr(s, ',');

		if (end == NULL)
		{
			items[i] = pstrdup(s);
			break;
		}
		items[i++] = pnstrdup(s, end - s);
		s = end + 1;
	}
	return items;
}

/* Whether s is a numeric IPv4 or IPv6 address (libpq parses those without a lookup). */
static bool
is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* A keyword's value in the parsed options, else the environment variable libpq would use. */
static const char *
option_or_env(PQconninfoOption *opts, const char *keyword, const char *envvar)
{
	PQconninfoOption *o;

	for (o = opts; o->keyword; o++)
		if (strcmp(o->keyword, keyword) == 0 && o->val != NULL)
			return o->val;
	return getenv(envvar);
}

/*
 * Decide which host entries the worker looks up itself, into p (in the
 * current context).  It leaves p->nhosts at 0, and libpq alone in charge,
 * when nothing needs a lookup, and where libpq would do something this does
 * not model: a service file (it may name hosts), or host, hostaddr and port
 * lists whose lengths do not match (libpq reports that itself).
 */
static void
plan_lookups(PQconninfoOption *opts, DbpoolConnParams *p)
{
	const char *host = option_or_env(opts, "host", "PGHOST");
	const char *hostaddr = option_or_env(opts, "hostaddr", "PGHOSTADDR");
	const char *port = option_or_env(opts, "port", "PGPORT");
	const char *service = option_or_env(opts, "service", "PGSERVICE");
	char	  **hosts,
			  **hostaddrs,
			  **ports = NULL,
			  **lookup;
	int			n,
				nother,
				i;
	bool		any = false;

	p->nhosts = 0;
	if (host == NULL || host[0] == '\0' || (service != NULL && service[0] != '\0'))
		return;
	hosts = split_list(host, &n);
	if (hostaddr != NULL && hostaddr[0] != '\0')
	{
		hostaddrs = split_list(hostaddr, &nother);
		if (nother != n)
			return;
	}
	else
		hostaddrs = palloc0(sizeof(char *) * n);
	if (port != NULL && port[0] != '\0' && strchr(port, ',') != NULL)
	{
		ports = split_list(port, &nother);
		if (nother != n)
			return;
	}
	lookup = palloc0(sizeof(char *) * n);
	for (i = 0; i < n; i++)
	{
		const char *h = hosts[i];

		if (hostaddrs[i] == NULL)
			hostaddrs[i] = "";
		if (hostaddrs[i][0] != '\0' || h[0] == '\0' || h[0] == '/' || h[0] == '@')
			continue;			/* an address given, the default, or a socket path */
		if (is_ip_literal(h))
			hostaddrs[i] = hosts[i];
		else
		{
			lookup[i] = hosts[i];
			any = true;
		}
	}
	if (!any)
		return;
	p->nhosts = n;
	p->hosts = hosts;
	p->hostaddrs = hostaddrs;
	p->ports = ports;
	p->lookup = lookup;
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
	p->nhosts = 0;
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
	plan_lookups(opts, p);
	MemoryContextSwitchTo(old);
	/* libpq treats 1 as 2 and <= 0 as none; we enforce it ourselves, never unbounded */
	p->connect_timeout_ms = (connect_timeout <= 0 ? 10 : Max(connect_timeout, 2)) * 1000;
	PQconninfoFree(opts);
	return true;
}

/*
 * The keyword arrays for one attempt of a pool whose hosts need lookups
 * (p->nhosts > 0), in the current memory context.  addrs[i] holds what the
 * lookup found for entry i (comma-separated numeric addresses; NULL if it
 * found none, or if the entry needed no lookup).  Each address becomes one
 * host entry with the host name beside it, so libpq tries them in turn as it
 * would have; entries whose name was not found are left out, as libpq skips
 * them.  Returns the number of entries, 0 if none is left.
 */
int
DbpoolConninfoAttemptParams(const DbpoolConnParams *p, const char *const *addrs,
							const char ***keywords, const char ***values)
{
	StringInfoData hosts,
				hostaddrs,
				ports;
	int			count = 0,
				n = 0,
				i;

	initStringInfo(&hosts);
	initStringInfo(&hostaddrs);
	initStringInfo(&ports);
	for (i = 0; i < p->nhosts; i++)
	{
		const char *port = p->ports ? p->ports[i] : "";
		int			naddrs,
					j;
		char	  **list;

		if (p->lookup[i] == NULL)
		{
			list = (char **) &p->hostaddrs[i];
			naddrs = 1;
		}
		else if (addrs[i] == NULL)
			continue;
		else
			list = split_list(addrs[i], &naddrs);
		for (j = 0; j < naddrs; j++)
		{
			const char *sep = count > 0 ? "," : "";

			appendStringInfo(&hosts, "%s%s", sep, p->hosts[i]);
			appendStringInfo(&hostaddrs, "%s%s", sep, list[j]);
			appendStringInfo(&ports, "%s%s", sep, port);
			count++;
		}
	}
	if (count == 0)
		return 0;
	for (i = 0; p->keywords[i]; i++)
		;
	*keywords = palloc(sizeof(char *) * (i + 4));
	*values = palloc(sizeof(char *) * (i + 4));
	for (i = 0; p->keywords[i]; i++)
	{
		const char *k = p->keywords[i];

		if (strcmp(k, "host") == 0 || strcmp(k, "hostaddr") == 0 ||
			(p->ports && strcmp(k, "port") == 0))
			continue;
		(*keywords)[n] = k;
		(*values)[n++] = p->values[i];
	}
	(*keywords)[n] = "host";
	(*values)[n++] = hosts.data;
	(*keywords)[n] = "hostaddr";
	(*values)[n++] = hostaddrs.data;
	if (p->ports)
	{
		(*keywords)[n] = "port";
		(*values)[n++] = ports.data;
	}
	(*keywords)[n] = NULL;
	(*values)[n] = NULL;
	return count;
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
