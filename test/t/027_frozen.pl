# A frozen target (issue 12): a foreign server that accepts TCP connections but never answers,
# made by sending SIGSTOP to its postmaster and to every backend of it.
#
# F1 is frozen, F2 stays healthy; pool f1 reaches F1 over TCP with connect_timeout=2, pool f2
# reaches F2.  While F1 is frozen:
#  - queries that were running on F1 end by the caller's statement_timeout or by a cancel
#    (57014);
#  - calls that need a new connection end by connect_timeout/acquire_timeout (class 08, 53
#    or 57), never hang;
#  - sessions calling f1 in a loop with statement_timeout keep getting answers in bound
#    (57014, or 08001 once the pool is down);
#  - pool f2's throughput (pgbench, 4 clients calling dbpool_query) stays at least half of
#    what it was before the freeze: the worker's loop never waits on the frozen server.
# After SIGCONT pool f1 serves again by itself, and its state returns to ok: the connection of
# the cancelled query survives the freeze, so the pool has min_size connections and no request
# needs another one; only the pool's own probe can show that attempts succeed again.
#
# The figures are printed with diag for the closing note.  The throughput assertion is
# deliberately generous (50 %): the machine may be shared and noisy, and a stalled worker
# brings the figure near zero, not to 80 %.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $l = local_node('L', 25760);
my $f1 = foreign_node('F1', 25761, "listen_addresses = '127.0.0.1'\n");
my $f2 = foreign_node('F2', 25762);

# Every process of F1 that was stopped; SIGCONT is sent to them whatever happens, before
# PostgreSQL::Test::Cluster's own END block stops the nodes (END blocks run last-defined first).
my @stopped;

sub thaw
{
	kill('CONT', @stopped) if @stopped;
	@stopped = ();
	return;
}
END { thaw(); }

# SIGSTOP to F1's postmaster first (so it forks nothing new), then to each of its children.
sub freeze
{
	my ($node) = @_;
	my $pm = $node->{_pid};
	die "no postmaster pid for " . $node->name unless $pm;
	kill('STOP', $pm) or die "kill STOP $pm: $!";
	push @stopped, $pm;
	my @kids = grep { /^\d+$/ } map { s/\s+//gr } split /\n/, `ps -o pid= --ppid $pm`;
	for my $k (@kids)
	{
		push @stopped, $k if kill('STOP', $k);
	}
	return scalar(@kids);
}

my $f1_ci = quote_literal(
	"host=127.0.0.1 port=" . $f1->port . " dbname=postgres connect_timeout=2");
my $f2_ci = quote_literal(pool_conninfo($f2));
$l->safe_psql('postgres', qq{
	SELECT dbpool_create_pool('f1', $f1_ci, min_size => 1, max_size => 4,
		acquire_timeout_ms => 3000, retry_base_ms => 100, retry_max_ms => 1000,
		down_probe_interval_ms => 300);
	SELECT dbpool_create_pool('f2', $f2_ci, min_size => 4, max_size => 4);
	CREATE TABLE f1_calls(s int, t0 timestamptz, t1 timestamptz, st text);
});
ok(poll_until($l, q{SELECT string_agg(pool || ':' || idle_connections, ',' ORDER BY pool)
	FROM dbpool_metrics}, 'f1:1,f2:4'), 'both pools have their connections');

# --- pool f2's throughput ----------------------------------------------------------------------
my $dir = PostgreSQL::Test::Utils::tempdir;
my $script = "$dir/f2.sql";
open(my $fh, '>', $script) or die "open $script: $!";
print $fh "SELECT * FROM dbpool_query('f2', 'SELECT 1') AS t(x int);\n";
close $fh;

# Run pgbench against L on pool f2 for $secs seconds; returns its tps.
sub f2_tps
{
	my ($secs, $label) = @_;
	my ($out, $err) = ('', '');
	my @cmd = ('pgbench', '-n', '-c', '4', '-j', '4', '-T', $secs, '-f', $script,
		'-h', $l->host, '-p', $l->port, 'postgres');
	# A stalled worker makes pgbench hang: that is a failed assertion below, not a death.
	eval {
		IPC::Run::run(\@cmd, '>', \$out, '2>', \$err, IPC::Run::timeout($secs + 30))
		  or diag("pgbench ($label) failed:\n$out\n$err");
		1;
	} or diag("pgbench ($label) did not finish: $@");
	my ($tps) = $out =~ /tps = ([0-9.]+)/;
	my ($failed) = $out =~ /number of failed transactions: (\d+)/;
	diag("pgbench ($label): no tps in:\n$out\n$err") unless defined $tps;
	return ($tps // 0, $failed // 0, $out);
}

f2_tps(1, 'warm-up');
my ($before) = f2_tps(4, 'before');
diag(sprintf('pool f2 before the freeze: %.0f calls/s (4 pgbench clients)', $before));
cmp_ok($before, '>', 0, 'pool f2 serves before the freeze');

# --- queries running on F1 when it freezes -----------------------------------------------------
# H1 ends by its statement_timeout, H2 is cancelled just before the thaw.
my $h1 = start_bg($l, q{SET statement_timeout = '3s';
	SELECT * FROM dbpool_query('f1', 'SELECT pg_sleep(60)') AS t(x text)}, timeout => 90);
my $h2 = start_bg($l, q{SELECT * FROM dbpool_query('f1', 'SELECT pg_sleep(61)') AS t(x text)},
	timeout => 90);
ok( poll_until(
		$f1, q{SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(6_)'},
		'2'),
	'two queries run on F1');

my $nkids = freeze($f1);
my $frozen_at = time();
diag("F1 frozen: postmaster and $nkids children stopped");

# --- while F1 is frozen ------------------------------------------------------------------------
# A call that needs a new connection (both are busy), without statement_timeout.
my $t_new = time();
my $newcall = start_bg($l,
	q{SELECT * FROM dbpool_query('f1', 'SELECT 1') AS t(x int)}, timeout => 60);

# Sessions calling f1 in a loop for 6 s, each call under statement_timeout 700 ms, each
# recorded in f1_calls with its SQLSTATE.
my $stop = $l->safe_psql('postgres', q{SELECT clock_timestamp() + interval '6 s'});
my $loop = "\\set stop '$stop'\nSET statement_timeout = '700ms';\n"
  . (q{SELECT clock_timestamp() < :'stop'::timestamptz AS go, clock_timestamp() AS t0 \gset
\if :go
SELECT * FROM dbpool_query('f1', 'SELECT 1') AS t(x int);
\set st :SQLSTATE
INSERT INTO f1_calls VALUES (pg_backend_pid(), :'t0', clock_timestamp(), :'st');
\endif
} x 200);
my $loop_file = "$dir/f1_loop.sql";
open($fh, '>', $loop_file) or die "open $loop_file: $!";
print $fh $loop;
close $fh;
my @loops;
for (1 .. 4)
{
	my $h = { out => '', err => '' };
	$h->{h} = IPC::Run::start(
		[ 'psql', '-XAtq', '-h', $l->host, '-p', $l->port, '-d', 'postgres', '-f', $loop_file ],
		'<', \undef, '>', \$h->{out}, '2>', \$h->{err}, IPC::Run::timeout(90));
	push @loops, $h;
}

my ($during, $f2_failed) = f2_tps(4, 'during');
diag(sprintf('pool f2 while F1 is frozen: %.0f calls/s (%.0f %% of before)',
	$during, $before > 0 ? 100 * $during / $before : 0));
is($f2_failed, 0, 'pool f2: no failed call while F1 is frozen');
cmp_ok($during, '>=', 0.5 * $before,
	'pool f2 keeps at least half its throughput while F1 is frozen');

my ($ret, $out, $err) = finish_bg($h1);
is(sqlstate_of($err) // 'none', '57014',
	'a query running on F1 when it froze ends by statement_timeout')
  or diag("stderr: $err");
like($err, qr/statement timeout/, 'the statement_timeout message');
my $held = time() - $frozen_at;
cmp_ok($held, '<', 3 + 5, sprintf('it ended %.1f s after the freeze (statement_timeout 3 s)', $held));

($ret, $out, $err) = finish_bg($newcall);
my $new_secs = time() - $t_new;
like(sqlstate_of($err) // 'none', qr/^(08|53|57)/,
	'a call needing a new connection ends with class 08, 53 or 57')
  or diag("stderr: $err");
diag(sprintf('the call needing a new connection: %s after %.1f s: %s',
	sqlstate_of($err) // 'none', $new_secs, $err =~ /ERROR:\s+(.*)/ ? $1 : ''));

for my $h (@loops)
{
	eval { $h->{h}->finish; 1 } or diag("a loop session did not finish: $@");
}
my $summary = $l->safe_psql('postgres', q{
	SELECT count(*), count(*) FILTER (WHERE st = '57014'),
		count(*) FILTER (WHERE st NOT IN ('57014') AND left(st, 2) NOT IN ('08', '53', '57')),
		round(max(extract(epoch FROM t1 - t0) * 1000)),
		string_agg(DISTINCT st, ',' ORDER BY st)
	FROM f1_calls});
my ($ncalls, $n57014, $nbad, $maxms, $states) = split /\|/, $summary;
diag("calls to f1 while frozen: $ncalls, of which 57014: $n57014; states: $states; "
	  . "longest: $maxms ms");
cmp_ok($ncalls, '>=', 4, 'the looping sessions made calls to f1 while F1 was frozen');
cmp_ok($n57014, '>=', 1, 'some of them ended by statement_timeout');
is($nbad, 0, 'every call to f1 ended with 57014 or class 08, 53 or 57');
cmp_ok($maxms, '<', 700 + 2000, 'no call to f1 outlived its statement_timeout by 2 s');

query_ok($l, q{SELECT * FROM dbpool_query('f2', 'SELECT 7') AS t(x int)}, '7',
	'pool f2 serves at the end of the freeze');

# No connection attempt is left in flight (one that the thaw let through would show that
# attempts succeed again; the point below is that the pool finds out by itself).
ok( poll_until(
		$l, q{SELECT connecting_connections FROM dbpool_metrics WHERE pool = 'f1'}, '0', 30),
	'no connection attempt to F1 in flight');
query_ok($l, q{SELECT state FROM dbpool_pools WHERE name = 'f1'}, 'degraded',
	'pool f1 is degraded: attempts failed, one connection (H2) is live');

# H2 is cancelled from L, then F1 thaws while H2's connection is still in its cancel grace.
my $t_cancel = time();
is($l->safe_psql('postgres', q{SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity
	WHERE query LIKE '%pg_sleep(61)%' AND pid <> pg_backend_pid()}), '1', 'H2 is cancelled');
($ret, $out, $err) = finish_bg($h2);
is(sqlstate_of($err) // 'none', '57014', 'a query running on F1 ends by a cancel')
  or diag("stderr: $err");
like($err, qr/canceling statement due to user request/, 'the cancel message');
my $cancel_secs = time() - $t_cancel;
cmp_ok($cancel_secs, '<', 5, sprintf('it ended %.1f s after the cancel', $cancel_secs));

# --- after SIGCONT -----------------------------------------------------------------------------
thaw();
my $thawed = time();
ok( poll_until(
		$l, q{SELECT * FROM dbpool_query('f1', 'SELECT 42') AS t(x int)}, '42', 30,
		timeout => 30),
	'pool f1 serves again after SIGCONT');
diag(sprintf('pool f1 served again %.1f s after SIGCONT', time() - $thawed));
ok(poll_until($l, q{SELECT state FROM dbpool_pools WHERE name = 'f1'}, 'ok', 15),
	'pool f1 is ok again by itself')
  and diag(sprintf('pool f1 was ok again %.1f s after SIGCONT', time() - $thawed));
query_ok($l, q{SELECT * FROM dbpool_query('f2', 'SELECT 8') AS t(x int)}, '8',
	'pool f2 still serves');

done_testing();
