/*
 * div_errors: the errors sendto() on a divert socket returns for packets
 * that cannot be delivered (FreeBSD div_output).
 *
 *	div_errors LOCAL PEER UNROUTED UNREACHABLE
 *
 * LOCAL is an address of this host, PEER a neighbour behind a 1500-byte
 * MTU, UNROUTED an address with no route at all, UNREACHABLE one behind an
 * "unreachable" route.  Prints "ok - NAME" or
 * "not ok - NAME: ..." per check, then "N passed, N failed"; exits 1 on any
 * failure.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/in_systm.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <arpa/inet.h>
#include <err.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "divert.h"

static int npass, nfail;

static void
expect(const char *name, ssize_t r, int want)
{
	int e = errno;

	if (want == 0 && r >= 0) {
		printf("ok - %s\n", name);
		npass++;
	} else if (want != 0 && r == -1 && e == want) {
		printf("ok - %s\n", name);
		npass++;
	} else {
		printf("not ok - %s: got %zd (%s), want %s\n", name, r,
		    r < 0 ? strerror(e) : "success",
		    want ? strerror(want) : "success");
		nfail++;
	}
}

static unsigned short
in_cksum(const void *p, size_t len)
{
	const unsigned char *b = p;
	unsigned long sum = 0;
	size_t i;

	for (i = 0; i + 1 < len; i += 2)
		sum += (unsigned long)(b[i] << 8 | b[i + 1]);
	if (len & 1)
		sum += (unsigned long)b[len - 1] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons((unsigned short)~sum);
}

/* An ICMP echo request from src to dst, len bytes, DF as asked. */
static size_t
echo(unsigned char *buf, size_t len, struct in_addr src, struct in_addr dst,
    int df)
{
	struct ip *ip = (struct ip *)buf;

	memset(buf, 0, len);
	ip->ip_v = IPVERSION;
	ip->ip_hl = 5;
	ip->ip_len = htons((unsigned short)len);
	ip->ip_id = htons(4242);
	ip->ip_off = df ? htons(IP_DF) : 0;
	ip->ip_ttl = 64;
	ip->ip_p = IPPROTO_ICMP;
	ip->ip_src = src;
	ip->ip_dst = dst;
	buf[20] = ICMP_ECHO;
	memcpy(buf + 22, &(unsigned short){ 0 }, 2);
	{
		unsigned short sum = in_cksum(buf + 20, len - 20);
		memcpy(buf + 22, &sum, 2);
	}
	ip->ip_sum = in_cksum(buf, 20);
	return len;
}

int
main(int argc, char *argv[])
{
	static unsigned char buf[9000];
	struct in_addr local, peer, unrouted, unreachable, any = { 0 };
	struct sockaddr_in out, in;
	size_t n;
	int s;

	if (argc != 5 || !inet_aton(argv[1], &local) ||
	    !inet_aton(argv[2], &peer) || !inet_aton(argv[3], &unrouted) ||
	    !inet_aton(argv[4], &unreachable))
		errx(2, "usage: div_errors LOCAL PEER UNROUTED UNREACHABLE");
	if ((s = socket(PF_DIVERT, SOCK_RAW, 0)) == -1)
		err(1, "socket");
	memset(&out, 0, sizeof(out));
	out.sin_family = AF_INET;		/* INADDR_ANY: outgoing */
	in = out;

	n = echo(buf, 84, any, unrouted, 0);
	expect("outgoing, no route: ENETUNREACH",
	    sendto(s, buf, n, 0, (struct sockaddr *)&out, sizeof(out)),
	    ENETUNREACH);
	n = echo(buf, 84, any, unreachable, 0);
	expect("outgoing, unreachable route: EHOSTUNREACH",
	    sendto(s, buf, n, 0, (struct sockaddr *)&out, sizeof(out)),
	    EHOSTUNREACH);
	n = echo(buf, 84, local, local, 0);
	expect("outgoing to this host: delivered",
	    sendto(s, buf, n, 0, (struct sockaddr *)&out, sizeof(out)), 0);
	n = echo(buf, 3000, local, peer, 1);
	expect("outgoing, DF and larger than the MTU: EMSGSIZE",
	    sendto(s, buf, n, 0, (struct sockaddr *)&out, sizeof(out)),
	    EMSGSIZE);
	n = echo(buf, 84, local, peer, 0);
	expect("outgoing to the peer: sent",
	    sendto(s, buf, n, 0, (struct sockaddr *)&out, sizeof(out)), 0);
	n = echo(buf, 3000, local, peer, 0);
	expect("outgoing, larger than the MTU without DF: sent in fragments",
	    sendto(s, buf, n, 0, (struct sockaddr *)&out, sizeof(out)), 0);

	in.sin_addr = unrouted;			/* not an address of ours */
	n = echo(buf, 84, unrouted, local, 0);
	expect("incoming, address of no interface: EADDRNOTAVAIL",
	    sendto(s, buf, n, 0, (struct sockaddr *)&in, sizeof(in)),
	    EADDRNOTAVAIL);
	strcpy((char *)in.sin_zero, "nosuch0");
	expect("incoming, no such interface name either: EADDRNOTAVAIL",
	    sendto(s, buf, n, 0, (struct sockaddr *)&in, sizeof(in)),
	    EADDRNOTAVAIL);
	memset(in.sin_zero, 0, sizeof(in.sin_zero));
	in.sin_addr = local;
	expect("incoming, an address of ours: accepted",
	    sendto(s, buf, n, 0, (struct sockaddr *)&in, sizeof(in)), 0);

	printf("%d passed, %d failed\n", npass, nfail);
	return nfail != 0;
}
