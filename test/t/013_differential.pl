# Differential test: dbpool_query against dblink on several hundred generated cases.
#
# L (dbpool preloaded, dblink) calls F.  Each case is a query and a column definition list:
# values of the core types and their arrays, NULLs, unicode, multi-row and empty results,
# parameters, errors, typmods, text read into date and time columns, literals whose
# meaning depends on the foreign settings, and foreign-side text renderings.  Each case
# runs once through dbpool and once through dblink (with the parameters written in as
# literals; each parameterized case also has a twin that dbpool runs with the literals),
# under its own randomly chosen caller settings (DateStyle in every order, IntervalStyle,
# TimeZone, extra_float_digits, bytea_output, timezone_abbreviations), in five phases of
# the foreign database's own defaults (ALTER DATABASE ... SET, a new pool and a new dblink
# connection for each), from a UTF8 and from a LATIN1 database on L.
#
# Results are compared inside L: the rows as text (rendered with the caller's settings)
# and as record_send() bytes (exact, whatever the settings); errors by SQLSTATE only.
# Every difference is reported with its case, settings and both results; there must be
# none.
#
# DBPOOL_DIFF_SEED (default 20240304) seeds the generator.  DBPOOL_DIFF_VERBOSE=n shows
# up to n differences per run (default 25).
#
# Deliberately not generated, because they differ by design (see doc/reference.md):
# date/time values rendered as text on the foreign side (date::text, or a date read into
# a text column) while the foreign DateStyle is not ISO (dbpool's connections print ISO
# with the foreign field order), multi-statement calls (dblink keeps the last result),
# settings changed by the caller's SQL, and foreign time zones whose abbreviations the
# caller's timezone_abbreviations reads otherwise (dblink misreads SQL-style output
# there, and the Australia set reads the day name "Sat" that Postgres-style output starts
# with as a zone; 015_foreign_settings.pl checks dbpool against F itself), and a foreign
# DateStyle of Postgres with YMD order, whose date output (MM-DD-YYYY) dblink cannot read
# back (22008; 015 checks dbpool against F there too).
use strict;
use warnings FATAL => 'all';

use FindBin;
use lib "$FindBin::RealBin/../perl";
use DbpoolTest;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $seed = $ENV{DBPOOL_DIFF_SEED} // 20240304;
my $verbose = $ENV{DBPOOL_DIFF_VERBOSE} // 25;
diag("DBPOOL_DIFF_SEED=$seed");
srand($seed);

my $f = foreign_node('F', 25621);
my $l = local_node('L', 25620);

# F: a UTF8 database whose defaults the phases change.
$f->safe_psql('postgres',
	q{CREATE DATABASE fdb ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
my $fconn = join(' ', 'host=' . $f->host, 'port=' . $f->port, 'dbname=fdb');

# L: one UTF8 and one LATIN1 database, each with dbpool and dblink.
my @dbs = ('u8', 'lat1');
$l->safe_psql('postgres',
	q{CREATE DATABASE u8 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
$l->safe_psql('postgres',
	q{CREATE DATABASE lat1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});

# ---------------------------------------------------------------------------------------
# The generator.  Every SQL text is ASCII (non-ASCII characters are written U&'...' or
# chr(n)), so that the same cases load into both databases.

sub pick { return $_[ int(rand(scalar @_)) ]; }

# Literals of each type, valid input under any foreign DateStyle and IntervalStyle (ISO
# dates, intervals whose fields are all signed or all positive).
my %vals = (
	bool => [qw(true false)],
	int2 => [ '0', '-32768', '32767' ],
	int4 => [ '42', '-2147483648', '2147483647' ],
	int8 => [ '9223372036854775807', '-9223372036854775808', '0' ],
	numeric => [
		q{'NaN'}, q{'Infinity'}, q{'-Infinity'}, '0.000000000000000000001',
		'123456789012345678901234567890.123456789', '1.50', '-0.0'
	],
	float4 => [
		q{'NaN'}, q{'Infinity'}, q{'-Infinity'}, '1.1', '3.4028235e38', '1e-45', q{'-0'},
		'0.1'
	],
	float8 => [
		'(0.1::float8 + 0.2::float8)', '1e308', '5e-324', q{'NaN'}, q{'-Infinity'},
		q{'-0'}, '(1::float8 / 3)', '2.5'
	],
	text => [
		q{'plain'}, q{'it''s'}, q{''}, q{E'tab\there\nnewline'}, q{'back\slash'},
		q{'{br,"q"}'}, q{U&'caf\00e9'}, q{U&'euro \20ac smile \+01f600'}, 'chr(255)',
		q{'NULL'}, q{' lead and trail '}
	],
	bytea => [ q{'\x00ff10'}, q{'abc'}, q{''}, q{'\x5c27'} ],
	date => [
		q{'2024-03-04'}, q{'infinity'}, q{'-infinity'}, q{'0044-03-15 BC'},
		q{'2000-02-29'}, q{'1999-12-31'}
	],
	time => [ q{'10:20:30.123456'}, q{'24:00:00'}, q{'00:00'} ],
	timetz => [ q{'10:20:30+05:30'}, q{'23:59:59.999999-12'}, q{'00:00:00+00'} ],
	timestamp => [
		q{'2024-03-04 10:20:30.5'}, q{'infinity'}, q{'1999-12-31 23:59:59.999999'},
		q{'0044-03-15 12:00:00 BC'}
	],
	# 1970-2037 only: older times have local-mean-time zone abbreviations
	timestamptz => [
		q{'2024-03-04 10:20:30.5+01'}, q{'2024-07-01 00:00:00+00'}, q{'infinity'},
		q{'-infinity'}, q{'1999-12-31 23:59:59.999999-08'}, q{'2037-06-30 12:34:56+05:30'}
	],
	interval => [
		q{'1 year 2 mons'}, q{'+1 year +2 mons -3 days -04:05:06.789'},
		q{'-1 year -2 mons +3 days +04:05:06'}, q{'P1Y2M3DT4H5M6S'}, q{'00:00:00.000001'},
		q{'-178000000 years'}, q{'@ 1 hour ago'}, q{'0'}
	],
	uuid => [q{'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'}],
	json => [ q{'{"b": 1, "a": [1, 2.50, "x\u00e9"]}'}, q{'[]'}, q{'null'} ],
	jsonb => [ q{'{"b": 1, "a": [1, 2.50, "x\u00e9"]}'}, q{'"\u20ac"'}, q{'1e3'} ],
	inet => [ q{'192.168.0.1/24'}, q{'::1'}, q{'2001:db8::1/64'} ],
	cidr => [ q{'10.0.0.0/8'}, q{'2001:db8::/32'} ],
	macaddr => [q{'08:00:2b:01:02:03'}],
	point => [ q{'(1.5,-2)'}, q{'(0.1,1e300)'} ],
	int4range => [ q{'[1,10)'}, q{'empty'}, q{'(,5]'} ],
	daterange => [ q{'[2024-03-04,2024-04-01)'}, q{'(,2024-01-01)'} ],
	tstzrange => [ q{'[2024-03-04 10:00+00,infinity)'}, q{'empty'} ],
);
my @scalar_types = sort keys %vals;
my @array_types = qw(bool int4 int8 numeric float4 float8 text bytea date time timestamp
  timestamptz interval uuid jsonb inet point int4range daterange);
my %is_float = (float4 => 1, float8 => 1, point => 1);

# A random value expression of a type (scalar or array), NULL with probability $pnull.
sub value_of
{
	my ($type, $pnull) = @_;
	return "NULL::$type" if rand() < ($pnull // 0);
	if ($type =~ /^(\w+)\[\]$/)
	{
		my $et = $1;
		my $n = int(rand(4));
		return "'{}'::$type" if $n == 0;
		my @e = map { rand() < 0.15 ? 'NULL' : pick(@{ $vals{$et} }) . "::$et" } 1 .. $n;
		return "ARRAY[" . join(', ', @e) . "]::$type";
	}
	return pick(@{ $vals{$type} }) . "::$type";
}

sub random_type
{
	return rand() < 0.3 ? pick(@array_types) . '[]' : pick(@scalar_types);
}

sub has_float
{
	my ($types) = @_;
	return (grep { my $t = $_; $t =~ s/\[\]$//; $is_float{$t} } @$types) ? 1 : 0;
}

my @cases;

sub add_case
{
	my (%c) = @_;
	$c{lit} //= $c{sql};
	$c{flt} //= 0;
	push @cases, \%c;
}

# typed: one value of a type read into that type
for (1 .. 140)
{
	my $t = random_type();
	add_case(
		kind => 'typed',
		sql => 'SELECT ' . value_of($t, 0.1) . ' AS v',
		coldef => "v $t",
		flt => has_float([$t]));
}
# 2-D arrays
for my $t (qw(int4 text date float8 interval))
{
	my @r = map { '[' . join(', ', map { pick(@{ $vals{$t} }) . "::$t" } 1 .. 2) . ']' } 1 .. 2;
	add_case(
		kind => 'typed',
		sql => 'SELECT ARRAY[' . join(', ', @r) . "]::${t}[] AS v",
		coldef => "v ${t}[]",
		flt => has_float([$t]));
}

# rows: several columns, 0 to 4 rows, NULLs
for (1 .. 60)
{
	my @types = map { random_type() } 1 .. 1 + int(rand(4));
	my $nrows = int(rand(5));
	my $cols = join(', ', map { "c$_ $types[$_]" } 0 .. $#types);
	my $sql;
	if ($nrows == 0)
	{
		$sql = 'SELECT '
		  . join(', ', map { value_of($types[$_]) . " AS c$_" } 0 .. $#types)
		  . ' WHERE false';
	}
	else
	{
		$sql = join(
			' UNION ALL ',
			map {
				'SELECT ' . join(', ', map { value_of($types[$_], 0.2) . " AS c$_" } 0 .. $#types)
			} 1 .. $nrows);
	}
	add_case(kind => 'rows', sql => $sql, coldef => $cols, flt => has_float(\@types));
}
add_case(kind => 'rows', sql => 'SELECT g, g * 1.5::float8 FROM generate_series(1, 300) g',
	coldef => 'a int, b float8', flt => 1);
add_case(kind => 'rows', sql => q{SELECT g, repeat(U&'\00e9', g) FROM generate_series(0, 50) g},
	coldef => 'a int, b text');

# text2typed (issue item 1): text read into date and time columns with the caller's
# column list; the reader must use the foreign session's DateStyle and IntervalStyle.
my @t2t = (
	[ date => q{'03/04/2024'} ], [ date => q{'03-04-2024'} ], [ date => q{'03.04.2024'} ],
	[ date => q{'04/03/24'} ], [ date => q{'01/02/03'} ], [ date => q{'13/04/2024'} ],
	[ date => q{'2024/03/04'} ], [ date => q{'March 4, 2024'} ],
	[ date => q{to_char(date '2024-03-04', 'DD/MM/YYYY')} ],
	[ date => q{to_char(date '2024-03-04', 'MM/DD/YYYY')} ],
	[ timestamp => q{'07.05.2000 10:20:30'} ], [ timestamp => q{'03/04/2024 10:20'} ],
	[ timestamp => q{'12/13/2024 01:02:03 PM'} ],
	[ timestamptz => q{'03/04/2024 10:20:30+02'} ],
	[ timestamptz => q{'03/04/2024 10:20:30 CET'} ],
	[ timestamptz => q{'03/04/2024 10:20:30'} ],
	[ 'date[]' => q{'{03/04/2024,12/11/2023}'} ],
	[ daterange => q{'[03/04/2024,05/06/2024)'} ],
	[ tsrange => q{'[03/04/2024 10:00,03/05/2024 11:00)'} ],
	[ interval => q{'-1 2:03:04'} ], [ interval => q{'1 2:03:04'} ],
	[ interval => q{'-1-2 +3 -4:05:06'} ], [ interval => q{'-2 days 03:00'} ],
	[ 'interval[]' => q{'{"-1 2:03:04","1 day"}'} ], [ time => q{'10:20:30 PM'} ],
	[ timetz => q{'10:20:30 PM+02'} ]);
for my $rep (1 .. 3)
{
	for my $c (@t2t)
	{
		add_case(
			kind => 'text2typed',
			sql => "SELECT $c->[1] AS v",
			coldef => "v $c->[0]");
	}
}

# sqllit (issue item 2): literals in the caller's SQL that the foreign session reads with
# its own DateStyle field order, IntervalStyle and TimeZone.
my @sqllit = (
	[ q{SELECT '03/04/2024'::date AS v}, 'v date' ],
	[ q{SELECT to_char('03/04/2024'::date, 'YYYY-MM-DD') AS v}, 'v text' ],
	[
		q{SELECT to_char('03/04/2024'::date, 'YYYY-MM-DD'), extract(epoch FROM '-1 2:03:04'::interval)::text},
		'a text, b text'
	],
	[ q{SELECT '07.05.2000 10:20:30'::timestamp AS v}, 'v timestamp' ],
	[ q{SELECT '01/02/03'::date AS v}, 'v date' ],
	[ q{SELECT '-1 2:03:04'::interval AS v}, 'v interval' ],
	[ q{SELECT extract(epoch FROM '-1 2:03:04'::interval) AS v}, 'v numeric' ],
	[ q{SELECT '-1-2 +3 -4:05:06'::interval AS v}, 'v interval' ],
	[ q{SELECT '03/04/2024 10:00'::timestamptz AS v}, 'v timestamptz' ],
	[ q{SELECT '2024-03-04 10:00'::timestamptz AS v}, 'v timestamptz' ],
	[ q{SELECT to_char('2024-03-04 10:00'::timestamptz, 'YYYY-MM-DD HH24:MI TZ') AS v}, 'v text' ],
	[ q{SELECT date_part('month', '03/04/2024'::date) AS v}, 'v float8' ],
	[ q{SELECT '03/04/2024'::date - '2024-01-01'::date AS v}, 'v int' ],
	[ q{SELECT ARRAY['03/04/2024'::date, '12/11/2023'] AS v}, 'v date[]' ],
	[ q{SELECT '[03/04/2024,05/06/2024)'::daterange AS v}, 'v daterange' ],
	[ q{SELECT to_char('13/04/2024'::date, 'YYYY-MM-DD') AS v}, 'v text' ],
	[ q{SELECT '1 2:03:04'::interval < '1 day'::interval AS v}, 'v bool' ]);
for my $rep (1 .. 3)
{
	add_case(kind => 'sqllit', sql => $_->[0], coldef => $_->[1]) for @sqllit;
}

# sqlfmt: values the foreign side renders as text with its own settings (extra_float_digits,
# IntervalStyle, bytea_output); date/time types are left out (see the top).
my @sqlfmt = (
	[ q{SELECT (0.1::float8 + 0.2::float8)::text AS v}, 'v text' ],
	[ q{SELECT (1::float4 / 3)::text AS v}, 'v text' ],
	[ q{SELECT ARRAY[0.1::float8, 1e300, 1::float8 / 3]::text AS v}, 'v text' ],
	[ q{SELECT json_build_object('f', 0.1::float8 + 0.2::float8)::text AS v}, 'v text' ],
	[ q{SELECT '+1 year -2 days +03:04:05'::interval::text AS v}, 'v text' ],
	[ q{SELECT '-1 year -2 mons'::interval::text AS v}, 'v text' ],
	[ q{SELECT row(1.5::float8, '-1 day'::interval)::text AS v}, 'v text' ],
	[ q{SELECT '\x00ff5c'::bytea::text AS v}, 'v text' ],
	[ q{SELECT 12.50::numeric::text AS v}, 'v text' ],
	[ q{SELECT (0.1::float8 + 0.2::float8) AS v}, 'v float8' ],
	[ q{SELECT (1::float4 / 3) AS v}, 'v float4' ],
	[ q{SELECT g / 7.0::float8 AS v FROM generate_series(1, 5) g}, 'v float8' ]);
for my $rep (1 .. 2)
{
	add_case(kind => 'sqlfmt', sql => $_->[0], coldef => $_->[1], flt => ($_->[0] =~ /float/ ? 1 : 0))
	  for @sqlfmt;
}

# typmod: the caller's column list applies typmods as dblink does
my @typmod = (
	[ q{SELECT 123.456 AS v}, 'v numeric(5,2)' ],
	[ q{SELECT 123456.7 AS v}, 'v numeric(5,2)' ],
	[ q{SELECT 'abcdef' AS v}, 'v varchar(3)' ],
	[ q{SELECT 'ab' AS v}, 'v char(4)' ],
	[ q{SELECT '2024-03-04 10:20:30.56789'::timestamp AS v}, 'v timestamp(0)' ],
	[ q{SELECT '2024-03-04 10:20:30.56789+00'::timestamptz AS v}, 'v timestamptz(2)' ],
	[ q{SELECT '1 day 02:03:04.5'::interval AS v}, 'v interval(0)' ],
	[ q{SELECT '1 year 2 mons 3 days 04:05:06'::interval AS v}, 'v interval day to minute' ],
	[ q{SELECT '10:20:30.987'::time AS v}, 'v time(1)' ],
	[ q{SELECT B'1011' AS v}, 'v bit(4)' ],
	[ q{SELECT ARRAY[1.555, 2.444] AS v}, 'v numeric(4,2)[]' ]);
add_case(kind => 'typmod', sql => $_->[0], coldef => $_->[1]) for @typmod;

# errors: compared by SQLSTATE
my @errors = (
	[ q{SELECT 1/0 AS v}, 'v int' ],
	[ q{SELECT * FROM no_such_table}, 'v int' ],
	[ q{SELECT 'abc' AS v}, 'v int' ],
	[ q{SELECT 70000 AS v}, 'v int2' ],
	[ q{SELECT 1 AS a, 2 AS b}, 'v int' ],
	[ q{SELECT 'x'::int AS v}, 'v int' ],
	[ q{SELEC 1}, 'v int' ],
	[ q{SELECT '2024-02-30'::date AS v}, 'v date' ],
	[ q{SELECT '2024-13-01' AS v}, 'v date' ],
	[ q{SELECT 10 / (3 - g) FROM generate_series(1, 5) g}, 'v int' ],
	[ q{SELECT 'NaN'::float8 AS v}, 'v int' ],
	[ q{SELECT 1e400::float8 AS v}, 'v float8' ],
	[ q{SELECT ARRAY[1, 2] AS v}, 'v int' ],
	[ q{SELECT '{{1,2},{3}}' AS v}, 'v int[]' ],
	[ q{SELECT U&'\20ac' AS v}, 'v text' ],
	[ q{SELECT '[3,1)' AS v}, 'v int4range' ],
	[ q{SELECT 'nonsense' AS v}, 'v interval' ],
	[ q{SELECT '25:00' AS v}, 'v time' ],
	[ q{SELECT 'tomorrow at noon' AS v}, 'v timestamp' ]);
add_case(kind => 'error', sql => $_->[0], coldef => $_->[1]) for @errors;

# params: dbpool's $n parameters; dblink, and a dbpool twin, get the literals.  Only plain
# string literals can be parameters (U&'' is written into the INSERT that loads them).
sub param_literal
{
	my ($v) = @_;
	return $v =~ /^(?:U&)?'.*'$/s ? $v : quote_literal($v);
}
my @param_sets;
for (1 .. 25)
{
	my $t = pick(grep { $_ ne 'float8' && $_ ne 'text' } @scalar_types);
	push @param_sets, [ [ pick(@{ $vals{$t} }) ], ["$t"] ];
}
push @param_sets,
  [ [q{'03/04/2024'}], ['date'] ],
  [ [q{'01/02/03'}], ['date'] ],
  [ [q{'07.05.2000 10:20:30'}], ['timestamp'] ],
  [ [q{'03/04/2024 10:00'}], ['timestamptz'] ],
  [ [q{'-1 2:03:04'}], ['interval'] ],
  [ [q{'-1-2 +3 -4:05:06'}], ['interval'] ],
  [ [q{'{03/04/2024,NULL}'}], ['date[]'] ],
  [ [ q{'it''s'}, q{U&'caf\00e9'} ], [ 'text', 'text' ] ],
  [ [ q{'41'}, 'NULL' ], [ 'int4', 'int4' ] ],
  [ [q{'0.1'}], ['float8'] ],
  [ [q{'{1.5,NaN,-Infinity}'}], ['float8[]'] ],
  [ [q{'\x00ff'}], ['bytea'] ],
  [ [q{'{"k": [1, "x"]}'}], ['jsonb'] ];
for my $ps (@param_sets)
{
	my ($values, $types) = @$ps;
	# literal values only: strip the ::type of the value pools
	my @v = map { my $x = $_; $x =~ s/::\w+(\[\])?$//; $x } @$values;
	next if grep { $_ !~ /^(?:U&)?'.*'$/s && $_ ne 'NULL' && $_ !~ /^-?[\d.e]+$/ && $_ !~ /^(true|false)$/ } @v;
	my @lits = map { $_ eq 'NULL' ? 'NULL' : param_literal($_) } @v;
	my $sql = 'SELECT ' . join(', ', map { '$' . ($_ + 1) . "::$types->[$_] AS c$_" } 0 .. $#v);
	my $lit = 'SELECT ' . join(', ', map { "$lits[$_]::$types->[$_] AS c$_" } 0 .. $#v);
	my $cols = join(', ', map { "c$_ $types->[$_]" } 0 .. $#v);
	my $flt = has_float($types);
	add_case(kind => 'param', sql => $sql, lit => $lit, coldef => $cols, flt => $flt,
		params => 'ARRAY[' . join(', ', map { $_ eq 'NULL' ? 'NULL' : $_ } @lits) . ']::text[]');
	add_case(kind => 'param_lit', sql => $lit, coldef => $cols, flt => $flt);
}
add_case(kind => 'param', sql => q{SELECT $1 AS v, $2::int + 1 AS w}, lit => q{SELECT 'x''y' AS v, '1'::int + 1 AS w},
	coldef => 'v text, w int', params => q{ARRAY['x''y', '1']::text[]});
add_case(kind => 'param', sql => q{SELECT $1::int AS v}, lit => q{SELECT 'abc'::int AS v},
	coldef => 'v int', params => q{ARRAY['abc']::text[]});

# The caller's settings for one case and run.
my @datestyles = map { my $s = $_; map { "$s, $_" } qw(MDY DMY YMD) } qw(ISO SQL Postgres German);
my @intervalstyles = qw(postgres postgres_verbose sql_standard iso_8601);
my @timezones = ('UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Kolkata', 'Australia/Adelaide',
	'Pacific/Chatham', '<-03>+3');
my @efds = (-15, -3, 0, 1, 3);
my @bytea = qw(hex escape);
my @abbrevs = qw(Default Australia India);

sub random_gucs
{
	my ($abbrevs) = @_;
	return 'ARRAY['
	  . join(', ',
		map { quote_literal($_) } 'datestyle', pick(@datestyles), 'intervalstyle',
		pick(@intervalstyles), 'timezone', pick(@timezones), 'extra_float_digits',
		pick(@efds), 'bytea_output', pick(@bytea), 'timezone_abbreviations', pick(@$abbrevs))
	  . ']';
}

# The phases: the foreign database's own defaults.  Time zones are ones whose
# abbreviations every timezone_abbreviations set reads alike (SQL, Postgres and German
# output styles print abbreviations, which dblink reads with the caller's set).
my @phases = (
	{ name => 'F defaults', set => {} },
	{
		name => 'F SQL, DMY / sql_standard / Europe/Berlin / efd 0 / escape',
		set => {
			datestyle => 'SQL, DMY', intervalstyle => 'sql_standard',
			timezone => 'Europe/Berlin', extra_float_digits => '0', bytea_output => 'escape'
		}
	},
	{
		name => 'F Postgres, DMY / postgres_verbose / Europe/Helsinki / efd -3',
		set => {
			datestyle => 'Postgres, DMY', intervalstyle => 'postgres_verbose',
			timezone => 'Europe/Helsinki', extra_float_digits => '-3'
		},
		# Postgres-style output starts with the day name, and the Australia set reads
		# "Sat" as a zone (South Australian Time): dblink then fails with 22007
		abbrevs => [qw(Default India)],
	},
	{
		name => 'F German, DMY / iso_8601 / Asia/Tokyo / efd 2 / escape',
		set => {
			datestyle => 'German, DMY', intervalstyle => 'iso_8601',
			timezone => 'Asia/Tokyo', extra_float_digits => '2', bytea_output => 'escape'
		}
	},
	{
		name => 'F ISO, YMD / sql_standard / America/Sao_Paulo',
		set => {
			datestyle => 'ISO, YMD', intervalstyle => 'sql_standard',
			timezone => 'America/Sao_Paulo'
		}
	});

my $nruns = @phases * @dbs;
my @settings_rows;
for my $c (0 .. $#cases)
{
	for my $run (0 .. $nruns - 1)
	{
		my $ph = $phases[ int($run / @dbs) ];
		push @settings_rows, '(' . ($c + 1) . ", $run, " . random_gucs($ph->{abbrevs} // \@abbrevs) . ')';
	}
}
my %kinds;
$kinds{ $_->{kind} }++ for @cases;
diag(scalar(@cases) . ' cases ('
	  . join(', ', map { "$_ $kinds{$_}" } sort keys %kinds)
	  . "), $nruns runs");

# ---------------------------------------------------------------------------------------
# Load the cases and the comparison function into both databases.
my $setup = q{
CREATE EXTENSION dbpool;
CREATE EXTENSION dblink;
CREATE TABLE cases (id int PRIMARY KEY, kind text, flt bool, sql text, params text[],
                    lit text, coldef text);
CREATE TABLE settings (id int, run int, gucs text[], PRIMARY KEY (id, run));

-- Run every case through dbpool (pool) and dblink (connection string dbl) under its
-- settings for this run; one json object per difference.
CREATE FUNCTION diff_run(pool text, run_no int, dbl text) RETURNS SETOF json
LANGUAGE plpgsql AS $fn$
DECLARE
    c record;
    a_txt text;
    a_bin bytea[];
    b_txt text;
    b_bin bytea[];
    q text := 'SELECT array_agg(t::text)::text, array_agg(record_send(t)) FROM %s AS t(%s)';
BEGIN
    PERFORM dblink_connect('dl', dbl);
    FOR c IN SELECT k.*, s.gucs FROM cases k JOIN settings s ON s.id = k.id AND s.run = run_no
             ORDER BY k.id
    LOOP
        FOR i IN 1 .. array_length(c.gucs, 1) BY 2 LOOP
            PERFORM set_config(c.gucs[i], c.gucs[i + 1], true);
        END LOOP;
        BEGIN
            EXECUTE format(q, format('dbpool_query(%L, %L, %L::text[])', pool, c.sql, c.params),
                           c.coldef) INTO a_txt, a_bin;
        EXCEPTION WHEN OTHERS THEN
            a_txt := 'ERROR ' || SQLSTATE;
            a_bin := NULL;
        END;
        BEGIN
            EXECUTE format(q, format('dblink(%L, %L)', 'dl', c.lit), c.coldef) INTO b_txt, b_bin;
        EXCEPTION WHEN OTHERS THEN
            b_txt := 'ERROR ' || SQLSTATE;
            b_bin := NULL;
        END;
        IF a_txt IS DISTINCT FROM b_txt OR a_bin IS DISTINCT FROM b_bin THEN
            RETURN NEXT json_build_object('id', c.id, 'kind', c.kind, 'flt', c.flt,
                'gucs', c.gucs, 'sql', c.sql, 'params', c.params, 'coldef', c.coldef,
                'dbpool', coalesce(a_txt, '(no rows)'), 'dblink', coalesce(b_txt, '(no rows)'),
                'same_text', a_txt IS NOT DISTINCT FROM b_txt);
        END IF;
    END LOOP;
    PERFORM dblink_disconnect('dl');
END $fn$;
};
my $load = "INSERT INTO cases VALUES\n"
  . join(",\n",
	map {
		my $c = $cases[$_];
		'(' . ($_ + 1) . ', ' . quote_literal($c->{kind}) . ', ' . ($c->{flt} ? 'true' : 'false')
		  . ', ' . quote_literal($c->{sql}) . ', ' . ($c->{params} // 'NULL') . ', '
		  . quote_literal($c->{lit}) . ', ' . quote_literal($c->{coldef}) . ')'
	} 0 .. $#cases)
  . ";\nINSERT INTO settings VALUES\n"
  . join(",\n", @settings_rows) . ";\n";
for my $db (@dbs)
{
	$l->safe_psql($db, $setup);
	$l->safe_psql($db, $load);
}

# ---------------------------------------------------------------------------------------
my %by_class;
my $total = 0;
my $run = 0;
for my $p (0 .. $#phases)
{
	my $ph = $phases[$p];
	my $sql = "ALTER DATABASE fdb RESET ALL;\n";
	for my $k (sort keys %{ $ph->{set} })
	{
		$sql .= "ALTER DATABASE fdb SET $k = " . quote_literal($ph->{set}{$k}) . ";\n";
	}
	$f->safe_psql('postgres', $sql);
	# a new pool, so that its connections start with the new defaults
	$l->safe_psql('postgres', "SELECT dbpool_drop_pool('d" . ($p - 1) . "')") if $p > 0;
	$l->safe_psql('postgres',
		"SELECT dbpool_create_pool('d$p', " . quote_literal($fconn) . ', max_size => 2)');
	my $shown = $f->safe_psql('fdb',
		q{SELECT concat_ws(' / ', current_setting('datestyle'), current_setting('intervalstyle'), current_setting('timezone'), current_setting('extra_float_digits'), current_setting('bytea_output'))});
	diag("phase $p: $ph->{name} (F says: $shown)");

	for my $db (@dbs)
	{
		my $r = run_sql($l, "SELECT diff_run('d$p', $run, " . quote_literal($fconn) . ')',
			db => $db, timeout => 300);
		$run++;
		if ($r->{ret} // 1)
		{
			fail("phase $p, $db: diff_run ran");
			diag($r->{err});
			next;
		}
		my @diffs = map { decode_json($_) } grep { /\S/ } split /\n/, $r->{out};
		my $n = 0;
		for my $d (@diffs)
		{
			my $class = $d->{kind} . ($d->{flt} ? '+float' : '');
			$by_class{"phase $p $db $class"}++;
			next if $n >= $verbose;
			$n++;
			my %g = @{ $d->{gucs} };
			diag(sprintf(
					"DIFF phase %d %s case %d [%s] caller {%s}\n  sql: %s%s\n  cols: %s\n  dbpool: %s\n  dblink: %s",
					$p, $db, $d->{id}, $class,
					join(', ', map { "$_=$g{$_}" } sort keys %g),
					$d->{sql}, defined $d->{params} ? "\n  params: " . encode_json($d->{params}) : '',
					$d->{coldef}, $d->{dbpool}, $d->{dblink} . ($d->{same_text} ? '  (same text, other bytes)' : '')));
		}
		diag("phase $p $db: " . scalar(@diffs) . " differences, $n shown") if @diffs;
		$total += @diffs;
		is(scalar @diffs, 0, "phase $p ($ph->{name}), database $db: dbpool and dblink agree on every case");
	}
}
if ($total)
{
	diag("differences by phase, database and class:");
	diag("  $_: $by_class{$_}") for sort keys %by_class;
}

# The worker stayed up, and the pools' connections were reused (no errors closed them).
ok(!$l->log_contains(qr/terminated by signal|terminating any other active server processes/),
	'L never crashed');

done_testing();
