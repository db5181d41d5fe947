# Host names are resolved off the worker's loop (src/resolve.c): a slow lookup for one pool
# does not stop the other pools, connections opened meanwhile share it, a lookup that runs
# past the connect timeout fails that attempt with 08001 and is not started again while it
# still runs, and a name that is not found fails with 08001 naming it.
#
# No network is used.  The local server runs with test/dns_shim.c in LD_PRELOAD: it answers
# <x>.slow.dbpool.test with 127.0.0.1 and <x>.hang.dbpool.test with EAI_AGAIN, each only once
# the test creates release-<name> in $dns_dir, and <x>.fail.dbpool.test with "not found".  It
# writes each slow or hanging lookup's name to $dns_dir/lookups when it starts and creates
# done-<name> when it returns.  "localhost" goes to the C library (/etc/hosts).
#
# Nothing here measures time: "the other pool keeps serving" means its query returned while
# the shim still held the lookup (no done-<name> yet).
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $dns_dir = PostgreSQL::Test::Utils::tempdir();
my $shim = "$dns_dir/dns_shim.so";
my $cc = $ENV{CC} // 'cc';
system($cc, '-shared', '-fPIC', '-o', $shim, "$FindBin::RealBin/../dns_shim.c") == 0
  or BAIL_OUT("could not build test/dns_shim.c with $cc");

my $f = foreign_node('F', 25691, "listen_addresses = '127.0.0.1'\n");
my $l;
{
	local $ENV{LD_PRELOAD} = $shim;
	local $ENV{DBPOOL_TEST_DNS_DIR} = $dns_dir;
	$l = local_node('L', 25690);
}
my $fport = $f->port;

sub create_pool
{
	my ($name, $conninfo, %opt) = @_;
	my $args = join('', map { ", $_ => $opt{$_}" } sort keys %opt);
	$l->safe_psql('postgres',
		sprintf(q{SELECT dbpool_create_pool(%s, %s%s)},
			quote_literal($name), quote_literal($conninfo), $args));
	return;
}

# How many lookups of $name the shim has seen start.
sub lookups_of
{
	my ($name) = @_;
	my $path = "$dns_dir/lookups";
	return 0 unless -e $path;
	return scalar grep { $_ eq $name } split /\n/, slurp_file($path);
}

# Wait until the shim has seen $n lookups of $name start.
sub wait_lookups
{
	my ($name, $n) = @_;
	my $end = time() + $DbpoolTest::WAIT;
	while (lookups_of($name) < $n)
	{
		return 0 if time() > $end;
		usleep(20_000);
	}
	return 1;
}

sub lookup_returned { return -e "$dns_dir/done-$_[0]"; }

sub release
{
	my ($name) = @_;
	open(my $fh, '>', "$dns_dir/release-$name") or die "release $name: $!";
	close $fh;
	return;
}

my $q42 = q{SELECT x FROM dbpool_query('%s', 'SELECT 42') AS t(x int)};

# --- a host name from /etc/hosts ------------------------------------------------------------
create_pool('lh', "host=localhost port=$fport dbname=postgres application_name=dns_lh");
query_ok($l, sprintf($q42, 'lh'), '42', 'a pool with host=localhost serves');
is( $f->safe_psql('postgres',
		q{SELECT count(*) > 0 AND bool_and(client_addr = '127.0.0.1')
		    FROM pg_stat_activity WHERE application_name = 'dns_lh'}),
	't',
	'its connections reach the foreign server over TCP on 127.0.0.1');
is( $l->safe_psql('postgres',
		q{SELECT count(*) > 0 AND bool_and(state IN ('idle', 'active'))
		    FROM dbpool_connections WHERE pool = 'lh'}),
	't',
	'dbpool_connections shows them');

# --- a name that is not found ---------------------------------------------------------------
create_pool('nx', "host=nowhere.fail.dbpool.test port=$fport dbname=postgres",
	min_size => 0);
query_fails(
	$l, sprintf($q42, 'nx'), '08001',
	qr/could not connect to pool "nx".*could not translate host name "nowhere\.fail\.dbpool\.test" to address/s,
	'a name that is not found');
is( $l->safe_psql('postgres',
		q{SELECT (dbpool_detailed_metrics('nx')->'counters'->>'connection_failures')::int > 0}),
	't',
	'it counts as a failed connection attempt');
query_ok($l, sprintf($q42, 'lh'), '42', 'the other pool still serves');

# Several hosts: the one not found is skipped, as libpq skips it; one port per host.
create_pool('multi',
	"host=nowhere.fail.dbpool.test,localhost port=1,$fport dbname=postgres",
	min_size => 0);
query_ok($l, sprintf($q42, 'multi'), '42',
	'host=<not found>,localhost with a port each connects to the second');
create_pool('lit', "host=nowhere.fail.dbpool.test,127.0.0.1 port=$fport dbname=postgres",
	min_size => 0);
query_ok($l, sprintf($q42, 'lit'), '42', 'host=<not found>,127.0.0.1 connects to the address');
create_pool('sock',
	'host=nowhere.fail.dbpool.test,' . $f->host . " port=$fport dbname=postgres",
	min_size => 0);
query_ok($l, sprintf($q42, 'sock'), '42',
	'host=<not found>,<socket directory> connects through the socket');

# A name with two addresses: both are tried in order (nothing listens on 127.0.0.2).
create_pool('two',
	"host=db.two.dbpool.test port=$fport dbname=postgres application_name=dns_two",
	min_size => 0);
query_ok($l, sprintf($q42, 'two'), '42', 'a name with two addresses connects to the second');
is( $f->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity
		   WHERE application_name = 'dns_two' AND client_addr = '127.0.0.1'}),
	'1',
	'... at 127.0.0.1');

# --- a slow lookup stalls nothing else -------------------------------------------------------
my $slow = 'db.slow.dbpool.test';
create_pool('slow',
	"host=$slow port=$fport dbname=postgres connect_timeout=100 application_name=dns_slow",
	min_size => 0, max_size => 3, acquire_timeout_ms => 0);
my @bg = (start_bg($l, sprintf($q42, 'slow')));
ok(wait_lookups($slow, 1), 'the slow pool\'s lookup has started');
query_ok($l, sprintf($q42, 'lh'), '42',
	'another pool serves while the lookup is held');
ok(!lookup_returned($slow), '... and the lookup was still held then');
create_pool('lh2', "host=localhost port=$fport dbname=postgres", min_size => 0);
query_ok($l, sprintf($q42, 'lh2'), '42',
	'a new pool with a host name connects while the lookup is held');
push @bg, start_bg($l, sprintf($q42, 'slow')), start_bg($l, sprintf($q42, 'slow'));
ok( poll_until(
		$l,
		q{SELECT connecting_connections FROM dbpool_metrics WHERE pool = 'slow'}, '3'),
	'three connections of the slow pool are connecting');
is( $l->safe_psql('postgres',
		q{SELECT string_agg(state, ',') FROM dbpool_connections WHERE pool = 'slow'}),
	'connecting,connecting,connecting',
	'dbpool_connections shows them as connecting');
ok(!lookup_returned($slow), 'the lookup is still held');
is(lookups_of($slow), 1, 'the three connections share one lookup');
release($slow);
for my $i (0 .. $#bg)
{
	my ($ret, $out, $err) = finish_bg($bg[$i]);
	is($ret, 0, "slow call $i succeeds once the lookup returns") or diag($err);
	is($out, '42', "slow call $i returns its row");
}
is( $f->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity
		   WHERE application_name = 'dns_slow' AND client_addr = '127.0.0.1'}),
	'3',
	'the slow pool connected to the address the lookup found');

# --- a lookup past the connect timeout -------------------------------------------------------
my $hang = 'db.hang.dbpool.test';
create_pool('hang', "host=$hang port=$fport dbname=postgres connect_timeout=2",
	min_size => 0, acquire_timeout_ms => 0);
my $bg_hang = start_bg($l, sprintf($q42, 'hang'));
ok(wait_lookups($hang, 1), 'the hanging lookup has started');
query_ok($l, sprintf($q42, 'lh'), '42',
	'another pool serves while it hangs');
my ($ret, $out, $err) = finish_bg($bg_hang);
isnt($ret, 0, 'the call on the hanging pool fails');
like($err,
	qr/08001:.*could not connect to pool "hang".*timeout expired after 2000 ms while looking up the host name "db\.hang\.dbpool\.test"/s,
	'with 08001 and a timeout naming the host');
ok(!lookup_returned($hang), 'the lookup was abandoned, not finished');
query_fails(
	$l, sprintf($q42, 'hang'), '08001',
	qr/timeout expired after 2000 ms while looking up the host name/,
	'a second call fails the same way');
is(lookups_of($hang), 1, 'it waited for the lookup still running instead of starting another');

# --- a conninfo change while a lookup is held -------------------------------------------------
my $chg = 'db2.slow.dbpool.test';
create_pool('chg', "host=$chg port=$fport dbname=postgres connect_timeout=100",
	min_size => 0, acquire_timeout_ms => 0);
my $bg_chg = start_bg($l, sprintf($q42, 'chg'));
ok(wait_lookups($chg, 1), 'the lookup of the pool to change has started');
$l->safe_psql('postgres',
	sprintf(q{SELECT dbpool_alter_pool('chg', %s)},
		quote_literal(qq({"conninfo": "host=localhost port=$fport dbname=postgres"}))));
($ret, $out, $err) = finish_bg($bg_chg);
is($ret, 0, 'after the conninfo changed, the waiting call is served') or diag($err);
is($out, '42', '... with its row');
ok(!lookup_returned($chg), '... without waiting for the old lookup');

release($hang);
release($chg);
ok( poll_until(
		$l, q{SELECT count(*) FROM dbpool_connections WHERE state = 'connecting'}, '0'),
	'nothing is left connecting');
query_ok($l, sprintf($q42, 'lh'), '42', 'the worker still serves at the end');

done_testing();
