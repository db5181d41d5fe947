# Cancellation: a local statement_timeout, pg_cancel_backend, pg_terminate_backend, the
# pool's query_timeout_ms, and a cancel while a large result streams each end the remote
# query on F (not only the local wait) and leave the pool working.  acquire_timeout_ms
# gives 53300 naming the pool; a statement_timeout while waiting for a connection leaves
# no stale waiter.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25521);
my $l = local_node('L', 25520);
my $ci = pool_conninfo($f);

$l->safe_psql('postgres', sprintf(q{
	SELECT dbpool_create_pool('p', %s, min_size => 1, max_size => 2);
	SELECT dbpool_create_pool('qt_pool', %s, max_size => 1, query_timeout_ms => 500);
	SELECT dbpool_create_pool('acq_pool', %s, max_size => 1, acquire_timeout_ms => 300);
	SELECT dbpool_create_pool('wait_pool', %s, max_size => 1, acquire_timeout_ms => 60000);
}, (quote_literal($ci)) x 4));

my $sleep60 = q{SELECT * FROM dbpool_query('p', 'SELECT pg_sleep(60)') AS t(x text)};
# Active sessions on F running a statement that contains $text.
sub remote_running
{
	my ($text) = @_;
	return "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
	  . "AND pid <> pg_backend_pid() AND query LIKE " . quote_literal("%$text%");
}
# The local backend running a statement that contains $text.
sub local_pid_query
{
	my ($text) = @_;
	return "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
	  . "AND pid <> pg_backend_pid() AND query LIKE " . quote_literal("%$text%");
}

sub pool_works
{
	my ($pool, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	query_ok($l, "SELECT x FROM dbpool_query('$pool', 'SELECT 42') AS t(x int)",
		'42', $name);
}

# Start $sql, terminate its local backend while $marker runs on F; the remote query must end.
sub terminate_mid_query
{
	my ($sql, $marker, $what) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $bg = start_bg($l, $sql);
	ok(poll_until($f, remote_running($marker), '1'), "$what: remote query running on F");
	my $pid = $l->safe_psql('postgres', local_pid_query($marker));
	like($pid, qr/^\d+$/, "$what: found the local backend");
	is($l->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't',
		"$what: pg_terminate_backend sent");
	my ($ret, $out, $err) = finish_bg($bg);
	ok(defined $ret && $ret != 0, "$what: the terminated client gets an error");
	like($err, qr/terminating connection due to administrator command|server closed the connection/,
		"$what: the client connection is closed");
	ok(poll_until($f, remote_running($marker), '0', 20), "$what: the remote query is gone from F");
	pool_works('p', "$what: the pool works afterwards");
	pool_works('p', "$what: and again");
}

# --- statement_timeout ----------------------------------------------------------------
query_fails($l, "SET statement_timeout = '500ms'; $sleep60", '57014',
	qr/canceling statement due to statement timeout/,
	'statement_timeout interrupts a remote query', timeout => 30);
ok(poll_until($f, remote_running('pg_sleep(60)'), '0', 20),
	'statement_timeout: the remote query is gone from F');
pool_works('p', 'pool works after statement_timeout');
pool_works('p', 'and again (both connections clean)');

# --- pg_cancel_backend from another session -------------------------------------------
my $bg = start_bg($l, $sleep60);
ok(poll_until($f, remote_running('pg_sleep(60)'), '1'), 'cancel: remote query running on F');
my $pid = $l->safe_psql('postgres', local_pid_query('pg_sleep(60)'));
like($pid, qr/^\d+$/, 'cancel: found the local backend');
is($l->safe_psql('postgres', "SELECT pg_cancel_backend($pid)"), 't', 'pg_cancel_backend sent');
my ($ret, $out, $err) = finish_bg($bg);
ok(defined $ret && $ret != 0, 'cancelled query returns an error');
like($err, qr/ERROR:\s+57014: canceling statement due to user request/,
	'cancel: 57014 canceling statement due to user request');
ok(poll_until($f, remote_running('pg_sleep(60)'), '0', 20),
	'cancel: the remote query is gone from F');
pool_works('p', 'pool works after pg_cancel_backend');

# --- pg_terminate_backend of the client ---------------------------------------------
terminate_mid_query($sleep60, 'pg_sleep(60)', 'terminate');

# --- query_timeout_ms -------------------------------------------------------------------
query_fails($l, q{SELECT * FROM dbpool_query('qt_pool', 'SELECT pg_sleep(60)') AS t(x text)},
	'57014', undef, 'query_timeout_ms = 500 cancels a long query', timeout => 30);
ok(poll_until($f, remote_running('pg_sleep(60)'), '0', 20),
	'query_timeout_ms: the remote query is gone from F');
pool_works('qt_pool', 'pool with query_timeout_ms answers short queries');

# --- cancel while a large result streams ------------------------------------------------
# Value-per-call SRF in the target list: F streams rows for as long as it is read.
my $stream_sql = q{SELECT count(*) FROM dbpool_query('p', 'SELECT repeat(''x'', 100) || g FROM (SELECT generate_series(1, 300000000) AS g) s') AS t(v text)};
query_fails($l, "SET statement_timeout = '1s'; $stream_sql", '57014',
	qr/canceling statement due to statement timeout/,
	'statement_timeout while the result streams', timeout => 60);
ok(poll_until($f, remote_running('generate_series(1, 300000000)'), '0', 20),
	'streaming: the remote query is gone from F');
pool_works('p', 'pool works after a cancel mid-stream');
pool_works('p', 'and again');

# --- the client goes away while the worker is sending it rows -------------------------
terminate_mid_query($stream_sql, 'generate_series(1, 300000000)', 'client gone mid-stream');

# --- acquire_timeout_ms, and cancel while waiting for a connection --------------------
my $hold_a = start_bg($l, q{SELECT * FROM dbpool_query('acq_pool', 'SELECT pg_sleep(5)') AS t(x text)});
my $hold_w = start_bg($l, q{SELECT * FROM dbpool_query('wait_pool', 'SELECT pg_sleep(5)') AS t(x text)});
ok(poll_until($f, remote_running('pg_sleep(5)'), '2'),
	'both single-connection pools are busy');
query_fails($l, q{SELECT * FROM dbpool_query('acq_pool', 'SELECT 1') AS t(x int)},
	'53300', qr/acq_pool/, 'acquire_timeout_ms: 53300 naming the pool', timeout => 30);
query_fails($l, q{SET statement_timeout = '500ms';
	SELECT * FROM dbpool_query('wait_pool', 'SELECT 1') AS t(x int)},
	'57014', qr/canceling statement due to statement timeout/,
	'statement_timeout while waiting for a connection', timeout => 30);
($ret, $out, $err) = finish_bg($hold_a);
is($ret, 0, 'the query holding acq_pool completes') or diag($err);
($ret, $out, $err) = finish_bg($hold_w);
is($ret, 0, 'the query holding wait_pool completes') or diag($err);
pool_works('acq_pool', 'acq_pool works once free');
# A waiter that was cancelled must not keep the connection: this would wait 60 s.
query_ok($l, q{SELECT x FROM dbpool_query('wait_pool', 'SELECT 7') AS t(x int)}, '7',
	'wait_pool serves the next query (no stale waiter holds it)', timeout => 30);

ok(!$l->log_contains(qr/terminated by signal|terminating any other active server processes/),
	'L never crashed');

done_testing();
