/*
 * div_verify: a pass-through divert program that checks what it reads.
 *
 *	div_verify PORT MAXPKTS TIMEOUT_S [READYFILE]
 *
 * Reads packets from divert port PORT, verifies the IPv4 header checksum
 * and the TCP/UDP checksum of each (IPv4, or IPv6 without extension
 * headers), writes each back unchanged, and prints "total N badsum M".
 * Stops after MAXPKTS packets or TIMEOUT_S seconds without one.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <err.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "divert.h"

static uint32_t
sum16(const uint8_t *p, size_t len, uint32_t sum)
{
	size_t i;

	for (i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (uint32_t)p[len - 1] << 8;
	return sum;
}

static int
folds_to_zero(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

/* 1 when every checksum we can see is right. */
static int
checksums_ok(const uint8_t *p, size_t len)
{
	size_t hl, l4len;
	uint32_t sum;
	uint8_t proto;

	if (len >= 20 && (p[0] >> 4) == 4) {
		hl = (size_t)(p[0] & 0x0f) * 4;
		if (hl < 20 || hl > len || !folds_to_zero(sum16(p, hl, 0)))
			return 0;
		if ((p[6] & 0x3f) || p[7])	/* a fragment */
			return 1;
		proto = p[9];
		l4len = (size_t)(p[2] << 8 | p[3]) - hl;
		sum = sum16(p + 12, 8, 0);
	} else if (len >= 40 && (p[0] >> 4) == 6) {
		hl = 40;
		proto = p[6];
		l4len = (size_t)(p[4] << 8 | p[5]);
		sum = sum16(p + 8, 32, 0);
	} else
		return 0;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	if (hl + l4len > len)
		return 0;
	if (proto == IPPROTO_UDP && (p[0] >> 4) == 4 && p[hl + 6] == 0 &&
	    p[hl + 7] == 0)
		return 1;		/* IPv4 UDP without a checksum */
	sum += proto + (uint32_t)l4len;
	return folds_to_zero(sum16(p + hl, l4len, sum));
}

int
main(int argc, char *argv[])
{
	static uint8_t buf[65536];
	struct sockaddr_in sin;
	struct pollfd pfd;
	socklen_t sinlen;
	long maxpkts, npkts = 0, nbad = 0;
	int fd, timeout;
	ssize_t n;

	if (argc < 4)
		errx(2, "usage: div_verify PORT MAXPKTS TIMEOUT_S [READYFILE]");
	maxpkts = atol(argv[2]);
	timeout = atoi(argv[3]);
	if ((fd = socket(PF_DIVERT, SOCK_RAW, 0)) < 0)
		err(1, "socket");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)atoi(argv[1]));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
		err(1, "bind");
	if (argc > 4)
		close(open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644));
	pfd.fd = fd;
	pfd.events = POLLIN;
	while (npkts < maxpkts && poll(&pfd, 1, timeout * 1000) == 1) {
		sinlen = sizeof(sin);
		n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&sin,
		    &sinlen);
		if (n < 0)
			err(1, "recvfrom");
		npkts++;
		if (!checksums_ok(buf, (size_t)n))
			nbad++;
		if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&sin,
		    sinlen) < 0)
			warn("sendto");
	}
	printf("total %ld badsum %ld\n", npkts, nbad);
	return 0;
}
