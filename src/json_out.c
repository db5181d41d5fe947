/*
 * json_out.c
 *		The pieces every jsonb document of dbpool is written with (detail.c,
 *		health_sql.c, diagnose.c): keys, strings, timestamps and milliseconds,
 *		appended to a StringInfo as JSON text, which the caller then turns
 *		into jsonb.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "figures.h"

/* Append a JSON string key followed by a colon. */
void
DbpoolJsonKey(StringInfo buf, const char *k)
{
	escape_json(buf, k);
	appendStringInfoChar(buf, ':');
}

/* Append a JSON string, or null for NULL. */
void
DbpoolJsonString(StringInfo buf, const char *s)
{
	if (s == NULL)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, s);
}

/* Append a timestamp as the server shows it (DateStyle, TimeZone), or null for 0. */
void
DbpoolJsonTime(StringInfo buf, TimestampTz t)
{
	if (t == 0)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, timestamptz_to_str(t));
}

/* Append a timestamp as an ISO 8601 string in UTC, or null for 0. */
void
DbpoolJsonUtc(StringInfo buf, TimestampTz t)
{
	char		out[MAXDATELEN + 1];
	int			utc = 0;

	if (t == 0)
	{
		appendStringInfoString(buf, "null");
		return;
	}
	JsonEncodeDateTime(out, TimestampTzGetDatum(t), TIMESTAMPTZOID, &utc);
	appendStringInfo(buf, "\"%s\"", out);
}

/* Append milliseconds (rounded to the us), or null when unknown (negative). */
void
DbpoolJsonMs(StringInfo buf, double ms)
{
	if (ms < 0)
		appendStringInfoString(buf, "null");
	else
		appendStringInfo(buf, "%.3f", ms);
}
