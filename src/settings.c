/*
 * settings.c
 *		Pool settings: their table of descriptors, defaults, validation, and
 *		the check of pool names.  Connection strings are conninfo.c's.
 */
#include "postgres.h"

#include <math.h>

#include "dbpool.h"

#define INT_SETTING(field, def, min) \
	{#field, DBPOOL_SETTING_INT, offsetof(DbpoolSettings, field), def, min, 0, 0, 0, NULL}
#define TEXT_SETTING(field, def) \
	{#field, DBPOOL_SETTING_TEXT, offsetof(DbpoolSettings, field), 0, 0, 0, 0, 0, def}
#define BOOL_SETTING(field, def) \
	{#field, DBPOOL_SETTING_BOOL, offsetof(DbpoolSettings, field), def, 0, 0, 0, 0, NULL}
#define REAL_SETTING(field, def, min, max) \
	{#field, DBPOOL_SETTING_REAL, offsetof(DbpoolSettings, field), 0, 0, def, min, max, NULL}

/* In the order of dbpool_create_pool's parameters after name and conninfo. */
const DbpoolSettingDesc DbpoolSettingDescs[] = {
	INT_SETTING(min_size, 1, 0),
	INT_SETTING(max_size, 10, 1),
	INT_SETTING(acquire_timeout_ms, 5000, 0),
	INT_SETTING(query_timeout_ms, 0, 0),
	INT_SETTING(idle_timeout_ms, 600000, 0),
	INT_SETTING(max_lifetime_ms, 3600000, 0),
	TEXT_SETTING(reset_query, NULL),
	INT_SETTING(slow_query_ms, 1000, 0),
	INT_SETTING(retry_base_ms, 100, 1),
	INT_SETTING(retry_max_ms, 10000, 1),
	INT_SETTING(retry_attempts, 3, 1),
	INT_SETTING(down_probe_interval_ms, 500, 10),
	INT_SETTING(validation_interval_ms, 30000, 0),
	INT_SETTING(failback_after_ms, 30000, 0),
	TEXT_SETTING(health_query, "SELECT 1"),
	INT_SETTING(health_timeout_ms, 1000, 1),
	INT_SETTING(health_check_interval_ms, 30000, 0),
	INT_SETTING(health_max_latency_ms, 100, 1),
	REAL_SETTING(health_max_utilization, 0.9, 0.0, 1.0),
	REAL_SETTING(health_max_error_rate, 0.01, 0.0, 1.0),
	INT_SETTING(leak_threshold_ms, 300000, 0),
	BOOL_SETTING(autoscale, false),
	INT_SETTING(max_size_limit, 200, 1),
	INT_SETTING(max_size_floor, 0, 0),
};
const int	DbpoolNumSettings = lengthof(DbpoolSettingDescs);

/* Fill s with every setting's default. */
void
DbpoolSettingsDefaults(DbpoolSettings *s)
{
	int			i;

	memset(s, 0, sizeof(*s));
	for (i = 0; i < DbpoolNumSettings; i++)
	{
		const DbpoolSettingDesc *d = &DbpoolSettingDescs[i];

		if (d->type == DBPOOL_SETTING_INT)
			*DbpoolSettingInt(s, d) = d->default_int;
		else if (d->type == DBPOOL_SETTING_REAL)
			*DbpoolSettingReal(s, d) = d->default_real;
		else if (d->type == DBPOOL_SETTING_BOOL)
			*DbpoolSettingBool(s, d) = (d->default_int != 0);
		else if (d->default_text)
			strlcpy(DbpoolSettingText(s, d), d->default_text, DBPOOL_TEXT_SETTING_LEN);
	}
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

/* The float8 field that d describes. */
double *
DbpoolSettingReal(DbpoolSettings *s, const DbpoolSettingDesc *d)
{
	Assert(d->type == DBPOOL_SETTING_REAL);
	return (double *) ((char *) s + d->offset);
}

/* The boolean field that d describes. */
bool *
DbpoolSettingBool(DbpoolSettings *s, const DbpoolSettingDesc *d)
{
	Assert(d->type == DBPOOL_SETTING_BOOL);
	return (bool *) ((char *) s + d->offset);
}

/* The size autoscaling never goes below: max_size_floor, or when 0 the smaller of 10 and max_size. */
int
DbpoolMaxSizeFloor(const DbpoolSettings *s)
{
	if (s->max_size_floor > 0)
		return s->max_size_floor;
	return Max(Min(10, s->max_size), s->min_size);
}

/* Parse text as the value of the float8 setting name, or raise 22023. */
double
DbpoolSettingRealValue(const char *name, const char *text)
{
	char	   *end;
	double		v;

	errno = 0;
	v = strtod(text, &end);
	if (end == text || *end != '\0' || errno != 0 || isnan(v) || isinf(v))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for %s", name),
				 errdetail("%s takes a finite number.", name)));
	return v;
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
		else if (d->type == DBPOOL_SETTING_REAL)
		{
			double		v = *DbpoolSettingReal((DbpoolSettings *) s, d);

			if (isnan(v) || v < d->min_real || v > d->max_real)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for %s: %g", d->name, v),
						 errdetail("%s must be between %g and %g.", d->name, d->min_real,
								   d->max_real)));
		}
		else if (d->type == DBPOOL_SETTING_TEXT && d->default_text &&
				 DbpoolSettingText((DbpoolSettings *) s, d)[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid value for %s", d->name),
					 errdetail("%s must not be empty (its default is \"%s\").", d->name,
							   d->default_text)));
	}
	if (s->min_size > s->max_size)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for min_size: %d", s->min_size),
				 errdetail("min_size must not exceed max_size (%d).", s->max_size)));
	if (s->retry_max_ms < s->retry_base_ms)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for retry_max_ms: %d", s->retry_max_ms),
				 errdetail("retry_max_ms must be at least retry_base_ms (%d).", s->retry_base_ms)));
	if (s->max_size > s->max_size_limit)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for max_size: %d", s->max_size),
				 errdetail("max_size must not exceed max_size_limit (%d).", s->max_size_limit)));
	if (s->max_size_floor > 0 &&
		(s->max_size_floor < s->min_size || s->max_size_floor > s->max_size))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for max_size_floor: %d", s->max_size_floor),
				 errdetail("max_size_floor must be between min_size (%d) and max_size (%d), or 0.",
						   s->min_size, s->max_size)));
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
