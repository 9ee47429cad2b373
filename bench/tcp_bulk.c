/*
 * tcp_bulk: a bounded TCP bulk transfer, and its receiver.
 *
 *	tcp_bulk -l PORT [-r READYFILE] [-t SECONDS]		receiver
 *	tcp_bulk -c ADDR -p PORT -n BYTES [-t SECONDS] [-w WRITE]	sender
 *
 * The sender connects and writes BYTES in writes of WRITE bytes (default
 * 256 KiB), large enough that the stack builds GSO packets of up to 64 KiB
 * (veth offers TSO), then shuts its side down and waits for the receiver to
 * close.  The receiver accepts one connection and reads with 1 MiB reads
 * until EOF; its rate is measured over the receive window, from the first
 * byte to EOF.  Both stop after SECONDS (default 30) whatever happens, or
 * on SIGINT / SIGTERM.
 *
 * Receiver prints: "bytes N first_ns T last_ns T seconds S gbps R".
 * Sender prints:   "sent N seconds S".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include "bench.h"

#define PROG	"tcp_bulk"
#define RSIZE	(1 << 20)

static void usage(void)
{
	fprintf(stderr, "usage: tcp_bulk -l PORT [-r READYFILE] [-t SECONDS]\n"
		"       tcp_bulk -c ADDR -p PORT -n BYTES [-t SECONDS] "
		"[-w WRITE]\n");
	exit(2);
}

/* Wait until fd has EVENTS or the deadline passes: 1, or 0 at the
 * deadline or on a signal. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
	struct pollfd pfd = { .fd = fd, .events = events };

	while (!bench_done) {
		uint64_t now = bench_now_ns();
		int r;

		if (now >= deadline)
			return 0;
		r = poll(&pfd, 1, (int)((deadline - now) / 1000000u) + 1);
		if (r > 0)
			return 1;
		if (r < 0 && errno != EINTR)
			bench_die(PROG, "poll");
	}
	return 0;
}

static int receiver(uint16_t port, const char *ready, uint64_t deadline)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
	uint64_t bytes = 0, first = 0, last = 0;
	int one = 1, lfd, fd;
	char *buf = malloc(RSIZE);
	double window;

	if (buf == NULL)
		bench_die(PROG, "malloc");
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		bench_die(PROG, "socket");
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    listen(lfd, 1) < 0)
		bench_die(PROG, "listen");
	bench_ready(PROG, ready);
	if (!wait_fd(lfd, POLLIN, deadline)) {
		fprintf(stderr, "%s: nobody connected\n", PROG);
		return 1;
	}
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0)
		bench_die(PROG, "accept");
	close(lfd);
	for (;;) {
		ssize_t n = read(fd, buf, RSIZE);

		if (n > 0) {
			last = bench_now_ns();
			if (first == 0)
				first = last;
			bytes += (uint64_t)n;
			continue;
		}
		if (n == 0)
			break;		/* EOF: the whole transfer is in */
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			bench_die(PROG, "read");
		if (!wait_fd(fd, POLLIN, deadline)) {
			fprintf(stderr, "%s: stopped before EOF\n", PROG);
			break;
		}
	}
	close(fd);
	free(buf);
	window = (double)(last - first) / 1e9;
	printf("bytes %llu first_ns %llu last_ns %llu seconds %.6f gbps %.4f\n",
	       (unsigned long long)bytes, (unsigned long long)first,
	       (unsigned long long)last, window,
	       window > 0 ? (double)bytes * 8 / window / 1e9 : 0.0);
	return 0;
}

static int sender(const char *addr, uint16_t port, uint64_t total,
		  size_t wsize, uint64_t deadline)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
	uint64_t sent = 0, start = bench_now_ns();
	char *buf = calloc(1, wsize);
	int fd;

	if (buf == NULL)
		bench_die(PROG, "calloc");
	if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1)
		usage();
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		bench_die(PROG, "socket");
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
		bench_die(PROG, "connect");
	/* non-blocking from here, so the deadline holds even when the path
	 * stalls */
	if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0)
		bench_die(PROG, "fcntl");
	while (sent < total) {
		size_t n = total - sent < wsize ? (size_t)(total - sent) : wsize;
		ssize_t w = write(fd, buf, n);

		if (w > 0) {
			sent += (uint64_t)w;
			continue;
		}
		if (w < 0 && errno != EAGAIN && errno != EINTR)
			bench_die(PROG, "write");
		if (!wait_fd(fd, POLLOUT, deadline))
			break;
	}
	/* done: wait (bounded) for the receiver to read all and close */
	shutdown(fd, SHUT_WR);
	while (wait_fd(fd, POLLIN, deadline)) {
		ssize_t n = read(fd, buf, wsize);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			break;
	}
	close(fd);
	free(buf);
	printf("sent %llu seconds %.6f\n", (unsigned long long)sent,
	       (double)(bench_now_ns() - start) / 1e9);
	return 0;
}

int main(int argc, char *argv[])
{
	uint64_t bytes = 0, seconds = 30, wsize = 256 << 10, deadline;
	const char *connect_to = NULL, *ready = NULL;
	uint16_t port = 0;
	int ch, listen_mode = 0;

	while ((ch = getopt(argc, argv, "c:l:n:p:r:t:w:")) != -1) {
		switch (ch) {
		case 'c': connect_to = optarg; break;
		case 'l': listen_mode = 1; port = (uint16_t)bench_number(PROG, "-l", optarg); break;
		case 'n': bytes = bench_number(PROG, "-n", optarg); break;
		case 'p': port = (uint16_t)bench_number(PROG, "-p", optarg); break;
		case 'r': ready = optarg; break;
		case 't': seconds = bench_number(PROG, "-t", optarg); break;
		case 'w': wsize = bench_number(PROG, "-w", optarg); break;
		default: usage();
		}
	}
	if (optind != argc || port == 0 || listen_mode == (connect_to != NULL) ||
	    (!listen_mode && (bytes == 0 || wsize == 0)))
		usage();
	bench_signals();
	deadline = bench_now_ns() + seconds * 1000000000u;
	if (listen_mode)
		return receiver(port, ready, deadline);
	return sender(connect_to, port, bytes, (size_t)wsize, deadline);
}
