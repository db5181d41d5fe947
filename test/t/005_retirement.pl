# Connection housekeeping: idle connections above min_size close after idle_timeout_ms;
# connections older than max_lifetime_ms are replaced while min_size stays warm; min_size
# connections are opened without any query; application_name is 'dbpool' unless the
# conninfo names one.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25541);
my $l = local_node('L', 25540);

sub app_count_sql
{
	my ($app) = @_;
	return "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$app'";
}

sub create_pool
{
	my ($name, $app, $opts) = @_;
	my $ci = pool_conninfo($f, defined $app ? ("application_name=$app") : ());
	$l->safe_psql('postgres',
		"SELECT dbpool_create_pool('$name', " . quote_literal($ci) . ", $opts)");
}

# --- application_name -------------------------------------------------------------------
create_pool('plain', undef, 'min_size => 0, max_size => 1');
query_ok($l, q{SELECT a FROM dbpool_query('plain', 'SELECT current_setting(''application_name'')') AS t(a text)},
	'dbpool', "remote application_name defaults to 'dbpool'");
create_pool('named', 'my_app', 'min_size => 0, max_size => 1');
query_ok($l, q{SELECT a FROM dbpool_query('named', 'SELECT current_setting(''application_name'')') AS t(a text)},
	'my_app', 'an application_name in the conninfo wins');

# --- idle_timeout_ms with min_size = 0 ------------------------------------------------
create_pool('idle', 'idle_pool', 'min_size => 0, max_size => 3, idle_timeout_ms => 1000');
query_ok($l, q{SELECT a FROM dbpool_query('idle', 'SELECT current_setting(''application_name'')') AS t(a text)},
	'idle_pool', 'idle pool answered');
ok(poll_until($f, app_count_sql('idle_pool'), '0', 30),
	'idle connection closed after idle_timeout_ms (min_size 0)');
query_ok($l, q{SELECT x FROM dbpool_query('idle', 'SELECT 3') AS t(x int)}, '3',
	'the emptied pool connects again on demand');

# --- min_size warm, not shrunk by idle_timeout ----------------------------------------
create_pool('warm', 'warm_pool', 'min_size => 2, max_size => 4, idle_timeout_ms => 500');
ok(poll_until($f, app_count_sql('warm_pool'), '2', 30),
	'min_size = 2 connections are opened without any query');
ok(poll_until($f, "SELECT count(*) FILTER (WHERE state = 'idle') FROM pg_stat_activity WHERE application_name = 'warm_pool' AND backend_start < now() - interval '2 seconds'",
	'2', 30), 'idle_timeout_ms does not close connections below min_size');

# --- max_lifetime_ms ------------------------------------------------------------------
create_pool('life', 'life_pool', 'min_size => 1, max_size => 1, max_lifetime_ms => 2000');
my $pid_sql = q{SELECT pid FROM dbpool_query('life', 'SELECT pg_backend_pid()') AS t(pid int)};
my $first = $l->safe_psql('postgres', $pid_sql);
like($first, qr/^\d+$/, 'remote pid through the pool');
ok(poll_until($l, "SELECT ($pid_sql) <> $first", 't', 60),
	'after max_lifetime_ms the pool answers from a new remote connection');
ok(poll_until($f, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $first", 't', 30),
	'the retired connection is closed on F');
ok(poll_until($f, app_count_sql('life_pool'), '1', 30), 'F keeps min_size = 1 connection');

# --- drop with a query in flight ----------------------------------------------------------
create_pool('dropme', 'dropme_pool', 'min_size => 1, max_size => 2');
my $bg = start_bg($l, q{SELECT x FROM dbpool_query('dropme', 'SELECT pg_sleep(2), 5') AS t(s text, x int)});
ok(poll_until($f, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dropme_pool' AND state = 'active'", '1'),
	'a query of dropme is running');
query_ok($l, q{SELECT dbpool_drop_pool('dropme')}, '', 'drop the pool under it');
query_fails($l, q{SELECT x FROM dbpool_query('dropme', 'SELECT 1') AS t(x int)}, '42704', undef,
	'new queries no longer find it');
my ($ret, $out, $err) = finish_bg($bg);
is($ret, 0, 'the query in flight finishes') or diag($err);
is($out, '5', 'with its result');
ok(poll_until($f, app_count_sql('dropme_pool'), '0', 30), "the dropped pool's connections close");

ok(poll_until($l, q{SELECT count(*) FROM dbpool_pools}, '5', 30),
	'the dropped pool leaves dbpool_pools; the others are still listed');

done_testing();
