# The worker gives back the memory of large values (issue 11, item 2): within 5 s of the end
# of a request that carried large values, the worker's anonymous resident memory (RssAnon in
# /proc/<pid>/status) is back within 32 MB of what it was before.  The issue's own sizes:
#
#  - one long-lived local session sends two 100 MB parameters in one call, then one 100 MB
#    parameter, then reads one 100 MB result; it stays connected while the worker is measured
#    (its channel and queues stay attached);
#  - four concurrent sessions each send a 70 MB parameter, then exit.
#
# Results must still be right (the lengths), and a normal workload (values well below the
# large-value threshold, DBPOOL_LARGE_MESSAGE_BYTES = 1 MB) must not retire connections:
# the same remote backends serve before and after, and no closed_* counter moves.
#
# Waits are polls with deadlines; the one bound on time is the issue's 5 s.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $slack_kb = 32 * 1024;	# the issue's bound
my $mb = 1024 * 1024;

my $f = foreign_node('F', 25661);
my $l = local_node('L', 25660);
$l->safe_psql('postgres',
	sprintf(q{SELECT dbpool_create_pool('m', %s, max_size => 6)},
		quote_literal(pool_conninfo($f, 'application_name=memory'))));
query_ok($l, q{SELECT x FROM dbpool_query('m', 'SELECT 1') AS t(x int)}, '1', 'pool answers');

my @workers = dbpool_worker_pids($l);
is(scalar @workers, 1, 'one dbpool worker in pg_stat_activity');
my $worker = $workers[0];

sub rss_anon_kb
{
	open(my $fh, '<', "/proc/$worker/status") or return undef;
	while (<$fh>)
	{
		return $1 if /^RssAnon:\s+(\d+)\s+kB/;
	}
	return undef;
}

# connections created and closed (all reasons), and the remote pids of the open ones
my $counters_sql = q{
SELECT (c->>'connections_created') || ' '
       || ((c->>'closed_idle')::bigint + (c->>'closed_lifetime')::bigint
           + (c->>'closed_error')::bigint + (c->>'closed_resize')::bigint
           + (c->>'closed_config')::bigint + (c->>'closed_drop')::bigint
           + coalesce((c->>'closed_large')::bigint, 0))
FROM (SELECT dbpool_detailed_metrics('m')->'counters' AS c) s};
my $pids_sql = q{SELECT string_agg(remote_pid::text, ',' ORDER BY remote_pid) FROM dbpool_connections WHERE pool = 'm'};

# A normal workload on $n concurrent sessions: small calls, plus parameters of 100 kB and
# rows of 500 kB (large for a row, but below the threshold).  Each call's parameters
# depend on g, so that the function is called for every row of generate_series.
sub normal_workload
{
	my ($n) = @_;
	my @bg;
	for my $i (1 .. $n)
	{
		push @bg, start_bg($l, qq{
SELECT count(*) FROM generate_series(1, 20) g,
  LATERAL dbpool_query('m', 'SELECT length(\$1) + \$2::int, pg_sleep(0.01)',
                       ARRAY[repeat('p', 100 * 1024), g::text])
    AS t(x int, s text) WHERE x = 100 * 1024 + g;
SELECT sum(length(x)) FROM generate_series(1, 5) g,
  LATERAL dbpool_query('m', 'SELECT repeat(''r'', 500 * 1024 - length(\$1)) || \$1',
                       ARRAY[g::text]) AS t(x text);
SELECT count(*) FROM generate_series(1, 50) g,
  LATERAL dbpool_query('m', 'SELECT \$1::int + 1', ARRAY[g::text]) AS t(x int) WHERE x = g + 1;});
	}
	my $ok = 1;
	for my $bg (@bg)
	{
		my ($ret, $out, $err) = finish_bg($bg);
		$ok = 0 unless defined $ret && $ret == 0 && $out eq "20\n2560000\n50";
		diag("normal workload: ret " . ($ret // 'undef') . " out '$out' err '$err'")
		  unless $ok;
	}
	return $ok;
}

# --- warm-up and the normal workload ----------------------------------------------------
ok(normal_workload(4), 'warm-up: a normal workload on 4 sessions gives right results');
ok(poll_until($l, q{SELECT active_connections FROM dbpool_metrics WHERE pool = 'm'}, '0'),
	'the pool is idle after the warm-up');
my $counters0 = $l->safe_psql('postgres', $counters_sql);
my $pids0 = $l->safe_psql('postgres', $pids_sql);
like($pids0, qr/^\d+(,\d+)*$/, "the pool has connections after the warm-up ($pids0)");

ok(normal_workload(4), 'a second normal workload gives right results');
ok(poll_until($l, q{SELECT active_connections FROM dbpool_metrics WHERE pool = 'm'}, '0'),
	'the pool is idle after the normal workload');
is($l->safe_psql('postgres', $counters_sql), $counters0,
	'a normal workload creates and closes no connection');
is($l->safe_psql('postgres', $pids_sql), $pids0,
	'a normal workload is served by the same remote backends');

my $base = rss_anon_kb();
ok(defined $base, "the worker's RssAnon before the large values: $base kB");
$base //= 0;

# Poll the worker's RssAnon until it is within the bound, for at most 5 s from $since.
sub memory_back
{
	my ($what, $since) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $kb;
	while (1)
	{
		$kb = rss_anon_kb();
		last if defined $kb && $kb <= $base + $slack_kb;
		last if time() > $since + 5;
		usleep(50_000);
	}
	my $took = time() - $since;
	ok(defined $kb && $kb <= $base + $slack_kb,
		sprintf("%s: RssAnon back within 32 MB of %d kB within 5 s (%s kB after %.1f s)",
			$what, $base, $kb // 'undef', $took));
}

# --- one long-lived session: 2 x 100 MB parameters, 100 MB parameter, 100 MB result -----
my $s = $l->background_psql('postgres', timeout => 300);
my $started = time();
is($s->query_safe(
		q{SELECT x FROM dbpool_query('m', 'SELECT length($1) + length($2)',
		     ARRAY[repeat('a', 100 * 1024 * 1024), repeat('b', 100 * 1024 * 1024)]) AS t(x int)}),
	200 * $mb, 'two 100 MB parameters in one call: right length');
is($s->query_safe(
		q{SELECT x FROM dbpool_query('m', 'SELECT length($1)',
		     ARRAY[repeat('c', 100 * 1024 * 1024)]) AS t(x int)}),
	100 * $mb, 'one 100 MB parameter: right length');
is($s->query_safe(
		q{SELECT length(x), left(x, 3), right(x, 3)
		  FROM dbpool_query('m', 'SELECT repeat(''x'', 100 * 1024 * 1024 - 3) || ''end''') AS t(x text)}),
	100 * $mb . '|xxx|end', 'one 100 MB result: right length and contents');
note(sprintf('the three large calls took %.1f s', time() - $started));
memory_back('after large values, their session still connected', time());

# Rows a call does not want, errors and notices pass through libpq's buffers too: each
# large one retires its connection.  (5 MB values, too small for the RssAnon bound to
# notice, so the counter is what is checked.)
my $large_sql = q{SELECT dbpool_detailed_metrics('m')->'counters'->>'closed_large'};
my $large0 = $l->safe_psql('postgres', $large_sql);
ok($large0 =~ /^\d+$/ && $large0 >= 1,
	"connections that carried the 100 MB values are closed, counted in closed_large ($large0)");
is($s->query_safe(q{SELECT dbpool_exec('m', 'SELECT repeat(''x'', 50 * 1024 * 1024)')}),
	'SELECT 1', 'dbpool_exec of a 50 MB row (not sent back)');
$s->query_safe(q{
DO $$
DECLARE
    whole bool := false;
BEGIN
    BEGIN
        PERFORM dbpool_exec('m',
            'DO $d$ BEGIN RAISE EXCEPTION ''%'', repeat(''e'', 5 * 1024 * 1024); END $d$');
    EXCEPTION WHEN raise_exception THEN
        whole := length(SQLERRM) = 5 * 1024 * 1024;
    END;
    IF NOT whole THEN
        RAISE 'the 5 MB remote error did not arrive whole';
    END IF;
END $$});
pass('a 5 MB remote error arrives whole');
is($s->query_safe(
		q{SELECT dbpool_exec('m', 'DO $d$ BEGIN RAISE NOTICE ''%'', repeat(''n'', 5 * 1024 * 1024); END $d$')}),
	'DO', 'a call with a 5 MB remote notice');
my $large1 = $l->safe_psql('postgres', $large_sql);
is(($large1 =~ /^\d+$/ ? $large1 : 0) - ($large0 =~ /^\d+$/ ? $large0 : 0), 3,
	'the large row, error and notice each retired their connection (closed_large)');
memory_back('after the large row, error and notice', time());
is($s->query_safe(q{SELECT x FROM dbpool_query('m', 'SELECT 7') AS t(x int)}), '7',
	'the same session then runs a small call');
memory_back('after a small call in that session', time());
$s->quit;


# --- four sessions with 70 MB parameters ------------------------------------------------
my @bg;
for my $i (1 .. 4)
{
	push @bg, start_bg($l,
		qq{SELECT x FROM dbpool_query('m', 'SELECT length(\$1) FROM pg_sleep(0.2)',
		      ARRAY[repeat('$i', 70 * 1024 * 1024)]) AS t(x int)},
		timeout => 300);
}
my $all_right = 1;
for my $bg (@bg)
{
	my ($ret, $out, $err) = finish_bg($bg);
	$all_right = 0 unless defined $ret && $ret == 0 && $out eq 70 * $mb;
	diag("70 MB session: ret " . ($ret // 'undef') . " out '$out' err '$err'")
	  unless defined $ret && $ret == 0 && $out eq 70 * $mb;
}
ok($all_right, 'four sessions with 70 MB parameters: right lengths');
memory_back('after four sessions with 70 MB parameters exited', time());

# --- and the pool still serves normally ------------------------------------------------
ok(normal_workload(4), 'a normal workload after the large values gives right results');
ok(poll_until($l, q{SELECT active_connections FROM dbpool_metrics WHERE pool = 'm'}, '0'),
	'the pool is idle again');
my $counters1 = $l->safe_psql('postgres', $counters_sql);
my $pids1 = $l->safe_psql('postgres', $pids_sql);
ok(normal_workload(4), 'and another');
ok(poll_until($l, q{SELECT active_connections FROM dbpool_metrics WHERE pool = 'm'}, '0'),
	'the pool is idle again');
is($l->safe_psql('postgres', $counters_sql), $counters1,
	'the normal workload after the large values closes no connection');
is($l->safe_psql('postgres', $pids_sql), $pids1, '... and keeps the same remote backends');
memory_back('after the normal workload', time());

done_testing();
