/*
 * conf_fork: a divert socket survives fork, in the child and the parent.
 *
 *	conf_fork PORT COUNT TIMEOUT_S READYFILE keep|close
 *
 * The parent creates and binds the socket, then forks.  The child echoes
 * COUNT diverted packets (recvfrom, sendto) and exits.  "close": the
 * parent closes its copy right after the fork (the child's socket must
 * keep the port); "keep": the parent keeps it, and once the child has
 * exited echoes one more packet itself.  READYFILE appears when the child
 * may be sent to (after the parent's close), READYFILE.2 when the parent
 * may ("keep").  Lines: "child: pkt N len L tag T", "child: ok N",
 * "parent: pkt ...", "parent: ok"; "not ok ..." on failure.  Each side
 * also checks that the socket still is a divert socket (SO_DOMAIN).
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <netinet/ip.h>

#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "divert.h"

static void
touch(const char *path)
{
	int fd;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1)
		err(1, "%s", path);
	close(fd);
}

/* Echo n packets; 0 when all went back whole. */
static int
echo(int fd, const char *who, long n)
{
	static char buf[65536];
	struct sockaddr_in sin;
	struct ip *ip = (struct ip *)(void *)buf;
	socklen_t len;
	ssize_t r;
	long i;
	int dom = 0;

	len = sizeof(dom);
	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &len) == -1 ||
	    dom != PF_DIVERT) {
		printf("not ok - %s: SO_DOMAIN %d (%s): not a divert socket\n",
		    who, dom, strerror(errno));
		return (1);
	}
	for (i = 1; i <= n; i++) {
		len = sizeof(sin);
		r = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&sin,
		    &len);
		if (r < (ssize_t)sizeof(*ip) || ip->ip_v != 4 ||
		    ntohs(ip->ip_len) != r || len != sizeof(sin)) {
			printf("not ok - %s: recvfrom returned %zd (%s)\n",
			    who, r, r < 0 ? strerror(errno) : "not a packet");
			return (1);
		}
		printf("%s: pkt %ld len %zd tag %u\n", who, i, r,
		    (unsigned)sin.sin_port);
		if (sendto(fd, buf, (size_t)r, 0, (struct sockaddr *)&sin,
		    len) != r) {
			printf("not ok - %s: sendto: %s\n", who,
			    strerror(errno));
			return (1);
		}
	}
	return (0);
}

int
main(int argc, char *argv[])
{
	struct sockaddr_in sin;
	char ready2[4096];
	long port, count, timeout;
	int fd, keep, status;
	pid_t pid;

	if (argc != 6 || (strcmp(argv[5], "keep") != 0 &&
	    strcmp(argv[5], "close") != 0)) {
		fprintf(stderr, "usage: conf_fork PORT COUNT TIMEOUT_S "
		    "READYFILE keep|close\n");
		return (2);
	}
	port = strtol(argv[1], NULL, 10);
	count = strtol(argv[2], NULL, 10);
	timeout = strtol(argv[3], NULL, 10);
	keep = strcmp(argv[5], "keep") == 0;
	snprintf(ready2, sizeof(ready2), "%s.2", argv[4]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	alarm((unsigned int)timeout);	/* inherited by the child: bounded */

	fd = socket(PF_DIVERT, SOCK_RAW, 0);
	if (fd == -1)
		err(1, "socket");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1)
		err(1, "bind %ld", port);

	pid = fork();
	if (pid == -1)
		err(1, "fork");
	if (pid == 0) {
		if (echo(fd, "child", count) != 0)
			_exit(1);
		printf("child: ok %ld\n", count);
		_exit(0);
	}
	if (!keep && close(fd) != 0)
		err(1, "close");
	touch(argv[4]);
	if (waitpid(pid, &status, 0) != pid)
		err(1, "waitpid");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		printf("not ok - child: status %#x\n", status);
		return (1);
	}
	if (!keep)
		return (0);
	touch(ready2);
	if (echo(fd, "parent", 1) != 0)
		return (1);
	printf("parent: ok\n");
	close(fd);
	return (0);
}
