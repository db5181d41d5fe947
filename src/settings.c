/*
 * settings.c
 *		Pool settings: their table of descriptors, defaults, validation, and
 *		the check of pool names.  Connection strings are conninfo.c's.
 */
#include "postgres.h"

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
	INT_SETTING(retry_base_ms, 100, 1),
	INT_SETTING(retry_max_ms, 10000, 1),
	INT_SETTING(retry_attempts, 3, 1),
	INT_SETTING(down_probe_interval_ms, 500, 10),
	INT_SETTING(validation_interval_ms, 30000, 0),
	INT_SETTING(failback_after_ms, 30000, 0),
};
const int	DbpoolNumSettings = lengthof(DbpoolSettingDescs);

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
	if (s->retry_max_ms < s->retry_base_ms)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for retry_max_ms: %d", s->retry_max_ms),
				 errdetail("retry_max_ms must be at least retry_base_ms (%d).", s->retry_base_ms)));
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
