/*
 * udp_sink: receive a UDP flood (udp_flood's) and measure its rate.
 *
 *	udp_sink -p PORT [-n EXPECT] [-t SECONDS] [-i IDLE_MS] [-r READYFILE]
 *		 [-b RCVBUF]
 *
 * Binds PORT on every address, creates READYFILE, and counts what arrives
 * with recvmmsg(), 64 datagrams a call.  The rate is measured over the
 * receive window, from the first datagram to the last, so start-up and the
 * idle wait at the end do not count.  It stops after EXPECT datagrams, after
 * IDLE_MS (default 500) without one once the first has come, after SECONDS
 * (default 30) in all, or on SIGINT / SIGTERM.
 *
 * Bytes are counted as IPv4 packets (payload + 28), like udp_flood's SIZE.
 * The first 8 payload bytes number each datagram; numbers below EXPECT are
 * counted once each in "unique", so duplicates (a tee copy written back,
 * say) show as received > unique.
 *
 * Prints: "received N unique N bytes N first_ns T last_ns T seconds S
 *	    pps R gbps R".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "bench.h"

#define PROG	"udp_sink"
#define BATCH	64
#define SLOT	2048	/* floods are at most 1500-byte packets */

static void usage(void)
{
	fprintf(stderr, "usage: udp_sink -p PORT [-n EXPECT] [-t SECONDS] "
		"[-i IDLE_MS] [-r READYFILE] [-b RCVBUF]\n");
	exit(2);
}

int main(int argc, char *argv[])
{
	static struct mmsghdr msgs[BATCH];
	static struct iovec iov[BATCH];
	static uint8_t bufs[BATCH][SLOT];
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct timeval tv = { 0, 50000 };	/* to look at the clock */
	uint64_t expect = 0, seconds = 30, idle_ms = 500, rcvbuf = 8 << 20;
	uint64_t received = 0, unique = 0, bytes = 0, first = 0, last = 0;
	uint64_t start, deadline;
	const char *ready = NULL;
	uint8_t *seen = NULL;
	double window;
	int ch, fd, rb;

	while ((ch = getopt(argc, argv, "b:i:n:p:r:t:")) != -1) {
		switch (ch) {
		case 'b': rcvbuf = bench_number(PROG, "-b", optarg); break;
		case 'i': idle_ms = bench_number(PROG, "-i", optarg); break;
		case 'n': expect = bench_number(PROG, "-n", optarg); break;
		case 'p': sin.sin_port = htons((uint16_t)bench_number(PROG, "-p", optarg)); break;
		case 'r': ready = optarg; break;
		case 't': seconds = bench_number(PROG, "-t", optarg); break;
		default: usage();
		}
	}
	if (sin.sin_port == 0 || optind != argc)
		usage();
	bench_signals();
	if (expect > 0 && (seen = calloc(expect / 8 + 1, 1)) == NULL)
		bench_die(PROG, "calloc");
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = SLOT;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		bench_die(PROG, "socket");
	rb = (int)rcvbuf;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rb, sizeof(rb));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
		bench_die(PROG, "bind");
	bench_ready(PROG, ready);

	start = bench_now_ns();
	deadline = start + seconds * 1000000000u;
	while (!bench_done && (expect == 0 || received < expect)) {
		int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
		uint64_t now = bench_now_ns();

		if (n > 0) {
			if (first == 0)
				first = now;
			last = now;
			for (int i = 0; i < n; i++) {
				uint64_t seq;

				received++;
				bytes += msgs[i].msg_len + BENCH_IPV4_UDP_HDRS;
				if (msgs[i].msg_len < sizeof(seq))
					continue;
				memcpy(&seq, bufs[i], sizeof(seq));
				if (seen != NULL && seq < expect &&
				    !(seen[seq / 8] & (1u << (seq % 8)))) {
					seen[seq / 8] |= (uint8_t)(1u << (seq % 8));
					unique++;
				}
			}
		} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
			bench_die(PROG, "recvmmsg");
		}
		if (now >= deadline)
			break;
		if (first != 0 && now - last >= idle_ms * 1000000u)
			break;
	}
	if (seen == NULL)
		unique = received;
	window = (double)(last - first) / 1e9;
	/* n datagrams span n - 1 gaps; the first marks the window's start */
	printf("received %llu unique %llu bytes %llu first_ns %llu last_ns %llu "
	       "seconds %.6f pps %.0f gbps %.4f\n",
	       (unsigned long long)received, (unsigned long long)unique,
	       (unsigned long long)bytes, (unsigned long long)first,
	       (unsigned long long)last, window,
	       window > 0 ? (double)(received - 1) / window : 0.0,
	       window > 0 ? (double)bytes * 8 / window / 1e9 : 0.0);
	close(fd);
	free(seen);
	return 0;
}
