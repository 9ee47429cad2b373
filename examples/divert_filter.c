/*
 * divert_filter: drop the diverted packets that match, pass the rest.
 *
 *	divert_filter [-v] [-P port] [-p proto] [-s string] divertport
 *
 * Reads the packets that divert rules send to divert port DIVERTPORT and
 * drops those that match everything given:
 *	-p proto	the IP protocol, by name or number (icmp, tcp, udp,
 *			ipv6-icmp, 47); for IPv6 the header after any
 *			extension headers
 *	-P port		the TCP or UDP destination port
 *	-s string	the bytes of STRING somewhere in the payload (after the
 *			TCP or UDP header; after the IP header for other
 *			protocols)
 * Every other packet is written back unchanged to the address recvfrom()
 * gave, so that it goes on after the rule that diverted it.  Dropping a
 * diverted packet is simply not writing it back (FreeBSD frees it at once,
 * divertd once its hold time, divertd -t, has passed).  -v prints a line
 * per dropped packet.  SIGINT or SIGTERM prints the counts and exits:
 *
 *	divert_filter: dropped 2, passed 5
 *
 * On FreeBSD, drop UDP datagrams to port 53 that carry "example":
 *	ipfw add 100 divert 8668 udp from any to any 53 in
 *	./divert_filter -p udp -P 53 -s example 8668
 *
 * On Linux with divertd installed under /usr/local, as root:
 *	echo '100 divert 8668 udp from any to any 53 in' >filter.conf
 *	divertd -f filter.conf
 *	cc -o divert_filter divert_filter.c $(pkg-config --cflags divert_shim)
 *	LD_PRELOAD=/usr/local/lib/libdivert_shim.so \
 *	    ./divert_filter -p udp -P 53 -s example 8668
 */
#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>

#include <divert.h>
#include <err.h>
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What a packet must have to be dropped; -1 or NULL: anything. */
struct match {
	int		 proto;
	int		 dport;
	const char	*string;
	size_t		 stringlen;
};

/* Where a packet's parts are, as far as it has them. */
struct parsed {
	int	 proto;		/* the transport protocol */
	int	 dport;		/* TCP or UDP destination port, or -1 */
	size_t	 payload;	/* offset of the payload */
};

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
	fprintf(stderr, "usage: divert_filter [-v] [-P port] [-p proto] "
	    "[-s string] divertport\n");
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

/*
 * Finds the transport header of an IPv4 or IPv6 packet and, for TCP and
 * UDP, the destination port and the payload.  A fragment other than the
 * first has no transport header: no port, and its payload is its data.
 * 0 on success, -1 for a packet too short or not IP.
 */
static int
parse(const u_char *p, size_t len, struct parsed *pp)
{
	const struct ip *ip = (const struct ip *)(const void *)p;
	const struct ip6_hdr *ip6 = (const struct ip6_hdr *)(const void *)p;
	const struct tcphdr *th;
	const struct udphdr *uh;
	size_t off;
	int hdr, first = 1;

	if (len >= sizeof(*ip) && ip->ip_v == 4) {
		off = (size_t)ip->ip_hl << 2;
		if (off < sizeof(*ip) || off > len)
			return (-1);
		pp->proto = ip->ip_p;
		first = (ntohs(ip->ip_off) & IP_OFFMASK) == 0;
	} else if (len >= sizeof(*ip6) && ip->ip_v == 6) {
		off = sizeof(*ip6);
		pp->proto = ip6->ip6_nxt;
		while ((pp->proto == IPPROTO_HOPOPTS ||
		    pp->proto == IPPROTO_ROUTING ||
		    pp->proto == IPPROTO_DSTOPTS ||
		    pp->proto == IPPROTO_FRAGMENT) && off + 8 <= len) {
			hdr = pp->proto;
			pp->proto = p[off];	/* each starts with the next */
			if (hdr == IPPROTO_FRAGMENT) {
				/* struct ip6_frag: offset in the upper 13
				 * bits of bytes 2 and 3 */
				first = (p[off + 2] << 8 | p[off + 3]) >> 3 == 0;
				off += 8;
			} else
				off += ((size_t)p[off + 1] + 1) * 8;
		}
		if (off > len)
			return (-1);
	} else
		return (-1);

	pp->dport = -1;
	pp->payload = off;
	if (!first)
		return (0);
	if (pp->proto == IPPROTO_TCP && off + sizeof(*th) <= len) {
		th = (const struct tcphdr *)(const void *)(p + off);
		pp->dport = ntohs(th->th_dport);
		pp->payload = off + ((size_t)th->th_off << 2);
	} else if (pp->proto == IPPROTO_UDP && off + sizeof(*uh) <= len) {
		uh = (const struct udphdr *)(const void *)(p + off);
		pp->dport = ntohs(uh->uh_dport);
		pp->payload = off + sizeof(*uh);
	}
	if (pp->payload > len)
		pp->payload = len;
	return (0);
}

/* 1 when the LEN bytes at P hold the NLEN bytes of NEEDLE somewhere. */
static int
contains(const u_char *p, size_t len, const char *needle, size_t nlen)
{
	size_t i;

	for (i = 0; i + nlen <= len; i++)
		if (memcmp(p + i, needle, nlen) == 0)
			return (1);
	return (0);
}

static int
matches(const u_char *p, size_t len, const struct match *m)
{
	struct parsed pp;

	if (parse(p, len, &pp) == -1)
		return (0);		/* not IP we understand: let it pass */
	if (m->proto != -1 && pp.proto != m->proto)
		return (0);
	if (m->dport != -1 && pp.dport != m->dport)
		return (0);
	if (m->string != NULL && !contains(p + pp.payload, len - pp.payload,
	    m->string, m->stringlen))
		return (0);
	return (1);
}

int
main(int argc, char *argv[])
{
	static union {			/* aligned for the headers */
		struct ip	ip;
		struct ip6_hdr	ip6;
		u_char		bytes[IP_MAXPACKET];
	} pkt;
	struct match m = { -1, -1, NULL, 0 };
	struct protoent *pe;
	struct sockaddr_in sin;
	struct sigaction sa;
	sigset_t block, oldmask;
	fd_set rfds;
	socklen_t sinlen;
	ssize_t n;
	unsigned long dropped = 0, passed = 0;
	long port;
	int ch, fd, verbose = 0;

	while ((ch = getopt(argc, argv, "P:p:s:v")) != -1) {
		switch (ch) {
		case 'P':
			m.dport = (int)number(optarg, "port", 0, 65535);
			break;
		case 'p':
			if ((pe = getprotobyname(optarg)) != NULL)
				m.proto = pe->p_proto;
			else
				m.proto = (int)number(optarg, "protocol", 0,
				    255);
			break;
		case 's':
			m.string = optarg;
			m.stringlen = strlen(optarg);
			if (m.stringlen == 0)
				errx(2, "-s needs a string");
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
	if (argc != 1 || (m.proto == -1 && m.dport == -1 && m.string == NULL))
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
	fprintf(stderr, "divert_filter: reading divert port %ld\n", port);

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

		if (matches(pkt.bytes, (size_t)n, &m)) {
			/* not written back: the packet is gone */
			dropped++;
			if (verbose)
				printf("dropped %zd bytes (%s)\n", n,
				    sin.sin_addr.s_addr == INADDR_ANY ?
				    "out" : "in");
			continue;
		}
		passed++;
		if (sendto(fd, pkt.bytes, (size_t)n, 0,
		    (struct sockaddr *)&sin, sinlen) == -1)
			warn("sendto");
	}
	printf("divert_filter: dropped %lu, passed %lu\n", dropped, passed);
	close(fd);
	return (0);
}
