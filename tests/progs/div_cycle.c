/*
 * div_cycle: open, bind and close divert sockets, over and over.
 *
 *	div_cycle COUNT PORT
 *
 * COUNT times: socket(PF_DIVERT, SOCK_RAW, 0), bind to PORT, close.
 * Prints "cycles N failed F" (the first failure's errno too) and exits 0
 * only when every cycle worked.  The daemon must end with the descriptors
 * and memory it had before.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "divert.h"

int
main(int argc, char **argv)
{
	struct sockaddr_in sin;
	int count, failed = 0, first = 0;

	if (argc != 3) {
		fprintf(stderr, "usage: div_cycle COUNT PORT\n");
		return (2);
	}
	count = atoi(argv[1]);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((unsigned short)atoi(argv[2]));
	for (int i = 0; i < count; i++) {
		int s = socket(PF_DIVERT, SOCK_RAW, 0);

		if (s < 0 || bind(s, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
			if (failed++ == 0)
				first = errno;
		}
		if (s >= 0)
			close(s);
	}
	printf("cycles %d failed %d", count, failed);
	if (failed)
		printf(" (first: %s)", strerror(first));
	printf("\n");
	return (failed != 0);
}
