# The shipped monitoring against a real Prometheus (issue 15): promtool checks the rules,
# runs their unit tests (monitoring/alerts.test.yml) and checks the live exposition; then a
# Prometheus on 127.0.0.1 scrapes the endpoint every second while a workload runs: every
# expression of monitoring/grafana-dashboard.json returns at least one series, and an alert
# of monitoring/prometheus-alerts.yml (with a short `for`) reaches firing.
#
# Needs Debian's prometheus package (prometheus and promtool); scripts/test.sh installs it
# when it can.  Skipped, saying so, where it is not installed.
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
use Time::HiRes qw(time usleep);

for my $tool (qw(prometheus promtool))
{
	plan skip_all => "$tool not found: install Debian's prometheus package to run this test"
	  unless system('sh', '-c', "command -v $tool >/dev/null") == 0;
}

my $mon = "$FindBin::RealBin/../../monitoring";
my ($mport, $pport) = (25789, 25790);

# Run a command; ok when it exits 0.
sub run_ok
{
	my ($cmd, $name, $in) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run($cmd, '<', \($in // ''), '>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	ok($ok, $name) or diag("$out$err");
	return $out;
}

# --- promtool ---------------------------------------------------------------------------------
run_ok([ 'promtool', 'check', 'rules', "$mon/prometheus-alerts.yml" ], 'promtool check rules');
run_ok([ 'promtool', 'test', 'rules', "$mon/alerts.test.yml" ], 'promtool test rules: the alerts\' unit tests pass');
my $dash = decode_json(slurp_file("$mon/grafana-dashboard.json"));
ok(scalar @{ $dash->{panels} } >= 12, 'the dashboard has its panels');
is($dash->{templating}{list}[1]{name}, 'pool', 'and a template variable for the pool');

# --- a server with a workload -------------------------------------------------------------------
my $f = foreign_node('F', 25788);
my $l = local_node('L', 25787, "dbpool.metrics_port = $mport\n");
my $ci = quote_literal(pool_conninfo($f));
$l->safe_psql('postgres', qq{
	SELECT dbpool_create_pool('p', $ci, min_size => 1, max_size => 4, slow_query_ms => 1);
	SELECT dbpool_create_pool('dead', 'host=127.0.0.1 port=25799 dbname=postgres connect_timeout=2',
		retry_attempts => 1);
});
my $r;
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
do { $r = http_get($mport, '/metrics', timeout => 5) } until $r->{status} == 200 || time() > $deadline;
is($r->{status}, 200, 'the endpoint answers');
run_ok([ 'promtool', 'check', 'metrics' ], 'promtool check metrics: the live exposition is clean', $r->{body});

# queries (some slow, some failing) for at most 120 s, cancelled at the end
my $work = start_bg($l, q{DO $workload$ BEGIN
	FOR i IN 1..100000 LOOP
		PERFORM * FROM dbpool_query('p', 'SELECT pg_sleep(0.002)::text || ' || i) AS t(x text);
		IF i % 10 = 0 THEN
			BEGIN
				PERFORM * FROM dbpool_query('p', 'SELECT 1/0') AS t(x int);
			EXCEPTION WHEN division_by_zero THEN NULL;
			END;
		END IF;
		EXIT WHEN clock_timestamp() - now() > interval '120 s';
	END LOOP;
END $workload$}, timeout => 180);

# --- Prometheus ---------------------------------------------------------------------------------
my $dir = PostgreSQL::Test::Utils::tempdir();
my $rules = slurp_file("$mon/prometheus-alerts.yml");
$rules =~ s/^(\s+for:) \S+$/$1 2s/mg;
open(my $fh, '>', "$dir/alerts.yml") or die $!;
print $fh $rules;
close $fh;
open($fh, '>', "$dir/prometheus.yml") or die $!;
print $fh <<"EOF";
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $dir/alerts.yml
scrape_configs:
  - job_name: dbpool
    static_configs:
      - targets: ['127.0.0.1:$mport']
EOF
close $fh;
my $plog = "$dir/prometheus.log";
my $prom = IPC::Run::start(
	[
		'prometheus', "--config.file=$dir/prometheus.yml",
		"--storage.tsdb.path=$dir/data", "--web.listen-address=127.0.0.1:$pport",
		'--storage.tsdb.retention.time=1h'
	],
	'<', \undef, '>', $plog, '2>&1',
	IPC::Run::timeout(600));
END { eval { $prom->kill_kill if $prom } }

# A Prometheus API query; the decoded answer, or undef.
sub api
{
	my ($path) = @_;
	my $a = http_get($pport, $path, timeout => 10);
	return undef unless $a->{status} == 200;
	return eval { decode_json($a->{body}) };
}

# An instant query's result (array ref, maybe empty), URL-encoded here.
sub query
{
	my ($expr) = @_;
	(my $enc = $expr) =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
	my $a = api("/api/v1/query?query=$enc");
	return $a && $a->{status} eq 'success' ? $a->{data}{result} : [];
}

# Poll until the expression returns at least one series; how many it returned.
sub poll_series
{
	my ($expr, $secs) = @_;
	my $end = time() + ($secs // $PostgreSQL::Test::Utils::timeout_default);
	while (1)
	{
		my $res = query($expr);
		return scalar @$res if @$res || time() > $end;
		usleep(250_000);
	}
}

$deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
usleep(250_000) until http_get($pport, '/-/ready', timeout => 2)->{status} == 200 || time() > $deadline;
ok(poll_series('up{job="dbpool"} == 1'), 'Prometheus scrapes the endpoint')
  or diag(slurp_file($plog));

# an alert made to trigger: pool dead is down
my $firing = 0;
$deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
while (!$firing && time() < $deadline)
{
	my $a = api('/api/v1/alerts');
	$firing = grep { $_->{labels}{alertname} eq 'DbpoolPoolDown' && $_->{labels}{pool} eq 'dead'
		  && $_->{state} eq 'firing' } @{ $a->{data}{alerts} // [] };
	usleep(250_000) unless $firing;
}
ok($firing, 'the alert DbpoolPoolDown for pool dead reaches firing');

# every expression of the dashboard returns at least one series (dbpool_alerts_firing: the
# seeded rule PoolDown fires for the pool dead)
for my $panel (@{ $dash->{panels} })
{
	for my $t (@{ $panel->{targets} })
	{
		(my $expr = $t->{expr}) =~ s/\$pool/.*/g;
		$expr =~ s/\$__rate_interval/15s/g;
		ok(poll_series($expr), "panel \"$panel->{title}\": $t->{expr}");
	}
}

$l->safe_psql('postgres', q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'DO $workload$%'});
finish_bg($work);
$prom->kill_kill;
undef $prom;

done_testing();
