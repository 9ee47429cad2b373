/*
 * div_sink: read diverted packets and drop them.
 *
 *	div_sink PORT MAXPKTS TIMEOUT_S [READYFILE]
 *
 * Like div_echo, but nothing is written back, so every packet diverted to
 * PORT is consumed.  One line per packet:
 *	pkt N len L tag T addr A if NAME
 * and "total N" at the end: after MAXPKTS packets, TIMEOUT_S seconds
 * without one, or SIGTERM.  READYFILE is created once the socket is bound.
 * DIV_OLDFORM=1 creates the socket the pre-FreeBSD-14 way.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "divert.h"

static volatile sig_atomic_t done;

static void
on_term(int sig)
{
	(void)sig;
	done = 1;
}

static long
number(const char *s, const char *what, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < 0 || v > max)
		errx(2, "bad %s: %s", what, s);
	return (v);
}

int
main(int argc, char *argv[])
{
	static char buf[65536];
	struct sockaddr_in sin;
	struct sigaction sa;
	struct pollfd pfd;
	char addr[INET_ADDRSTRLEN], ifname[sizeof(sin.sin_zero) + 1];
	const char *old;
	socklen_t sinlen;
	long port, maxpkts, timeout, npkts = 0;
	ssize_t n;
	int fd, r;

	if (argc < 4 || argc > 5) {
		fprintf(stderr,
		    "usage: div_sink PORT MAXPKTS TIMEOUT_S [READYFILE]\n");
		return (2);
	}
	port = number(argv[1], "port", 65535);
	maxpkts = number(argv[2], "packet count", 1000000000L);
	timeout = number(argv[3], "timeout", 86400);
	setvbuf(stdout, NULL, _IOLBF, 0);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;	/* no SA_RESTART: poll() returns */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	old = getenv("DIV_OLDFORM");
	if (old != NULL && strcmp(old, "1") == 0)
		fd = socket(PF_INET, SOCK_RAW, IPPROTO_DIVERT);
	else
		fd = socket(PF_DIVERT, SOCK_RAW, 0);
	if (fd == -1)
		err(1, "socket");

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1)
		err(1, "bind %ld", port);
	if (argc == 5) {
		r = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
		    0644);
		if (r == -1)
			err(1, "%s", argv[4]);
		close(r);
	}

	pfd.fd = fd;
	pfd.events = POLLIN;
	while (!done && npkts < maxpkts) {
		r = poll(&pfd, 1, (int)timeout * 1000);
		if (r == -1) {
			if (errno == EINTR)
				continue;
			err(1, "poll");
		}
		if (r == 0)
			break;		/* quiet for TIMEOUT_S seconds */

		sinlen = sizeof(sin);
		n = recvfrom(fd, buf, sizeof(buf), 0,
		    (struct sockaddr *)&sin, &sinlen);
		if (n == -1) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			err(1, "recvfrom");
		}
		if (n == 0)
			errx(1, "recvfrom: divert socket closed");
		npkts++;
		memcpy(ifname, sin.sin_zero, sizeof(sin.sin_zero));
		ifname[sizeof(sin.sin_zero)] = '\0';
		printf("pkt %ld len %zd tag %u addr %s if %s\n", npkts, n,
		    (unsigned)sin.sin_port,	/* the tag: host order */
		    inet_ntop(AF_INET, &sin.sin_addr, addr, sizeof(addr)),
		    ifname[0] != '\0' ? ifname : "-");
	}
	printf("total %ld\n", npkts);
	close(fd);
	return (0);
}
