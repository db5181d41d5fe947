# The worker gives heap back after many connections close (issue 16): each foreign connection
# holds some 30 kB of libpq buffers and statement cache in the worker, which glibc keeps for
# reuse unless told.  A pool of 150 connections is opened and dropped; the worker's RssAnon
# (Linux, /proc) must come back down instead of staying at its high-water mark.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

plan skip_all => 'needs /proc' unless -r '/proc/self/status';
# the worker gives memory back with glibc's malloc_trim; elsewhere it keeps it
plan skip_all => 'needs glibc' unless system('getconf GNU_LIBC_VERSION >/dev/null 2>&1') == 0;

my $f = foreign_node('F', 25862, "max_connections = 200\n");
my $l = local_node('L', 25863);
my $ci = quote_literal(pool_conninfo($f));

ok(poll_until($l, q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dbpool worker'}, '1'),
	'the worker runs');
my ($worker) = dbpool_worker_pids($l);

# the worker's RssAnon in kB
sub rss_anon
{
	open my $fh, '<', "/proc/$worker/status" or die "no /proc/$worker/status: $!";
	while (<$fh>) { return $1 if /^RssAnon:\s+(\d+)/; }
	die 'no RssAnon';
}

my $before = rss_anon();
$l->safe_psql('postgres',
	qq{SELECT dbpool_create_pool('wide', $ci, min_size => 150, max_size => 150)});
ok(poll_until($l, q{SELECT idle_connections FROM dbpool_metrics WHERE pool = 'wide'}, '150'),
	'150 connections open');
# give each some use, as a pool's connections would have
$l->safe_psql('postgres', q{SELECT count(*) FROM generate_series(1, 300) g,
	LATERAL dbpool_query('wide', 'SELECT $1::int', ARRAY[g::text]) AS t(x int)});
my $open = rss_anon();
cmp_ok($open - $before, '>', 1024, "they take room in the worker ($before kB -> $open kB)");

$l->safe_psql('postgres', q{SELECT dbpool_drop_pool('wide')});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbpool'}, '0'),
	'all closed on F');
# the trim runs at the worker's next loop iteration (at most a second: its tick)
my $after;
for my $i (1 .. 50)
{
	$after = rss_anon();
	last if $open - $after > ($open - $before) / 2;
	select(undef, undef, undef, 0.1);
}
cmp_ok($open - $after, '>', ($open - $before) / 2,
	"more than half of it is given back ($open kB -> $after kB)");
done_testing();
