# dbpool: shared connection pools to foreign PostgreSQL databases.
# Build with PGXS:  make PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config && make install

MODULE_big = dbpool
OBJS = \
	src/dbpool.o \
	src/shmem.o \
	src/settings.o \
	src/conninfo.o \
	src/proto.o \
	src/text.o \
	src/client_status.o \
	src/sync.o \
	src/channel.o \
	src/query.o \
	src/ops.o \
	src/admin.o \
	src/worker.o \
	src/config.o \
	src/standby.o \
	src/channel_worker.o \
	src/pool.o \
	src/janitor.o \
	src/health.o \
	src/leak.o \
	src/failover.o \
	src/conn.o \
	src/conn_query.o \
	src/conn_reset.o \
	src/stmtcache.o \
	src/cancel.o \
	src/resolve.o \
	src/exit_cancel.o \
	src/stats.o \
	src/slowlog.o \
	src/figures.o \
	src/views.o \
	src/detail.o \
	src/json_out.o \
	src/tune.o \
	src/health_sql.o \
	src/diagnose.o \
	src/alert_rules.o \
	src/alerts.o \
	src/autoscale.o \
	src/resize.o \
	src/worker_sql.o \
	src/prometheus.o \
	src/metrics_http.o

EXTENSION = dbpool
DATA = dbpool--1.0.sql
PGFILEDESC = "dbpool - shared connection pools to foreign PostgreSQL databases"

PG_CONFIG ?= pg_config
# libpq, as PGXS names it (contrib/dblink does the same); the threads of cancel.c and resolve.c need pthread
PG_CPPFLAGS = -I$(libpq_srcdir)
SHLIB_LINK_INTERNAL = $(libpq)
SHLIB_LINK = -lpthread

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
$(OBJS): src/dbpool.h src/worker.h src/stats.h src/proto.h src/figures.h src/alerts.h
