/*
 * alert_listener.c
 *		Forward dbpool's alerts to a command: LISTEN dbpool_alerts and, for
 *		each notification, run the command with the JSON payload on its
 *		standard input (followed by a newline).
 *
 * Build (libpq only):
 *	cc -o alert_listener alert_listener.c -I"$(pg_config --includedir)" \
 *		-L"$(pg_config --libdir)" -lpq
 *
 * Run, connected to dbpool.database (notifications stay in their database):
 *	./alert_listener 'dbname=postgres' 'curl -sS -H "Content-Type: application/json" -d @- "$WEBHOOK"'
 *
 * The command runs through /bin/sh, one at a time, in the order the alerts
 * fired and resolved.  A lost connection is retried every 5 seconds, with
 * LISTEN again; alerts that fire and resolve while it is away are not sent
 * (dbpool_alerts shows them).  It ends on SIGINT or SIGTERM.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include "libpq-fe.h"

#define RETRY_SECONDS 5

static volatile sig_atomic_t stop = 0;

/* SIGINT, SIGTERM: end after the current step. */
static void
on_signal(int sig)
{
	(void) sig;
	stop = 1;
}

/* Connect and LISTEN; NULL (and a message) if either failed. */
static PGconn *
connect_and_listen(const char *conninfo)
{
	PGconn	   *conn = PQconnectdb(conninfo);
	PGresult   *res;

	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "alert_listener: %s", PQerrorMessage(conn));
		PQfinish(conn);
		return NULL;
	}
	res = PQexec(conn, "LISTEN dbpool_alerts");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		fprintf(stderr, "alert_listener: LISTEN failed: %s", PQerrorMessage(conn));
		PQclear(res);
		PQfinish(conn);
		return NULL;
	}
	PQclear(res);
	fprintf(stderr, "alert_listener: listening\n");
	return conn;
}

/* Run command with payload on its standard input; its exit status is reported if not 0. */
static void
forward(const char *command, const char *payload)
{
	FILE	   *p = popen(command, "w");
	int			status;

	if (p == NULL)
	{
		fprintf(stderr, "alert_listener: could not run the command: %s\n", strerror(errno));
		return;
	}
	fputs(payload, p);
	fputc('\n', p);
	status = pclose(p);
	if (status != 0)
		fprintf(stderr, "alert_listener: the command ended with status %d\n", status);
}

/* Wait for the connection's socket (at most 1 s), then forward what arrived; false if it broke. */
static bool
serve(PGconn *conn, const char *command)
{
	int			sock = PQsocket(conn);
	fd_set		fds;
	struct timeval tv = {1, 0};
	PGnotify   *n;

	if (sock < 0)
		return false;
	FD_ZERO(&fds);
	FD_SET(sock, &fds);
	if (select(sock + 1, &fds, NULL, NULL, &tv) < 0)
		return errno == EINTR;
	if (!PQconsumeInput(conn))
	{
		fprintf(stderr, "alert_listener: %s", PQerrorMessage(conn));
		return false;
	}
	while ((n = PQnotifies(conn)) != NULL)
	{
		forward(command, n->extra);
		PQfreemem(n);
	}
	return PQstatus(conn) == CONNECTION_OK;
}

/* alert_listener CONNINFO COMMAND: listen, forward, reconnect, until a signal. */
int
main(int argc, char **argv)
{
	PGconn	   *conn = NULL;

	if (argc != 3)
	{
		fprintf(stderr, "usage: %s CONNINFO COMMAND\n"
				"Runs COMMAND (with /bin/sh) for each dbpool alert, its JSON on standard input.\n",
				argv[0]);
		return 2;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);	/* a command that does not read its input */
	while (!stop)
	{
		if (conn == NULL && (conn = connect_and_listen(argv[1])) == NULL)
		{
			sleep(RETRY_SECONDS);
			continue;
		}
		if (!serve(conn, argv[2]))
		{
			PQfinish(conn);
			conn = NULL;
		}
	}
	if (conn)
		PQfinish(conn);
	return 0;
}
