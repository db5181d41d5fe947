# Many clients, few connections: 200 concurrent pgbench clients share a pool of 4, every
# transaction gets its answer and F never sees more than 4 dbpool connections.  Then the
# pool is resized under load (4 -> 8 -> 2) without failing a query.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25511);
my $l = local_node('L', 25510, "max_connections = 230\n");
my $ci = quote_literal(pool_conninfo($f));
my $dbpool_conns = q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbpool'};

$l->safe_psql('postgres', qq{
	-- A long acquire timeout: this test is about the bound on connections, not about waits.
	SELECT dbpool_create_pool('p', $ci, max_size => 4, acquire_timeout_ms => 60000);
	CREATE TABLE obs(n int NOT NULL);
});

# Each transaction asks F, through the pool, how many dbpool connections it has, and
# records the answer locally.
my $script = $l->basedir . '/observe.sql';
append_to_file($script, q{INSERT INTO obs SELECT n FROM dbpool_query('p', 'SELECT CAST(count(*) AS int) FROM pg_stat_activity WHERE application_name = ''dbpool''') AS t(n int);
});

sub pgbench_cmd
{
	return [
		'pgbench', '-n', '-h', $l->host, '-p', $l->port, @_, '-f', $script,
		'postgres'
	];
}

sub processed
{
	my ($out) = @_;
	return $out =~ /number of transactions actually processed: (\d+)/ ? $1 : -1;
}

# --- 200 clients, pool of 4 -------------------------------------------------------------
my ($out, $err) = ('', '');
my $ok = eval {
	IPC::Run::run(pgbench_cmd('-c', '200', '-j', '4', '-t', '10'),
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(600));
};
ok($ok, 'pgbench with 200 clients exits 0') or diag("pgbench: $@\n$out\n$err");
is(processed($out), 2000, 'pgbench processed 2000 transactions');
unlike($out, qr/number of failed transactions: [1-9]/, 'no failed transaction');
my ($rows, $max, $min) =
  split /\|/, $l->safe_psql('postgres', 'SELECT count(*), max(n), min(n) FROM obs');
is($rows, 2000, 'every transaction recorded its answer');
cmp_ok($max, '<=', 4, "F never saw more than max_size = 4 dbpool connections (max seen $max)");
cmp_ok($min, '>=', 1, 'the answering connection counts itself');
cmp_ok(remote_count($f, "application_name = 'dbpool'"), '<=', 4,
	'F has at most 4 dbpool connections after the run');

# --- resize under load --------------------------------------------------------------------
$l->safe_psql('postgres', 'TRUNCATE obs');
($out, $err) = ('', '');
my $bench = IPC::Run::start(pgbench_cmd('-c', '40', '-j', '2', '-T', '10'),
	'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(600));

ok(poll_until($l, 'SELECT count(*) > 0 FROM obs'), 'load is running');
query_ok($l, q{SELECT dbpool_alter_pool('p', '{"max_size": 8}')}, '', 'grow to 8 under load');
ok(poll_until($f, "SELECT ($dbpool_conns) > 4"),
	'the pool grows beyond 4 connections while 40 clients wait');
query_ok($l, q{SELECT dbpool_alter_pool('p', '{"max_size": 2}')}, '', 'shrink to 2 under load');
query_ok($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'p'}, '2',
	'dbpool_pools shows the new size');

$ok = eval { $bench->finish; };
ok($ok && $bench->result(0) == 0, 'pgbench through the resizes exits 0')
  or diag("pgbench: $@\n$out\n$err");
my $n = processed($out);
cmp_ok($n, '>', 0, "pgbench processed transactions ($n)");
unlike($out, qr/number of failed transactions: [1-9]/, 'no failed transaction during resizes');
($rows, $max) = split /\|/, $l->safe_psql('postgres', 'SELECT count(*), max(n) FROM obs');
is($rows, $n, 'every transaction during the resizes recorded its answer');
cmp_ok($max, '<=', 8, "never more than 8 dbpool connections on F (max seen $max)");
ok(poll_until($f, "SELECT ($dbpool_conns) <= 2"),
	'after the load, the shrunk pool keeps at most 2 connections on F');
query_ok($l, q{SELECT n FROM dbpool_query('p', 'SELECT 5') AS t(n int)}, '5',
	'pool still answers');

done_testing();
