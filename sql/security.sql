-- Privileges: who may create, alter, drop and use pools.
CREATE ROLE regress_alice LOGIN;
CREATE ROLE regress_bob LOGIN;
CREATE ROLE regress_readers;
GRANT SELECT ON fconn TO regress_alice, regress_bob;
GRANT EXECUTE ON FUNCTION err(text) TO PUBLIC;

-- creating needs EXECUTE, revoked from PUBLIC
SET ROLE regress_alice;
SELECT err($$SELECT dbpool_create_pool('alice', 'dbname=x password=pw', min_size => 0)$$);
RESET ROLE;
GRANT EXECUTE ON FUNCTION dbpool_create_pool(text, text, int, int, int, int, int, int, text, int, int, int, int, int, int, int, text, int, int, int, float8, float8, int, boolean, int, int, text) TO regress_alice;

-- a non-superuser's pool must bring its own password, and nothing from the server's files
SET ROLE regress_alice;
SELECT err($$SELECT dbpool_create_pool('alice', (SELECT conninfo FROM fconn), min_size => 0)$$);
SELECT err($$SELECT dbpool_create_pool('alice', (SELECT conninfo FROM fconn) || ' password=pw passfile=/tmp/x', min_size => 0)$$);
SELECT err($$SELECT dbpool_create_pool('alice', (SELECT conninfo FROM fconn) || ' password=pw service=foo', min_size => 0)$$);
SELECT err($$SELECT dbpool_create_pool('alice', (SELECT conninfo FROM fconn) || ' password=pw sslcert=/tmp/c', min_size => 0)$$);
SELECT err($$SELECT dbpool_create_pool('alice', (SELECT conninfo FROM fconn) || ' password=pw sslrootcert=/etc/passwd', min_size => 0)$$);
SELECT dbpool_create_pool('alice', (SELECT conninfo FROM fconn) || ' password=pw', min_size => 0);
-- the password must actually be used: this server trusts local connections
SELECT err($$SELECT * FROM dbpool_query('alice', 'SELECT 1') AS t(x int)$$);
SELECT name, owner FROM dbpool_pools WHERE name = 'alice';
-- the owner may alter it, but not drop that rule
SELECT dbpool_alter_pool('alice', '{"max_size": 2}');
SELECT err($$SELECT dbpool_alter_pool('alice', json_build_object('conninfo', (SELECT conninfo FROM fconn))::jsonb)$$);
-- and may not touch a superuser's pool
SELECT err($$SELECT * FROM dbpool_query('regress', 'SELECT 1') AS t(x int)$$);
SELECT err($$SELECT dbpool_alter_pool('regress', '{"max_size": 1}')$$);
SELECT err($$SELECT dbpool_drop_pool('regress')$$);
SELECT err($$SELECT dbpool_grant_usage('regress', 'regress_alice')$$);
RESET ROLE;

-- usage is granted per pool, to roles or groups
SET ROLE regress_bob;
SELECT err($$SELECT * FROM dbpool_query('regress', 'SELECT 1') AS t(x int)$$);
SELECT err($$SELECT dbpool_exec('regress', 'SELECT 1')$$);
RESET ROLE;
SELECT dbpool_grant_usage('regress', 'regress_bob');
SELECT dbpool_grant_usage('regress', 'regress_bob');  -- twice is fine
SET ROLE regress_bob;
SELECT * FROM dbpool_query('regress', 'SELECT 1') AS t(x int);
SELECT err($$SELECT dbpool_alter_pool('regress', '{"max_size": 1}')$$);
SELECT err($$SELECT dbpool_drop_pool('regress')$$);
RESET ROLE;
SELECT dbpool_revoke_usage('regress', 'regress_bob');
SET ROLE regress_bob;
SELECT err($$SELECT * FROM dbpool_query('regress', 'SELECT 1') AS t(x int)$$);
RESET ROLE;
SELECT dbpool_grant_usage('regress', 'regress_readers');
GRANT regress_readers TO regress_bob;
SET ROLE regress_bob;
SELECT * FROM dbpool_query('regress', 'SELECT 2') AS t(x int);
RESET ROLE;
SELECT err($$SELECT dbpool_grant_usage('regress', NULL)$$);
SELECT err($$SELECT dbpool_grant_usage('nope', 'regress_bob')$$);
SELECT err($$SELECT dbpool_grant_usage('regress', 'no_such_role')$$);

-- the owner drops its own pool; a superuser may drop anyone's
SET ROLE regress_alice;
SELECT dbpool_drop_pool('alice');
RESET ROLE;

-- administration happens only in dbpool.database; queries work from any database
\c dbpool_regress_foreign
CREATE EXTENSION dbpool;
SELECT dbpool_create_pool('elsewhere', 'dbname=x');
SELECT * FROM dbpool_query('regress', 'SELECT 3') AS t(x int);
DROP EXTENSION dbpool;
\c contrib_regression

-- the worker reads the configuration as superuser: operators planted in a user schema
-- must not run there (a sequence witnesses a call even if the read then fails)
CREATE SEQUENCE planted_calls;
CREATE FUNCTION public.planted_eq(oid, regrole) RETURNS bool LANGUAGE sql
    AS $$ SELECT nextval('public.planted_calls') > 0 $$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regrole, FUNCTION = public.planted_eq);
CREATE FUNCTION public.planted_eq2(text, text) RETURNS bool LANGUAGE sql
    AS $$ SELECT nextval('public.planted_calls') > 0 $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.planted_eq2);
SELECT err($$SELECT * FROM dbpool_query('no_such_pool', 'SELECT 1') AS t(x int)$$);
SELECT dbpool_alter_pool('regress', '{}');
SELECT * FROM dbpool_query('regress', 'SELECT 4') AS t(x int);
SELECT is_called AS planted_operator_called FROM planted_calls;
DROP OPERATOR public.= (oid, regrole);
DROP OPERATOR public.= (text, text);
DROP FUNCTION public.planted_eq(oid, regrole);
DROP FUNCTION public.planted_eq2(text, text);
DROP SEQUENCE planted_calls;

SELECT dbpool_revoke_usage('regress', 'regress_readers');
REVOKE ALL ON fconn FROM regress_alice, regress_bob;
REVOKE EXECUTE ON FUNCTION dbpool_create_pool(text, text, int, int, int, int, int, int, text, int, int, int, int, int, int, int, text, int, int, int, float8, float8, int, boolean, int, int, text) FROM regress_alice;
DROP ROLE regress_alice, regress_bob, regress_readers;
SELECT name, owner FROM dbpool_pools ORDER BY name;
