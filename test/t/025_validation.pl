# Validation of idle connections (issue 12): connections whose server went away are never handed
# to a request, and are counted (closed_broken); a connection idle longer than the pool's
# validation_interval_ms is checked with an empty query before use.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25741, "log_statement = 'all'\n");
my $l = local_node('L', 25740);
my $ci = quote_literal(pool_conninfo($f, 'application_name=pool_v'));

$l->safe_psql('postgres', qq{SELECT dbpool_create_pool('v', $ci, min_size => 4, max_size => 4,
	validation_interval_ms => 0)});
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'v'}, '4'),
	'four idle connections');

sub counter
{
	my ($name) = @_;
	return $l->safe_psql('postgres',
		qq{SELECT coalesce(dbpool_detailed_metrics('v') #>> '{counters,$name}', 'none')});
}

# --- idle connections killed on the foreign side -----------------------------------------------
is(counter('closed_broken'), '0', 'no broken connection yet');
is($f->safe_psql('postgres', q{SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
	WHERE application_name = 'pool_v'}), '4', 'F terminates the four idle connections');
my @bg = map {
	start_bg($l, q{SELECT sum(x) FROM generate_series(1, 10) i,
		LATERAL dbpool_query('v', 'SELECT 1') AS t(x int)})
} 1 .. 8;
my $ok = 0;
for my $bg (@bg)
{
	my ($ret, $out, $err) = finish_bg($bg);
	$ok++ if defined $ret && $ret == 0 && $out eq '10';
	diag($err) if $err;
}
is($ok, 8, 'the next 80 requests, from 8 sessions, all succeed');
is(counter('closed_broken'), '4', 'the four kills are counted as closed_broken');
query_ok($l, q{SELECT state FROM dbpool_pools WHERE name = 'v'}, 'ok', 'the pool stays ok');

# --- validation before use ----------------------------------------------------------------------
sub empty_queries
{
	my $log = slurp_file($f->logfile);
	return scalar(() = $log =~ /statement: $/mg);
}
$l->safe_psql('postgres', q{SELECT dbpool_alter_pool('v', '{"validation_interval_ms": 200}')});
query_ok($l, q{SELECT * FROM dbpool_query('v', 'SELECT 1') AS t(x int)}, '1', 'a call');
my $before = empty_queries();
query_ok($l, q{SELECT * FROM dbpool_query('v', 'SELECT 2') AS t(x int)}, '2',
	'a call right after: its connection was just used');
is(empty_queries(), $before, 'no validation for a connection idle a moment');
# idle past the interval (the wait is the point of the test)
$l->safe_psql('postgres', 'SELECT pg_sleep(0.5)');
query_ok($l, q{SELECT * FROM dbpool_query('v', 'SELECT 3') AS t(x int)}, '3',
	'a call after 0.5 s idle');
is(empty_queries(), $before + 1, 'the connection idle past validation_interval_ms was validated first');
query_ok($l, q{SELECT validation_interval_ms FROM dbpool_pools WHERE name = 'v'}, '200',
	'the setting is shown');

done_testing();
