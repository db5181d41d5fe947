/*
 * metrics_http.c
 *		The "dbpool metrics" process: a background worker of its own, started
 *		when dbpool.metrics_port > 0, that serves GET /metrics (the Prometheus
 *		exposition, prometheus.c) and GET /health over HTTP/1.x.
 *
 * It attaches to shared memory only (no database), reads the registry and
 * the statistics as backends do (prometheus.c), and never talks to the dbpool
 * worker: a scrape cannot touch the query path.  One thread, one loop: a
 * WaitEventSet with the latch, the postmaster's death, the listening sockets
 * and each client's socket, all non-blocking.
 *
 * Abuse is bounded: at most MAX_CLIENTS connections (a new one beyond that
 * takes the place of the oldest that has not sent a whole request yet, or is
 * closed at once when there is none), a request of at most MAX_REQUEST bytes
 * (431 beyond; a body is refused with 413), one deadline per connection
 * (CLIENT_DEADLINE_MS from accept to the last byte sent), and every answer
 * closes the connection.  When dbpool.metrics_bearer_token is set, a request
 * without "Authorization: Bearer <token>" gets 401.
 */
#include "postgres.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "dbpool.h"
#include "figures.h"

#define MAX_CLIENTS			64
#define MAX_LISTENERS		8
#define MAX_REQUEST			8192
#define CLIENT_DEADLINE_MS	5000
#define DRAIN_MS			1000	/* after the answer, unread input is discarded so long */

PGDLLEXPORT void DbpoolMetricsMain(Datum main_arg);

typedef enum ClientState
{
	CLIENT_FREE,
	CLIENT_READING,				/* waiting for the end of the request's headers */
	CLIENT_WRITING,				/* sending the answer */
	CLIENT_DRAINING				/* answer sent, write side shut: discard input until EOF */
} ClientState;

typedef struct Client
{
	ClientState state;
	pgsocket	fd;
	TimestampTz accepted;
	TimestampTz deadline;
	int			inlen;
	char		in[MAX_REQUEST];
	char	   *out;			/* the answer (TopMemoryContext) */
	Size		outlen;
	Size		sent;
} Client;

static Client clients[MAX_CLIENTS];
static pgsocket listeners[MAX_LISTENERS];
static int	nlisteners = 0;
static WaitEventSet *wait_set = NULL;
static bool set_changed = true;
static MemoryContext scratch = NULL;

/* ---------- sockets ---------- */

/* Open the listening sockets on dbpool.metrics_listen_address:dbpool.metrics_port. */
static void
open_listeners(void)
{
	struct addrinfo hints,
			   *res,
			   *ai;
	char		port[16];
	const char *host = DbpoolMetricsListenAddress;
	int			rc;
	int			one = 1;
	char	   *last_error = NULL;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	snprintf(port, sizeof(port), "%d", DbpoolMetricsPort);
	if (host[0] == '\0' || strcmp(host, "*") == 0)
		host = NULL;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("dbpool metrics: could not resolve \"%s\": %s",
						DbpoolMetricsListenAddress, gai_strerror(rc)),
				 errhint("Check dbpool.metrics_listen_address.")));
	for (ai = res; ai && nlisteners < MAX_LISTENERS; ai = ai->ai_next)
	{
		pgsocket	fd = socket(ai->ai_family, SOCK_STREAM, 0);

		if (fd == PGINVALID_SOCKET)
			continue;
		(void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
#ifdef IPV6_V6ONLY
		if (ai->ai_family == AF_INET6)
			(void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
#endif
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0 ||
			!pg_set_noblock(fd))
		{
			last_error = pstrdup(strerror(errno));
			close(fd);
			continue;
		}
		listeners[nlisteners++] = fd;
	}
	freeaddrinfo(res);
	if (nlisteners == 0)
		ereport(ERROR,
				(errcode_for_socket_access(),
				 errmsg("dbpool metrics: could not listen on \"%s\" port %d: %s",
						DbpoolMetricsListenAddress, DbpoolMetricsPort,
						last_error ? last_error : "no address"),
				 errhint("Check dbpool.metrics_listen_address and dbpool.metrics_port; "
						 "the process tries again in a few seconds.")));
	ereport(LOG,
			(errmsg("dbpool metrics: listening on \"%s\" port %d",
					DbpoolMetricsListenAddress, DbpoolMetricsPort)));
}

/* Close a client's connection and free its slot. */
static void
client_close(Client *c)
{
	if (c->fd != PGINVALID_SOCKET)
		close(c->fd);
	if (c->out)
		pfree(c->out);
	c->out = NULL;
	c->fd = PGINVALID_SOCKET;
	c->state = CLIENT_FREE;
	c->inlen = 0;
	set_changed = true;
}

/*
 * A free slot for a new connection: a free one, else the one accepted longest
 * ago among those still reading their request (closed), else NULL.
 */
static Client *
client_slot(void)
{
	Client	   *oldest = NULL;
	int			i;

	for (i = 0; i < MAX_CLIENTS; i++)
	{
		if (clients[i].state == CLIENT_FREE)
			return &clients[i];
		if (clients[i].state == CLIENT_READING &&
			(oldest == NULL || clients[i].accepted < oldest->accepted))
			oldest = &clients[i];
	}
	if (oldest)
		client_close(oldest);
	return oldest;
}

/* Accept every pending connection on a listening socket. */
static void
accept_all(pgsocket lfd)
{
	for (;;)
	{
		pgsocket	fd = accept(lfd, NULL, NULL);
		Client	   *c;

		if (fd == PGINVALID_SOCKET)
			return;				/* EAGAIN, or an error of that one connection */
		c = client_slot();
		if (c == NULL || !pg_set_noblock(fd))
		{
			close(fd);
			continue;
		}
		c->state = CLIENT_READING;
		c->fd = fd;
		c->accepted = GetCurrentTimestamp();
		c->deadline = TimestampTzPlusMilliseconds(c->accepted, CLIENT_DEADLINE_MS);
		c->inlen = 0;
		set_changed = true;
	}
}

/* ---------- answers ---------- */

/* Queue an answer and switch the client to writing it. */
static void
respond(Client *c, bool head, int status, const char *reason, const char *type,
		const char *extra_headers, const char *body, Size bodylen)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
					 "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
					 status, reason, type, bodylen, extra_headers ? extra_headers : "");
	if (!head)
		appendBinaryStringInfo(&buf, body, bodylen);
	c->out = MemoryContextAlloc(TopMemoryContext, buf.len);
	memcpy(c->out, buf.data, buf.len);
	c->outlen = buf.len;
	c->sent = 0;
	c->state = CLIENT_WRITING;
	set_changed = true;
}

/* Answer with a short plain-text error. */
static void
respond_error(Client *c, bool head, int status, const char *reason, const char *extra)
{
	char	   *body = psprintf("%d %s\n", status, reason);

	respond(c, head, status, reason, "text/plain; charset=utf-8", extra, body, strlen(body));
}

/* The value of a header in a request's header block (NUL-terminated lines), or NULL. */
static const char *
header_value(char *const *lines, int nlines, const char *name)
{
	size_t		len = strlen(name);
	int			i;

	for (i = 0; i < nlines; i++)
		if (pg_strncasecmp(lines[i], name, len) == 0 && lines[i][len] == ':')
		{
			const char *v = lines[i] + len + 1;

			while (*v == ' ' || *v == '\t')
				v++;
			return v;
		}
	return NULL;
}

/* Whether two strings are equal, in a time that does not depend on where they differ. */
static bool
equal_constant_time(const char *a, const char *b)
{
	size_t		la = strlen(a),
				lb = strlen(b),
				i;
	unsigned char diff = la != lb;

	for (i = 0; i < la; i++)
		diff |= (unsigned char) a[i] ^ (unsigned char) b[i % (lb ? lb : 1)];
	return diff == 0;
}

/* Render the metrics or the health into an answer; 500 if reading them failed. */
static void
respond_render(Client *c, bool head, bool health)
{
	MemoryContext old = CurrentMemoryContext;
	StringInfoData body;
	volatile bool failed = false;
	volatile DbpoolHealthStatus status = DBPOOL_HEALTHY;

	initStringInfo(&body);
	PG_TRY();
	{
		if (health)
			status = DbpoolHealthSummary(&body);
		else
			DbpoolPrometheusRender(&body, DbpoolMetricsPrefix);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		EmitErrorReport();
		FlushErrorState();
		LWLockReleaseAll();
		failed = true;
	}
	PG_END_TRY();
	if (failed)
		respond_error(c, head, 500, "Internal Server Error", NULL);
	else if (health)
		respond(c, head, status == DBPOOL_UNHEALTHY ? 503 : 200,
				status == DBPOOL_UNHEALTHY ? "Service Unavailable" : "OK",
				"application/json", NULL, body.data, body.len);
	else
		respond(c, head, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", NULL,
				body.data, body.len);
}

/* A whole request's headers are in c->in (hlen bytes): answer it. */
static void
handle_request(Client *c, int hlen)
{
	char	   *lines[64];
	int			nlines = 0;
	char	   *p = c->in,
			   *end = c->in + hlen;
	char	   *method,
			   *target,
			   *version,
			   *q;
	const char *v;
	bool		head;

	/* split into lines (CRLF or LF), the request line first */
	while (p < end && nlines < (int) lengthof(lines))
	{
		char	   *nl = memchr(p, '\n', end - p);

		if (nl == NULL)
			break;
		*nl = '\0';
		if (nl > p && nl[-1] == '\r')
			nl[-1] = '\0';
		if (*p == '\0')
			break;				/* the blank line */
		lines[nlines++] = p;
		p = nl + 1;
	}
	if (nlines == 0)
	{
		respond_error(c, false, 400, "Bad Request", NULL);
		return;
	}
	method = lines[0];
	target = strchr(method, ' ');
	version = target ? strchr(target + 1, ' ') : NULL;
	if (!version)
	{
		respond_error(c, false, 400, "Bad Request", NULL);
		return;
	}
	*target++ = '\0';
	*version++ = '\0';
	if (strncmp(version, "HTTP/1.", 7) != 0 || target[0] != '/')
	{
		respond_error(c, false, 400, "Bad Request", NULL);
		return;
	}
	head = strcmp(method, "HEAD") == 0;
	if (!head && strcmp(method, "GET") != 0)
	{
		respond_error(c, false, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n");
		return;
	}
	if (header_value(lines + 1, nlines - 1, "Transfer-Encoding") ||
		((v = header_value(lines + 1, nlines - 1, "Content-Length")) && strtol(v, NULL, 10) != 0))
	{
		respond_error(c, head, 413, "Payload Too Large", NULL);
		return;
	}
	if (DbpoolMetricsBearerToken && DbpoolMetricsBearerToken[0])
	{
		v = header_value(lines + 1, nlines - 1, "Authorization");
		if (v == NULL || pg_strncasecmp(v, "Bearer ", 7) != 0 ||
			!equal_constant_time(v + 7, DbpoolMetricsBearerToken))
		{
			respond_error(c, head, 401, "Unauthorized",
						  "WWW-Authenticate: Bearer realm=\"dbpool\"\r\n");
			return;
		}
	}
	if ((q = strchr(target, '?')) != NULL)
		*q = '\0';
	if (strcmp(target, "/metrics") == 0)
		respond_render(c, head, false);
	else if (strcmp(target, "/health") == 0)
		respond_render(c, head, true);
	else
		respond_error(c, head, 404, "Not Found", NULL);
}

/*
 * The end of the headers in what was read: the length up to the blank line,
 * or 0.  The bytes before from (already searched) are not searched again.
 */
static int
headers_end(const Client *c, int from)
{
	int			i;

	for (i = Max(from - 3, 0); i < c->inlen; i++)
		if (c->in[i] == '\n' &&
			((i >= 1 && c->in[i - 1] == '\n') ||
			 (i >= 2 && c->in[i - 1] == '\r' && c->in[i - 2] == '\n')))
			return i + 1;
	return 0;
}

/* ---------- events ---------- */

/* The client's socket is readable. */
static void
client_read(Client *c)
{
	ssize_t		n;
	int			hlen;
	MemoryContext old;

	if (c->state == CLIENT_DRAINING)
	{
		char		discard[4096];

		n = recv(c->fd, discard, sizeof(discard), 0);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
			client_close(c);
		return;
	}
	n = recv(c->fd, c->in + c->inlen, MAX_REQUEST - c->inlen, 0);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0)
	{
		client_close(c);
		return;
	}
	c->inlen += n;
	hlen = headers_end(c, c->inlen - n);
	if (hlen == 0 && c->inlen < MAX_REQUEST)
		return;
	/* the answer is built in scratch memory, then copied (respond) */
	old = MemoryContextSwitchTo(scratch);
	if (hlen > 0)
		handle_request(c, hlen);
	else
		respond_error(c, false, 431, "Request Header Fields Too Large", NULL);
	MemoryContextSwitchTo(old);
	MemoryContextReset(scratch);
}

/* The client's socket is writable: send more of the answer; once sent, drain. */
static void
client_write(Client *c)
{
	while (c->sent < c->outlen)
	{
		ssize_t		n = send(c->fd, c->out + c->sent, c->outlen - c->sent, MSG_NOSIGNAL);

		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return;
		if (n <= 0)
		{
			client_close(c);
			return;
		}
		c->sent += n;
	}
	/* all sent: shut our side, discard what the client still sends, then close */
	(void) shutdown(c->fd, SHUT_WR);
	pfree(c->out);
	c->out = NULL;
	c->state = CLIENT_DRAINING;
	c->deadline = Min(c->deadline,
					  TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DRAIN_MS));
	set_changed = true;
}

/* Rebuild the wait set: latch, postmaster death, listeners, clients. */
static void
rebuild_wait_set(void)
{
	int			i;

	if (wait_set)
		FreeWaitEventSet(wait_set);
	wait_set = CreateWaitEventSet(TopMemoryContext, 2 + nlisteners + MAX_CLIENTS);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (i = 0; i < nlisteners; i++)
		AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, listeners[i], NULL, NULL);
	for (i = 0; i < MAX_CLIENTS; i++)
		if (clients[i].state != CLIENT_FREE)
			AddWaitEventToSet(wait_set, clients[i].state == CLIENT_WRITING ?
							  WL_SOCKET_WRITEABLE : WL_SOCKET_READABLE,
							  clients[i].fd, NULL, &clients[i]);
	set_changed = false;
}

/* Close the connections past their deadline; return the ms until the next one (-1: none). */
static long
expire_clients(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = 0;
	int			i;

	for (i = 0; i < MAX_CLIENTS; i++)
	{
		Client	   *c = &clients[i];

		if (c->state == CLIENT_FREE)
			continue;
		if (c->deadline <= now)
			client_close(c);
		else if (next == 0 || c->deadline < next)
			next = c->deadline;
	}
	if (next == 0)
		return -1;
	return (long) ((next - now + 999) / 1000);
}

/* The process's entry point: listen, then serve until SIGTERM or the postmaster's death. */
void
DbpoolMetricsMain(Datum main_arg)
{
	WaitEvent	events[16];
	int			i;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	scratch = AllocSetContextCreate(TopMemoryContext, "dbpool metrics", ALLOCSET_DEFAULT_SIZES);
	for (i = 0; i < MAX_CLIENTS; i++)
	{
		clients[i].state = CLIENT_FREE;
		clients[i].fd = PGINVALID_SOCKET;
	}
	open_listeners();

	for (;;)
	{
		long		timeout = expire_clients();
		int			n;

		if (set_changed)
			rebuild_wait_set();
		n = WaitEventSetWait(wait_set, timeout, events, lengthof(events), PG_WAIT_EXTENSION);
		for (i = 0; i < n; i++)
		{
			WaitEvent  *ev = &events[i];
			Client	   *c = ev->user_data;

			if (ev->events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			else if (c == NULL)
				accept_all(ev->fd);
			else if (c->state == CLIENT_FREE || c->fd != ev->fd)
				continue;		/* closed earlier in this round */
			else if (ev->events & WL_SOCKET_WRITEABLE)
				client_write(c);
			else if (ev->events & WL_SOCKET_READABLE)
			{
				client_read(c);
				if (c->state == CLIENT_WRITING)
					client_write(c);	/* most answers go out at once */
			}
		}
		if (ShutdownRequestPending)
			proc_exit(1);		/* restarted unless the server shuts down */
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}
