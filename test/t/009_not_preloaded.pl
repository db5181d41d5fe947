# Without shared_preload_libraries every dbpool function fails with 55000 and says why.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('plain', port => 25590);
$node->init;
$node->start;
query_ok($node, q{CREATE EXTENSION dbpool}, '', 'the extension installs without preloading');
for my $sql (
	q{SELECT * FROM dbpool_query('p', 'SELECT 1') AS t(x int)},
	q{SELECT dbpool_exec('p', 'SELECT 1')},
	q{SELECT dbpool_create_pool('p', 'dbname=postgres')},
	q{SELECT * FROM dbpool_pools})
{
	query_fails($node, $sql, '55000', qr/must be loaded via shared_preload_libraries/,
		"not preloaded: $sql");
}
my $r = run_sql($node, q{SELECT dbpool_exec('p', 'SELECT 1')});
like($r->{err}, qr/HINT:.*shared_preload_libraries/, 'the hint says what to do');
$node->stop;
done_testing();
