# The foreign session's settings, as dblink and psql on the foreign server see them.
#
# Item 1: text that dbpool_query reads into date and time columns is read with the foreign
# session's DateStyle (field order) and IntervalStyle, whatever the caller's, as dblink
# does.  Item 2: the caller's SQL means on the foreign server what it means there in psql:
# the foreign database's and role's DateStyle order, IntervalStyle, TimeZone and
# extra_float_digits apply to its literals and renderings, also after a caller changed
# them on the connection.  Guards: values still arrive exactly where dblink itself reads
# foreign output wrongly (zone abbreviations in SQL-style output, Postgres style with YMD).
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $f = foreign_node('F', 25641);
my $l = local_node('L', 25640);
$l->safe_psql('postgres', 'CREATE EXTENSION dblink');

# F's databases and a role, each with its own defaults.
$f->safe_psql(
	'postgres', q{
CREATE DATABASE fdmy;
ALTER DATABASE fdmy SET datestyle = 'SQL, DMY';
ALTER DATABASE fdmy SET intervalstyle = 'sql_standard';
CREATE DATABASE ffloat;
ALTER DATABASE ffloat SET extra_float_digits = 0;
CREATE DATABASE fnyc;
ALTER DATABASE fnyc SET datestyle = 'SQL, MDY';
ALTER DATABASE fnyc SET timezone = 'America/New_York';
CREATE DATABASE fpymd;
ALTER DATABASE fpymd SET datestyle = 'Postgres, YMD';
ALTER DATABASE fpymd SET timezone = 'UTC';
CREATE ROLE r_ymd LOGIN;
ALTER ROLE r_ymd SET datestyle = 'ISO, YMD';
});

my %ci = (
	g => pool_conninfo($f),
	dmy => join(' ', 'host=' . $f->host, 'port=' . $f->port, 'dbname=fdmy'),
	flt => join(' ', 'host=' . $f->host, 'port=' . $f->port, 'dbname=ffloat'),
	nyc => join(' ', 'host=' . $f->host, 'port=' . $f->port, 'dbname=fnyc'),
	pymd => join(' ', 'host=' . $f->host, 'port=' . $f->port, 'dbname=fpymd'),
	role => pool_conninfo($f, 'user=r_ymd'));
for my $p (sort keys %ci)
{
	$l->safe_psql('postgres',
		"SELECT dbpool_create_pool('$p', " . quote_literal($ci{$p}) . ', max_size => 1)');
}

# dbpool_query and dblink on the same SQL and column list; returns both outputs (or
# 'ERROR <sqlstate>').  $pre (settings, or '') runs first in the same session.
sub both
{
	my ($pool, $pre, $sql, $cols, $params) = @_;
	my $p = defined $params ? ", $params" : '';
	my %out;
	for my $side ('dbpool', 'dblink')
	{
		my $from = $side eq 'dbpool'
		  ? 'dbpool_query(' . quote_literal($pool) . ', ' . quote_literal($sql) . "$p)"
		  : 'dblink(' . quote_literal($ci{$pool}) . ', ' . quote_literal($sql) . ')';
		my $r = run_sql($l, ($pre ? "$pre; " : '') . "SELECT * FROM $from AS t($cols)");
		$out{$side} = $r->{ret} == 0 ? $r->{out} : 'ERROR ' . ($r->{sqlstate} // '?');
	}
	return ($out{dbpool}, $out{dblink});
}

# Assert that dbpool gives $expected, and that dblink (the model) does too.
sub as_dblink
{
	my ($name, $pool, $pre, $sql, $cols, $expected) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($a, $b) = both($pool, $pre, $sql, $cols);
	is($b, $expected, "$name: dblink gives $expected");
	is($a, $expected, "$name: dbpool gives what dblink gives");
}

# --- item 1: text read into date and time columns ----------------------------------------
as_dblink('issue example, caller ISO, DMY', 'g', q{SET datestyle = 'ISO, DMY'},
	q{SELECT '03/04/2024'}, 'd date', '2024-03-04');
as_dblink('issue example, caller ISO, YMD (dbpool raised 22008)', 'g', q{SET datestyle = 'ISO, YMD'},
	q{SELECT '07.05.2000 10:20:30'}, 'd timestamp', '2000-07-05 10:20:30');
as_dblink('timestamptz, caller ISO, DMY', 'g', q{SET datestyle = 'ISO, DMY'; SET timezone = 'UTC'},
	q{SELECT '03/04/2024 10:20:30+02'}, 'd timestamptz', '2024-03-04 08:20:30+00');
as_dblink('date[], caller ISO, DMY', 'g', q{SET datestyle = 'ISO, DMY'},
	q{SELECT '{03/04/2024,12/11/2023}'}, 'd date[]', '{2024-03-04,2023-12-11}');
as_dblink('daterange, caller ISO, YMD', 'g', q{SET datestyle = 'ISO, YMD'},
	q{SELECT '[03/04/2024,05/06/2024)'}, 'd daterange', '[2024-03-04,2024-05-06)');
as_dblink('to_char output, caller SQL, DMY', 'g', q{SET datestyle = 'SQL, DMY'},
	q{SELECT to_char(date '2024-03-04', 'MM/DD/YYYY')}, 'd date', '04/03/2024');
as_dblink('foreign DMY order, caller ISO, MDY', 'dmy', q{SET datestyle = 'ISO, MDY'},
	q{SELECT '03/04/2024'}, 'd date', '2024-04-03');
as_dblink('foreign sql_standard IntervalStyle, text read into interval', 'dmy',
	q{SET intervalstyle = postgres}, q{SELECT '-1 2:03:04'}, 'i interval', '-1 days -02:03:04');

# --- item 2: the foreign database's and role's settings apply to the caller's SQL ---------
my $ex2 = q{SELECT to_char('03/04/2024'::date, 'YYYY-MM-DD'), extract(epoch FROM '-1 2:03:04'::interval)::text};
is($f->safe_psql('fdmy', $ex2), '2024-04-03|-93784.000000', 'issue example: psql on F');
as_dblink('issue example (SQL, DMY and sql_standard on F)', 'dmy', '', $ex2, 'a text, b text',
	'2024-04-03|-93784.000000');
for my $i (1 .. 3)
{
	# the parameter is read by F too; the second and third calls bind a prepared statement
	my ($a) = both('dmy', '', q{SELECT to_char($1::date, 'YYYY-MM-DD')}, 'a text',
		q{ARRAY['03/04/2024']});
	is($a, '2024-04-03', "a parameter is read with F's field order (call $i)");
}
as_dblink("an interval literal read with F's sql_standard, read back", 'dmy',
	'SET intervalstyle = postgres', q{SELECT '-1 2:03:04'::interval}, 'i interval', '-1 days -02:03:04');
as_dblink("a date printed with F's SQL, DMY reads back", 'dmy', q{SET datestyle = 'ISO, MDY'},
	q{SELECT '2024-04-03'::date}, 'd date', '2024-04-03');

my $role_sql = q{SELECT to_char('01/02/03'::date, 'YYYY-MM-DD')};
$f->psql('postgres', $role_sql, connstr => $f->connstr('postgres') . ' user=r_ymd',
	stdout => \my $role_out);
is($role_out, '2001-02-03', "psql on F as r_ymd: the role's YMD applies");
my ($ra) = both('role', '', $role_sql, 'a text');
is($ra, '2001-02-03', "the role's DateStyle setting applies to the caller's SQL");

my $flt_sql = q{SELECT (0.1::float8 + 0.2::float8)::text};
is($f->safe_psql('ffloat', $flt_sql), '0.3', 'psql on F with extra_float_digits 0');
as_dblink("F's extra_float_digits applies to the caller's SQL", 'flt', '', $flt_sql, 'a text', '0.3');

# The caller changes settings on the pool's one connection; the next call sees F's own.
is($l->safe_psql('postgres',
		q{SELECT dbpool_exec('dmy', $$SET datestyle = 'ISO, YMD'; SET intervalstyle = postgres; SET extra_float_digits = 3$$)}),
	'SET', "a call changes the connection's settings");
my ($after) = both('dmy', '', $ex2, 'a text, b text');
is($after, '2024-04-03|-93784.000000', "the next call on that connection has F's DateStyle and IntervalStyle back");
is($l->safe_psql('postgres', q{SELECT count(*) FROM dbpool_connections WHERE pool = 'dmy'}), '1',
	'the same single connection served both');

# F's TimeZone applies to literals (not forced by dbpool).
my $tz_sql = q{SELECT extract(epoch FROM '2024-01-15 12:00'::timestamptz)::bigint::text};
is($f->safe_psql('fnyc', $tz_sql), '1705338000', 'psql on F: New York time');
as_dblink("F's TimeZone applies", 'nyc', '', $tz_sql, 'a text', '1705338000');

# --- guards: dbpool returns F's value where dblink misreads F's output ------------------
# SQL-style output carries F's zone abbreviation (EST), which the Australia set reads as +10.
my ($nyc, $nyc_dbl) = both('nyc', q{SET timezone = 'UTC'; SET timezone_abbreviations = 'Australia'},
	q{SELECT '2024-01-15 12:00:00+00'::timestamptz}, 't timestamptz');
is($nyc, '2024-01-15 12:00:00+00', 'F with SQL style and EST, caller with the Australia set: F\'s instant');
diag("(dblink there: $nyc_dbl)");
# Postgres style with YMD prints MM-DD-YYYY, which dblink cannot read back.
my ($pymd, $pymd_dbl) = both('pymd', '', q{SELECT '2000-02-29'::date}, 'd date');
is($pymd, '2000-02-29', "F with Postgres, YMD: F's date");
diag("(dblink there: $pymd_dbl)");
# Postgres style starts with the day name; the Australia set has a zone "SAT".
my ($sat, $sat_dbl) = both('pymd', q{SET timezone = 'UTC'; SET timezone_abbreviations = 'Australia'},
	q{SELECT '2000-01-01 07:59:59+00'::timestamptz}, 't timestamptz');
is($sat, '2000-01-01 07:59:59+00', "F with Postgres style, a Saturday, caller with the Australia set: F's instant");
diag("(dblink there: $sat_dbl)");

done_testing();
