/*
 * figures.h
 *		What readers derive from a copy of the statistics: window sums,
 *		percentiles, rates; who may see a query text; the names of states.
 */
#ifndef DBPOOL_FIGURES_H
#define DBPOOL_FIGURES_H

#include "dbpool.h"
#include "stats.h"

#define DBPOOL_INSUFFICIENT_PRIVILEGE "<insufficient privilege>"	/* shown instead of a text */

/* a pool's statistics */
extern void DbpoolSlotStats(const DbpoolPoolSlot *slot, DbpoolPoolStats *copy);

/* figures from a copy */
typedef struct DbpoolWindowFigures
{
	uint64		acquire[DBPOOL_HIST_BUCKETS];
	uint64		query[DBPOOL_HIST_BUCKETS];
	uint64		acquire_n;
	uint64		query_n;
} DbpoolWindowFigures;

extern void DbpoolWindowSum(const DbpoolPoolStats *s, TimestampTz now, DbpoolWindowFigures *w);
extern double DbpoolHistPercentile(const uint64 *count, uint64 n, double p);
extern void DbpoolRates(const DbpoolPoolStats *s, TimestampTz now, int secs,
						double *qps, double *errors_per_sec);
extern double DbpoolRoundMs(double ms);

/* who sees what, and names */
extern bool DbpoolMaySeeText(Oid role);
extern const char *DbpoolConnStateName(DbpoolConnShownState state);
extern const char *DbpoolPoolStateName(DbpoolPoolState state);

/* helpers of the SQL functions (views.c) */
extern Datum DbpoolUtf8TextDatum(const char *s);
extern DbpoolPoolSlot *DbpoolFindSlot(DbpoolPoolSlot *slots, int n, const char *name,
									  bool dropping);

#endif							/* DBPOOL_FIGURES_H */
