/*
 * udp_flood: send a bounded UDP flood, as fast as it goes or at a rate.
 *
 *	udp_flood -d ADDR -p PORT -s SIZE -n COUNT [-r PPS] [-t SECONDS]
 *		  [-b BATCH] [-q SEQ0]
 *
 * Sends COUNT IPv4 UDP packets of SIZE bytes each to ADDR:PORT.  SIZE is the
 * whole IPv4 packet (20-byte header, 8-byte UDP header, payload), which is
 * what a firewall hook, NFQUEUE and a divert program see; a 64-byte packet
 * carries 36 bytes of payload.  The first 8 bytes of the payload number the
 * packet (SEQ0, SEQ0 + 1, ...) so a receiver can count duplicates.
 *
 * Packets go out BATCH at a time (default 64) with sendmmsg() on a
 * connected socket.  With -r the batches are paced to PPS packets a second
 * (batch sizes shrink to keep bursts within a millisecond); without it the
 * sender runs flat out and the path drops what it cannot carry, which the
 * receiver's count shows.  The flood stops after COUNT packets or SECONDS
 * (default 30), whichever comes first, or on SIGINT / SIGTERM.
 *
 * Prints: "sent N errors N seconds S pps R".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "bench.h"

#define PROG		"udp_flood"
#define MAX_BATCH	256

static void usage(void)
{
	fprintf(stderr, "usage: udp_flood -d ADDR -p PORT -s SIZE -n COUNT "
		"[-r PPS] [-t SECONDS] [-b BATCH] [-q SEQ0]\n");
	exit(2);
}

/* Sleep until the absolute CLOCK_MONOTONIC time t (ns). */
static void sleep_until(uint64_t t)
{
	struct timespec ts = {
		.tv_sec = (time_t)(t / 1000000000u),
		.tv_nsec = (long)(t % 1000000000u),
	};

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) ==
	       EINTR && !bench_done)
		;
}

int main(int argc, char *argv[])
{
	static struct mmsghdr msgs[MAX_BATCH];
	static struct iovec iov[MAX_BATCH];
	struct sockaddr_in dst = { .sin_family = AF_INET };
	uint64_t count = 0, pps = 0, seconds = 30, size = 0, batch = 64;
	uint64_t seq0 = 0, sent = 0, errors = 0, start, deadline, elapsed;
	const char *addr = NULL;
	uint8_t *bufs;
	size_t plen;
	int ch, fd, sndbuf = 4 << 20;

	while ((ch = getopt(argc, argv, "b:d:n:p:q:r:s:t:")) != -1) {
		switch (ch) {
		case 'b': batch = bench_number(PROG, "-b", optarg); break;
		case 'd': addr = optarg; break;
		case 'n': count = bench_number(PROG, "-n", optarg); break;
		case 'p': dst.sin_port = htons((uint16_t)bench_number(PROG, "-p", optarg)); break;
		case 'q': seq0 = bench_number(PROG, "-q", optarg); break;
		case 'r': pps = bench_number(PROG, "-r", optarg); break;
		case 's': size = bench_number(PROG, "-s", optarg); break;
		case 't': seconds = bench_number(PROG, "-t", optarg); break;
		default: usage();
		}
	}
	if (addr == NULL || inet_pton(AF_INET, addr, &dst.sin_addr) != 1 ||
	    dst.sin_port == 0 || count == 0 || batch == 0 || batch > MAX_BATCH ||
	    size < BENCH_IPV4_UDP_HDRS + 8 || size > 65535)
		usage();
	if (pps > 0) {
		/* at most a millisecond's worth of packets in one burst */
		uint64_t per_ms = pps / 1000 > 0 ? pps / 1000 : 1;
		if (batch > per_ms)
			batch = per_ms;
	}
	bench_signals();

	/* one buffer per batch slot: each carries its own sequence number */
	plen = (size_t)size - BENCH_IPV4_UDP_HDRS;
	bufs = calloc(MAX_BATCH, plen);
	if (bufs == NULL)
		bench_die(PROG, "calloc");
	for (int i = 0; i < MAX_BATCH; i++) {
		iov[i].iov_base = bufs + (size_t)i * plen;
		iov[i].iov_len = plen;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		bench_die(PROG, "socket");
	setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf));
	if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) < 0)
		bench_die(PROG, "connect");

	start = bench_now_ns();
	deadline = start + seconds * 1000000000u;
	while (sent < count && !bench_done) {
		unsigned n = (unsigned)(count - sent < batch ? count - sent : batch);
		uint64_t now;
		int r;

		if (pps > 0)	/* when the first of this batch is due */
			sleep_until(start + sent * 1000000000u / pps);
		now = bench_now_ns();
		if (now >= deadline)
			break;
		for (unsigned i = 0; i < n; i++) {
			uint64_t seq = seq0 + sent + i;
			memcpy(iov[i].iov_base, &seq, sizeof(seq));
		}
		r = sendmmsg(fd, msgs, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			/* ENOBUFS, ECONNREFUSED (an ICMP error came back):
			 * the packet is lost, the flood goes on */
			errors++;
			sent++;		/* skip it: the count stays bounded */
			continue;
		}
		sent += (unsigned)r;
	}
	elapsed = bench_now_ns() - start;
	printf("sent %llu errors %llu seconds %.6f pps %.0f\n",
	       (unsigned long long)(sent - errors),
	       (unsigned long long)errors, elapsed / 1e9,
	       elapsed > 0 ? (double)(sent - errors) * 1e9 / (double)elapsed : 0.0);
	close(fd);
	free(bufs);
	return 0;
}
