/*
 * udp_rtt: UDP round-trip latency at light load, one datagram in flight.
 *
 *	udp_rtt -l PORT[,PORT...] [-r READYFILE] [-t SECONDS]		echo side
 *	udp_rtt -c ADDR -p PORT[,PORT...] -n COUNT [-s SIZE] [-w WARMUP]
 *		[-T TIMEOUT_MS] [-t SECONDS]				client
 *
 * The echo side sends every datagram back to where it came from, on each
 * of its ports.  The client sends one datagram of SIZE bytes (the IPv4
 * packet, default 64), waits for its echo (matched by sequence number; at
 * most TIMEOUT_MS, default 100, then it counts as lost), and only then
 * sends the next.  With several ports it takes them in turn, one round
 * trip each, so paths that differ only by port (one plain, one through a
 * queue, ...) are measured under the same conditions at the same moments.
 * The first WARMUP round trips of each port (default 200: cold caches,
 * conntrack entries) are not counted; then COUNT are measured per port.
 * Both sides stop after SECONDS (default 30), or on SIGINT / SIGTERM.
 *
 * Client prints, per port, one line: "port P count N lost N mean_us R
 *	p50_us R p90_us R p99_us R p999_us R max_us R".
 * Echo side prints: "echoed N".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include "bench.h"

#define PROG		"udp_rtt"
#define MAX_PORTS	8

struct path {				/* one destination port */
	uint16_t port;
	int fd;
	uint64_t *rtt;			/* ns, the measured round trips */
	size_t n;
	uint64_t lost, sum;
};

static void usage(void)
{
	fprintf(stderr, "usage: udp_rtt -l PORT[,PORT...] [-r READYFILE] "
		"[-t SECONDS]\n"
		"       udp_rtt -c ADDR -p PORT[,PORT...] -n COUNT [-s SIZE] "
		"[-w WARMUP] [-T TIMEOUT_MS] [-t SECONDS]\n");
	exit(2);
}

/* "7001,7002": the ports, at most MAX_PORTS; returns how many. */
static int parse_ports(char *list, uint16_t *ports)
{
	int n = 0;

	for (char *tok = strtok(list, ","); tok != NULL; tok = strtok(NULL, ",")) {
		uint64_t p = bench_number(PROG, "port", tok);

		if (n == MAX_PORTS || p == 0 || p > 65535)
			usage();
		ports[n++] = (uint16_t)p;
	}
	return n;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The q-quantile of n sorted values (nearest rank), in microseconds. */
static double quantile_us(const uint64_t *v, size_t n, double q)
{
	size_t i = (size_t)(q * (double)n + 0.5);

	if (n == 0)
		return 0;
	if (i > 0)
		i--;
	if (i >= n)
		i = n - 1;
	return (double)v[i] / 1000.0;
}

static int echo(const uint16_t *ports, int nports, const char *ready,
		uint64_t deadline)
{
	struct pollfd pfd[MAX_PORTS];
	unsigned long long echoed = 0;
	static char buf[65536];

	for (int i = 0; i < nports; i++) {
		struct sockaddr_in sin = { .sin_family = AF_INET,
					   .sin_port = htons(ports[i]) };

		pfd[i].fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		pfd[i].events = POLLIN;
		if (pfd[i].fd < 0)
			bench_die(PROG, "socket");
		if (bind(pfd[i].fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
			bench_die(PROG, "bind");
	}
	bench_ready(PROG, ready);
	while (!bench_done && bench_now_ns() < deadline) {
		if (poll(pfd, (nfds_t)nports, 100) <= 0)
			continue;
		for (int i = 0; i < nports; i++) {
			struct sockaddr_in from;
			socklen_t flen = sizeof(from);
			ssize_t n;

			if (!(pfd[i].revents & POLLIN))
				continue;
			while ((n = recvfrom(pfd[i].fd, buf, sizeof(buf), 0,
					     (struct sockaddr *)&from, &flen)) >= 0) {
				if (sendto(pfd[i].fd, buf, (size_t)n, 0,
					   (struct sockaddr *)&from, flen) == n)
					echoed++;
				flen = sizeof(from);
			}
		}
	}
	printf("echoed %llu\n", echoed);
	for (int i = 0; i < nports; i++)
		close(pfd[i].fd);
	return 0;
}

/* One round trip on path p with sequence number seq: its time in ns, or 0
 * when the echo did not come within timeout_ms. */
static uint64_t round_trip(struct path *p, uint64_t seq, size_t plen,
			   uint64_t timeout_ms)
{
	static char buf[65536], rbuf[65536];
	struct pollfd pfd = { .fd = p->fd, .events = POLLIN };
	uint64_t t0, wait_end;

	memcpy(buf, &seq, sizeof(seq));
	t0 = bench_now_ns();
	if (send(p->fd, buf, plen, 0) < 0)
		return 0;
	wait_end = t0 + timeout_ms * 1000000u;
	while (!bench_done) {
		uint64_t now = bench_now_ns(), rseq;
		ssize_t r;

		if (now >= wait_end)
			return 0;
		if (poll(&pfd, 1, (int)((wait_end - now) / 1000000u) + 1) <= 0)
			continue;
		/* drain: a late echo of an earlier one is skipped */
		while ((r = recv(p->fd, rbuf, sizeof(rbuf), 0)) >= 0) {
			if ((size_t)r < sizeof(rseq))
				continue;
			memcpy(&rseq, rbuf, sizeof(rseq));
			if (rseq == seq)
				return bench_now_ns() - t0;
		}
	}
	return 0;
}

static int client(const char *addr, const uint16_t *ports, int nports,
		  uint64_t count, uint64_t size, uint64_t warmup,
		  uint64_t timeout_ms, uint64_t deadline)
{
	struct path paths[MAX_PORTS];
	size_t plen = (size_t)size - BENCH_IPV4_UDP_HDRS;
	struct in_addr dst;

	if (inet_pton(AF_INET, addr, &dst) != 1)
		usage();
	for (int i = 0; i < nports; i++) {
		struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr = dst,
					   .sin_port = htons(ports[i]) };
		struct path *p = &paths[i];

		memset(p, 0, sizeof(*p));
		p->port = ports[i];
		p->rtt = calloc(count, sizeof(*p->rtt));
		p->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (p->rtt == NULL || p->fd < 0)
			bench_die(PROG, "socket");
		if (connect(p->fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
			bench_die(PROG, "connect");
	}

	/* round k goes to every port once, in turn */
	for (uint64_t k = 0; k < warmup + count && !bench_done; k++) {
		if (bench_now_ns() >= deadline)
			break;
		for (int i = 0; i < nports && !bench_done; i++) {
			struct path *p = &paths[i];
			uint64_t t = round_trip(p, k * MAX_PORTS + (uint64_t)i,
						plen, timeout_ms);

			if (k < warmup)
				continue;
			if (t == 0) {
				p->lost++;
				continue;
			}
			p->rtt[p->n++] = t;
			p->sum += t;
		}
	}
	for (int i = 0; i < nports; i++) {
		struct path *p = &paths[i];

		qsort(p->rtt, p->n, sizeof(*p->rtt), cmp_u64);
		printf("port %u count %zu lost %llu mean_us %.2f p50_us %.2f "
		       "p90_us %.2f p99_us %.2f p999_us %.2f max_us %.2f\n",
		       p->port, p->n, (unsigned long long)p->lost,
		       p->n ? (double)p->sum / (double)p->n / 1000 : 0,
		       quantile_us(p->rtt, p->n, 0.50),
		       quantile_us(p->rtt, p->n, 0.90),
		       quantile_us(p->rtt, p->n, 0.99),
		       quantile_us(p->rtt, p->n, 0.999),
		       p->n ? (double)p->rtt[p->n - 1] / 1000 : 0);
		close(p->fd);
		free(p->rtt);
	}
	return 0;
}

int main(int argc, char *argv[])
{
	uint64_t count = 0, size = 64, warmup = 200, timeout_ms = 100;
	uint64_t seconds = 30, deadline;
	const char *connect_to = NULL, *ready = NULL;
	uint16_t ports[MAX_PORTS];
	int ch, nports = 0, listen_mode = 0;

	while ((ch = getopt(argc, argv, "c:l:n:p:r:s:t:T:w:")) != -1) {
		switch (ch) {
		case 'c': connect_to = optarg; break;
		case 'l': listen_mode = 1; nports = parse_ports(optarg, ports); break;
		case 'n': count = bench_number(PROG, "-n", optarg); break;
		case 'p': nports = parse_ports(optarg, ports); break;
		case 'r': ready = optarg; break;
		case 's': size = bench_number(PROG, "-s", optarg); break;
		case 't': seconds = bench_number(PROG, "-t", optarg); break;
		case 'T': timeout_ms = bench_number(PROG, "-T", optarg); break;
		case 'w': warmup = bench_number(PROG, "-w", optarg); break;
		default: usage();
		}
	}
	if (optind != argc || nports == 0 || listen_mode == (connect_to != NULL) ||
	    (!listen_mode && (count == 0 || size < BENCH_IPV4_UDP_HDRS + 8 ||
			      size > 1500)))
		usage();
	bench_signals();
	deadline = bench_now_ns() + seconds * 1000000000u;
	if (listen_mode)
		return echo(ports, nports, ready, deadline);
	return client(connect_to, ports, nports, count, size, warmup,
		      timeout_ms, deadline);
}
