/*
 * div_pass: the benchmark's divert program.  An unmodified FreeBSD-style
 * pass-through program: it reads every packet from its divert socket and
 * writes it back with the address it read, so the packet goes on after the
 * rule that diverted it.
 *
 *	div_pass [-n] [-b BYTES] [-r READYFILE] PORT
 *
 *	-n	read only, never write back.  Under a tee rule this is what an
 *		IDS does (the original has gone on already); under a divert
 *		rule every packet read stays held until the daemon's hold time
 *		runs out (the benchmark's memory figure).
 *	-b	set SO_RCVBUF to BYTES first (default: the divert socket's
 *		default, DIVERT_SOCKBUF_DEFAULT, as most programs leave it).
 *	-r	create READYFILE once the socket is bound.
 *
 * SIGINT or SIGTERM ends it; it prints "packets N bytes N written N
 * write_errors N" on stdout.  The loop is the plainest one a divert program
 * has, one recvfrom() and one sendto() per packet; a receive timeout of
 * 100 ms lets it see the signal flag even when no packet comes.
 *
 * On FreeBSD:
 *	ipfw add 100 divert 8668 ip from any to any
 *	./div_pass 8668
 * On Linux with divertd (bench/run.sh does this in a namespace):
 *	LD_PRELOAD=build/libdivert_shim.so DIVERT_SOCKET=/path/to/sock \
 *		./div_pass 8668
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <netinet/ip.h>

#include "divert.h"
#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t done;

static void
on_signal(int sig)
{
	(void)sig;
	done = 1;
}

static void
usage(void)
{
	fprintf(stderr, "usage: div_pass [-n] [-b BYTES] [-r READYFILE] port\n");
	exit(2);
}

int
main(int argc, char *argv[])
{
	static u_char pkt[IP_MAXPACKET];
	unsigned long long packets = 0, bytes = 0, written = 0, errors = 0;
	struct sockaddr_in sin;
	struct sigaction sa;
	struct timeval tv = { 0, 100000 };
	const char *ready = NULL;
	socklen_t sinlen;
	ssize_t n;
	long port;
	char *end;
	int ch, fd, rcvbuf = 0, readonly = 0;

	while ((ch = getopt(argc, argv, "b:nr:")) != -1) {
		switch (ch) {
		case 'b':
			rcvbuf = atoi(optarg);
			break;
		case 'n':
			readonly = 1;
			break;
		case 'r':
			ready = optarg;
			break;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc != 1)
		usage();
	port = strtol(argv[0], &end, 10);
	if (*argv[0] == '\0' || *end != '\0' || port < 1 || port > 65535)
		errx(2, "bad divert port: %s", argv[0]);

	/* no SA_RESTART: a signal ends a blocking recvfrom() with EINTR */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	if ((fd = socket(PF_DIVERT, SOCK_RAW, 0)) == -1)
		err(1, "socket");
	if (rcvbuf > 0 &&
	    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) == -1)
		err(1, "SO_RCVBUF %d", rcvbuf);
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == -1)
		err(1, "SO_RCVTIMEO");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((in_port_t)port);
	sin.sin_addr.s_addr = INADDR_ANY;
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1)
		err(1, "bind %ld", port);
	if (ready != NULL) {
		int rfd = open(ready, O_WRONLY | O_CREAT, 0644);

		if (rfd == -1)
			err(1, "%s", ready);
		close(rfd);
	}

	while (!done) {
		sinlen = sizeof(sin);
		n = recvfrom(fd, pkt, sizeof(pkt), 0, (struct sockaddr *)&sin,
		    &sinlen);
		if (n == -1) {
			if (errno == EINTR || errno == EAGAIN ||
			    errno == EWOULDBLOCK)
				continue;
			err(1, "recvfrom");
		}
		if (n == 0) {
			warnx("the divert socket was closed");
			break;
		}
		packets++;
		bytes += (unsigned long long)n;
		if (readonly)
			continue;
		/* unchanged, to the address it came with */
		if (sendto(fd, pkt, (size_t)n, 0, (struct sockaddr *)&sin,
		    sinlen) == -1) {
			if (errors++ == 0)
				warn("sendto");	/* the first; then count */
		} else
			written++;
	}
	printf("packets %llu bytes %llu written %llu write_errors %llu\n",
	    packets, bytes, written, errors);
	close(fd);
	return (0);
}
