/*
 * div_retag: write diverted packets back with another tag.
 *
 *	div_retag PORT TAG MAXPKTS TIMEOUT_S [READYFILE]
 *
 * The first packet read is written back with sin_port = TAG (the rule
 * number after which processing resumes; 0 restarts the list); every
 * later one with the tag it was read with.  Prints "pkt N tag T" per
 * packet read and "total N".
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <err.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "divert.h"

int
main(int argc, char *argv[])
{
	static unsigned char buf[65536];
	struct sockaddr_in sin;
	struct pollfd pfd;
	socklen_t sinlen;
	long maxpkts, npkts = 0;
	int fd, timeout, tag;
	ssize_t n;

	if (argc < 5)
		errx(2, "usage: div_retag PORT TAG MAXPKTS TIMEOUT_S [READYFILE]");
	tag = atoi(argv[2]);
	maxpkts = atol(argv[3]);
	timeout = atoi(argv[4]);
	if ((fd = socket(PF_DIVERT, SOCK_RAW, 0)) < 0)
		err(1, "socket");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((unsigned short)atoi(argv[1]));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
		err(1, "bind");
	if (argc > 5)
		close(open(argv[5], O_WRONLY | O_CREAT | O_TRUNC, 0644));
	pfd.fd = fd;
	pfd.events = POLLIN;
	while (npkts < maxpkts && poll(&pfd, 1, timeout * 1000) == 1) {
		sinlen = sizeof(sin);
		n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&sin,
		    &sinlen);
		if (n < 0)
			err(1, "recvfrom");
		printf("pkt %ld tag %u\n", ++npkts, sin.sin_port);
		if (npkts == 1)
			sin.sin_port = (unsigned short)tag;
		if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&sin,
		    sinlen) < 0)
			warn("sendto");
	}
	printf("total %ld\n", npkts);
	return 0;
}
