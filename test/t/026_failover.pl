# Failover to a backup target, and libpq's own multi-host failover (issue 12).
#
# 1. A pool with backup_conninfo: its primary killed (-m immediate), traffic runs on the backup
#    within 5 s (state degraded, target backup); the primary back, the pool fails back after
#    failback_after_ms.  With failback_after_ms 0 it stays on the backup until
#    dbpool_restart_pool.  With the backup down too, the primary serves again as soon as it
#    answers.
# 2. A multi-host conninfo with target_session_attrs=read-write over a primary and its
#    streaming standby: the primary stopped and the standby promoted, writes through the pool
#    succeed again.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $l = local_node('L', 25750);
my $p = foreign_node('P', 25751);
my $b = foreign_node('B', 25752);

# --- settings and the view ----------------------------------------------------------------------
my $pci = quote_literal(pool_conninfo($p));
my $bci = quote_literal(pool_conninfo($b, 'password=s3cret'));
$l->safe_psql('postgres', q{CREATE ROLE alice LOGIN; GRANT CREATE ON SCHEMA public TO alice});
$l->safe_psql('postgres', q{GRANT EXECUTE ON FUNCTION dbpool_create_pool TO alice});
query_fails($l, qq{SELECT dbpool_create_pool('nopw', 'dbname=postgres password=x',
	backup_conninfo => 'dbname=postgres')}, '2F003', qr/password is required/,
	'backup_conninfo: the password rule applies', user => 'alice');
query_fails($l, qq{SELECT dbpool_create_pool('badci', $pci, backup_conninfo => 'host=x nonsense')},
	'22023', qr/invalid value for conninfo/, 'backup_conninfo: it must parse');

$l->safe_psql('postgres', qq{SELECT dbpool_create_pool('fo', $pci, min_size => 2, max_size => 4,
	retry_base_ms => 50, retry_max_ms => 200, retry_attempts => 3, down_probe_interval_ms => 200,
	failback_after_ms => 2000, backup_conninfo => $bci)});
ok(poll_until($l, q{SELECT state || '/' || target FROM dbpool_pools WHERE name = 'fo'},
	'ok/primary'), 'the pool is ok on its primary');
query_ok($l, q{SELECT backup_conninfo LIKE '%password=********%', backup_conninfo LIKE '%s3cret%',
	failback_after_ms FROM dbpool_pools WHERE name = 'fo'}, 't|f|2000',
	'dbpool_pools shows the backup_conninfo, password masked, and failback_after_ms');
query_ok($l, q{SELECT dbpool_detailed_metrics('fo')->>'target',
	dbpool_detailed_metrics('fo')->'settings'->>'backup_conninfo' LIKE '%********%'},
	'primary|t', 'dbpool_detailed_metrics shows them too');

my $where = q{SELECT * FROM dbpool_query('fo', 'SELECT current_setting(''port'')') AS t(x text)};
query_ok($l, $where, $p->port, 'queries run on the primary');

# --- failover -----------------------------------------------------------------------------------
my $log_at = -s $l->logfile;
$p->stop('immediate');
my $t0 = time();
ok(poll_until($l, qq{SELECT x FROM ($where) s}, $b->port, 10), 'queries run on the backup');
my $took = time() - $t0;
cmp_ok($took, '<', 5, sprintf('traffic ran on the backup %.2f s after the primary was killed', $took));
query_ok($l, q{SELECT state, target FROM dbpool_pools WHERE name = 'fo'}, 'degraded|backup',
	'the pool is degraded, on its backup');
query_ok($l, q{SELECT state FROM dbpool_metrics WHERE pool = 'fo'}, 'degraded',
	'dbpool_metrics agrees');
like(slurp_file($l->logfile, $log_at), qr/pool "fo" fails over to its backup/,
	'the failover is logged');
query_ok($l, qq{SELECT count(*) FROM ($where) s WHERE x = '@{[$b->port]}'}, '1',
	'and they keep running there');

# --- failback -----------------------------------------------------------------------------------
$log_at = -s $l->logfile;
$p->start;
ok(poll_until($l, q{SELECT state || '/' || target FROM dbpool_pools WHERE name = 'fo'},
	'ok/primary', 30), 'the pool fails back to its primary once it is back');
query_ok($l, $where, $p->port, 'queries run on the primary again');
like(slurp_file($l->logfile, $log_at), qr/pool "fo" fails back to its primary.*\n.*failback_after_ms/,
	'the failback is logged');
ok(poll_until($b, q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'
	AND pid <> pg_backend_pid()}, '0'), 'the connections to the backup are closed');

# --- failback_after_ms 0: the backup until dbpool_restart_pool ------------------------------------
$l->safe_psql('postgres', q{SELECT dbpool_alter_pool('fo', '{"failback_after_ms": 0}')});
$p->stop('immediate');
ok(poll_until($l, qq{SELECT x FROM ($where) s}, $b->port, 10), 'on the backup again');
$p->start;
# Several probe intervals (200 ms) pass: nothing moves the pool back by itself.
ok(poll_until($p, q{SELECT pg_postmaster_start_time() < now() - interval '1.5 s'}), 'time passes');
query_ok($l, q{SELECT state, target FROM dbpool_pools WHERE name = 'fo'}, 'degraded|backup',
	'failback_after_ms 0: still on the backup');
query_ok($l, $where, $b->port, 'and serving from it');
query_ok($l, q{SELECT dbpool_restart_pool('fo')}, '', 'dbpool_restart_pool');
query_ok($l, q{SELECT state, target FROM dbpool_pools WHERE name = 'fo'}, 'ok|primary',
	'the restart puts it back on its primary');
query_ok($l, $where, $p->port, 'queries run on the primary');

# --- the backup down too: the primary serves as soon as it answers --------------------------------
$p->stop('immediate');
ok(poll_until($l, qq{SELECT x FROM ($where) s}, $b->port, 10), 'on the backup');
$b->stop('immediate');
ok(poll_until($l, q{SELECT state || '/' || target FROM dbpool_pools WHERE name = 'fo'},
	'down/backup', 10), 'the backup down too: the pool is down');
query_fails($l, $where, '08001', qr/could not connect to pool "fo"/, 'and fails fast');
$p->start;
ok(poll_until($l, q{SELECT state || '/' || target FROM dbpool_pools WHERE name = 'fo'},
	'ok/primary', 10), 'the primary back: the pool is on it at once (failback_after_ms 0)');
query_ok($l, $where, $p->port, 'and serves');
$b->start;

# --- 2. multi-host, target_session_attrs=read-write, a standby promoted --------------------------
my $s1 = PostgreSQL::Test::Cluster->new('S1', port => 25753);
$s1->init(allows_streaming => 1);
$s1->start;
$s1->safe_psql('postgres', 'CREATE TABLE t (x int)');
$s1->backup('bk');
my $s2 = PostgreSQL::Test::Cluster->new('S2', port => 25754);
$s2->init_from_backup($s1, 'bk', has_streaming => 1);
$s2->start;
$s1->wait_for_catchup($s2);

my $mci = quote_literal(join(' ',
	'host=' . $s1->host . ',' . $s2->host,
	'port=' . $s1->port . ',' . $s2->port,
	'dbname=postgres target_session_attrs=read-write'));
$l->safe_psql('postgres', qq{SELECT dbpool_create_pool('mh', $mci, min_size => 2, max_size => 4,
	retry_base_ms => 50, retry_max_ms => 200, down_probe_interval_ms => 200)});
my $write = q{SELECT dbpool_exec('mh', 'INSERT INTO t VALUES (1)')};
query_ok($l, $write, 'INSERT 0 1', 'writes through the multi-host pool');
query_ok($l, q{SELECT * FROM dbpool_query('mh', 'SELECT current_setting(''port'')') AS t(x text)},
	$s1->port, 'on the primary S1');

$s1->stop('immediate');
query_fails($l, $write, qr/^08/, qr/pool "mh"/,
	'S1 gone, S2 still a standby: writes fail with class 08 (read-write is not found)');
$s2->promote;
ok(poll_until($l, q{SELECT dbpool_exec('mh', 'INSERT INTO t VALUES (2)') = 'INSERT 0 1'},
	't', 30), 'S2 promoted: writes through the pool succeed again');
query_ok($l, q{SELECT * FROM dbpool_query('mh', 'SELECT current_setting(''port'')') AS t(x text)},
	$s2->port, 'on S2');
query_ok($l, $write, 'INSERT 0 1', 'and keep succeeding');

done_testing();
