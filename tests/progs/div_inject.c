/*
 * div_inject: write fabricated ICMP echo requests into a divert socket.
 *
 *	div_inject out|in|inbad SRC DST [COUNT [IFADDR|IFNAME]]
 *
 * A divert socket need not be bound to write.  "out" writes each packet as
 * outgoing (sin_addr INADDR_ANY: the stack routes it to DST; the IP header
 * checksum is left 0, the kernel fills it in); "in" writes it as incoming,
 * as if received on the interface that owns DST (a local address), with a
 * correct checksum; with IFADDR or IFNAME, as received on the interface
 * owning that address or named so (sin_zero), DST may then be anywhere and
 * the packet is forwarded.  "inbad" is "in" with a wrong IP header
 * checksum (such a packet must be dropped).  The tag is 0: the whole rule
 * list applies.  DIV_BIND=PORT binds the socket to PORT first.
 * Prints "sent N".
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

#define DATALEN 56

static u_short
in_cksum(const void *p, size_t len)
{
	const u_char *b = p;
	uint32_t sum = 0;

	for (; len > 1; b += 2, len -= 2)
		sum += (uint32_t)(b[0] << 8 | b[1]);
	if (len == 1)
		sum += (uint32_t)(b[0] << 8);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (htons((u_short)~sum));
}

int
main(int argc, char *argv[])
{
	u_char pkt[sizeof(struct ip) + ICMP_MINLEN + DATALEN];
	struct ip *ip = (struct ip *)(void *)pkt;
	struct icmp *icp = (struct icmp *)(void *)(pkt + sizeof(struct ip));
	struct sockaddr_in sin;
	struct in_addr src, dst;
	long count = 1, i;
	char *end;
	int s, incoming;

	if (argc < 4 || argc > 6 ||
	    (strcmp(argv[1], "out") != 0 && strcmp(argv[1], "in") != 0 &&
	     strcmp(argv[1], "inbad") != 0)) {
		fprintf(stderr, "usage: div_inject out|in|inbad SRC DST [COUNT [IFADDR|IFNAME]]\n");
		return (2);
	}
	incoming = strcmp(argv[1], "out") != 0;
	if (inet_pton(AF_INET, argv[2], &src) != 1)
		errx(2, "bad source address: %s", argv[2]);
	if (inet_pton(AF_INET, argv[3], &dst) != 1)
		errx(2, "bad destination address: %s", argv[3]);
	if (argc >= 5) {
		count = strtol(argv[4], &end, 10);
		if (*end != '\0' || count < 1 || count > 100000)
			errx(2, "bad count: %s", argv[4]);
	}
	alarm(30);

	s = socket(PF_DIVERT, SOCK_RAW, 0);
	if (s == -1)
		err(1, "socket");
	if (getenv("DIV_BIND") != NULL) {
		memset(&sin, 0, sizeof(sin));
		sin.sin_family = AF_INET;
		sin.sin_port = htons((u_short)atoi(getenv("DIV_BIND")));
		if (bind(s, (struct sockaddr *)&sin, sizeof(sin)) == -1)
			err(1, "bind");
	}

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = 0;			/* tag 0: from the first rule */
	sin.sin_addr.s_addr = incoming ? dst.s_addr : INADDR_ANY;
	if (incoming && argc == 6 &&
	    inet_pton(AF_INET, argv[5], &sin.sin_addr) != 1) {
		/* an interface name: the address only has to be non-zero */
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		strncpy((char *)sin.sin_zero, argv[5], sizeof(sin.sin_zero) - 1);
	}

	for (i = 0; i < count; i++) {
		memset(pkt, 0, sizeof(pkt));
		ip->ip_v = IPVERSION;
		ip->ip_hl = sizeof(struct ip) >> 2;
		ip->ip_len = htons(sizeof(pkt));
		ip->ip_id = htons((u_short)(getpid() + i));
		ip->ip_ttl = 64;
		ip->ip_p = IPPROTO_ICMP;
		ip->ip_src = src;
		ip->ip_dst = dst;
		if (incoming)
			ip->ip_sum = in_cksum(ip, sizeof(struct ip));
		if (strcmp(argv[1], "inbad") == 0)
			ip->ip_sum ^= 0x5555;

		icp->icmp_type = ICMP_ECHO;
		icp->icmp_code = 0;
		icp->icmp_id = htons((u_short)getpid());
		icp->icmp_seq = htons((u_short)i);
		memset(icp->icmp_data, 0xa5, DATALEN);
		icp->icmp_cksum = in_cksum(icp, ICMP_MINLEN + DATALEN);

		if (sendto(s, pkt, sizeof(pkt), 0, (struct sockaddr *)&sin,
		    sizeof(sin)) != (ssize_t)sizeof(pkt)) {
			warn("sendto (packet %ld)", i + 1);
			printf("sent %ld\n", i);
			return (1);
		}
	}
	printf("sent %ld\n", count);
	close(s);
	return (0);
}
