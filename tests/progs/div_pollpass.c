/*
 * div_pollpass: pass diverted packets through, waiting for each one first.
 *
 *	div_pollpass [-n COUNT] [-w WAIT_MS] [-p PACE_MS]
 *	    [-m poll|select|epoll|epollet|spin] [-b RCVBUF] [-r READYFILE] PORT
 *
 * The way many event-driven divert programs read: the socket stays
 * blocking, and before every read the program waits for it to be readable
 * (poll(), or select()), then reads one packet and writes it back with the
 * address it came with.  With -m epoll the socket is O_NONBLOCK and each
 * epoll_wait() is followed by reads until EAGAIN (level-triggered; epollet:
 * edge-triggered, where a missed drain or a missed wakeup shows at once).
 * With -m spin the socket is O_NONBLOCK and the program never sleeps: it
 * reads again at once after EAGAIN (a busy-polling reader, which takes
 * each packet the moment it arrives).
 *
 * A wait that sees nothing for WAIT_MS (default 5000; spin: WAIT_MS of
 * EAGAIN) means the program stalled while it waited for a packet: it
 * prints what it passed and exits 3.  It exits 0 after COUNT packets (-n;
 * 0, the default, is no limit) or on SIGTERM; 1 when the socket failed or
 * a write did.  -p paces the output, as a shaper does: after each
 * write-back the program prints "wrote N" and sleeps PACE_MS before it
 * reads again, packets waiting or not.  READYFILE is created once the
 * socket is bound (renamed into place, holding the pid).  -b sets
 * SO_RCVBUF first.  Every packet
 * read is checked: an IPv4 or IPv6 header whose length field matches what
 * was read (else it counts as malformed).  The last line is
 *	passed N bytes B malformed M write_errors E end done|stopped|timeout|error
 */
#include <sys/types.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <netinet/in.h>

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

enum mode { M_POLL, M_SELECT, M_EPOLL, M_EPOLLET, M_SPIN };

static volatile sig_atomic_t done;
static char buf[65536];
static long npkts, nbytes, nbad, nfail, pace_ms;

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

static void
usage(void)
{
	fprintf(stderr, "usage: div_pollpass [-n COUNT] [-w WAIT_MS] "
	    "[-p PACE_MS] [-m poll|select|epoll|epollet|spin] [-b RCVBUF] "
	    "[-r READYFILE] PORT\n");
	exit(2);
}

/* The IP length field says what was read (IPv4 total length, IPv6 40 +
 * payload length). */
static int
well_formed(const unsigned char *p, ssize_t n)
{
	if (n >= 20 && (p[0] >> 4) == 4)
		return (((p[2] << 8) | p[3]) == n);
	if (n >= 40 && (p[0] >> 4) == 6)
		return (40 + ((p[4] << 8) | p[5]) == n);
	return (0);
}

/* Milliseconds since *t. */
static long
since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return ((now.tv_sec - t->tv_sec) * 1000 +
	    (now.tv_nsec - t->tv_nsec) / 1000000);
}

/* Wait until fd is writable again (a full send buffer), WAIT_MS at most. */
static int
wait_writable(int fd, int wait_ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };

	return (poll(&pfd, 1, wait_ms) == 1);
}

/*
 * One read, and its write-back.  1: a packet passed (or failed to);
 * 0: nothing there (EAGAIN, EINTR); -1: the socket is gone.
 */
static int
pass_one(int fd, int wait_ms)
{
	struct sockaddr_in sin;
	socklen_t sinlen = sizeof(sin);
	ssize_t n, w;
	int tries;

	n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&sin,
	    &sinlen);
	if (n == -1) {
		if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
			return (0);
		warn("recvfrom");
		return (-1);
	}
	if (n == 0) {
		warnx("recvfrom: divert socket closed");
		return (-1);
	}
	npkts++;
	nbytes += n;
	if (!well_formed((unsigned char *)buf, n))
		nbad++;
	for (tries = 0; tries < 100; tries++) {
		w = sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&sin,
		    sinlen);
		if (w == n && pace_ms > 0) {
			printf("wrote %ld\n", npkts);
			nanosleep(&(struct timespec){ pace_ms / 1000,
			    (pace_ms % 1000) * 1000000 }, NULL);
		}
		if (w == n)
			return (1);
		if (w == -1 && (errno == EAGAIN || errno == EWOULDBLOCK ||
		    errno == ENOBUFS) && wait_writable(fd, wait_ms))
			continue;
		if (w == -1 && errno == EINTR)
			continue;
		break;
	}
	warn("sendto (packet %ld, %zd bytes)", npkts, n);
	nfail++;
	return (1);
}

int
main(int argc, char *argv[])
{
	struct sockaddr_in sin;
	struct sigaction sa;
	struct epoll_event ev;
	struct pollfd pfd;
	struct timespec last;
	struct timeval tv;
	fd_set rfds;
	const char *ready = NULL, *end = "done";
	enum mode mode = M_POLL;
	long port, count = 0, wait_ms = 5000, rcvbuf = 0;
	int fd, ep = -1, r, c;

	while ((c = getopt(argc, argv, "n:w:p:m:b:r:")) != -1) {
		switch (c) {
		case 'n':
			count = number(optarg, "count", 1000000000L);
			break;
		case 'w':
			wait_ms = number(optarg, "wait", 3600000L);
			break;
		case 'p':
			pace_ms = number(optarg, "pace", 60000L);
			break;
		case 'm':
			if (strcmp(optarg, "poll") == 0)
				mode = M_POLL;
			else if (strcmp(optarg, "select") == 0)
				mode = M_SELECT;
			else if (strcmp(optarg, "epoll") == 0)
				mode = M_EPOLL;
			else if (strcmp(optarg, "epollet") == 0)
				mode = M_EPOLLET;
			else if (strcmp(optarg, "spin") == 0)
				mode = M_SPIN;
			else
				usage();
			break;
		case 'b':
			rcvbuf = number(optarg, "receive buffer", 1L << 30);
			break;
		case 'r':
			ready = optarg;
			break;
		default:
			usage();
		}
	}
	if (optind != argc - 1)
		usage();
	port = number(argv[optind], "port", 65535);
	setvbuf(stdout, NULL, _IOLBF, 0);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;	/* no SA_RESTART: the waits return */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	fd = socket(PF_DIVERT, SOCK_RAW, 0);
	if (fd == -1)
		err(1, "socket");
	if (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &(int){
	    (int)rcvbuf }, sizeof(int)) == -1)
		err(1, "SO_RCVBUF %ld", rcvbuf);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1)
		err(1, "bind %ld", port);
	if (mode == M_SELECT && fd >= FD_SETSIZE)
		errx(1, "fd %d: too large for select", fd);
	if (mode == M_EPOLL || mode == M_EPOLLET || mode == M_SPIN) {
		r = fcntl(fd, F_GETFL);
		if (r == -1 || fcntl(fd, F_SETFL, r | O_NONBLOCK) == -1)
			err(1, "O_NONBLOCK");
	}
	if (mode == M_EPOLL || mode == M_EPOLLET) {
		if ((ep = epoll_create1(EPOLL_CLOEXEC)) == -1)
			err(1, "epoll_create1");
		memset(&ev, 0, sizeof(ev));
		ev.events = EPOLLIN | (mode == M_EPOLLET ? EPOLLET : 0);
		ev.data.fd = fd;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == -1)
			err(1, "epoll_ctl");
	}
	if (ready != NULL) {
		char tmp[4096];
		FILE *f;

		snprintf(tmp, sizeof(tmp), "%s.tmp", ready);
		if ((f = fopen(tmp, "w")) == NULL)
			err(1, "%s", tmp);
		fprintf(f, "%ld\n", (long)getpid());
		if (fclose(f) != 0 || rename(tmp, ready) == -1)
			err(1, "%s", ready);
	}

	clock_gettime(CLOCK_MONOTONIC, &last);
	while (mode == M_SPIN && !done && (count == 0 || npkts < count)) {
		long idle = 0;

		r = 0;
		while (!done && (r = pass_one(fd, (int)wait_ms)) == 0) {
			if (idle++ % 1024 == 0 && since(&last) > wait_ms)
				break;
		}
		if (r < 0) {
			end = "error";
			break;
		}
		if (r == 0 && !done) {
			end = "timeout";
			break;
		}
		clock_gettime(CLOCK_MONOTONIC, &last);
	}
	while (mode != M_SPIN && !done && (count == 0 || npkts < count)) {
		switch (mode) {
		case M_POLL:
			pfd.fd = fd;
			pfd.events = POLLIN;
			r = poll(&pfd, 1, (int)wait_ms);
			break;
		case M_SELECT:
			FD_ZERO(&rfds);
			FD_SET(fd, &rfds);
			tv.tv_sec = wait_ms / 1000;
			tv.tv_usec = (wait_ms % 1000) * 1000;
			r = select(fd + 1, &rfds, NULL, NULL, &tv);
			break;
		default:
			r = epoll_wait(ep, &ev, 1, (int)wait_ms);
			break;
		}
		if (r == -1) {
			if (errno == EINTR)
				continue;
			err(1, "wait");
		}
		if (r == 0) {
			end = "timeout";	/* stalled, or nothing came */
			break;
		}
		if (mode == M_POLL || mode == M_SELECT) {
			/* blocking: exactly one read per wakeup */
			if (pass_one(fd, (int)wait_ms) < 0) {
				end = "error";
				break;
			}
			continue;
		}
		/* non-blocking: drain until EAGAIN (or the count) */
		while (!done && (count == 0 || npkts < count)) {
			r = pass_one(fd, (int)wait_ms);
			if (r <= 0)
				break;
		}
		if (r < 0) {
			end = "error";
			break;
		}
	}
	if (done)
		end = "stopped";
	printf("passed %ld bytes %ld malformed %ld write_errors %ld end %s\n",
	    npkts, nbytes, nbad, nfail, end);
	close(fd);
	if (strcmp(end, "timeout") == 0)
		return (3);
	return (nfail != 0 || strcmp(end, "error") == 0);
}
