/*
 * proto.c
 *		Encoders and decoders of the backend <-> worker records.  The format
 *		is described in proto.h; this is the only file that knows its bytes.
 *
 * Encoders append to a StringInfo and cannot fail (but for out of memory).
 * Decoders never raise an error: they return false on a short or malformed
 * message, and the caller decides (the backend raises, the worker answers
 * "malformed request").
 */
#include "postgres.h"

#include "libpq-fe.h"
#include "mb/pg_wchar.h"
#include "utils/elog.h"

#include "dbpool.h"
#include "proto.h"

/* Append a native int32. */
static inline void
put_int32(StringInfo buf, int32 v)
{
	appendBinaryStringInfo(buf, (const char *) &v, 4);
}

/* Append a length-prefixed text without terminator (NULL is sent as empty). */
static void
put_text(StringInfo buf, const char *v)
{
	int32		len = v ? strlen(v) : 0;

	put_int32(buf, len);
	if (len > 0)
		appendBinaryStringInfo(buf, v, len);
}

/*
 * Append a text that should be UTF-8 but comes from an untrusted source (a
 * foreign server, libpq), in text.c's canonical form: invalid bytes escaped.
 */
static void
put_utf8_text(StringInfo buf, const char *v)
{
	char	   *u = v ? DbpoolTextUtf8(v, strlen(v), PG_UTF8) : NULL;

	put_text(buf, u);
	if (u != v)
		pfree(u);
}

/* ---------- requests ---------- */

/* Bytes of a request before its texts. */
#define REQUEST_HEADER_BYTES	(4 + 1 + 4 + 8 + (int) sizeof(Oid) + 4)

/* Start a request in an empty buf: length (set by DbpoolProtoRequestFinish), kind, pool, user, parameter count. */
void
DbpoolProtoRequestStart(StringInfo buf, char kind, int32 slot, uint64 pool_id, Oid user,
						int32 nparams)
{
	Assert(buf->len == 0);
	put_int32(buf, 0);
	appendStringInfoChar(buf, kind);
	put_int32(buf, slot);
	appendBinaryStringInfo(buf, (const char *) &pool_id, 8);
	appendBinaryStringInfo(buf, (const char *) &user, sizeof(Oid));
	put_int32(buf, nparams);
}

/* Append a request text (the SQL or a parameter; NULL for a NULL): length, bytes, NUL. */
void
DbpoolProtoPutString(StringInfo buf, const char *s, int32 len)
{
	if (s == NULL)
	{
		put_int32(buf, -1);
		return;
	}
	put_int32(buf, len);
	appendBinaryStringInfo(buf, s, len);
	appendStringInfoChar(buf, '\0');
}

/* The request is complete: write its total length at its start. */
void
DbpoolProtoRequestFinish(StringInfo buf)
{
	int32		len = buf->len;

	memcpy(buf->data, &len, 4);
}

/*
 * The total length of a request, from its first piece (len bytes); false if
 * it cannot be a request (shorter than a header or over
 * DBPOOL_MAX_MESSAGE_BYTES).
 */
bool
DbpoolProtoRequestLength(const char *first, Size len, Size *total)
{
	int32		n;

	if (len < 4)
		return false;
	memcpy(&n, first, 4);
	if (n < REQUEST_HEADER_BYTES || n > DBPOOL_MAX_MESSAGE_BYTES)
		return false;
	*total = (Size) n;
	return true;
}

/* Read a request text: *s points at its bytes (NUL-terminated), NULL for a NULL. */
static bool
get_string(const char **p, const char *end, const char **s)
{
	int32		len;

	if (!DbpoolProtoGetInt32(p, end, &len))
		return false;
	if (len < 0)
	{
		*s = NULL;
		return true;
	}
	if (end - *p < (ptrdiff_t) len + 1 || (*p)[len] != '\0')
		return false;
	*s = *p;
	*p += len + 1;
	return true;
}

/*
 * Decode the request message data into req.  req->params is grown (in cxt)
 * to hold nparams pointers; *params_alloc tracks its size.  False if the
 * message is malformed.
 */
bool
DbpoolProtoParseRequest(const char *data, Size len, DbpoolRequest *req, int *params_alloc,
						MemoryContext cxt)
{
	const char *p = data;
	const char *end = data + len;
	int			i;

	Size		total;

	if (!DbpoolProtoRequestLength(data, len, &total) || total != len)
		return false;
	p += 4;
	req->kind = *p++;
	if (req->kind != DBPOOL_REQ_QUERY && req->kind != DBPOOL_REQ_EXEC)
		return false;
	(void) DbpoolProtoGetInt32(&p, end, &req->slot);
	memcpy(&req->pool_id, p, 8);
	p += 8;
	memcpy(&req->user, p, sizeof(Oid));
	p += sizeof(Oid);
	(void) DbpoolProtoGetInt32(&p, end, &req->nparams);
	if (req->nparams < -1 || !get_string(&p, end, &req->sql) || req->sql == NULL)
		return false;
	if (req->nparams > *params_alloc)
	{
		int			n = Max(req->nparams, 16);

		req->params = req->params ? repalloc(req->params, n * sizeof(char *)) :
			MemoryContextAlloc(cxt, n * sizeof(char *));
		*params_alloc = n;
	}
	for (i = 0; i < req->nparams; i++)
		if (!get_string(&p, end, &req->params[i]))
			return false;
	return true;
}

/* ---------- response records ---------- */

/*
 * Append a 'T' record: a result set of natts columns starts, printed under
 * the foreign session's DateStyle and IntervalStyle (NULL: not known).
 */
void
DbpoolProtoPutRowDesc(StringInfo buf, int natts, const char *datestyle,
					  const char *intervalstyle)
{
	appendStringInfoChar(buf, DBPOOL_REC_ROWDESC);
	put_int32(buf, natts);
	put_text(buf, datestyle);
	put_text(buf, intervalstyle);
}

/* Append a 'D' record for row of res. */
void
DbpoolProtoPutRow(StringInfo buf, const PGresult *res, int row)
{
	int			natts = PQnfields(res);
	int			i;

	appendStringInfoChar(buf, DBPOOL_REC_ROW);
	for (i = 0; i < natts; i++)
	{
		if (PQgetisnull(res, row, i))
			put_int32(buf, -1);
		else
		{
			int			len = PQgetlength(res, row, i);

			put_int32(buf, len);
			appendBinaryStringInfo(buf, PQgetvalue(res, row, i), len);
		}
	}
}

/* Bytes row of res would take in a 'D' record. */
Size
DbpoolProtoRowSize(const PGresult *res, int row)
{
	Size		n = 1;
	int			i;

	for (i = 0; i < PQnfields(res); i++)
		n += 4 + PQgetlength(res, row, i);
	return n;
}

/* Append the final 'C' record. */
void
DbpoolProtoPutComplete(StringInfo buf, const char *status)
{
	appendStringInfoChar(buf, DBPOOL_REC_COMPLETE);
	put_text(buf, status);
}

/* Append a final 'E' record with the SQLSTATE sqlerrcode (an ERRCODE_* value). */
void
DbpoolProtoPutError(StringInfo buf, int sqlerrcode, const char *message, const char *detail,
					const char *hint, const char *context)
{
	appendStringInfoChar(buf, DBPOOL_REC_ERROR);
	appendBinaryStringInfo(buf, unpack_sql_state(sqlerrcode), 5);
	put_utf8_text(buf, message);
	put_utf8_text(buf, detail);
	put_utf8_text(buf, hint);
	put_utf8_text(buf, context);
}

/*
 * The SQLSTATE a foreign server reported, as an ERRCODE_* value: five
 * characters of [0-9A-Z].  None at all is an error libpq made itself (the
 * connection broke, the server broke the protocol, out of memory): 08006, as
 * postgres_fdw and dblink report them.  Anything else is a server breaking
 * the protocol: 08P01.
 */
static int
remote_sqlerrcode(const char *s)
{
	int			i;

	if (s == NULL)
		return ERRCODE_CONNECTION_FAILURE;
	if (strlen(s) != 5)
		return ERRCODE_PROTOCOL_VIOLATION;
	for (i = 0; i < 5; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'Z')))
			return ERRCODE_PROTOCOL_VIOLATION;
	return MAKE_SQLSTATE(s[0], s[1], s[2], s[3], s[4]);
}

/* Append an 'E' record for a failed libpq result. */
void
DbpoolProtoPutRemoteError(StringInfo buf, const PGresult *res)
{
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	char	   *fallback = NULL;

	if (msg == NULL)
	{
		fallback = pstrdup(PQresultErrorMessage(res));
		msg = fallback[0] ? pchomp(fallback) : "unknown remote error";
	}
	DbpoolProtoPutError(buf, remote_sqlerrcode(PQresultErrorField(res, PG_DIAG_SQLSTATE)),
						msg,
						PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL),
						PQresultErrorField(res, PG_DIAG_MESSAGE_HINT),
						PQresultErrorField(res, PG_DIAG_CONTEXT));
}

/* ---------- decoders ---------- */

/* Read a native int32 at *p and advance; false if it would pass end. */
bool
DbpoolProtoGetInt32(const char **p, const char *end, int32 *v)
{
	if (end - *p < 4)
		return false;
	memcpy(v, *p, 4);
	*p += 4;
	return true;
}

/* Read a length-prefixed value: *s at its bytes (not terminated), *len -1 for NULL. */
bool
DbpoolProtoGetText(const char **p, const char *end, const char **s, int32 *len)
{
	if (!DbpoolProtoGetInt32(p, end, len))
		return false;
	if (*len < 0)
	{
		*s = NULL;
		*len = -1;
		return true;
	}
	if (end - *p < *len)
		return false;
	*s = *p;
	*p += *len;
	return true;
}

/* Read one text field of a record into a palloc'd string ("" when empty). */
static bool
get_record_text(const char **p, const char *end, char **out)
{
	const char *s;
	int32		len;

	if (!DbpoolProtoGetText(p, end, &s, &len))
		return false;
	*out = len > 0 ? pnstrdup(s, len) : pstrdup("");
	return true;
}

/* Decode the body of a 'T' record (after its type byte); the texts point into it, unterminated. */
bool
DbpoolProtoGetRowDesc(const char **p, const char *end, int32 *natts,
					  const char **datestyle, int32 *dslen,
					  const char **intervalstyle, int32 *islen)
{
	return DbpoolProtoGetInt32(p, end, natts) &&
		DbpoolProtoGetText(p, end, datestyle, dslen) && *dslen >= 0 &&
		DbpoolProtoGetText(p, end, intervalstyle, islen) && *islen >= 0;
}

/* Decode the body of an 'E' record (after its type byte). */
bool
DbpoolProtoGetError(const char **p, const char *end, DbpoolErrorFields *e)
{
	const char *s = *p;

	if (end - *p < 5)
		return false;
	memcpy(e->sqlstate, *p, 5);
	e->sqlstate[5] = '\0';
	*p += 5;
	e->sqlerrcode = MAKE_SQLSTATE(s[0], s[1], s[2], s[3], s[4]);
	return get_record_text(p, end, &e->message) &&
		get_record_text(p, end, &e->detail) &&
		get_record_text(p, end, &e->hint) &&
		get_record_text(p, end, &e->context);
}

/* Decode a whole 'E' record that this process built; XX000 if it is not one. */
void
DbpoolProtoErrorOf(const StringInfo rec, DbpoolErrorFields *e)
{
	const char *p = rec->data + 1;

	if (rec->len < 1 || rec->data[0] != DBPOOL_REC_ERROR ||
		!DbpoolProtoGetError(&p, rec->data + rec->len, e))
	{
		strlcpy(e->sqlstate, "XX000", sizeof(e->sqlstate));
		e->sqlerrcode = ERRCODE_INTERNAL_ERROR;
		e->message = pstrdup("malformed dbpool error record");
		e->detail = e->hint = e->context = pstrdup("");
	}
}
