# Large results stream with bounded memory: 3 million rows (and 200 MB of wide rows) pass
# through the dbpool worker while its anonymous resident memory stays under 64 MB.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $limit_kb = 64 * 1024;

my $f = foreign_node('F', 25531);
my $l = local_node('L', 25530);
$l->safe_psql('postgres',
	'SELECT dbpool_create_pool(' . quote_literal('p') . ', '
	  . quote_literal(pool_conninfo($f)) . ', max_size => 2)');
query_ok($l, q{SELECT x FROM dbpool_query('p', 'SELECT 1') AS t(x int)}, '1', 'pool answers');

my @workers = dbpool_worker_pids($l);
is(scalar @workers, 1, 'one dbpool worker in pg_stat_activity');

sub rss_anon_kb
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/status") or return undef;
	while (<$fh>)
	{
		return $1 if /^RssAnon:\s+(\d+)\s+kB/;
	}
	return undef;
}

# Run $sql in the background, sampling the worker's RssAnon until it ends.
sub run_sampling
{
	my ($sql, $expected, $name) = @_;
	my $bg = start_bg($l, $sql, timeout => 300);
	my ($max, $samples) = (0, 0);
	my $deadline = time() + 300;
	while ($bg->{h}->pumpable && time() < $deadline)
	{
		eval { $bg->{h}->pump_nb; };
		for my $pid (@workers)
		{
			my $kb = rss_anon_kb($pid);
			next unless defined $kb;
			$samples++;
			$max = $kb if $kb > $max;
		}
		usleep(20_000);
	}
	my ($ret, $out, $err) = finish_bg($bg);
	for my $pid (@workers)
	{
		my $kb = rss_anon_kb($pid);
		if (defined $kb) { $samples++; $max = $kb if $kb > $max; }
	}
	is($ret, 0, "$name: succeeds") or diag($err);
	is($out, $expected, "$name: right answer");
	cmp_ok($samples, '>', 0, "$name: worker memory sampled");
	cmp_ok($max, '<', $limit_kb, "$name: worker RssAnon stayed below 64 MB (max $max kB)");
}

run_sampling(
	q{SELECT count(*), sum(x) FROM dbpool_query('p', 'SELECT g FROM generate_series(1,3000000) g') AS t(x bigint)},
	'3000000|4500001500000', '3 million rows');

run_sampling(
	q{SELECT count(*), sum(length(v)) FROM dbpool_query('p', 'SELECT repeat(''x'', 1000) FROM generate_series(1, 200000)') AS t(v text)},
	'200000|200000000', '200 MB of 1 kB rows');

run_sampling(
	q{SELECT count(*), sum(length(v)) FROM dbpool_query('p', 'SELECT repeat(''z'', 10000000) FROM generate_series(1, 3)') AS t(v text)},
	'3|30000000', 'three 10 MB values');

is(join(',', dbpool_worker_pids($l)), join(',', @workers), 'same worker throughout');
query_ok($l, q{SELECT x FROM dbpool_query('p', 'SELECT 2') AS t(x int)}, '2', 'pool still answers');

done_testing();
