/*
 * div_select: a long-running divert program in the style of natd: it
 * waits for packets with select() (or poll(), epoll, or a blocking read)
 * and writes each one back unchanged, as long as it runs.
 *
 *	div_select [-m select|poll|epoll|block] [-n] [-t SECONDS] [-w DST]
 *		   PORT [READYFILE]
 *
 * -n makes the socket non-blocking.  With -w, each SIGUSR1 makes it write
 * one new packet (a UDP datagram to DST port 9, outgoing) and print
 *	write OK	or	write errno N
 * (not counted in E).  It runs until SIGTERM or SECONDS
 * (default 60), then prints
 *	reads N zero Z errors E lasterr ERRNO writes W
 * and exits 0.  Z counts reads that returned 0 bytes and E every failed
 * read or write (EINTR, and EAGAIN on a non-blocking socket after a
 * wakeup, excepted): a divert socket on FreeBSD never gives either while
 * it lives.  Each packet also gives a line "pkt N" on stdout, flushed, so
 * that a test can see traffic flow.  READYFILE is created once bound.
 */
#include <sys/types.h>
#include <sys/epoll.h>
#include <sys/select.h>
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
#include <time.h>
#include <unistd.h>

#include "divert.h"

static volatile sig_atomic_t done, write_asked;

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		write_asked = 1;
	else
		done = 1;
}

/* One new outgoing packet: UDP from 0.0.0.0 (the stack fills it in) to
 * dst port 9; 0 or the errno of sendto(). */
static int write_new(int fd, struct in_addr dst)
{
	unsigned char pkt[28] = {
		0x45, 0, 0, 28, 0x12, 0x34, 0, 0, 64, 17,	/* UDP */
	};
	struct sockaddr_in to;

	memcpy(pkt + 16, &dst, 4);
	pkt[21] = 9;			/* source port 0, destination 9 */
	pkt[23] = 8;			/* UDP length; checksum 0: none */
	memset(&to, 0, sizeof(to));
	to.sin_family = AF_INET;	/* INADDR_ANY: outgoing */
	return sendto(fd, pkt, sizeof(pkt), 0, (struct sockaddr *)&to,
		      sizeof(to)) < 0 ? errno : 0;
}

enum mode { M_SELECT, M_POLL, M_EPOLL, M_BLOCK };

/* Wait up to 200 ms for fd to be readable: 1 ready, 0 not, -1 error. */
static int wait_readable(enum mode m, int fd, int ep)
{
	struct timeval tv = { 0, 200000 };
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	struct epoll_event ev;
	fd_set rd;

	switch (m) {
	case M_SELECT:
		FD_ZERO(&rd);
		FD_SET(fd, &rd);
		return select(fd + 1, &rd, NULL, NULL, &tv);
	case M_POLL:
		return poll(&pfd, 1, 200);
	case M_EPOLL:
		return epoll_wait(ep, &ev, 1, 200);
	default:
		return 1;
	}
}

int main(int argc, char **argv)
{
	unsigned long reads = 0, zero = 0, errors = 0, writes = 0;
	enum mode m = M_SELECT;
	int lasterr = 0, nonblock = 0, seconds = 60, fd, ep = -1, c, r;
	struct in_addr wdst = { 0 };
	struct sockaddr_in sin;
	struct sigaction sa;
	socklen_t slen;
	char buf[65536];
	time_t end;
	ssize_t n;

	while ((c = getopt(argc, argv, "m:nt:w:")) != -1) {
		switch (c) {
		case 'm':
			m = strcmp(optarg, "poll") == 0 ? M_POLL :
			    strcmp(optarg, "epoll") == 0 ? M_EPOLL :
			    strcmp(optarg, "block") == 0 ? M_BLOCK : M_SELECT;
			break;
		case 'n':
			nonblock = 1;
			break;
		case 't':
			seconds = atoi(optarg);
			break;
		case 'w':
			if (inet_pton(AF_INET, optarg, &wdst) != 1)
				errx(2, "-w: not an IPv4 address: %s", optarg);
			break;
		default:
			errx(2, "usage: div_select [-m select|poll|epoll|block] "
			     "[-n] [-t SECONDS] [-w DST] PORT [READYFILE]");
		}
	}
	if (argc - optind < 1)
		errx(2, "no port");

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;	/* no SA_RESTART: reads see EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	alarm((unsigned)seconds);

	fd = socket(PF_DIVERT, SOCK_RAW | (nonblock ? SOCK_NONBLOCK : 0), 0);
	if (fd < 0)
		err(1, "socket");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((unsigned short)atoi(argv[optind]));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
		err(1, "bind %s", argv[optind]);
	if (m == M_EPOLL) {
		struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };

		ep = epoll_create1(0);
		if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
			err(1, "epoll");
	}
	if (argc - optind > 1 && (c = open(argv[optind + 1],
					   O_CREAT | O_WRONLY, 0644)) >= 0)
		close(c);
	setvbuf(stdout, NULL, _IOLBF, 0);

	end = time(NULL) + seconds;
	while (!done && time(NULL) < end) {
		if (write_asked && wdst.s_addr != 0) {
			write_asked = 0;
			c = write_new(fd, wdst);
			if (c == 0)
				printf("write OK\n");
			else
				printf("write errno %d\n", c);
		}
		r = wait_readable(m, fd, ep);
		if (r < 0 && errno != EINTR) {
			errors++;
			lasterr = errno;
		}
		if (r <= 0)
			continue;
		slen = sizeof(sin);
		n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&sin,
			     &slen);
		if (n < 0) {
			/* a wakeup another reader took: not an error */
			if (errno == EINTR || (nonblock && errno == EAGAIN))
				continue;
			errors++;
			lasterr = errno;
			continue;
		}
		if (n == 0) {
			zero++;
			continue;
		}
		reads++;
		printf("pkt %lu\n", reads);
		if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&sin,
			   slen) < 0) {
			errors++;
			lasterr = errno;
		} else {
			writes++;
		}
	}
	printf("reads %lu zero %lu errors %lu lasterr %d writes %lu\n",
	       reads, zero, errors, lasterr, writes);
	return 0;
}
