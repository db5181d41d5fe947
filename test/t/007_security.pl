# Security: a non-superuser's pool must authenticate with a password (no borrowing of the
# server's trust access), using a pool needs a grant from its owner, only the owner alters
# or drops it, and the password never shows in dbpool_pools, errors or the server log.
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $pw = 'Pw_dbpool_9f3Kq7';          # app's real password
my $wrong_pw = 'Wrong_dbpool_5Xz2';    # a wrong one, set later with alter
my $trust_pw = 'Unused_dbpool_3Hh8';   # sent to a role F trusts

my $f = foreign_node('F', 25561, "password_encryption = 'scram-sha-256'\n");
$f->safe_psql('postgres', qq{
	CREATE ROLE app LOGIN PASSWORD '$pw';
	CREATE ROLE trusted_role LOGIN;
	CREATE TABLE secrets(x int);
	GRANT SELECT ON secrets TO app;
	INSERT INTO secrets VALUES (7);
});
# app must authenticate with SCRAM; every other role is trusted (the TAP default).
require_password($f, 'app', 1);
is($f->safe_psql('postgres', q{SELECT count(*) FROM pg_hba_file_rules WHERE user_name = '{app}' AND auth_method = 'scram-sha-256'}),
	'2', 'F requires a password from app');

# PostgreSQL::Test::Cluster sets log_statement = all: PostgreSQL itself would then log every
# statement text, passwords in dbpool_create_pool calls included.  What is checked here is
# dbpool's own logging, so statements are not logged (errors still log their statement).
my $l = local_node('L', 25560, "log_statement = none\n");
$l->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	CREATE ROLE bob LOGIN;
	GRANT EXECUTE ON FUNCTION dbpool_create_pool, dbpool_alter_pool, dbpool_drop_pool,
		dbpool_grant_usage, dbpool_revoke_usage, dbpool_query, dbpool_exec TO alice, bob;
});

my $ci_nopw = pool_conninfo($f, 'user=app');
my $ci_pw = pool_conninfo($f, 'user=app', "password=$pw");
my $ci_wrong = pool_conninfo($f, 'user=app', "password=$wrong_pw");
my $ci_trust = pool_conninfo($f, 'user=trusted_role', "password=$trust_pw");
my $q_user = q{SELECT u FROM dbpool_query('apool', 'SELECT current_user::text') AS t(u text)};

# --- a non-superuser needs a password -------------------------------------------------
my $r = run_sql($l, "SELECT dbpool_create_pool('nopw', " . quote_literal($ci_nopw) . ")",
	user => 'alice');
isnt($r->{ret}, 0, 'alice cannot create a pool without a password');
like($r->{err}, qr/password/i, 'the error is about the password');
query_ok($l, q{SELECT count(*) FROM dbpool_pools WHERE name = 'nopw'}, '0', 'no pool nopw');

query_ok($l, "SELECT dbpool_create_pool('apool', " . quote_literal($ci_pw) . ")", '',
	'alice creates a pool with a password', user => 'alice');
query_ok($l, $q_user, 'app', 'alice queries her pool, as app on F', user => 'alice');
query_ok($l, q{SELECT owner::text FROM dbpool_pools WHERE name = 'apool'}, 'alice',
	'alice owns apool');

# A pool of alice naming a role F trusts must not connect.
$r = run_sql($l, "SELECT dbpool_create_pool('tpool', " . quote_literal($ci_trust) . ")",
	user => 'alice');
is($r->{ret}, 0, 'alice creates a pool for a role F trusts') or diag($r->{err});
query_fails($l, q{SELECT u FROM dbpool_query('tpool', 'SELECT current_user::text') AS t(u text)},
	undef, qr/password is required/i,
	'a pool of alice that F does not ask for a password fails at connect', user => 'alice');
is(remote_count($f, "usename = 'trusted_role'"), '0', 'no session of trusted_role stays on F');

# The superuser may use the server's trust access.
$l->safe_psql('postgres',
	"SELECT dbpool_create_pool('supool', " . quote_literal(pool_conninfo($f, 'user=trusted_role')) . ")");
query_ok($l, q{SELECT u FROM dbpool_query('supool', 'SELECT current_user::text') AS t(u text)},
	'trusted_role', 'a superuser pool without a password works');

# --- usage grants -----------------------------------------------------------------------
query_fails($l, $q_user, '42501', qr/apool/, 'bob cannot use apool without a grant',
	user => 'bob');
query_fails($l, q{SELECT dbpool_exec('apool', 'SELECT 1')}, '42501', undef,
	'nor through dbpool_exec', user => 'bob');
query_ok($l, q{SELECT dbpool_grant_usage('apool', 'bob')}, '', 'alice grants usage to bob',
	user => 'alice');
query_ok($l, $q_user, 'app', 'bob can use apool after the grant', user => 'bob');
query_ok($l, q{SELECT x FROM dbpool_query('apool', 'SELECT x FROM secrets') AS t(x int)}, '7',
	'and reads what app may read', user => 'bob');
query_fails($l, q{SELECT dbpool_alter_pool('apool', '{"max_size": 3}')}, '42501', undef,
	'bob cannot alter apool', user => 'bob');
query_fails($l, q{SELECT dbpool_drop_pool('apool')}, '42501', undef,
	'bob cannot drop apool', user => 'bob');
query_fails($l, q{SELECT dbpool_grant_usage('apool', 'bob')}, '42501', undef,
	'bob cannot grant usage on apool', user => 'bob');
query_ok($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'apool'}, '10',
	'apool unchanged');
query_ok($l, q{SELECT dbpool_revoke_usage('apool', 'bob')}, '', 'alice revokes usage',
	user => 'alice');
query_fails($l, $q_user, '42501', undef, 'bob cannot use apool after the revoke',
	user => 'bob');
query_ok($l, q{SELECT dbpool_alter_pool('apool', '{"max_size": 3}')}, '',
	'alice alters her pool', user => 'alice');
query_ok($l, q{SELECT max_size FROM dbpool_pools WHERE name = 'apool'}, '3', 'altered');

# --- the password stays secret ----------------------------------------------------------
my $shown = $l->safe_psql('postgres', q{SELECT conninfo FROM dbpool_pools WHERE name = 'apool'});
unlike($shown, qr/\Q$pw\E/, 'dbpool_pools.conninfo hides the password (superuser)');
like($shown, qr/\*{8}/, 'dbpool_pools.conninfo shows ********');
like($shown, qr/user=app/, 'dbpool_pools.conninfo keeps the other parts');
$r = run_sql($l, q{SELECT conninfo FROM dbpool_pools WHERE name = 'apool'}, user => 'alice');
unlike($r->{out}, qr/\Q$pw\E/, 'dbpool_pools.conninfo hides the password (owner)');

# A wrong password: the error (local and in the log) must not show either password.
query_ok($l, "SELECT dbpool_alter_pool('apool', " . quote_literal(qq({"conninfo": "$ci_wrong"})) . ")",
	'', 'alice sets a wrong password', user => 'alice');
$r = query_fails($l, $q_user, undef, qr/apool/, 'a wrong password fails', user => 'alice');
unlike($r->{err}, qr/\Q$wrong_pw\E|\Q$pw\E/, 'the error does not show the password');
query_ok($l, "SELECT dbpool_alter_pool('apool', " . quote_literal(qq({"conninfo": "$ci_pw"})) . ")",
	'', 'alice restores the password', user => 'alice');
ok(poll_until($l, $q_user, 'app', 60, user => 'alice'), 'apool works again');
$shown = $l->safe_psql('postgres', q{SELECT conninfo FROM dbpool_pools WHERE name = 'apool'});
unlike($shown, qr/\Q$pw\E/, 'dbpool_pools.conninfo hides the password after alter');

my $log = slurp_file($l->logfile);
unlike($log, qr/\Q$pw\E/, "L's server log never shows app's password");
unlike($log, qr/\Q$wrong_pw\E/, "L's server log never shows the wrong password");
unlike($log, qr/\Q$trust_pw\E/, "L's server log never shows tpool's password");

done_testing();
