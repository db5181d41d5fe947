/*
 * dns_shim.c
 *		A stand-in resolver for test/t/021_dns.pl, loaded with LD_PRELOAD into
 *		the local test server.  It answers names under .dbpool.test itself and
 *		passes every other name to the C library's getaddrinfo:
 *
 *		<x>.fail.dbpool.test	not found (EAI_NONAME), at once
 *		<x>.two.dbpool.test		127.0.0.2 then 127.0.0.1, at once
 *		<x>.slow.dbpool.test	127.0.0.1, once the file release-<name> exists
 *		<x>.hang.dbpool.test	EAI_AGAIN, once the file release-<name> exists
 *
 * The files live in $DBPOOL_TEST_DNS_DIR.  Each lookup of a slow or hanging
 * name appends the name to "lookups" when it starts and creates done-<name>
 * when it returns.  A held lookup gives up after 120 s, so that a server
 * whose test failed still stops.  No network is used.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*getaddrinfo_fn) (const char *, const char *, const struct addrinfo *,
							   struct addrinfo **);

/* Whether name ends with suffix. */
static int
ends_with(const char *name, const char *suffix)
{
	size_t		n = strlen(name),
				s = strlen(suffix);

	return n > s && strcmp(name + n - s, suffix) == 0;
}

/* Append line to the file dir/file, or create it empty when line is NULL. */
static void
note(const char *dir, const char *file, const char *line)
{
	char		path[4096];
	int			fd;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		return;
	if (line != NULL)
	{
		char		buf[1100];
		int			len = snprintf(buf, sizeof(buf), "%s\n", line);

		if (write(fd, buf, len) < 0)
			(void) 0;
	}
	close(fd);
}

/* Wait until dir/release-<name> exists, at most 120 s. */
static void
hold(const char *dir, const char *name)
{
	char		path[4096];
	int			i;

	snprintf(path, sizeof(path), "%s/release-%s", dir, name);
	for (i = 0; i < 12000 && access(path, F_OK) != 0; i++)
		usleep(10000);
}

/* getaddrinfo, with the test names answered here. */
int
getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
			struct addrinfo **res)
{
	getaddrinfo_fn real = (getaddrinfo_fn) dlsym(RTLD_NEXT, "getaddrinfo");
	const char *dir = getenv("DBPOOL_TEST_DNS_DIR");
	char		file[1100];
	int			rc;

	if (node == NULL || dir == NULL || !ends_with(node, ".dbpool.test") || strlen(node) > 1000)
		return real(node, service, hints, res);
	if (ends_with(node, ".fail.dbpool.test"))
		return EAI_NONAME;
	if (ends_with(node, ".two.dbpool.test"))
	{
		struct addrinfo *second = NULL;
		struct addrinfo *ai;

		rc = real("127.0.0.2", service, hints, res);
		if (rc != 0)
			return rc;
		rc = real("127.0.0.1", service, hints, &second);
		if (rc != 0)
		{
			freeaddrinfo(*res);
			return rc;
		}
		for (ai = *res; ai->ai_next; ai = ai->ai_next)
			;
		ai->ai_next = second;	/* glibc's freeaddrinfo frees node by node */
		return 0;
	}
	if (!ends_with(node, ".slow.dbpool.test") && !ends_with(node, ".hang.dbpool.test"))
		return EAI_NONAME;
	note(dir, "lookups", node);
	hold(dir, node);
	rc = ends_with(node, ".slow.dbpool.test") ? real("127.0.0.1", service, hints, res) : EAI_AGAIN;
	snprintf(file, sizeof(file), "done-%s", node);
	note(dir, file, NULL);
	return rc;
}
