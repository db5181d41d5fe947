# dbpool.backend_spin_us (issue 16): a session whose replies came quickly lately polls its
# response queue before it sleeps, and a reply caught while polling costs it no sleep.  The
# figure asserted is the session's own voluntary context switches per query (from
# /proc/self/status, Linux), which do not depend on the machine's speed: with the setting off
# every call sleeps at least once; with it on, most calls do not.  A cancel still ends a
# spinning session's wait, and the setting is reloadable (sighup), 0 by default.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

plan skip_all => 'needs /proc/self/status' unless -r '/proc/self/status';

my $f = foreign_node('F', 25860);
my $l = local_node('L', 25861);
my $ci = quote_literal(pool_conninfo($f));

$l->safe_psql('postgres', qq{
	SELECT dbpool_create_pool('p', $ci, min_size => 1, max_size => 2);
	CREATE FUNCTION vcsw() RETURNS bigint LANGUAGE sql AS
	  \$\$ SELECT substring(pg_read_file('/proc/self/status') from '\\nvoluntary_ctxt_switches:\\s+(\\d+)')::bigint \$\$;
	CREATE FUNCTION sleeps_per_query(n int) RETURNS numeric LANGUAGE plpgsql AS \$\$
	DECLARE
		before bigint;
		r int;
	BEGIN
		-- the first calls teach the session how soon replies come
		FOR i IN 1..50 LOOP
			SELECT x INTO r FROM dbpool_query('p', 'SELECT 1') AS t(x int);
		END LOOP;
		before := vcsw();
		FOR i IN 1..n LOOP
			SELECT x INTO r FROM dbpool_query('p', 'SELECT 1') AS t(x int);
		END LOOP;
		RETURN round((vcsw() - before)::numeric / n, 2);
	END \$\$;
});
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'p'}, '1'),
	'the pool is ready');

query_ok($l, q{SELECT setting, context, boot_val FROM pg_settings WHERE name = 'dbpool.backend_spin_us'},
	'0|sighup|0', 'the setting: off by default, reloadable');

my $off = $l->safe_psql('postgres', 'SELECT sleeps_per_query(500)');
cmp_ok($off, '>=', 0.9, "spinning off: every call sleeps (sleeps per call: $off)");

$l->safe_psql('postgres', 'ALTER SYSTEM SET dbpool.backend_spin_us = 10000');
$l->reload;
ok(poll_until($l, q{SHOW dbpool.backend_spin_us}, '10000'), 'reloaded');
my $on = $l->safe_psql('postgres', 'SELECT sleeps_per_query(500)');
cmp_ok($on, '<', 0.6, "spinning on: most replies are caught without a sleep (sleeps per call: $on)");

# a session that spins still answers a cancel, and the pool goes on serving
query_fails($l, q{SET statement_timeout = '300ms';
	SELECT * FROM dbpool_query('p', 'SELECT 1') AS t(x int);
	SELECT * FROM dbpool_query('p', 'SELECT pg_sleep(30)::text') AS t(x text)},
	'57014', qr/canceling statement due to statement timeout/, 'a cancel ends the wait');
query_ok($l, q{SELECT x FROM dbpool_query('p', 'SELECT 42') AS t(x int)}, '42',
	'the pool serves the next call');

ok(!$l->log_contains(qr/terminated by signal|terminating any other active server processes/),
	'L never crashed');
done_testing();
