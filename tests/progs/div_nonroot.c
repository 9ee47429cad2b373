/*
 * div_nonroot: creating a divert socket requires super-user access.
 *
 *	div_nonroot
 *
 * Run it as an unprivileged user: both socket forms must fail with EPERM.
 * Prints one line per form, "FORM: EPERM" or what happened instead, and
 * exits 0 only when both failed with EPERM.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "divert.h"

static int
check(const char *form, int s)
{
	if (s != -1) {
		printf("%s: created (fd %d) with euid %u\n", form, s,
		    (unsigned)geteuid());
		close(s);
		return (1);
	}
	if (errno != EPERM) {
		printf("%s: %s, expected EPERM\n", form, strerror(errno));
		return (1);
	}
	printf("%s: EPERM\n", form);
	return (0);
}

int
main(void)
{
	int bad = 0;

	bad |= check("PF_DIVERT", socket(PF_DIVERT, SOCK_RAW, 0));
	bad |= check("IPPROTO_DIVERT",
	    socket(PF_INET, SOCK_RAW, IPPROTO_DIVERT));
	return (bad);
}
