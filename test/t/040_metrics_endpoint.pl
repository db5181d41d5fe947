# The metrics endpoint (issue 15): the "dbpool metrics" process serves GET /metrics (the
# Prometheus exposition, the same as dbpool_prometheus()) and GET /health on
# dbpool.metrics_port; the bearer token; the prefix; what other requests get; hostile
# clients (oversized, slow, garbage, 200 idle connections at once) leave it answering within
# a second and the pools serving; it comes back when it dies.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use IO::Select;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $mport = 25785;
my $f = foreign_node('F', 25784);
my $l = local_node('L', 25783, "dbpool.metrics_port = $mport\n");
my $ci = quote_literal(pool_conninfo($f));

# Wait until metrics_pids($l) gives a list other than @not; return it.
sub wait_metrics_pids
{
	my (@not) = @_;
	my $end = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $end)
	{
		my @pids = metrics_pids($l);
		return @pids if @pids && "@pids" ne "@not";
		usleep(100_000);
	}
	return ();
}

# The metrics process runs (without a database: no pg_stat_activity row); the endpoint answers.
my @mpids = wait_metrics_pids();
is(scalar @mpids, 1, 'one dbpool metrics process runs');
query_ok($l, q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dbpool metrics'}, '0',
	'it has no database session');
my $r;
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
do { $r = http_get($mport, '/metrics', timeout => 5) }
  until $r->{body} =~ /^dbpool_worker_up 1$/m || time() > $deadline;
is($r->{status}, 200, 'GET /metrics: 200');
is($r->{headers}{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8', 'text format 0.0.4');
is($r->{headers}{connection}, 'close', 'Connection: close');
like($r->{body}, qr/^dbpool_build_info\{version="1\.0",pg_version="[^"]+"\} 1$/m, 'build_info');
like($r->{body}, qr/^dbpool_worker_up 1$/m, 'worker_up');

# --- a pool with a workload --------------------------------------------------------------------
$l->safe_psql('postgres', qq{
	CREATE ROLE bob LOGIN;
	SELECT dbpool_create_pool('p', $ci, min_size => 1, max_size => 4, slow_query_ms => 1);
	SELECT dbpool_create_pool('dead', 'host=127.0.0.1 port=25799 dbname=postgres connect_timeout=2',
		retry_attempts => 1, down_probe_interval_ms => 60000);
});
$l->safe_psql('postgres', q{SELECT count(*) FROM generate_series(1, 20) i,
	LATERAL dbpool_query('p', 'SELECT ' || i) AS t(x int)});
$l->psql('postgres', q{SELECT * FROM dbpool_query('p', 'SELECT 1/0') AS t(x int)});
ok(poll_until($l, q{SELECT state FROM dbpool_pools WHERE name = 'dead'}, 'down'), 'pool dead is down');

$r = http_get($mport, '/metrics');
my $m = $r->{body};
like($m, qr/^dbpool_pool_up\{pool="p"\} 1$/m, 'pool_up of p is 1');
like($m, qr/^dbpool_pool_up\{pool="dead"\} 0$/m, 'pool_up of dead is 0');
like($m, qr/^dbpool_pool_state\{pool="dead",state="down"\} 1$/m, 'pool_state: dead is down');
like($m, qr/^dbpool_pool_state\{pool="dead",state="ok"\} 0$/m, 'pool_state: one series per state');
like($m, qr/^dbpool_connections_max\{pool="p"\} 4$/m, 'connections_max is max_size');
like($m, qr/^dbpool_connections\{pool="p",state="idle"\} \d+$/m, 'connections by state');
like($m, qr/^dbpool_queries_total\{pool="p"\} 21$/m, 'queries_total counts the 21 requests');
like($m, qr/^dbpool_errors_total\{pool="p"\} 1$/m, 'errors_total counts the error');
like($m, qr/^dbpool_query_duration_seconds_count\{pool="p"\} 21$/m, 'histogram count');
like($m, qr/^dbpool_query_duration_seconds_bucket\{pool="p",le="\+Inf"\} 21$/m, 'le="+Inf" is the count');
like($m, qr/^dbpool_query_duration_seconds_sum\{pool="p"\} [0-9.e-]+$/m, 'histogram sum in seconds');

# buckets are cumulative, their bounds increase, and the last equals the count
my @le = $m =~ /^dbpool_query_duration_seconds_bucket\{pool="p",le="([^"]+)"\} (\d+)$/mg;
my ($mono, $prev_le, $prev_n, $nb) = (1, -1, -1, 0);
while (my ($b, $n) = splice(@le, 0, 2))
{
	$nb++;
	my $bv = $b eq '+Inf' ? 9**9**9 : $b;
	$mono = 0 if $bv <= $prev_le || $n < $prev_n;
	($prev_le, $prev_n) = ($bv, $n);
}
ok($mono, 'bucket bounds increase and counts never decrease');
is($nb, 17, '16 bounds and +Inf');

# every series has HELP and TYPE, every family at most once
my (%help, %type, $orphans);
for my $line (split /\n/, $m)
{
	if ($line =~ /^# HELP (\S+) /) { $help{$1}++ }
	elsif ($line =~ /^# TYPE (\S+) (\S+)$/) { $type{$1} = $2 }
	elsif ($line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/)
	{
		my $fam = $1;
		my $base = $fam =~ s/_(bucket|sum|count)$//r;
		$fam = $base if ($type{$base} // '') eq 'histogram';
		$orphans .= "$line\n" unless $help{$fam} && $type{$fam};
	}
}
is($orphans, undef, 'every sample has HELP and TYPE');
ok(!grep({ $_ > 1 } values %help), 'each family once');
is($type{dbpool_queries_total}, 'counter', 'counters are counters');
is($type{dbpool_query_duration_seconds}, 'histogram', 'query_duration_seconds is a histogram');
is($type{dbpool_acquire_duration_seconds}, 'histogram', 'acquire_duration_seconds is a histogram');

SKIP:
{
	skip 'promtool not found: install Debian\'s prometheus package to check the exposition', 1
	  unless system('sh', '-c', 'command -v promtool >/dev/null') == 0;
	my ($out, $err);
	my $ok = IPC::Run::run([ 'promtool', 'check', 'metrics' ], '<', \$m, '>', \$out, '2>', \$err);
	ok($ok, 'promtool check metrics is clean') or diag("$out$err");
}

# dbpool_prometheus() is the same exposition: the same series
my $sql = $l->safe_psql('postgres', 'SELECT dbpool_prometheus()', extra_params => ['-U', 'bob']);
my $series = sub { join "\n", sort map { /^([^ ]+) / ? $1 : () } grep { !/^#/ } split /\n/, shift };
is($series->($sql), $series->(http_get($mport, '/metrics')->{body}),
	'dbpool_prometheus() gives the same series as GET /metrics');

# health checks (one passed, one failed with an error text the process must not try to show),
# suspected leaks, and dbpool's own alerts (the seeded PoolDown fires for dead)
$l->safe_psql('postgres', 'SELECT dbpool_health()');
ok(poll_until($l, q{SELECT count(*) FROM dbpool_alerts WHERE pool = 'dead' AND state = 'firing'}, '1'),
	'PoolDown fires for dead');
$r = http_get($mport, '/metrics');
is($r->{status}, 200, '/metrics with a failed health check: 200');
$m = $r->{body};
like($m, qr/^dbpool_health_check_success\{pool="p"\} 1$/m, 'health_check_success of p is 1');
like($m, qr/^dbpool_health_check_success\{pool="dead"\} 0$/m, 'health_check_success of dead is 0');
like($m, qr/^dbpool_health_check_duration_seconds\{pool="p"\} [0-9.e-]+$/m,
	'health_check_duration_seconds of p');
unlike($m, qr/^dbpool_health_check_duration_seconds\{pool="dead"\}/m,
	'none for dead: its health query did not run');
like($m, qr/^dbpool_health_check_timestamp_seconds\{pool="p"\} \d+(\.\d+)?(e\+\d+)?$/m,
	'health_check_timestamp_seconds of p');
like($m, qr/^dbpool_leaks_suspected\{pool="p"\} 0$/m, 'leaks_suspected of p is 0');
like($m, qr/^dbpool_alerts_firing\{alertname="PoolDown",severity="critical"\} 1$/m,
	'alerts_firing counts PoolDown firing for one pool');
like($m, qr/^# TYPE dbpool_leaks_suspected_total counter$/m, 'leaks_suspected_total is a counter');

# --- health ------------------------------------------------------------------------------------
$r = http_get($mport, '/health');
is($r->{status}, 200, '/health with one pool down: 200');
like($r->{body}, qr/"status": "degraded", "healthy_pools": \["p"\], "unhealthy_pools": \[\{"pool": "dead", "error": "pool is down"\}\]/,
	'the body says degraded and names the pools');
is($r->{headers}{'content-type'}, 'application/json', '/health is JSON');
like($r->{body}, qr/"timestamp": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00"/,
	'its timestamp is ISO 8601 in UTC, as dbpool_health() writes it');
# a pool that serves but fails its health checks is unhealthy too
$l->safe_psql('postgres', qq{SELECT dbpool_create_pool('sick', $ci, min_size => 1,
	health_query => 'SELECT 1/0')});
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'sick'}, '1'), 'pool sick is up');
$l->safe_psql('postgres', q{SELECT dbpool_health('sick')});
$r = http_get($mport, '/health');
like($r->{body}, qr/\{"pool": "sick", "error": "its latest health check failed"\}/,
	'/health: a pool failing its health check is unhealthy, and says why');
like(http_get($mport, '/metrics')->{body}, qr/^dbpool_pool_up\{pool="sick"\} 0$/m, 'and not up');
$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('sick')});
ok(poll_until($l, q{SELECT count(*) FROM dbpool_pools WHERE name = 'sick'}, '0'), 'sick is gone');
$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('p')});
ok(poll_until($l, q{SELECT count(*) FROM dbpool_pools WHERE name = 'p'}, '0'), 'p is gone');
$r = http_get($mport, '/health');
is($r->{status}, 503, '/health with every pool down: 503');
like($r->{body}, qr/"status": "unhealthy"/, 'the body says unhealthy');
$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('dead')});
ok(poll_until($l, q{SELECT count(*) FROM dbpool_pools}, '0'), 'no pool left');
$r = http_get($mport, '/health');
is($r->{status}, 200, '/health with no pools: 200');
like($r->{body}, qr/"status": "healthy", "healthy_pools": \[\], "unhealthy_pools": \[\]/, 'healthy');
$l->safe_psql('postgres', qq{SELECT dbpool_create_pool('p', $ci, min_size => 1, max_size => 4)});

# --- other requests ----------------------------------------------------------------------------
is(http_get($mport, '/nothing')->{status}, 404, 'unknown path: 404');
is(http_request($mport, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")->{status}, 405, 'POST: 405');
$r = http_request($mport, "HEAD /metrics HTTP/1.1\r\n\r\n");
is($r->{status}, 200, 'HEAD: 200');
is($r->{body}, '', 'HEAD: no body');
is(http_request($mport, "GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")->{status}, 413,
	'a body: 413');
is(http_request($mport, "garbage\r\n\r\n")->{status}, 400, 'garbage: 400');
is(http_request($mport, "GET /metrics HTTP/1.1\r\nX: " . ('a' x 10000) . "\r\n\r\n")->{status}, 431,
	'headers over 8 kB: 431');
is(http_get($mport, '/metrics?x=1')->{status}, 200, 'a query string is ignored');

# --- bearer token, prefix ----------------------------------------------------------------------
$l->append_conf('postgresql.conf', "dbpool.metrics_bearer_token = 's3cret'\ndbpool.metrics_prefix = 'pg_dbpool'\n");
$l->reload;
$deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
do { $r = http_get($mport, '/metrics') } until $r->{status} == 401 || time() > $deadline;
is($r->{status}, 401, 'token set: a request without it gets 401');
like($r->{headers}{'www-authenticate'} // '', qr/^Bearer/, 'with WWW-Authenticate: Bearer');
is(http_get($mport, '/health', headers => ['Authorization: Bearer wrong'])->{status}, 401, 'a wrong token: 401');
$r = http_get($mport, '/metrics', headers => ['Authorization: Bearer s3cret']);
is($r->{status}, 200, 'the right token: 200');
like($r->{body}, qr/^pg_dbpool_pool_up\{pool="p"\} 1$/m, 'the prefix applies');
unlike($r->{body}, qr/^dbpool_/m, 'to every series');
like($l->safe_psql('postgres', 'SELECT dbpool_prometheus()'), qr/^# TYPE pg_dbpool_queries_total counter$/m,
	'and to dbpool_prometheus()');
query_ok($l, 'SHOW dbpool.metrics_bearer_token', '********', 'SHOW masks the token');
query_fails($l, 'SHOW dbpool.metrics_bearer_token', '42501', qr/must be superuser|privileges/,
	'a non-superuser cannot SHOW it', user => 'bob');
query_fails($l, q{ALTER SYSTEM SET dbpool.metrics_prefix = '1bad'}, '22023',
	qr/invalid value for parameter "dbpool.metrics_prefix"/, 'an invalid prefix is refused');
$l->append_conf('postgresql.conf', "dbpool.metrics_bearer_token = ''\ndbpool.metrics_prefix = 'dbpool'\n");
$l->reload;
$deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
do { $r = http_get($mport, '/metrics') } until $r->{status} == 200 || time() > $deadline;
is($r->{status}, 200, 'token unset: no token needed');

# --- hostile clients ---------------------------------------------------------------------------
local $SIG{PIPE} = 'IGNORE';
my @idle;
for (1 .. 200)
{
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $mport, Proto => 'tcp',
		Timeout => 5);
	push @idle, $s if $s;
}
cmp_ok(scalar @idle, '>=', 150, 'opened (most of) 200 idle connections');
# slowloris: part of a request, a byte at a time
my $slow = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $mport, Proto => 'tcp');
syswrite($slow, 'G');
# garbage and an oversized stream
my $garbage = http_request($mport, join('', map { chr(int(rand(256))) } 1 .. 3000) . "\r\n\r\n", 10);
is($garbage->{status}, 400, 'random bytes: 400');
my $big = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $mport, Proto => 'tcp');
syswrite($big, 'x' x 65536);
my $t0 = time();
$r = http_get($mport, '/metrics', timeout => 10);
my $took = time() - $t0;
is($r->{status}, 200, 'with 200 idle connections open, a slow one, garbage and an oversized one: /metrics answers');
cmp_ok($took, '<', 1, 'within a second');
query_ok($l, q{SELECT * FROM dbpool_query('p', 'SELECT 42') AS t(x int)}, '42', 'a query through the pool works');
close $_ for @idle, $slow, $big;
is(http_get($mport, '/metrics')->{status}, 200, 'after all that: /metrics answers');

# a slowloris client alone is cut off at its deadline (5 s): it reads EOF well before 30 s
$slow = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $mport, Proto => 'tcp');
my $sel = IO::Select->new($slow);
my $eof = 0;
my $end = time() + 30;
while (time() < $end)
{
	syswrite($slow, 'G');
	if ($sel->can_read(0.5))
	{
		my $n = sysread($slow, my $x, 100);
		if (!$n) { $eof = 1; last }
	}
}
ok($eof, 'a slowloris client is disconnected at its deadline');
close $slow;

# --- it comes back -----------------------------------------------------------------------------
kill 'TERM', $mpids[0];
my @again = wait_metrics_pids(@mpids);
is(scalar @again, 1, 'the metrics process is restarted after it was terminated');
$deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
do { $r = http_get($mport, '/metrics', timeout => 5) } until $r->{status} == 200 || time() > $deadline;
is($r->{status}, 200, 'and serves again');

# --- off by default ----------------------------------------------------------------------------
my $plain = local_node('L2', 25786);
is(scalar metrics_pids($plain), 0, 'without dbpool.metrics_port there is no metrics process');
like($plain->safe_psql('postgres', 'SELECT dbpool_prometheus()'), qr/^# TYPE dbpool_worker_up gauge$/m,
	'but dbpool_prometheus() works');
$plain->stop;

done_testing();
