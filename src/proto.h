/*
 * proto.h
 *		The backend <-> worker record format, with every encoder and decoder
 *		of it (proto.c).  Nothing else reads or writes these bytes: the backend
 *		(query.c) builds requests and reads responses, the worker
 *		(channel_worker.c, conn_query.c) reads requests and builds responses.
 *
 * Both ends are processes of one server, so integers are native.  Text is
 * UTF8, whatever the databases' encodings: the backend converts on its way
 * in and out.  The texts of 'E' records, and the status of 'C' records, are
 * in text.c's canonical form (a foreign server's invalid bytes escaped); row
 * values are passed as the foreign server sent them.
 *
 * A request is sent as a series of shm_mq messages, its pieces, each at most
 * DBPOOL_REQUEST_PIECE_BYTES (channel.c), which the worker puts together in a
 * buffer of its own: a shm_mq handle keeps, for its whole life, a buffer as
 * large as the largest message it received.  The request's bytes are:
 *	int32 total length of the request, these 4 bytes included
 *	char kind ('Q' rows wanted, 'X' command status only)
 *	int32 pool slot, uint64 pool_id, Oid user
 *	int32 nparams (-1: no parameters, simple protocol, several statements)
 *	int32 sql length, sql bytes, '\0'
 *	nparams * (int32 length or -1 for NULL, bytes, '\0')
 * The NULs let the worker hand the texts to libpq where they lie.
 *
 * A response is a series of messages, each a series of records:
 *	'T' int32 natts, 2 * (int32 len, bytes): DateStyle, IntervalStyle
 *											a result set starts; its values are
 *											printed under those foreign settings
 *	'D' natts * (int32 len or -1, bytes)	one row
 *	'C' int32 len, bytes					final: command status of the last statement
 *	'E' 5-byte SQLSTATE, 4 * (int32 len, bytes): message, detail, hint, context
 *											final: an error
 */
#ifndef DBPOOL_PROTO_H
#define DBPOOL_PROTO_H

#include "lib/stringinfo.h"

#define DBPOOL_REQ_QUERY	'Q'
#define DBPOOL_REQ_EXEC		'X'
#define DBPOOL_REC_ROWDESC	'T'
#define DBPOOL_REC_ROW		'D'
#define DBPOOL_REC_COMPLETE	'C'
#define DBPOOL_REC_ERROR	'E'

struct pg_result;				/* libpq's PGresult, for the worker's encoders */

/* A decoded request; the texts point into the message. */
typedef struct DbpoolRequest
{
	char		kind;
	int32		slot;
	uint64		pool_id;
	Oid			user;
	int32		nparams;		/* -1: simple protocol */
	const char *sql;
	const char **params;		/* nparams entries, NULL for a NULL parameter */
} DbpoolRequest;

/* A decoded 'E' record; the texts are palloc'd UTF8, "" when absent. */
typedef struct DbpoolErrorFields
{
	char		sqlstate[6];
	int			sqlerrcode;
	char	   *message;
	char	   *detail;
	char	   *hint;
	char	   *context;
} DbpoolErrorFields;

/* requests: the backend encodes, the worker decodes */
extern void DbpoolProtoRequestStart(StringInfo buf, char kind, int32 slot, uint64 pool_id,
									Oid user, int32 nparams);
extern void DbpoolProtoPutString(StringInfo buf, const char *s, int32 len);
extern void DbpoolProtoRequestFinish(StringInfo buf);
extern bool DbpoolProtoRequestLength(const char *first, Size len, Size *total);
extern bool DbpoolProtoParseRequest(const char *data, Size len, DbpoolRequest *req,
									int *params_alloc, MemoryContext cxt);

/* response records: the worker encodes */
extern void DbpoolProtoPutRowDesc(StringInfo buf, int natts, const char *datestyle,
								  const char *intervalstyle);
extern void DbpoolProtoPutRow(StringInfo buf, const struct pg_result *res, int row);
extern Size DbpoolProtoRowSize(const struct pg_result *res, int row);
extern void DbpoolProtoPutComplete(StringInfo buf, const char *status);
extern void DbpoolProtoPutError(StringInfo buf, int sqlerrcode, const char *message,
								const char *detail, const char *hint, const char *context);
extern void DbpoolProtoPutRemoteError(StringInfo buf, const struct pg_result *res);

/* response records: the backend (and the worker, of its own errors) decodes */
extern bool DbpoolProtoGetInt32(const char **p, const char *end, int32 *v);
extern bool DbpoolProtoGetText(const char **p, const char *end, const char **s, int32 *len);
extern bool DbpoolProtoGetRowDesc(const char **p, const char *end, int32 *natts,
								  const char **datestyle, int32 *dslen,
								  const char **intervalstyle, int32 *islen);
extern bool DbpoolProtoGetError(const char **p, const char *end, DbpoolErrorFields *e);
extern void DbpoolProtoErrorOf(const StringInfo rec, DbpoolErrorFields *e);

#endif							/* DBPOOL_PROTO_H */
