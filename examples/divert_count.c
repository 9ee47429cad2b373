/*
 * divert_count: count diverted packets, pass every one on unchanged.
 *
 *	divert_count [-v] port
 *
 * Reads the packets that divert rules send to divert port PORT, counts
 * packets and bytes per IP version, protocol and direction, and writes each
 * packet back unchanged to the address recvfrom() gave, so that it goes on
 * through the firewall after the rule that diverted it.  The address says
 * the direction: sin_addr is INADDR_ANY for an outgoing packet and the
 * receiving interface's address for an incoming one.  -v prints a line per
 * packet.  SIGINT or SIGTERM prints the totals and exits:
 *
 *	proto            dir       packets        bytes
 *	ip/icmp          in              3          252
 *	ip/icmp          out             3          252
 *	total                            6          504
 *
 * On FreeBSD:
 *	ipfw add 100 divert 8668 icmp from any to any
 *	./divert_count -v 8668
 *
 * On Linux with divertd installed under /usr/local, as root:
 *	echo '100 divert 8668 icmp from any to any' >count.conf
 *	divertd -f count.conf
 *	cc -o divert_count divert_count.c $(pkg-config --cflags divert_shim)
 *	LD_PRELOAD=/usr/local/lib/libdivert_shim.so ./divert_count -v 8668
 */
#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <arpa/inet.h>

#include <divert.h>
#include <err.h>
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct counter {
	unsigned long long	packets;
	unsigned long long	bytes;
};

/* [IPv4, IPv6][protocol][in, out] */
static struct counter counts[2][256][2];
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
	fprintf(stderr, "usage: divert_count [-v] port\n");
	exit(2);
}

/*
 * The protocol of an IPv6 packet's payload: the next header after any
 * extension headers in front of it.
 */
static int
ip6_proto(const struct ip6_hdr *ip6, size_t len)
{
	const u_char *p = (const u_char *)ip6;
	size_t off = sizeof(*ip6);
	int hdr, nxt = ip6->ip6_nxt;

	while ((nxt == IPPROTO_HOPOPTS || nxt == IPPROTO_ROUTING ||
	    nxt == IPPROTO_DSTOPTS || nxt == IPPROTO_FRAGMENT) &&
	    off + 8 <= len) {
		hdr = nxt;
		nxt = p[off];		/* every one starts with its next header */
		if (hdr == IPPROTO_FRAGMENT)
			off += 8;
		else
			off += ((size_t)p[off + 1] + 1) * 8;
	}
	return (nxt);
}

static const char *
proto_name(int proto, char *buf, size_t size)
{
	struct protoent *pe;

	pe = getprotobynumber(proto);
	if (pe != NULL)
		return (pe->p_name);
	snprintf(buf, size, "%d", proto);
	return (buf);
}

static void
print_packet(const u_char *p, size_t len, int v6, int proto, int out,
    const struct sockaddr_in *sin)
{
	char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN], num[8];
	char ifname[sizeof(sin->sin_zero) + 1];

	if (v6) {
		inet_ntop(AF_INET6, p + 8, src, sizeof(src));
		inet_ntop(AF_INET6, p + 24, dst, sizeof(dst));
	} else {
		inet_ntop(AF_INET, p + 12, src, sizeof(src));
		inet_ntop(AF_INET, p + 16, dst, sizeof(dst));
	}
	/* the receiving interface's name, for incoming packets */
	memcpy(ifname, sin->sin_zero, sizeof(sin->sin_zero));
	ifname[sizeof(sin->sin_zero)] = '\0';
	/* the tag (the diverting rule's number) is in host byte order */
	printf("%-3s %s/%s %zu bytes %s > %s rule %u%s%s\n",
	    out ? "out" : "in", v6 ? "ip6" : "ip",
	    proto_name(proto, num, sizeof(num)), len, src, dst,
	    (unsigned)sin->sin_port, ifname[0] != '\0' ? " via " : "", ifname);
}

static void
print_summary(void)
{
	struct counter total = { 0, 0 };
	char name[32], num[8];
	int v, proto, out;

	printf("%-16s %-4s %12s %12s\n", "proto", "dir", "packets", "bytes");
	for (v = 0; v < 2; v++)
		for (proto = 0; proto < 256; proto++)
			for (out = 0; out < 2; out++) {
				struct counter *c = &counts[v][proto][out];

				if (c->packets == 0)
					continue;
				snprintf(name, sizeof(name), "%s/%s",
				    v ? "ip6" : "ip",
				    proto_name(proto, num, sizeof(num)));
				printf("%-16s %-4s %12llu %12llu\n", name,
				    out ? "out" : "in", c->packets, c->bytes);
				total.packets += c->packets;
				total.bytes += c->bytes;
			}
	printf("%-21s %12llu %12llu\n", "total", total.packets, total.bytes);
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
	long port;
	char *end;
	int ch, fd, out, proto, v6, verbose = 0;

	while ((ch = getopt(argc, argv, "v")) != -1) {
		switch (ch) {
		case 'v':
			verbose = 1;
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
	fprintf(stderr, "divert_count: reading divert port %ld\n", port);

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

		v6 = pkt.ip.ip_v == 6;
		if (v6 && (size_t)n >= sizeof(pkt.ip6))
			proto = ip6_proto(&pkt.ip6, (size_t)n);
		else if (!v6 && (size_t)n >= sizeof(pkt.ip))
			proto = pkt.ip.ip_p;
		else
			proto = 255;	/* too short to tell: "reserved" */
		out = sin.sin_addr.s_addr == INADDR_ANY;
		counts[v6][proto][out].packets++;
		counts[v6][proto][out].bytes += (unsigned long long)n;
		if (verbose)
			print_packet(pkt.bytes, (size_t)n, v6, proto, out, &sin);

		/* unchanged, to the address it came with: it goes on after
		 * the rule that diverted it */
		if (sendto(fd, pkt.bytes, (size_t)n, 0, (struct sockaddr *)&sin,
		    sinlen) == -1)
			warn("sendto");
	}
	print_summary();
	close(fd);
	return (0);
}
