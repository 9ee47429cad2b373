/*
 * divertctl: ipfw's habits for divertd.
 *
 *	divertctl [-j] [-s SOCKET] COMMAND [ARGS...]
 *
 * A thin client: it connects to divertd's UNIX socket (-s, else
 * $DIVERT_SOCKET, else the default path), skips the DW_WELCOME every
 * connection gets first, sends the command line as one DW_CTL message,
 * prints the text of the DW_CTLREPLY messages that come back (on stderr
 * when the status is not 0) and exits with the status they carry.  The
 * daemon runs the commands (src/control.c); nothing here knows them, so
 * the two cannot disagree.  divertd accepts only root on its socket.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "divert.h"
#include "divert_wire.h"

#define REPLY_TIMEOUT_MS 60000	/* a reload spawning iptables-restore */

static void usage(FILE *f)
{
	fprintf(f,
"usage: divertctl [-j] [-s SOCKET] COMMAND [ARGS...]\n"
"Inspect and change the rules of a running divertd, as ipfw(8) does.\n"
"\n"
"  list [NUM...]             the rules in force, as ipfw lines\n"
"  show [NUM...]             the same, each with its packet and byte counts\n"
"  zero [NUM...]             start those rules' counts (or all) again at 0\n"
"  add [NUM] ACTION ...      add one rule (config syntax); without NUM the\n"
"                            last rule's number + 100\n"
"  delete NUM...             delete every rule with these numbers\n"
"  flush                     delete all rules\n"
"  stats                     divertd's counters\n"
"  sockets                   bound divert ports: port, pid, program, held\n"
"  rules [--nft|--iptables]  the generated firewall text\n"
"\n"
"  -j         JSON output (list, show, stats, sockets)\n"
"  -s SOCKET  divertd's socket (default $DIVERT_SOCKET, else\n"
"             " DIVERT_SOCKET_DEFAULT ")\n"
"  -h         this help\n"
"Changes apply at once and are not written to divertd's config file: a\n"
"SIGHUP reload or a restart puts the file's rules back.\n");
}

/* recv with a deadline; the length, or -1 with errno set. */
static ssize_t recv_timed(int fd, void *buf, size_t len)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	int r = poll(&pfd, 1, REPLY_TIMEOUT_MS);

	if (r == 0) {
		errno = ETIMEDOUT;
		return -1;
	}
	if (r < 0)
		return -1;
	return recv(fd, buf, len, 0);
}

int main(int argc, char **argv)
{
	static char buf[sizeof(struct divert_wire_hdr) + DW_CTL_MAXREPLY + 1];
	const char *path = getenv("DIVERT_SOCKET");
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct divert_wire_hdr hdr = {
		.type = DW_CTL, .version = DIVERT_WIRE_VERSION,
	};
	char *req;
	size_t reqlen = sizeof(hdr), off;
	unsigned status = 1;
	bool last = false, first = true;
	int opt, fd;

	if (path == NULL || *path == '\0')
		path = DIVERT_SOCKET_DEFAULT;
	while ((opt = getopt(argc, argv, "+hjs:")) != -1) {
		switch (opt) {
		case 'h':
			usage(stdout);
			return 0;
		case 'j':
			hdr.arg |= DW_CTL_JSON;
			break;
		case 's':
			path = optarg;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind == argc) {
		usage(stderr);
		return 2;
	}
	for (int i = optind; i < argc; i++)
		reqlen += strlen(argv[i]) + 1;
	if (reqlen > sizeof(hdr) + DIVERT_WIRE_MAXPKT) {
		fprintf(stderr, "divertctl: command line too long\n");
		return 2;
	}
	req = malloc(reqlen);
	if (req == NULL) {
		perror("divertctl");
		return 1;
	}
	memcpy(req, &hdr, sizeof(hdr));
	off = sizeof(hdr);
	for (int i = optind; i < argc; i++) {
		size_t n = strlen(argv[i]) + 1;

		memcpy(req + off, argv[i], n);
		off += n;
	}

	if (strlen(path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "divertctl: socket path too long: %s\n", path);
		free(req);
		return 1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		fprintf(stderr, "divertctl: cannot connect to divertd at %s: "
			"%s%s\n", path, strerror(errno),
			errno == ENOENT || errno == ECONNREFUSED
			? " (is divertd running? -s or $DIVERT_SOCKET name "
			  "another socket)" : "");
		free(req);
		return 1;
	}
	if (send(fd, req, reqlen, MSG_NOSIGNAL) < 0) {
		fprintf(stderr, "divertctl: cannot send to divertd at %s: %s\n",
			path, strerror(errno));
		free(req);
		return 1;
	}
	free(req);
	while (!last) {
		struct divert_wire_hdr r;
		ssize_t n = recv_timed(fd, buf, sizeof(buf));

		if (n < 0) {
			fprintf(stderr, "divertctl: no answer from divertd at "
				"%s: %s\n", path, strerror(errno));
			return 1;
		}
		if (n == 0) {
			/* divertd closes at once on a peer that is not root */
			fprintf(stderr, "divertctl: divertd at %s closed the "
				"connection%s\n", path,
				geteuid() != 0 ? " (divertctl must run as root)"
					       : " before its answer ended");
			return 1;
		}
		if ((size_t)n < sizeof(r))
			continue;
		memcpy(&r, buf, sizeof(r));
		if (r.version != DIVERT_WIRE_VERSION) {
			fprintf(stderr, "divertctl: divertd at %s speaks "
				"protocol version %u, not %u\n", path,
				r.version, DIVERT_WIRE_VERSION);
			return 1;
		}
		if (r.type != DW_CTLREPLY)
			continue;	/* DW_WELCOME */
		if (first && r.arg != 0)
			fputs("divertctl: ", stderr);
		first = false;
		status = r.arg;
		last = r.val == 0;
		fwrite(buf + sizeof(r), 1, (size_t)n - sizeof(r),
		       status == 0 ? stdout : stderr);
	}
	close(fd);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "divertctl: cannot write the output\n");
		return 1;
	}
	return status > 255 ? 1 : (int)status;
}
