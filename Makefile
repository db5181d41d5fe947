# dbpool: shared connection pools to foreign PostgreSQL databases.
# Build with PGXS:  make PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config && make install

MODULE_big = dbpool
OBJS = \
	src/dbpool.o \
	src/shmem.o \
	src/settings.o \
	src/channel.o \
	src/worker.o \
	src/conn.o \
	src/stmtcache.o \
	src/pool.o \
	src/cancel.o \
	src/query.o \
	src/admin.o \
	src/stats.o \
	src/slowlog.o \
	src/figures.o \
	src/views.o \
	src/detail.o

EXTENSION = dbpool
DATA = dbpool--1.0.sql
PGFILEDESC = "dbpool - shared connection pools to foreign PostgreSQL databases"

PG_CONFIG ?= pg_config
PG_CPPFLAGS = -I$(shell $(PG_CONFIG) --includedir)
SHLIB_LINK = -L$(shell $(PG_CONFIG) --libdir) -lpq -lpthread

# pg_regress: a throwaway instance with dbpool preloaded; the foreign side is another database
# of the same server.  TAP (test/t) deletes tmp_check, so the regress instance lives elsewhere.
REGRESS = setup admin query stmtcache metrics security
REGRESS_OPTS = --temp-instance=$(CURDIR)/tmp_regress --temp-config=$(srcdir)/test/regress.conf \
	--port=25431 --load-extension=dbpool --encoding=UTF8 --no-locale
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl
EXTRA_CLEAN = tmp_regress tmp_check results regression.diffs regression.out

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: a changed struct must rebuild every object.
$(OBJS): src/dbpool.h src/worker.h src/stats.h src/figures.h
