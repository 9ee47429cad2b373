/*
 * div_lazy: a divert program that falls behind.
 *
 *	div_lazy PORT RCVBUF DELAY_S READYFILE
 *
 * Binds PORT, sets SO_RCVBUF to RCVBUF, signals readiness, sleeps DELAY_S
 * seconds without reading, then reads (and drops) whatever waits and
 * prints "rcvbuf R total N".  What did not fit in the buffer is lost, as
 * on FreeBSD.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <err.h>
#include <fcntl.h>
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
	socklen_t len;
	long n = 0;
	int fd, rcvbuf;

	if (argc != 5)
		errx(2, "usage: div_lazy PORT RCVBUF DELAY_S READYFILE");
	if ((fd = socket(PF_DIVERT, SOCK_RAW, 0)) < 0)
		err(1, "socket");
	rcvbuf = atoi(argv[2]);
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) < 0)
		err(1, "setsockopt");
	len = sizeof(rcvbuf);
	if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &len) < 0)
		err(1, "getsockopt");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((unsigned short)atoi(argv[1]));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
		err(1, "bind");
	close(open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644));
	sleep((unsigned)atoi(argv[3]));
	while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) >= 0)
		n++;
	printf("rcvbuf %d total %ld\n", rcvbuf, n);
	return 0;
}
