# Leak detection (issue 13): a connection busy with one request longer than its pool's
# leak_threshold_ms is flagged once: one WARNING names the pool, the connection, the client's
# pid, application_name and local query (read from the backend status array, converted from
# the client's database's encoding) and the remote query; the gauge (leaks_suspected) and the
# counter (leaks_suspected_total) move; dbpool_connections shows suspected_leak, and the
# served client's application_name and local query (the query only to superusers,
# pg_read_all_stats and the client's own role), valid in a UTF8 and in a LATIN1 reader.  When
# the request ends (its client gone, answered) a LOG line gives how long it was busy and the
# gauge drops; a threshold set to 0 clears the flag at the next tick.  dbpool_diagnose
# reports the leak (connection_leak, suspicious_connections).
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# every psql sends its statements in UTF8, whatever the locale (the e-acute below)
$ENV{PGCLIENTENCODING} = 'UTF8';

my $f = foreign_node('F', 25821);
my $l = PostgreSQL::Test::Cluster->new('L', port => 25820);
$l->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$l->append_conf('postgresql.conf',
	"shared_preload_libraries = 'dbpool'\ndbpool.database = 'postgres'\n");
$l->start;
$l->safe_psql('postgres', 'CREATE EXTENSION dbpool');
$l->safe_psql('postgres',
	"CREATE DATABASE lat ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
$l->safe_psql('lat', 'CREATE EXTENSION dbpool');

my $ci = quote_literal(pool_conninfo($f));
$l->safe_psql('postgres', qq{
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	CREATE ROLE carol LOGIN IN ROLE pg_read_all_stats;
	SELECT dbpool_create_pool('lp', $ci, max_size => 2, leak_threshold_ms => 500);
	SELECT dbpool_grant_usage('lp', 'alice');
});

my $pool_row = q{SELECT leaks_suspected || '/' || leaks_suspected_total FROM dbpool_metrics
	WHERE pool = 'lp'};
query_ok($l, $pool_row, '0/0', 'no leak yet');

# --- a leak: a client in a LATIN1 database, its local query with an e-acute ---------------------
my $leaky = start_bg($l, q{SET application_name = 'leaky_app';
	SELECT * FROM dbpool_query('lp', 'SELECT pg_sleep(60)::text /* remote_marker */') AS t(x text)
	/* local_marker café */}, db => 'lat', user => 'alice');
ok(poll_until($l, $pool_row, '1/1'), 'the gauge and the counter count the leak');
my $client_pid = $l->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE application_name = 'leaky_app'});
like($client_pid, qr/^\d+$/, 'found the client');
my $conn_id = $l->safe_psql('postgres',
	q{SELECT conn_id FROM dbpool_connections WHERE pool = 'lp' AND suspected_leak});
like($conn_id, qr/^\d+$/, 'dbpool_connections: suspected_leak');

$l->wait_for_log(qr/suspected connection leak/);
my $log = slurp_file($l->logfile);
like($log,
	qr/WARNING:  dbpool: suspected connection leak: connection $conn_id of pool "lp" has been busy with one request for [\d.]+ s \(leak_threshold_ms 500\)\n[^\n]*DETAIL:  Client pid $client_pid, application_name "leaky_app", local query: SET application_name = 'leaky_app';\s+SELECT \* FROM dbpool_query\('lp', 'SELECT pg_sleep\(60\)::text \/\* remote_marker \*\/'\) AS t\(x text\)\s+\/\* local_marker café \*\/; remote query: SELECT pg_sleep\(60\)::text \/\* remote_marker \*\//,
	'one WARNING: pool, connection, client pid, application_name, local query (LATIN1 made UTF8) and remote query');

# the columns, read from the UTF8 database
my $cols = qq{SELECT client_pid = $client_pid, application_name,
	position('local_marker caf' || chr(233) in client_query) > 0, suspected_leak
	FROM dbpool_connections WHERE conn_id = $conn_id};
query_ok($l, $cols, "t|leaky_app|t|t", 'superuser (UTF8): application_name, client_query');
query_ok($l, $cols, "t|leaky_app|t|t", 'the client\'s own role sees its query', user => 'alice');
query_ok($l, $cols, "t|leaky_app|t|t", 'pg_read_all_stats sees it', user => 'carol');
query_ok($l, qq{SELECT application_name, client_query FROM dbpool_connections
	WHERE conn_id = $conn_id}, 'leaky_app|<insufficient privilege>',
	'another role sees the application_name, not the query', user => 'bob');
# ... and from the LATIN1 database: e-acute is itself there
query_ok($l, $cols, "t|leaky_app|t|t", 'LATIN1 reader: client_query converted', db => 'lat');
query_ok($l, qq{SELECT client_query = (SELECT query FROM pg_stat_activity WHERE pid = $client_pid)
	FROM dbpool_connections WHERE conn_id = $conn_id}, 't',
	'LATIN1 reader: client_query is what pg_stat_activity shows there', db => 'lat');
query_ok($l, q{SELECT coalesce(bool_and(application_name IS NULL AND client_query IS NULL
	AND NOT suspected_leak), true) FROM dbpool_connections WHERE pool = 'lp' AND client_pid IS NULL},
	't', 'connections that serve no client: no client texts, not suspected');

# dbpool_diagnose sees it, for anyone
query_ok($l, q{SELECT i->>'severity' FROM jsonb_array_elements(dbpool_diagnose('lp')->'issues') i
	WHERE i->>'type' = 'connection_leak'}, 'high', 'dbpool_diagnose: connection_leak, high');
query_ok($l, qq{SELECT s->>'conn_id' = '$conn_id', s->>'client_pid' = '$client_pid',
	s->>'application_name', position('local_marker caf' || chr(233) in s->>'client_query') > 0,
	position('remote_marker' in s->>'last_query') > 0, (s->>'active_seconds')::float8 > 0.5
	FROM jsonb_array_elements(dbpool_diagnose('lp')->'suspicious_connections') s},
	't|t|leaky_app|t|t|t', 'dbpool_diagnose: suspicious_connections');
query_ok($l, q{SELECT s->>'client_query', s->>'last_query'
	FROM jsonb_array_elements(dbpool_diagnose('lp')->'suspicious_connections') s},
	'<insufficient privilege>|<insufficient privilege>',
	'dbpool_diagnose: texts under the text rules', user => 'bob');

# flagged once, however many ticks pass
ok(poll_until($l, qq{SELECT active_seconds > 3 FROM dbpool_connections WHERE conn_id = $conn_id}),
	'the leak lasts several ticks');
$log = slurp_file($l->logfile);
is(scalar(() = $log =~ /suspected connection leak/g), 1, 'one WARNING only');
query_ok($l, $pool_row, '1/1', 'counted once');

# the client goes: the connection comes back
$l->safe_psql('postgres', "SELECT pg_terminate_backend($client_pid)");
finish_bg($leaky);
$l->wait_for_log(qr/suspected leak connection $conn_id of pool "lp" came back/);
like(slurp_file($l->logfile),
	qr/LOG:  dbpool: suspected leak connection $conn_id of pool "lp" came back after [\d.]+ s busy with one request \(its client abandoned it\)/,
	'LOG: came back, with the duration');
ok(poll_until($l, $pool_row, '0/1'), 'the gauge drops, the counter stays');
ok(poll_until($l, qq{SELECT count(*) FROM dbpool_connections WHERE suspected_leak}, '0'),
	'no connection suspected');
query_ok($l, q{SELECT count(*) FROM jsonb_array_elements(dbpool_diagnose('lp')->'issues') i
	WHERE i->>'type' = 'connection_leak'}, '0', 'dbpool_diagnose: the leak is gone');

# --- a leak that is answered in the end -------------------------------------------------------
my $holder = start_bg($f, q{SELECT pg_advisory_lock(42), pg_sleep(600)});
ok(poll_until($f, q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted}, '1'),
	'F: the lock is held');
my $blocked = start_bg($l,
	q{SELECT * FROM dbpool_query('lp', 'SELECT pg_advisory_xact_lock(42)::text || ''answered''') AS t(x text)});
ok(poll_until($l, $pool_row, '1/2'), 'second leak counted');
my $conn2 = $l->safe_psql('postgres',
	q{SELECT conn_id FROM dbpool_connections WHERE pool = 'lp' AND suspected_leak});
$f->safe_psql('postgres', q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
	WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()});
finish_bg($holder);
my ($ret, $out) = finish_bg($blocked);
is($out, 'answered', 'the request was answered');
$l->wait_for_log(qr/suspected leak connection $conn2 of pool "lp" came back after [\d.]+ s busy with one request \(answered\)/);
ok(poll_until($l, $pool_row, '0/2'), 'the gauge drops again');

# --- a threshold set to 0 clears the flag at the next tick ----------------------------------------
$holder = start_bg($f, q{SELECT pg_advisory_lock(42), pg_sleep(600)});
ok(poll_until($f, q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted}, '1'),
	'F: the lock is held again');
$blocked = start_bg($l,
	q{SELECT * FROM dbpool_query('lp', 'SELECT pg_advisory_xact_lock(42)::text || ''late''') AS t(x text)});
ok(poll_until($l, $pool_row, '1/3'), 'third leak counted');
my $conn3 = $l->safe_psql('postgres',
	q{SELECT conn_id FROM dbpool_connections WHERE pool = 'lp' AND suspected_leak});
$l->safe_psql('postgres', q{SELECT dbpool_alter_pool('lp', '{"leak_threshold_ms": 0}')});
ok(poll_until($l, $pool_row, '0/3'), 'leak_threshold_ms 0: the gauge drops at the next tick');
$l->wait_for_log(qr/connection $conn3 of pool "lp" is no longer a suspected leak: leak_threshold_ms is now 0/);
$f->safe_psql('postgres', q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
	WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()});
finish_bg($holder);
($ret, $out) = finish_bg($blocked);
is($out, 'late', 'that request was answered too');
$log = slurp_file($l->logfile);
is(scalar(() = $log =~ /suspected leak connection \d+ of pool "lp" came back/g), 2,
	'no "came back" for a cleared flag');
is(scalar(() = $log =~ /suspected connection leak/g), 3, 'three WARNINGs in all');

ok(!$l->log_contains(qr/terminated by signal|terminating any other active server processes/),
	'L never crashed');
done_testing();
