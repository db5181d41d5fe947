# An abandoned call frees its connection as soon as the foreign server allows: on a pool of
# one connection, the next call is served at once, not after the 5 s cancel grace
# (DBPOOL_CANCEL_GRACE_MS) runs out.  Results from a few bytes to several megabytes are
# abandoned by an input-function error in the caller's column list (22P02), by
# pg_cancel_backend from another session and by statement_timeout, with the response
# queue full and the rest of the result already read by libpq (no socket event comes for
# it) or still on the socket.
#
# Nothing here measures time.  The pool's acquire_timeout_ms (4 s) is below the cancel
# grace, so a next call that has to wait for the grace fails with 53300; and the pool's
# counters must show that the one connection was reused, never closed and re-opened.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25631);
my $l = local_node('L', 25630);

$l->safe_psql('postgres',
	sprintf(q{SELECT dbpool_create_pool('a', %s, min_size => 1, max_size => 1,
	                                   acquire_timeout_ms => 4000)},
		quote_literal(pool_conninfo($f, 'application_name=abandon'))));
ok(poll_until($l, q{SELECT total_connections FROM dbpool_metrics WHERE pool = 'a'}, '1'),
	'the pool has its one connection');

# A column type whose check pauses on a marked value ('S<seconds>'), so that the caller
# stops reading while the worker fills the response queue (and libpq reads the rest).
$l->safe_psql(
	'postgres', q{
CREATE FUNCTION pause_at(v text) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
    IF v LIKE 'S%' THEN
        PERFORM pg_sleep(substr(v, 2)::float8);
    END IF;
    RETURN true;
END $$;
CREATE DOMAIN pausing AS text CHECK (pause_at(VALUE));

-- The issue's own case, tries times: each call fails with 22P02 on its first row, and the
-- next call on the pool must be served (53300 if it waits for the cancel grace).
CREATE FUNCTION abandon_loop(rows int, width int, tries int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    n int := 0;
BEGIN
    FOR i IN 1..tries LOOP
        BEGIN
            PERFORM * FROM dbpool_query('a',
                format('SELECT ''x'' AS a, repeat(''x'', %s) AS r FROM generate_series(1, %s)', width, rows))
                AS t(a int, r text);
            RAISE 'the call did not fail';
        EXCEPTION WHEN invalid_text_representation THEN
            NULL;
        END;
        BEGIN
            PERFORM * FROM dbpool_query('a', 'SELECT 1') AS t(x int);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'try %: the next call failed: % %', i, SQLSTATE, SQLERRM
                USING ERRCODE = SQLSTATE;
        END;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
});

my $conn_sql =
  q{SELECT c->>'connections_created', c->>'closed_error' FROM (SELECT dbpool_detailed_metrics('a')->'counters' AS c) s};
my $pid_sql = q{SELECT remote_pid FROM dbpool_connections WHERE pool = 'a'};
my $counters0 = $l->safe_psql('postgres', $conn_sql);
is($counters0, '1|0', 'one connection created, none closed');
my $pid0 = $l->safe_psql('postgres', $pid_sql);
like($pid0, qr/^\d+$/, 'the connection has a remote pid');

# After each abandon: the same connection, never closed, serves the next call.  First wait
# for the pool to settle (one connection, none active): a connection that waited out the
# cancel grace is closed and replaced by then, and shows in the counters of this check.
sub connection_kept
{
	my ($what) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	poll_until($l,
		q{SELECT total_connections || ' ' || active_connections FROM dbpool_metrics WHERE pool = 'a'},
		'1 0');
	my $c = $l->safe_psql('postgres', $conn_sql);
	my $ok = is($c, $counters0,
		"$what: connections_created|closed_error unchanged (the connection was not closed)");
	$ok &= is($l->safe_psql('postgres', $pid_sql), $pid0, "$what: still the same remote backend");
	if (!$ok)
	{
		# start the next combination from the new connection
		$counters0 = $c;
		$pid0 = $l->safe_psql('postgres', $pid_sql);
	}
	return $ok;
}

sub next_call_served
{
	my ($what) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $r = run_sql($l, q{SELECT x FROM dbpool_query('a', 'SELECT 1') AS t(x int)});
	ok(!$r->{timed_out} && $r->{ret} == 0 && $r->{out} eq '1',
		"$what: the next call is served")
	  or diag("$what: next call: SQLSTATE " . ($r->{sqlstate} // 'none') . " $r->{err}");
}

# --- 22P02 on the first row, as in the issue: racy, so many tries per size ------------
# Rows are 1000 characters wide plus a few bytes of record; 76-80 rows is the band where
# the rest of the result sits in libpq once the 64 kB queue is full.
my @racy = (
	[ 1, 10, 5 ], [ 8, 1000, 5 ], [ 64, 1000, 5 ], [ 70, 1000, 8 ],
	[ 74, 1000, 8 ], [ 76, 1000, 10 ], [ 77, 1000, 10 ], [ 78, 1000, 10 ],
	[ 79, 1000, 10 ], [ 80, 1000, 10 ], [ 82, 1000, 8 ], [ 86, 1000, 8 ],
	[ 1000, 1000, 3 ], [ 4000, 1000, 2 ]);
for my $c (@racy)
{
	my ($rows, $width, $tries) = @$c;
	my $what = "22P02 on row 1 of $rows x $width B";
	my $r = run_sql($l, "SELECT abandon_loop($rows, $width, $tries)");
	ok(!$r->{timed_out} && $r->{ret} == 0 && $r->{out} eq $tries,
		"$what: the next call is served after each of $tries tries")
	  or diag("$what: " . ($r->{sqlstate} // 'none') . " $r->{err}");
	connection_kept($what);
}

# --- the caller pauses on a marked row, then gives up ----------------------------------
# $rows rows of $width characters; the marked row is the one $rest_rows before the end
# (the first row when the result is smaller), so that the queue fills and about
# $rest_rows rows are left behind in the worker's buffers and libpq.
sub paused_query
{
	my ($rows, $width, $rest_rows, $pause, $bad) = @_;
	my $mark = $rows > $rest_rows ? $rows - $rest_rows : 1;
	my $sql = "SELECT CASE WHEN g = $mark THEN ''S$pause'' ELSE '''' END AS p, "
	  . "CASE WHEN g = $mark THEN ''" . ($bad ? 'x' : '1') . "'' ELSE ''1'' END AS a, "
	  . "repeat(''x'', $width) AS r FROM generate_series(1, $rows) g";
	return "SELECT count(*) FROM dbpool_query('a', '$sql') AS t(p pausing, a int, r text)";
}

# The local backend sleeping in pause_at().
my $sleeper = q{SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE '%dbpool_query(''a''%' AND pid <> pg_backend_pid()};

my @shapes = (
	[ 1, 10, 77 ], [ 8, 1000, 77 ], [ 64, 1000, 77 ],
	[ 74, 1000, 77 ], [ 76, 1000, 77 ], [ 78, 1000, 77 ], [ 80, 1000, 77 ], [ 82, 1000, 77 ],
	[ 1000, 1000, 75 ], [ 1000, 1000, 77 ], [ 1000, 1000, 79 ], [ 1000, 1000, 1000 ],
	[ 5000, 1000, 76 ], [ 5000, 1000, 78 ], [ 5000, 1000, 5000 ]);
for my $s (@shapes)
{
	my ($rows, $width, $rest) = @$s;
	my $shape = "$rows x $width B, paused $rest rows before the end";

	# (a) an input-function error once the queue is full
	my $what = "22P02 after a pause, $shape";
	query_fails($l, paused_query($rows, $width, $rest, '0.5', 1), '22P02', undef, $what);
	next_call_served($what);
	connection_kept($what);

	# (b) pg_cancel_backend from another session
	$what = "pg_cancel_backend, $shape";
	my $bg = start_bg($l, paused_query($rows, $width, $rest, '60', 0));
	if (ok(poll_until($l, "SELECT count(*) FROM ($sleeper) s", '1'), "$what: the caller is paused"))
	{
		my $pid = $l->safe_psql('postgres', $sleeper);
		$l->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
	}
	my ($ret, $out, $err) = finish_bg($bg);
	like($err, qr/57014: canceling statement due to user request/, "$what: 57014");
	next_call_served($what);
	connection_kept($what);

	# (c) statement_timeout
	$what = "statement_timeout, $shape";
	query_fails($l, "SET statement_timeout = '700ms'; " . paused_query($rows, $width, $rest, '60', 0),
		'57014', qr/statement timeout/, $what);
	next_call_served($what);
	connection_kept($what);
}

# --- abandoned while waiting for the connection, and while its request is sent ---------
my $busy = start_bg($l, q{SELECT * FROM dbpool_query('a', 'SELECT pg_sleep(1)::text') AS t(v text)});
ok(poll_until($f, q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'abandon' AND state = 'active'}, '1'),
	'the connection is busy');
query_fails($l, q{SET statement_timeout = '200ms'; SELECT * FROM dbpool_query('a', 'SELECT 2') AS t(x int)},
	'57014', qr/statement timeout/, 'abandoned while waiting for the connection');
my ($ret, $out, $err) = finish_bg($busy);
is($ret, 0, 'the busy call completes') or diag($err);
next_call_served('abandoned while waiting');
# a request larger than the 8 kB request queue, abandoned by 22P02 once its rows stream
my $big = 'x' x 300_000;
query_fails($l, "SELECT count(*) FROM dbpool_query('a', \$q\$SELECT 'x', repeat('x', 1000) FROM generate_series(1, 78) /* $big */\$q\$) AS t(a int, r text)",
	'22P02', undef, 'a 300 kB request abandoned by 22P02');
next_call_served('a 300 kB request abandoned');
connection_kept('after waiting and large requests');

ok(!$l->log_contains(qr/terminated by signal|terminating any other active server processes/),
	'L never crashed');

done_testing();
