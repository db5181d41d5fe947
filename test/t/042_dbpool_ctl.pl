# bin/dbpool-ctl (issue 15) against a real server: health, diagnose, alerts, metrics, restart,
# cleanup and export do what they say, with their exit codes (0 ok or healthy, 1 degraded,
# unhealthy, firing or failed, 2 usage).
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $ctl = "$FindBin::RealBin/../../bin/dbpool-ctl";
my $f = foreign_node('F', 25792);
my $l = local_node('L', 25791);
my $ci = quote_literal(pool_conninfo($f, 'application_name=pool_p'));
$l->safe_psql('postgres', qq{
	CREATE ROLE bob LOGIN;
	SELECT dbpool_create_pool('p', $ci, min_size => 2, max_size => 4);
});
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'p'}, '2'),
	'two idle connections');

my $dir = PostgreSQL::Test::Utils::tempdir();

# Run dbpool-ctl with the node's connection options (unless $opt{raw}), in $dir.
# Returns (exit code, stdout, stderr).
sub ctl
{
	my (@args) = @_;
	my %opt = ref $args[-1] eq 'HASH' ? %{ pop @args } : ();
	my @conn = $opt{raw} ? () : ('-h', $l->host, '-p', $opt{port} // $l->port, '-d', 'postgres',
		($opt{user} ? ('-U', $opt{user}) : ()));
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'bash', $ctl, @conn, @args ], '<', \undef, '>', \$out, '2>', \$err,
		init => sub { chdir $dir or die "chdir $dir: $!" },
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return ($? >> 8, $out, $err);
}

# --- usage: 2 --------------------------------------------------------------------------------
my ($rc, $out, $err) = ctl({ raw => 1 });
is($rc, 2, 'no command: 2');
like($err, qr/no command given/, 'and says so');
($rc, $out, $err) = ctl('frobnicate');
is($rc, 2, 'an unknown command: 2');
($rc) = ctl('restart');
is($rc, 2, 'restart without POOL: 2');
($rc) = ctl('cleanup', 'p', 'q');
is($rc, 2, 'cleanup with two pools: 2');
($rc) = ctl('export');
is($rc, 2, 'export without POOL: 2');
($rc) = ctl('--bogus', 'metrics', { raw => 1 });
is($rc, 2, 'an unknown option: 2');
($rc, $out) = ctl('--help', { raw => 1 });
is($rc, 0, '--help: 0');
like($out, qr/export POOL \[FILE\]/, 'and lists the commands');

# --- metrics -----------------------------------------------------------------------------------
($rc, $out, $err) = ctl('metrics');
is($rc, 0, 'metrics: 0');
like($out, qr/^ p +\| ok +\|/m, 'metrics shows pool p');
($rc, $out) = ctl('metrics', 'p');
is($rc, 0, 'metrics p: 0');
like($out, qr/^idle_connections +\| 2$/m, 'metrics p shows its row');
($rc, $out, $err) = ctl('metrics', 'nope');
is($rc, 1, 'metrics of an unknown pool: 1');
like($err, qr/pool "nope" does not exist/, 'and says so');
($rc, $out, $err) = ctl('metrics', { port => 25799 });
is($rc, 1, 'no server: 1');
like($err, qr/connection to server|could not connect/, "with psql's message");

# --- restart -----------------------------------------------------------------------------------
my $pids_sql = q{SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity
	WHERE application_name = 'pool_p'};
my $old = $f->safe_psql('postgres', $pids_sql);
($rc, $out, $err) = ctl('restart', 'p');
is($rc, 0, 'restart p: 0');
like($out, qr/pool "p" restarted/, 'restart says so');
ok(poll_until($f, qq{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pool_p'
	AND pid = ANY ('{$old}'::int[])}, '0'), 'every old connection is gone');
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'p'}, '2'),
	'and new ones came');
($rc, $out, $err) = ctl('restart', 'nope');
is($rc, 1, 'restart of an unknown pool: 1');
like($err, qr/42704|pool "nope" does not exist/, "with the server's error");
($rc, $out, $err) = ctl('restart', 'p', { user => 'bob' });
is($rc, 1, 'restart by a role that does not own the pool: 1');
like($err, qr/must be owner of pool "p"/, 'with the privilege error');

# --- cleanup -----------------------------------------------------------------------------------
my $idle_before = $l->safe_psql('postgres',
	q{SELECT dbpool_detailed_metrics('p')->'counters'->>'closed_idle'});
($rc, $out) = ctl('cleanup', 'p');
is($rc, 0, 'cleanup p: 0');
like($out, qr/pool "p" cleaned up/, 'cleanup says so');
query_ok($l, q{SELECT (dbpool_detailed_metrics('p')->'counters'->>'closed_idle')::int - } . $idle_before,
	'2', 'it closed the two idle connections');
($rc) = ctl('cleanup', 'nope');
is($rc, 1, 'cleanup of an unknown pool: 1');

# --- export ------------------------------------------------------------------------------------
($rc, $out) = ctl('export', 'p', "$dir/p.json");
is($rc, 0, 'export p FILE: 0');
like($out, qr/to \Q$dir\E\/p\.json/, 'export names the file');
my $doc = decode_json(slurp_file("$dir/p.json"));
is($doc->{pool}, 'p', 'the file holds the pool\'s detailed metrics');
ok(exists $doc->{counters}{queries}, 'with its counters');
($rc, $out) = ctl('export', 'p');
is($rc, 0, 'export p: 0');
my @files = glob("$dir/metrics_p_*.json");
is(scalar @files, 1, 'the default file is metrics_p_<timestamp>.json');
like($files[0] // '', qr/metrics_p_\d{8}_\d{6}\.json$/, 'named with the date and time');
is(decode_json(slurp_file($files[0]))->{pool}, 'p', 'and holds the document');
($rc, $out) = ctl('export', 'p', '-');
is($rc, 0, 'export p -: 0');
is(decode_json($out)->{pool}, 'p', 'to stdout');
($rc, $out, $err) = ctl('export', 'nope', "$dir/nope.json");
is($rc, 1, 'export of an unknown pool: 1');
ok(!-e "$dir/nope.json", 'and writes no file');
($rc, $out, $err) = ctl('export', 'p', "$dir/no/such/dir.json");
is($rc, 1, 'export to an unwritable file: 1');

# --- health, diagnose, alerts: healthy, then with a dead pool ----------------------------------
($rc, $out) = ctl('health');
is($rc, 0, 'health with every pool healthy: 0');
like($out, qr/"status": "healthy"/, 'and shows dbpool_health()');
($rc, $out) = ctl('health', 'p');
is($rc, 0, 'health p (the deep check) passing: 0');
like($out, qr/"overall_healthy": true/, 'and shows the deep check');
($rc, $out) = ctl('diagnose', 'p');
is($rc, 0, 'diagnose of a healthy pool: 0');
like($out, qr/"overall_health": "healthy"/, 'and shows the diagnosis');
($rc, $out) = ctl('alerts');
is($rc, 0, 'alerts with nothing firing: 0');
($rc, $out, $err) = ctl('health', 'nope');
is($rc, 1, 'health of an unknown pool: 1');
like($err, qr/pool "nope" does not exist/, 'and says so');
($rc) = ctl('diagnose');
is($rc, 2, 'diagnose without POOL: 2');

# a pool whose server is not there: down after its attempts, and the seeded PoolDown fires
$l->safe_psql('postgres', q{SELECT dbpool_create_pool('dead', 'host=127.0.0.1 port=25799 dbname=x',
	min_size => 1, retry_base_ms => 10, retry_max_ms => 20, retry_attempts => 2)});
ok(poll_until($l, q{SELECT state FROM dbpool_pools WHERE name = 'dead'}, 'down'), 'pool dead is down');
($rc, $out) = ctl('health');
is($rc, 1, 'health with one of two pools down: 1');
like($out, qr/"status": "degraded"/, 'degraded');
($rc, $out) = ctl('health', 'dead');
is($rc, 1, 'health dead: 1');
like($out, qr/"overall_healthy": false/, 'its deep check fails');
($rc, $out) = ctl('diagnose', 'dead');
is($rc, 1, 'diagnose dead: 1');
like($out, qr/"pool_down"/, 'and names the issue');
ok(poll_until($l, q{SELECT count(*) FROM dbpool_alerts WHERE pool = 'dead' AND state = 'firing'}, '1'),
	'an alert fires for pool dead');
($rc, $out) = ctl('alerts');
is($rc, 1, 'alerts with one firing: 1');
like($out, qr/PoolDown/, 'and lists it');

done_testing();
