/*
 * query.c
 *		dbpool_query and dbpool_exec: the backend side of a query's life.
 *
 * Look the pool up and check the caller's privilege, write the request into
 * this session's channel, then turn the records that stream back into a
 * tuplestore (spilling past work_mem) through the input functions of the
 * caller's column definition list, under the foreign session's DateStyle and
 * IntervalStyle, as dblink does.  Anything that ends the
 * wait early (an error, a cancel, statement_timeout, termination) abandons the
 * channel, which makes the worker cancel the remote query.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"

#include "dbpool.h"
#include "proto.h"

PG_FUNCTION_INFO_V1(dbpool_query);
PG_FUNCTION_INFO_V1(dbpool_exec);

/* A request is on this session's channel: a nested call would mix two responses. */
static bool request_in_progress = false;

/* What a request needs to know of its pool. */
typedef struct PoolRef
{
	int			slot;
	uint64		pool_id;
	char		name[DBPOOL_NAME_LEN];
} PoolRef;

/* Where rows go: NULL tupstore for dbpool_exec. */
typedef struct ResultSink
{
	Tuplestorestate *tupstore;
	TupleDesc	desc;
	AttInMetadata *attinmeta;
	MemoryContext rowcxt;
	StringInfoData value;		/* one value, NUL-terminated */
	int			guc_nest;		/* GUC nest level of the foreign settings, -1: none */
} ResultSink;

/*
 * The foreign DateStyle and IntervalStyle of the last result set, and what
 * they mean here, so that the common case (nothing differs) costs two string
 * comparisons per result set and no GUC work.
 */
static struct
{
	bool		valid;
	char		datestyle[DBPOOL_STYLE_LEN];
	char		intervalstyle[DBPOOL_STYLE_LEN];
	int			style;			/* DateStyle, DateOrder and IntervalStyle once applied */
	int			order;
	int			istyle;
} foreign_styles;

/*
 * What this session last read of the registry for one pool name, valid while
 * registry_gen stays at gen: the common case of a session calling the same
 * pool again costs one atomic read instead of the shared lock and a scan.
 */
static struct
{
	uint64		gen;			/* 0: empty */
	bool		found;
	char		name[DBPOOL_NAME_LEN];
	PoolRef		ref;
	Oid			owner;
	int			ngrantees;
	Oid			grantees[DBPOOL_MAX_GRANTEES];
} last_lookup;

/*
 * Copy what the registry says of a pool not being dropped; false if there is
 * none.  grantees has room for DBPOOL_MAX_GRANTEES.
 */
static bool
find_pool(const char *name, PoolRef *ref, Oid *owner, Oid *grantees, int *ngrantees)
{
	bool		found = false;
	uint64		gen;
	int			i;

	/* ordered after the caller's read of config_applied (see shmem.c) */
	pg_read_barrier();
	gen = pg_atomic_read_u64(&DbpoolShmem->registry_gen);
	if (last_lookup.gen == gen && strcmp(last_lookup.name, name) == 0)
	{
		*ref = last_lookup.ref;
		*owner = last_lookup.owner;
		*ngrantees = last_lookup.ngrantees;
		memcpy(grantees, last_lookup.grantees, sizeof(Oid) * last_lookup.ngrantees);
		return last_lookup.found;
	}

	LWLockAcquire(DbpoolShmem->lock, LW_SHARED);
	for (i = 0; i < DbpoolMaxPools && !found; i++)
	{
		DbpoolPoolSlot *slot = &DbpoolShmem->pools[i];

		if (!slot->in_use || slot->state == DBPOOL_POOL_DROPPING || strcmp(slot->name, name) != 0)
			continue;
		found = true;
		ref->slot = i;
		ref->pool_id = slot->pool_id;
		*owner = slot->owner;
		*ngrantees = slot->ngrantees;
		memcpy(grantees, slot->grantees, sizeof(Oid) * slot->ngrantees);
	}
	LWLockRelease(DbpoolShmem->lock);

	/* gen was read before the lock: a change since then shows as a newer gen */
	if (strlen(name) < DBPOOL_NAME_LEN)
	{
		last_lookup.gen = gen;
		last_lookup.found = found;
		strlcpy(last_lookup.name, name, sizeof(last_lookup.name));
		if (found)
		{
			last_lookup.ref = *ref;
			last_lookup.owner = *owner;
			last_lookup.ngrantees = *ngrantees;
			memcpy(last_lookup.grantees, grantees, sizeof(Oid) * *ngrantees);
		}
	}
	return found;
}

/* Whether the current user may use a pool of this owner and grantees. */
static bool
may_use(Oid owner, const Oid *grantees, int ngrantees)
{
	Oid			user = GetUserId();
	int			i;

	if (superuser() || has_privs_of_role(user, owner))
		return true;
	for (i = 0; i < ngrantees; i++)
		if (has_privs_of_role(user, grantees[i]))
			return true;
	return false;
}

/*
 * Find a live pool by name and check that the current user may use it.  A
 * miss or a denial may come from a change the worker has not read yet (made
 * by another session, or restored into the table): then ask it to re-read
 * once before saying so.
 */
static void
lookup_pool(const char *name, PoolRef *ref)
{
	Oid			owner = InvalidOid;
	Oid			grantees[DBPOOL_MAX_GRANTEES];
	int			ngrantees = 0;
	bool		found;

	DbpoolWaitForCommittedConfig();
	found = find_pool(name, ref, &owner, grantees, &ngrantees);
	if (!found || !may_use(owner, grantees, ngrantees))
	{
		DbpoolWaitForReconcile(DbpoolRequestReconcile());
		found = find_pool(name, ref, &owner, grantees, &ngrantees);
	}
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("pool \"%s\" does not exist", name),
				 errhint("Pools are created with dbpool_create_pool() in database \"%s\"; dbpool_pools lists them.",
						 DbpoolDatabase)));
	if (!may_use(owner, grantees, ngrantees))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for pool \"%s\"", name),
				 errhint("The pool's owner or a superuser can grant it with dbpool_grant_usage('%s', role).",
						 name)));
	strlcpy(ref->name, name, sizeof(ref->name));
}

/* Append a request text converted to UTF8. */
static void
put_utf8(StringInfo buf, const char *s)
{
	int			len = strlen(s);
	char	   *u = pg_server_to_any(s, len, PG_UTF8);

	DbpoolProtoPutString(buf, u, strlen(u));
	if (u != s)
		pfree(u);
}

/* Raise 54000 if the request grew past what the worker accepts. */
static void
check_request_size(StringInfo buf)
{
	if (buf->len > DBPOOL_MAX_MESSAGE_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("dbpool request is too large"),
				 errdetail("The query text and parameters of one call are limited to %d MB.",
						   DBPOOL_MAX_MESSAGE_BYTES / (1024 * 1024))));
}

/* Build the request message (see proto.h). */
static void
build_request(StringInfo buf, char kind, const PoolRef *ref, const char *sql, ArrayType *params)
{
	if (params == NULL)
	{
		DbpoolProtoRequestStart(buf, kind, ref->slot, ref->pool_id, GetUserId(), -1);
		put_utf8(buf, sql);
	}
	else
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n,
					i;

		if (ARR_NDIM(params) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("params must be a one-dimensional array")));
		deconstruct_array(params, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
		if (n > 65535)
			ereport(ERROR,
					(errcode(ERRCODE_TOO_MANY_ARGUMENTS),
					 errmsg("too many parameters: %d", n),
					 errdetail("A query can have at most 65535 parameters.")));
		DbpoolProtoRequestStart(buf, kind, ref->slot, ref->pool_id, GetUserId(), n);
		put_utf8(buf, sql);
		for (i = 0; i < n; i++)
		{
			if (nulls[i])
				DbpoolProtoPutString(buf, NULL, -1);
			else
				put_utf8(buf, TextDatumGetCString(elems[i]));
			check_request_size(buf);
		}
	}
	check_request_size(buf);
	DbpoolProtoRequestFinish(buf);
}

/* The worker sent something this backend cannot read. */
static void
truncated(void)
{
	elog(ERROR, "dbpool: truncated response from the worker");
}

/*
 * Raise the error an 'E' record carries (after its type byte), naming the
 * pool; its texts in this database's encoding, what it lacks escaped (text.c).
 */
static void
raise_error(const char **p, const char *end, const char *pool)
{
	DbpoolErrorFields e;
	char	   *message,
			   *detail,
			   *hint,
			   *context;

	if (!DbpoolProtoGetError(p, end, &e))
		truncated();
	message = DbpoolTextShow(e.message);
	detail = DbpoolTextShow(e.detail);
	hint = DbpoolTextShow(e.hint);
	context = DbpoolTextShow(e.context);
	ereport(ERROR,
			(errcode(e.sqlerrcode),
			 errmsg_internal("%s", message),
			 detail[0] ? errdetail_internal("%s", detail) : 0,
			 hint[0] ? errhint("%s", hint) : 0,
			 context[0] ? errcontext("%s", context) : 0,
			 errcontext("dbpool pool \"%s\"", pool)));
}

/* Turn one 'D' record (after its type byte) into a tuple of the caller's column list. */
static void
store_row(ResultSink *sink, const char **p, const char *end)
{
	TupleDesc	desc = sink->desc;
	Datum	   *values;
	bool	   *nulls;
	MemoryContext old = MemoryContextSwitchTo(sink->rowcxt);
	int			i;

	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	for (i = 0; i < desc->natts; i++)
	{
		const char *bytes;
		int32		len;
		char	   *str = NULL;

		if (!DbpoolProtoGetText(p, end, &bytes, &len))
			truncated();
		if (len >= 0)
		{
			resetStringInfo(&sink->value);
			appendBinaryStringInfo(&sink->value, bytes, len);
			str = pg_any_to_server(sink->value.data, len, PG_UTF8);
		}
		values[i] = InputFunctionCall(&sink->attinmeta->attinfuncs[i], str,
									  sink->attinmeta->attioparams[i],
									  sink->attinmeta->atttypmods[i]);
		nulls[i] = (str == NULL);
	}
	tuplestore_putvalues(sink->tupstore, desc, values, nulls);
	MemoryContextSwitchTo(old);
	MemoryContextReset(sink->rowcxt);
}

/* Whether the len bytes at s are the NUL-terminated string known. */
static inline bool
same_text(const char *s, int32 len, const char *known)
{
	return strncmp(known, s, len) == 0 && known[len] == '\0';
}

/*
 * Read the values of a result set the way the foreign session printed them,
 * as dblink does: its DateStyle (ISO output, and the field order that text
 * read into date and time columns follows) and its IntervalStyle, in a GUC
 * nest level that the call pops when it ends.  Empty texts: not known, keep
 * this session's.
 */
static void
use_foreign_styles(ResultSink *sink, const char *ds, int32 dslen, const char *is, int32 islen)
{
	if (dslen >= DBPOOL_STYLE_LEN || islen >= DBPOOL_STYLE_LEN)
		return;
	if (foreign_styles.valid && same_text(ds, dslen, foreign_styles.datestyle) &&
		same_text(is, islen, foreign_styles.intervalstyle) &&
		DateStyle == foreign_styles.style && DateOrder == foreign_styles.order &&
		IntervalStyle == foreign_styles.istyle)
		return;
	if (sink->guc_nest < 0)
		sink->guc_nest = NewGUCNestLevel();
	memcpy(foreign_styles.datestyle, ds, dslen);
	foreign_styles.datestyle[dslen] = '\0';
	memcpy(foreign_styles.intervalstyle, is, islen);
	foreign_styles.intervalstyle[islen] = '\0';
	foreign_styles.valid = false;
	if (dslen > 0)
		(void) set_config_option("datestyle", foreign_styles.datestyle, PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (islen > 0)
		(void) set_config_option("intervalstyle", foreign_styles.intervalstyle, PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	foreign_styles.style = DateStyle;
	foreign_styles.order = DateOrder;
	foreign_styles.istyle = IntervalStyle;
	foreign_styles.valid = true;
}

/* Read records until the final one; rows go to sink, the status is returned. */
static char *
receive_response(ResultSink *sink, const char *pool, volatile bool *finished)
{
	for (;;)
	{
		const char *data;
		Size		len;
		const char *p;
		const char *end;

		DbpoolChannelReceive(&data, &len);
		p = data;
		end = data + len;
		while (p < end)
		{
			char		type = *p++;

			switch (type)
			{
				case DBPOOL_REC_ROWDESC:
					{
						int32		natts;
						const char *ds;
						const char *is;
						int32		dslen;
						int32		islen;

						if (!DbpoolProtoGetRowDesc(&p, end, &natts, &ds, &dslen, &is, &islen))
							truncated();

						if (sink && natts != sink->desc->natts)
							ereport(ERROR,
									(errcode(ERRCODE_DATATYPE_MISMATCH),
									 errmsg("remote query result rowtype does not match the specified FROM clause rowtype"),
									 errdetail("The remote query returned %d columns; the column definition list has %d.",
											   natts, sink->desc->natts),
									 errcontext("dbpool pool \"%s\"", pool)));
						if (sink)
							use_foreign_styles(sink, ds, dslen, is, islen);
						break;
					}
				case DBPOOL_REC_ROW:
					if (sink)
						store_row(sink, &p, end);
					else
						elog(ERROR, "dbpool: unexpected row from the worker");
					break;
				case DBPOOL_REC_COMPLETE:
					{
						const char *status;
						int32		slen;

						*finished = true;
						if (!DbpoolProtoGetText(&p, end, &status, &slen) || slen < 0)
							truncated();
						return DbpoolTextRender(status, slen);
					}
				case DBPOOL_REC_ERROR:
					*finished = true;
					raise_error(&p, end, pool);
					break;
				default:
					elog(ERROR, "dbpool: unexpected record type %d from the worker", type);
			}
		}
	}
}

/* Run sql on the pool; rows go to sink (NULL: none wanted).  Returns the command status. */
static char *
run_request(char kind, FunctionCallInfo fcinfo, ResultSink *sink)
{
	char	   *pool;
	char	   *sql;
	ArrayType  *params;
	PoolRef		ref;
	StringInfoData req;
	char	   *volatile status = NULL;
	volatile bool finished = false;

	DbpoolCheckLoaded();
	pool = DbpoolTextArg(fcinfo, 0, "pool name");
	sql = DbpoolTextArg(fcinfo, 1, "query text");
	params = PG_ARGISNULL(2) ? NULL : PG_GETARG_ARRAYTYPE_P(2);

	if (request_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("dbpool calls cannot be nested"),
				 errdetail("dbpool_query or dbpool_exec was called while this session was reading another dbpool result, for example from an input function or a domain check.")));
	/* the worker first: a restarted worker re-reads the pools before we look */
	(void) DbpoolChannelOpen();
	lookup_pool(pool, &ref);
	initStringInfo(&req);
	build_request(&req, kind, &ref, sql, params);

	request_in_progress = true;
	PG_TRY();
	{
		DbpoolChannelSend(req.data, req.len);
		status = receive_response(sink, ref.name, &finished);
	}
	PG_CATCH();
	{
		request_in_progress = false;
		if (!finished)
			DbpoolChannelAbandon();	/* the worker cancels the remote query */
		PG_RE_THROW();
	}
	PG_END_TRY();
	request_in_progress = false;
	if (sink && sink->guc_nest >= 0)
		AtEOXact_GUC(true, sink->guc_nest);	/* this session's own settings again */
	pfree(req.data);
	return status;
}

/* dbpool_query(pool, sql, params): the rows of sql run on the pool. */
Datum
dbpool_query(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ResultSink	sink;

	DbpoolCheckLoaded();
	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) || rsinfo->expectedDesc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("a column definition list is required for dbpool_query"),
				 errhint("Call it in FROM, for example SELECT * FROM dbpool_query('pool', 'SELECT 1') AS t(x int).")));
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	sink.tupstore = rsinfo->setResult;
	sink.desc = rsinfo->setDesc;
	sink.attinmeta = TupleDescGetAttInMetadata(rsinfo->setDesc);
	sink.rowcxt = AllocSetContextCreate(CurrentMemoryContext, "dbpool row",
										ALLOCSET_SMALL_SIZES);
	initStringInfo(&sink.value);
	sink.guc_nest = -1;
	(void) run_request(DBPOOL_REQ_QUERY, fcinfo, &sink);
	MemoryContextDelete(sink.rowcxt);
	return (Datum) 0;
}

/* dbpool_exec(pool, sql, params): the command status of sql run on the pool. */
Datum
dbpool_exec(PG_FUNCTION_ARGS)
{
	char	   *status = run_request(DBPOOL_REQ_EXEC, fcinfo, NULL);

	PG_RETURN_TEXT_P(cstring_to_text(status));
}
