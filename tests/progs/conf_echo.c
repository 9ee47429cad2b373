/*
 * conf_echo: echo diverted pings through every receive and send call.
 *
 *	conf_echo [-e VAR] PORT TAG TIMEOUT_S READYFILE STEP...
 *
 * STEP is RECV:SEND, RECV one of recv, recvfrom, read, readv, recvmsg,
 * recvmmsg and SEND one of sendto, sendmsg, sendmmsg.  Each step waits (at
 * most TIMEOUT_S seconds) for diverted ICMP echo requests, reads them with
 * RECV and writes them back with SEND.  A call that gives no address
 * (recv, read, readv) writes back to the one a FreeBSD program would
 * build: the tag TAG and the packet's destination, a local address, as
 * sin_addr (incoming).  One line per step:
 *	ok STEP RECV SEND len L tag T addr A if NAME
 *	not ok STEP RECV SEND: WHAT
 * Every packet must be a whole IPv4 echo request (ip_len = the length
 * read); every address (recvfrom, recvmsg, recvmmsg) AF_INET, 16 bytes,
 * sin_port = TAG, sin_addr = the packet's destination, an interface name
 * in sin_zero.  errno must be untouched by every call that succeeds.
 * Buffer lengths are run-time values, so that a build with _FORTIFY_SOURCE
 * calls __recv_chk, __recvfrom_chk and __read_chk.
 * -e VAR: do not create the socket; use the (bound) fd named by $VAR.
 * Exits 0 when every step is ok.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/in_systm.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <arpa/inet.h>

#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "divert.h"

#define BATCH	4
#define SENTINEL 0x7e57		/* an errno no call sets */

static char bufs[BATCH][65536];
static volatile size_t bufcap = sizeof(bufs[0]);	/* run time, for fortify */
static long tag, step;
static const char *steptext;

static void
on_alarm(int sig)
{
	char msg[128];
	int n;

	(void)sig;
	n = snprintf(msg, sizeof(msg), "not ok %ld %s: no packet in time\n",
	    step, steptext);
	if (write(STDOUT_FILENO, msg, (size_t)n) < 0)
		_exit(2);
	_exit(1);
}

static long
number(const char *s, const char *what, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < 0 || v > max)
		errx(2, "bad %s: %s", what, s);
	return (v);
}

/* NULL when pkt is a whole IPv4 echo request of n bytes, else why not. */
static const char *
bad_packet(const char *pkt, ssize_t n)
{
	const struct ip *ip = (const struct ip *)(const void *)pkt;
	const struct icmp *icp;

	if (n < (ssize_t)(sizeof(struct ip) + ICMP_MINLEN))
		return ("too short");
	if (ip->ip_v != 4)
		return ("not IPv4 (a wire header?)");
	if (ntohs(ip->ip_len) != n)
		return ("ip_len is not the length read");
	if (ip->ip_p != IPPROTO_ICMP)
		return ("not ICMP");
	icp = (const struct icmp *)(const void *)(pkt + ip->ip_hl * 4);
	if (icp->icmp_type != ICMP_ECHO)
		return ("not an echo request");
	return (NULL);
}

/* NULL when sin is the divert address of pkt as FreeBSD gives it. */
static const char *
bad_address(const struct sockaddr_in *sin, socklen_t len, const char *pkt)
{
	const struct ip *ip = (const struct ip *)(const void *)pkt;

	if (len != sizeof(*sin))
		return ("address length is not 16");
	if (sin->sin_family != AF_INET)
		return ("address family is not AF_INET");
	if (sin->sin_port != tag)
		return ("sin_port is not the tag (host order)");
	if (sin->sin_addr.s_addr != ip->ip_dst.s_addr)
		return ("sin_addr is not the receiving interface's address");
	if (sin->sin_zero[0] == '\0')
		return ("no interface name in sin_zero");
	return (NULL);
}

/* The address a program without one writes an incoming packet back to. */
static struct sockaddr_in
built_address(const char *pkt)
{
	const struct ip *ip = (const struct ip *)(const void *)pkt;
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = (in_port_t)tag;
	sin.sin_addr = ip->ip_dst;
	return (sin);
}

/*
 * Read with how into bufs[]: the count of packets (recvmmsg may read up
 * to BATCH), their lengths and addresses; -1 with *why on failure.
 */
static int
receive(int fd, const char *how, ssize_t *len, struct sockaddr_in *sin,
    socklen_t *sinlen, const char **why)
{
	struct mmsghdr vec[BATCH];
	struct iovec iov[BATCH][2];
	struct timespec timeout;
	struct msghdr msg;
	size_t cap = bufcap;
	int i, n;

	*why = "unknown receive call";
	errno = SENTINEL;
	sinlen[0] = sizeof(sin[0]);
	if (strcmp(how, "recv") == 0) {
		len[0] = recv(fd, bufs[0], cap, 0);
		sinlen[0] = 0;
	} else if (strcmp(how, "read") == 0) {
		len[0] = read(fd, bufs[0], cap);
		sinlen[0] = 0;
	} else if (strcmp(how, "recvfrom") == 0) {
		len[0] = recvfrom(fd, bufs[0], cap, 0,
		    (struct sockaddr *)&sin[0], &sinlen[0]);
	} else if (strcmp(how, "readv") == 0) {
		/* the IP header into one buffer, the rest into another */
		iov[0][0].iov_base = bufs[0];
		iov[0][0].iov_len = sizeof(struct ip);
		iov[0][1].iov_base = bufs[0] + sizeof(struct ip);
		iov[0][1].iov_len = cap - sizeof(struct ip);
		len[0] = readv(fd, iov[0], 2);
		sinlen[0] = 0;
	} else if (strcmp(how, "recvmsg") == 0) {
		memset(&msg, 0, sizeof(msg));
		iov[0][0].iov_base = bufs[0];
		iov[0][0].iov_len = cap;
		msg.msg_iov = iov[0];
		msg.msg_iovlen = 1;
		msg.msg_name = &sin[0];
		msg.msg_namelen = sizeof(sin[0]);
		len[0] = recvmsg(fd, &msg, 0);
		sinlen[0] = msg.msg_namelen;
		if (len[0] >= 0 && (msg.msg_flags != 0 || msg.msg_controllen))
			return (*why = "recvmsg: msg_flags or msg_controllen "
			    "set", -1);
	} else if (strcmp(how, "recvmmsg") == 0) {
		memset(vec, 0, sizeof(vec));
		for (i = 0; i < BATCH; i++) {
			iov[i][0].iov_base = bufs[i];
			iov[i][0].iov_len = cap;
			vec[i].msg_hdr.msg_iov = iov[i];
			vec[i].msg_hdr.msg_iovlen = 1;
			vec[i].msg_hdr.msg_name = &sin[i];
			vec[i].msg_hdr.msg_namelen = sizeof(sin[i]);
		}
		timeout.tv_sec = 30;
		timeout.tv_nsec = 0;
		n = recvmmsg(fd, vec, BATCH, MSG_WAITFORONE, &timeout);
		if (n == -1)
			return (*why = strerror(errno), -1);
		if (n == 0)
			return (*why = "recvmmsg: no message", -1);
		if (errno != SENTINEL)
			return (*why = "recvmmsg changed errno", -1);
		if (timeout.tv_sec != 30 || timeout.tv_nsec != 0)
			return (*why = "recvmmsg wrote to its timeout", -1);
		for (i = 0; i < n; i++) {
			len[i] = vec[i].msg_len;
			sinlen[i] = vec[i].msg_hdr.msg_namelen;
		}
		return (n);
	} else
		return (-1);
	if (len[0] == -1)
		return (*why = strerror(errno), -1);
	if (errno != SENTINEL)
		return (*why = "errno changed by a call that succeeded", -1);
	return (1);
}

/* Write the n packets back with how; NULL or why not. */
static const char *
send_back(int fd, const char *how, int n, const ssize_t *len,
    struct sockaddr_in *sin)
{
	struct mmsghdr vec[BATCH];
	struct iovec iov[BATCH][2];
	struct msghdr msg;
	ssize_t r;
	int i;

	errno = SENTINEL;
	if (strcmp(how, "sendmmsg") == 0) {
		memset(vec, 0, sizeof(vec));
		for (i = 0; i < n; i++) {
			iov[i][0].iov_base = bufs[i];
			iov[i][0].iov_len = (size_t)len[i];
			vec[i].msg_hdr.msg_iov = iov[i];
			vec[i].msg_hdr.msg_iovlen = 1;
			vec[i].msg_hdr.msg_name = &sin[i];
			vec[i].msg_hdr.msg_namelen = sizeof(sin[i]);
		}
		r = sendmmsg(fd, vec, (unsigned int)n, 0);
		if (r == -1)
			return (strerror(errno));
		if (r != n)
			return ("sendmmsg sent fewer messages");
		for (i = 0; i < n; i++)
			if (vec[i].msg_len != (unsigned int)len[i])
				return ("sendmmsg: msg_len is not the length");
		return (errno == SENTINEL ? NULL : "sendmmsg changed errno");
	}
	for (i = 0; i < n; i++) {
		if (strcmp(how, "sendto") == 0) {
			r = sendto(fd, bufs[i], (size_t)len[i], 0,
			    (struct sockaddr *)&sin[i], sizeof(sin[i]));
		} else if (strcmp(how, "sendmsg") == 0) {
			/* gathered: the IP header and the rest */
			memset(&msg, 0, sizeof(msg));
			iov[0][0].iov_base = bufs[i];
			iov[0][0].iov_len = sizeof(struct ip);
			iov[0][1].iov_base = bufs[i] + sizeof(struct ip);
			iov[0][1].iov_len = (size_t)len[i] - sizeof(struct ip);
			msg.msg_iov = iov[0];
			msg.msg_iovlen = 2;
			msg.msg_name = &sin[i];
			msg.msg_namelen = sizeof(sin[i]);
			r = sendmsg(fd, &msg, 0);
		} else
			return ("unknown send call");
		if (r == -1)
			return (strerror(errno));
		if (r != len[i])
			return ("wrote fewer bytes than the packet");
		if (errno != SENTINEL)
			return ("errno changed by a call that succeeded");
	}
	return (NULL);
}

static int
run_step(int fd, char *spec, long timeout)
{
	struct sockaddr_in sin[BATCH];
	socklen_t sinlen[BATCH];
	ssize_t len[BATCH];
	char addr[INET_ADDRSTRLEN], ifname[sizeof(sin[0].sin_zero) + 1];
	const char *why, *sendhow;
	char *colon;
	int n, i;

	steptext = spec;
	colon = strchr(spec, ':');
	if (colon == NULL)
		errx(2, "bad step (RECV:SEND): %s", spec);
	sendhow = colon + 1;
	*colon = '\0';		/* spec is RECV now; a blank later */

	alarm((unsigned int)timeout);
	n = receive(fd, spec, len, sin, sinlen, &why);
	alarm(0);
	*colon = ' ';
	if (n == -1) {
		printf("not ok %ld %s: %s\n", step, spec, why);
		return (1);
	}
	for (i = 0; i < n; i++) {
		why = bad_packet(bufs[i], len[i]);
		if (why == NULL && sinlen[i] != 0)
			why = bad_address(&sin[i], sinlen[i], bufs[i]);
		if (why != NULL) {
			printf("not ok %ld %s: packet %d: %s\n", step, spec,
			    i + 1, why);
			return (1);
		}
		if (sinlen[i] == 0)
			sin[i] = built_address(bufs[i]);
	}
	why = send_back(fd, sendhow, n, len, sin);
	if (why != NULL) {
		printf("not ok %ld %s: writing back: %s\n", step, spec, why);
		return (1);
	}
	memcpy(ifname, sin[0].sin_zero, sizeof(sin[0].sin_zero));
	ifname[sizeof(sin[0].sin_zero)] = '\0';
	printf("ok %ld %s len %zd tag %u addr %s if %s\n", step, spec, len[0],
	    (unsigned)sin[0].sin_port,
	    inet_ntop(AF_INET, &sin[0].sin_addr, addr, sizeof(addr)),
	    ifname[0] != '\0' ? ifname : "-");
	return (0);
}

int
main(int argc, char *argv[])
{
	struct sockaddr_in sin;
	const char *fdvar = NULL, *v;
	long port, timeout;
	int fd, r, c, nfail = 0;

	while ((c = getopt(argc, argv, "e:")) != -1) {
		if (c != 'e')
			return (2);
		fdvar = optarg;
	}
	argc -= optind;
	argv += optind;
	if (argc < 5) {
		fprintf(stderr, "usage: conf_echo [-e VAR] PORT TAG TIMEOUT_S "
		    "READYFILE RECV:SEND...\n");
		return (2);
	}
	port = number(argv[0], "port", 65535);
	tag = number(argv[1], "tag", 65535);
	timeout = number(argv[2], "timeout", 3600);
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGALRM, on_alarm);

	if (fdvar != NULL) {
		v = getenv(fdvar);
		if (v == NULL)
			errx(1, "$%s is not set: no socket to use", fdvar);
		fd = (int)number(v, fdvar, 1 << 20);
	} else {
		fd = socket(PF_DIVERT, SOCK_RAW, 0);
		if (fd == -1)
			err(1, "socket");
		memset(&sin, 0, sizeof(sin));
		sin.sin_family = AF_INET;
		sin.sin_port = htons((uint16_t)port);
		if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1)
			err(1, "bind %ld", port);
	}
	r = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (r == -1)
		err(1, "%s", argv[3]);
	close(r);

	for (step = 1; step <= argc - 4; step++)
		nfail += run_step(fd, argv[3 + step], timeout);
	errno = SENTINEL;
	if (close(fd) != 0 || errno != SENTINEL) {
		printf("not ok close: %s\n", strerror(errno));
		nfail++;
	}
	return (nfail != 0);
}
