/*
 * client_status.c
 *		A local session's application_name and current query, as
 *		pg_stat_activity shows them: read by pid from PostgreSQL's backend
 *		status array (this process's snapshot of it) and made canonical UTF-8
 *		(text.c) from the encoding of that session's database, which need not
 *		be the reader's.  The worker (leak.c) and the readers (figures.c) use
 *		it; both need a transaction (the database's encoding is looked up in
 *		the catalog).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_database.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/backend_status.h"
#include "utils/syscache.h"

#include "dbpool.h"

/* The encoding of database dbid; -1 if it is gone. */
static int
database_encoding(Oid dbid)
{
	HeapTuple	tup;
	int			enc;

	if (dbid == MyDatabaseId)
		return GetDatabaseEncoding();
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dbid));
	if (!HeapTupleIsValid(tup))
		return -1;
	enc = ((Form_pg_database) GETSTRUCT(tup))->encoding;
	ReleaseSysCache(tup);
	return enc;
}

/*
 * A text of a session whose database is in encoding enc (-1: unknown), as
 * canonical UTF-8, palloc'd; NULL when it is empty.  The status array keeps
 * a query cut at a byte count, maybe inside a character: that character is
 * dropped.
 */
static char *
canonical(const char *text, int enc)
{
	int			len;

	if (text == NULL || text[0] == '\0')
		return NULL;
	if (enc < 0 || !PG_VALID_BE_ENCODING(enc))
		enc = PG_SQL_ASCII;		/* its bytes are taken as UTF-8, escaped where they are not */
	len = strlen(text);
	if (enc != PG_SQL_ASCII)
		len = pg_encoding_mbcliplen(enc, text, len, len);
	return DbpoolTextUtf8(pnstrdup(text, len), len, enc);
}

/*
 * Fill ci with the session of pid from this process's snapshot of the
 * backend status array; false (and ci zeroed) when no session has that pid.
 */
bool
DbpoolClientStatus(int pid, DbpoolClientInfo *ci)
{
	int			n = pgstat_fetch_stat_numbackends();
	int			i;

	memset(ci, 0, sizeof(*ci));
	if (pid == 0)
		return false;
	for (i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *l = pgstat_fetch_stat_local_beentry(i);
		PgBackendStatus *be;
		int			enc;

		if (l == NULL || l->backendStatus.st_procpid != pid)
			continue;
		be = &l->backendStatus;
		enc = database_encoding(be->st_databaseid);
		ci->found = true;
		ci->userid = be->st_userid;
		ci->application_name = canonical(be->st_appname, enc);
		ci->query = canonical(be->st_activity_raw, enc);
		return true;
	}
	return false;
}
