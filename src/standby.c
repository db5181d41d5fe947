/*
 * standby.c
 *		The worker's watch over the configuration while the server is a hot
 *		standby: changes made on the primary arrive by WAL replay, where no
 *		trigger or commit callback runs, so nothing asks the worker to re-read.
 *		config.c asks this file, once a loop, whether a read is due.
 *
 * Every STANDBY_POLL_MS while in recovery, two checks, cheapest first:
 *	1. Has replay moved since the last check?  If not, no transaction can
 *	   have become visible since then, so nothing changed (free: one
 *	   spinlocked read of the replay position).
 *	2. Has the fingerprint of the configuration tables changed?  It hashes
 *	   the OIDs of dbpool_config, dbpool_grant and dbpool_alert_rules and, for every row version
 *	   visible to a fresh snapshot, its TID and raw xmin: an INSERT, UPDATE or
 *	   DELETE there changes the set of visible versions, a DROP or CREATE
 *	   EXTENSION the OIDs.  This is a heap scan of three small tables, without
 *	   SPI, in a read-only transaction with the tables' locks taken
 *	   conditionally and lock_timeout 50 ms for the catalogs' (the startup
 *	   process may hold them while it replays), so the worker never waits
 *	   long; a check that cannot lock is made again at the next poll.  Only when it differs does config.c read the whole configuration.
 *
 * The replay position is read before the snapshot is taken: whatever replay
 * had finished by then is in the snapshot, so a change is never lost between
 * two checks (at worst it is found one check later).  A change to an owner's
 * superuser status is not seen here; the periodic refresh finds it, as on a
 * primary.  When the server is promoted, one last read is due (changes
 * replayed after the last check), and from then on commits announce changes
 * as on any primary.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "catalog/pg_extension.h"
#include "common/hashfn.h"
#include "storage/lmgr.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "worker.h"

#define STANDBY_POLL_MS		1000	/* how often a standby looks for replicated changes */

static bool was_in_recovery = false;
static bool have_fingerprint = false;
static uint64 last_fingerprint = 0;
static XLogRecPtr last_replay = InvalidXLogRecPtr;
static TimestampTz next_check = 0;

/* Mix one 64-bit value into a running hash. */
static inline uint64
mix(uint64 h, uint64 v)
{
	return hash_combine64(h, hash_bytes_uint32((uint32) v) |
						  ((uint64) hash_bytes_uint32((uint32) (v >> 32)) << 32));
}

/*
 * Mix a table's OID and the TID and raw xmin of each row version visible to
 * snap into h.  False if the table is locked by someone else (replay).
 */
static bool
fingerprint_table(Oid relid, Snapshot snap, uint64 *h)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	uint64		rows = 0;

	*h = mix(*h, relid);
	if (!OidIsValid(relid))
		return true;
	if (!ConditionalLockRelationOid(relid, AccessShareLock))
		return false;
	rel = try_table_open(relid, NoLock);
	if (rel == NULL)
	{
		UnlockRelationOid(relid, AccessShareLock);
		*h = mix(*h, 0);
		return true;
	}
	scan = table_beginscan(rel, snap, 0, NULL);
	/* a sum of the rows' hashes: the same whatever order the scan returns them in */
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
		rows += mix(mix(0, ((uint64) ItemPointerGetBlockNumber(&tup->t_self) << 16) |
						ItemPointerGetOffsetNumber(&tup->t_self)),
					HeapTupleHeaderGetRawXmin(tup->t_data));
	*h = mix(*h, rows);
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return true;
}

/* The schema of extension dbpool, InvalidOid if it is not installed (a catalog heap scan). */
static Oid
extension_schema(void)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	TableScanDesc scan = table_beginscan_catalog(rel, 0, NULL);
	HeapTuple	tup;
	Oid			nsp = InvalidOid;

	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_extension ext = (Form_pg_extension) GETSTRUCT(tup);

		if (strcmp(NameStr(ext->extname), "dbpool") == 0)
		{
			nsp = ext->extnamespace;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
}

/* The fingerprint of the configuration tables, with DbpoolWorkerRun's fresh snapshot. */
static bool
fingerprint_in(void *arg)
{
	uint64	   *h = arg;
	Oid			nsp = extension_schema();
	Snapshot	snap = GetActiveSnapshot();
	bool		ok;

	ok = fingerprint_table(OidIsValid(nsp) ? get_relname_relid("dbpool_config", nsp) :
						   InvalidOid, snap, h) &&
		fingerprint_table(OidIsValid(nsp) ? get_relname_relid("dbpool_grant", nsp) :
						  InvalidOid, snap, h) &&
		fingerprint_table(OidIsValid(nsp) ? get_relname_relid("dbpool_alert_rules", nsp) :
						  InvalidOid, snap, h);
	return ok;
}

/*
 * The fingerprint of the configuration tables as a fresh snapshot sees them;
 * false if it could not be taken now (a table or catalog locked by replay
 * longer than lock_timeout, a recovery conflict: config.c's read reports
 * what persists).
 */
static bool
config_fingerprint(uint64 *fp)
{
	uint64		h = 0;
	bool		ok;

	ok = DbpoolWorkerRun(fingerprint_in, &h, "dbpool: checking the replayed configuration", NULL);
	*fp = h;
	return ok;
}

/*
 * Whether the configuration may have changed by replay since the last call
 * that said so (config.c then reads it); also true once after promotion.
 * Costs nothing on a primary.
 */
bool
DbpoolStandbyConfigChanged(TimestampTz now)
{
	XLogRecPtr	replay;
	uint64		fp;

	if (!RecoveryInProgress())
	{
		if (!was_in_recovery)
			return false;
		was_in_recovery = false;	/* promoted: read what replay brought last */
		return true;
	}
	was_in_recovery = true;
	if (now < next_check)
		return false;
	next_check = TimestampTzPlusMilliseconds(now, STANDBY_POLL_MS);
	DbpoolWorkerDeadline(next_check);

	replay = GetXLogReplayRecPtr(NULL);
	if (have_fingerprint && replay == last_replay)
		return false;
	if (!config_fingerprint(&fp))
		return false;			/* replay position not taken: the next check tries again */
	last_replay = replay;
	if (have_fingerprint && fp == last_fingerprint)
		return false;
	have_fingerprint = true;
	last_fingerprint = fp;
	return true;
}
