/*
 * divert_rewrite: set the TTL and DSCP of diverted packets.
 *
 *	divert_rewrite [-cv] [-d dscp] [-t ttl] port
 *
 * Reads the packets that divert rules send to divert port PORT, sets the
 * IPv4 TTL or IPv6 hop limit to TTL (-t, 1-255) and the DSCP, the upper six
 * bits of the IPv4 TOS or IPv6 traffic class, to DSCP (-d, 0-63; ECN bits
 * are kept), and writes each packet back to the address recvfrom() gave, so
 * that it goes on after the rule that diverted it.  A packet written back
 * must be valid: the IPv4 header checksum is updated for the two changed
 * header words (RFC 1624), or computed over the whole header again with
 * -c.  IPv6 has no header checksum, and neither field is covered by a
 * TCP or UDP checksum.  -v prints a line per packet.  SIGINT or SIGTERM
 * prints the number of packets rewritten and exits:
 *
 *	divert_rewrite: rewrote 3 packets (3 IPv4, 0 IPv6), passed 0 unchanged
 *
 * On FreeBSD, mark everything leaving em0 as expedited forwarding:
 *	ipfw add 100 divert 8668 ip from any to any out xmit em0
 *	./divert_rewrite -d 46 8668
 *
 * On Linux with divertd installed under /usr/local, as root:
 *	echo '100 divert 8668 ip from any to any out xmit eth0' >rewrite.conf
 *	divertd -f rewrite.conf
 *	cc -o divert_rewrite divert_rewrite.c $(pkg-config --cflags divert_shim)
 *	LD_PRELOAD=/usr/local/lib/libdivert_shim.so ./divert_rewrite -d 46 8668
 */
#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>

#include <divert.h>
#include <err.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
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
	fprintf(stderr, "usage: divert_rewrite [-cv] [-d dscp] [-t ttl] port\n");
	exit(2);
}

static long
number(const char *s, const char *what, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || errno != 0 || v < min || v > max)
		errx(2, "bad %s: %s (%ld-%ld)", what, s, min, max);
	return (v);
}

/* A 16-bit word of the packet, in host byte order. */
static uint16_t
word(const u_char *p)
{
	return ((uint16_t)(p[0] << 8 | p[1]));
}

/*
 * RFC 1624, eqn. 3: the checksum after one 16-bit word of the data it
 * covers changed from old to new, HC' = ~(~HC + ~m + m').  All three in
 * host byte order.
 */
static uint16_t
cksum_update(uint16_t sum, uint16_t old, uint16_t new)
{
	uint32_t s;

	s = (uint32_t)(uint16_t)~sum + (uint16_t)~old + new;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ((uint16_t)~s);
}

/* The IPv4 header checksum computed from scratch, in host byte order. */
static uint16_t
cksum_header(const u_char *p, size_t hlen)
{
	uint32_t s = 0;
	size_t i;

	for (i = 0; i < hlen; i += 2)
		if (i != 10)		/* the checksum itself counts as 0 */
			s += word(p + i);
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return ((uint16_t)~s);
}

static void
rewrite_ip(struct ip *ip, int ttl, int dscp, int full)
{
	u_char *p = (u_char *)ip;
	uint16_t sum, old0, old8;

	old0 = word(p);			/* version, header length, TOS */
	old8 = word(p + 8);		/* TTL, protocol */
	if (ttl != -1)
		ip->ip_ttl = (u_char)ttl;
	if (dscp != -1)
		ip->ip_tos = (u_char)(dscp << 2 | (ip->ip_tos & IPTOS_ECN_MASK));
	if (full)
		sum = cksum_header(p, (size_t)ip->ip_hl << 2);
	else {
		sum = cksum_update(ntohs(ip->ip_sum), old0, word(p));
		sum = cksum_update(sum, old8, word(p + 8));
	}
	ip->ip_sum = htons(sum);
}

static void
rewrite_ip6(struct ip6_hdr *ip6, int ttl, int dscp)
{
	uint32_t flow, tclass;

	if (ttl != -1)
		ip6->ip6_hlim = (uint8_t)ttl;
	if (dscp != -1) {
		/* version (4 bits), traffic class (8), flow label (20) */
		flow = ntohl(ip6->ip6_flow);
		tclass = (uint32_t)dscp << 2 | (flow >> 20 & 0x03);
		flow = (flow & 0xf00fffff) | tclass << 20;
		ip6->ip6_flow = htonl(flow);
	}
}

int
main(int argc, char *argv[])
{
	static union {			/* aligned for the headers */
		struct ip	ip;
		struct ip6_hdr	ip6;
		u_char		bytes[IP_MAXPACKET];
	} pkt;
	struct sockaddr_in sin;
	struct sigaction sa;
	sigset_t block, oldmask;
	fd_set rfds;
	socklen_t sinlen;
	ssize_t n;
	unsigned long n4 = 0, n6 = 0, nother = 0;
	long port;
	int ch, fd, full = 0, verbose = 0, ttl = -1, dscp = -1;

	while ((ch = getopt(argc, argv, "cd:t:v")) != -1) {
		switch (ch) {
		case 'c':
			full = 1;
			break;
		case 'd':
			dscp = (int)number(optarg, "DSCP", 0, 63);
			break;
		case 't':
			ttl = (int)number(optarg, "TTL", 1, 255);
			break;
		case 'v':
			verbose = 1;
			break;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc != 1 || (ttl == -1 && dscp == -1))
		usage();
	port = number(argv[0], "divert port", 1, 65535);
	setvbuf(stdout, NULL, _IOLBF, 0);

	/*
	 * SIGINT and SIGTERM only set a flag.  They stay blocked except
	 * inside pselect(), so one arriving between two packets is not
	 * lost: the next pselect() returns EINTR at once.
	 */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &oldmask);

	if ((fd = socket(PF_DIVERT, SOCK_RAW, 0)) == -1)
		err(1, "socket");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((in_port_t)port);
	sin.sin_addr.s_addr = INADDR_ANY;
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1)
		err(1, "bind %ld", port);
	fprintf(stderr, "divert_rewrite: reading divert port %ld\n", port);

	while (!done) {
		FD_ZERO(&rfds);
		FD_SET(fd, &rfds);
		if (pselect(fd + 1, &rfds, NULL, NULL, NULL, &oldmask) == -1) {
			if (errno == EINTR)
				continue;
			err(1, "pselect");
		}
		sinlen = sizeof(sin);
		n = recvfrom(fd, pkt.bytes, sizeof(pkt.bytes), 0,
		    (struct sockaddr *)&sin, &sinlen);
		if (n == -1)
			err(1, "recvfrom");
		if (n == 0) {
			warnx("the divert socket was closed");
			break;
		}

		if (pkt.ip.ip_v == 4 && (size_t)n >= sizeof(pkt.ip) &&
		    pkt.ip.ip_hl >= 5 && (size_t)pkt.ip.ip_hl << 2 <= (size_t)n) {
			rewrite_ip(&pkt.ip, ttl, dscp, full);
			n4++;
			if (verbose)
				printf("ip  %zd bytes ttl %d tos 0x%02x\n", n,
				    pkt.ip.ip_ttl, pkt.ip.ip_tos);
		} else if (pkt.ip.ip_v == 6 && (size_t)n >= sizeof(pkt.ip6)) {
			rewrite_ip6(&pkt.ip6, ttl, dscp);
			n6++;
			if (verbose)
				printf("ip6 %zd bytes hlim %d tclass 0x%02x\n",
				    n, pkt.ip6.ip6_hlim,
				    (unsigned)(ntohl(pkt.ip6.ip6_flow) >> 20 &
				    0xff));
		} else
			nother++;	/* not a header we know: as it is */

		if (sendto(fd, pkt.bytes, (size_t)n, 0,
		    (struct sockaddr *)&sin, sinlen) == -1)
			warn("sendto");
	}
	printf("divert_rewrite: rewrote %lu packets (%lu IPv4, %lu IPv6), "
	    "passed %lu unchanged\n", n4 + n6, n4, n6, nother);
	close(fd);
	return (0);
}
