/*
 * conf_api: a divert socket behaves as a datagram socket does on FreeBSD:
 * peeking, truncation, non-blocking reads, readiness, recvmmsg and
 * sendmmsg, errno, descriptors.
 *
 *	conf_api PORT DST TAG	the checks; packets come from the program
 *	conf_api chk recv|recvfrom|read
 *				read 17 bytes into a 16-byte buffer; a
 *				fortified build must abort
 *	conf_api nodaemon	socket() without a daemon: EPROTONOSUPPORT
 *	conf_api lastwrite PORT DST PEER
 *				leave a packet unread, write an echo
 *				request to PEER as outgoing, close at once:
 *				the write must still go out, as FreeBSD's
 *				sendto() has sent it before it returns
 *
 * The program makes its own traffic: it writes ICMP echo requests to DST
 * as outgoing packets with tag 0, and the firewall is expected to divert
 * exactly those (outgoing, to DST) back to PORT at rule TAG, so that the
 * program knows when a packet is queued and when none is.  Packets read
 * are never written back; the daemon drops them when the socket closes.
 * Prints "ok - NAME" or "not ok - NAME: DETAILS" per check, then
 * "N passed, N failed"; exits 1 if any check failed.
 */
#include <sys/types.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/in_systm.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <arpa/inet.h>

#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "divert.h"

#define PKTLEN	84		/* IPv4 + ICMP echo with 56 bytes of data */
#define WAIT_MS	3000		/* how long a written packet may take */
#define SENTINEL 0x7e57		/* an errno no call sets */

static int npass, nfail;
static long tag;
static struct in_addr dst;
static uint16_t next_id;
static volatile size_t smallcap = 16;	/* run time, for fortify */

static void
ok(const char *name)
{
	printf("ok - %s\n", name);
	npass++;
}

static void __attribute__((format(printf, 2, 3)))
notok(const char *name, const char *fmt, ...)
{
	va_list ap;

	printf("not ok - %s: ", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	nfail++;
}

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (ts.tv_sec + ts.tv_nsec / 1e9);
}

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

/* An echo request to dst with IP ID id, PKTLEN bytes. */
static void
make_packet(u_char *pkt, uint16_t id)
{
	struct ip *ip = (struct ip *)(void *)pkt;
	struct icmp *icp = (struct icmp *)(void *)(pkt + sizeof(struct ip));

	memset(pkt, 0, PKTLEN);
	ip->ip_v = IPVERSION;
	ip->ip_hl = sizeof(struct ip) >> 2;
	ip->ip_len = htons(PKTLEN);
	ip->ip_id = htons(id);
	ip->ip_ttl = 64;
	ip->ip_p = IPPROTO_ICMP;
	ip->ip_dst = dst;		/* source 0: filled in on output */
	icp->icmp_type = ICMP_ECHO;
	icp->icmp_id = htons(id);
	memset(icp->icmp_data, 0x5a, PKTLEN - sizeof(struct ip) - ICMP_MINLEN);
	icp->icmp_cksum = in_cksum(icp, PKTLEN - sizeof(struct ip));
}

static struct sockaddr_in
outgoing(void)
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;	/* INADDR_ANY: outgoing; tag 0 */
	return (sin);
}

/* Write n new echo requests; 0 or -1 (reported under name). */
static int
inject(int fd, int n, const char *name)
{
	struct sockaddr_in sin = outgoing();
	u_char pkt[PKTLEN];
	int i;

	for (i = 0; i < n; i++) {
		make_packet(pkt, next_id++);
		if (sendto(fd, pkt, sizeof(pkt), 0, (struct sockaddr *)&sin,
		    sizeof(sin)) != PKTLEN) {
			notok(name, "writing a packet: %s", strerror(errno));
			return (-1);
		}
	}
	return (0);
}

static int
readable(int fd, int ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	return (poll(&pfd, 1, ms) == 1 && (pfd.revents & POLLIN));
}

/* Read and drop whatever is queued. */
static void
drain(int fd)
{
	char buf[PKTLEN];

	while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) >= 0)
		;
}

/* NULL when sin is the divert address of an outgoing local packet. */
static const char *
bad_address(const struct sockaddr_in *sin, socklen_t len)
{
	static const char zero[sizeof(sin->sin_zero)];

	if (len != sizeof(*sin))
		return ("address length is not 16");
	if (sin->sin_family != AF_INET)
		return ("family is not AF_INET");
	if (sin->sin_port != tag)
		return ("sin_port is not the tag");
	if (sin->sin_addr.s_addr != INADDR_ANY)
		return ("sin_addr is not INADDR_ANY (outgoing)");
	if (memcmp(sin->sin_zero, zero, sizeof(zero)) != 0)
		return ("an interface name for a locally made packet");
	return (NULL);
}

/* Expect nothing to read: recv(MSG_DONTWAIT) fails with EAGAIN. */
static const char *
empty(int fd)
{
	char buf[PKTLEN];
	ssize_t n;

	n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n >= 0)
		return ("a packet was still queued");
	if (errno != EAGAIN)
		return (strerror(errno));
	return (NULL);
}

/* ---- readiness ---------------------------------------------------------- */

/* poll, select and epoll all agree on readable (want 1) or not (0). */
static const char *
readiness(int fd, int ep, int want)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	struct epoll_event ev;
	struct timeval tv = { 0, 0 };
	fd_set rfds;
	int r;

	r = poll(&pfd, 1, 0);
	if (r != want || (want && !(pfd.revents & POLLIN)))
		return (want ? "poll: not readable" : "poll: readable");
	FD_ZERO(&rfds);
	FD_SET(fd, &rfds);
	r = select(fd + 1, &rfds, NULL, NULL, &tv);
	if (r != want)
		return (want ? "select: not readable" : "select: readable");
	r = epoll_wait(ep, &ev, 1, 0);
	if (r != want)
		return (want ? "epoll: not readable" : "epoll: readable");
	return (NULL);
}

static void
test_readiness(int fd)
{
	struct epoll_event ev;
	const char *why;
	char buf[PKTLEN];
	int ep;

	ep = epoll_create1(EPOLL_CLOEXEC);
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN;
	if (ep == -1 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == -1) {
		notok("epoll on a divert socket", "%s", strerror(errno));
		return;
	}
	ok("epoll on a divert socket");

	why = readiness(fd, ep, 0);
	if (why == NULL)
		why = empty(fd);
	if (why != NULL)
		notok("nothing queued: poll, select, epoll not readable, "
		    "recv MSG_DONTWAIT EAGAIN", "%s", why);
	else
		ok("nothing queued: poll, select, epoll not readable, "
		    "recv MSG_DONTWAIT EAGAIN");

	if (inject(fd, 1, "a packet waits: poll, select, epoll readable"))
		return;
	if (!readable(fd, WAIT_MS))
		why = "poll saw no packet in time";
	else
		why = readiness(fd, ep, 1);
	if (why == NULL && recv(fd, buf, sizeof(buf), MSG_DONTWAIT) != PKTLEN)
		why = "readable, but recv(MSG_DONTWAIT) did not read a packet";
	if (why != NULL)
		notok("a packet waits: poll, select, epoll readable; "
		    "recv does not block", "%s", why);
	else
		ok("a packet waits: poll, select, epoll readable; "
		    "recv does not block");

	why = readiness(fd, ep, 0);
	if (why == NULL)
		why = empty(fd);
	if (why != NULL)
		notok("after the read: not readable again", "%s", why);
	else
		ok("after the read: not readable again");
	close(ep);
}

/* ---- non-blocking reads ------------------------------------------------- */

static void
test_nonblocking(int fd)
{
	struct msghdr msg;
	struct mmsghdr vec;
	struct iovec iov;
	struct timeval tv;
	char buf[PKTLEN], what[160] = "";
	double t0, dt;
	ssize_t r;
	int fl, s;

	fl = fcntl(fd, F_GETFL);
	if (fl == -1 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1) {
		notok("O_NONBLOCK: every read call gives EAGAIN", "fcntl: %s",
		    strerror(errno));
		return;
	}
	iov.iov_base = buf;
	iov.iov_len = sizeof(buf);
	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	memset(&vec, 0, sizeof(vec));
	vec.msg_hdr = msg;
#define TRY(call) do {							\
		errno = 0;						\
		r = (call);						\
		if (r != -1 || errno != EAGAIN)				\
			snprintf(what + strlen(what),			\
			    sizeof(what) - strlen(what), " %s=%zd/%s",	\
			    #call, r, strerror(errno));			\
	} while (0)
	TRY(recv(fd, buf, sizeof(buf), 0));
	TRY(recvfrom(fd, buf, sizeof(buf), 0, NULL, NULL));
	TRY(read(fd, buf, sizeof(buf)));
	TRY(readv(fd, &iov, 1));
	TRY(recvmsg(fd, &msg, 0));
	TRY(recvmmsg(fd, &vec, 1, 0, NULL));
#undef TRY
	fcntl(fd, F_SETFL, fl);
	if (what[0] != '\0')
		notok("O_NONBLOCK: every read call gives EAGAIN", "%s", what);
	else
		ok("O_NONBLOCK: every read call gives EAGAIN");

	s = socket(PF_DIVERT, SOCK_RAW | SOCK_NONBLOCK, 0);
	if (s == -1) {
		notok("SOCK_NONBLOCK: recvfrom gives EAGAIN", "socket: %s",
		    strerror(errno));
	} else {
		r = recvfrom(s, buf, sizeof(buf), 0, NULL, NULL);
		if (r == -1 && errno == EAGAIN)
			ok("SOCK_NONBLOCK: recvfrom gives EAGAIN");
		else
			notok("SOCK_NONBLOCK: recvfrom gives EAGAIN",
			    "returned %zd (%s)", r, strerror(errno));
		close(s);
	}

	tv.tv_sec = 0;
	tv.tv_usec = 200000;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == -1) {
		notok("SO_RCVTIMEO: recvfrom gives EAGAIN after the timeout",
		    "setsockopt: %s", strerror(errno));
		return;
	}
	t0 = now();
	r = recvfrom(fd, buf, sizeof(buf), 0, NULL, NULL);
	dt = now() - t0;
	if (r == -1 && errno == EAGAIN && dt > 0.15 && dt < 2)
		ok("SO_RCVTIMEO: recvfrom gives EAGAIN after the timeout");
	else
		notok("SO_RCVTIMEO: recvfrom gives EAGAIN after the timeout",
		    "returned %zd (%s) after %.2fs", r, strerror(errno), dt);
	tv.tv_usec = 0;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* ---- peek and truncation ------------------------------------------------ */

static void
test_peek(int fd)
{
	const char *name = "MSG_PEEK, then recvfrom: the same packet and "
	    "address";
	struct sockaddr_in a, b;
	socklen_t alen = sizeof(a), blen = sizeof(b);
	char pa[PKTLEN * 2], pb[PKTLEN * 2];
	const char *why;
	ssize_t na, nb;

	if (inject(fd, 1, name))
		return;
	if (!readable(fd, WAIT_MS)) {
		notok(name, "no packet");
		return;
	}
	memset(&a, 0xff, sizeof(a));
	na = recvfrom(fd, pa, sizeof(pa), MSG_PEEK, (struct sockaddr *)&a,
	    &alen);
	nb = recvfrom(fd, pb, sizeof(pb), MSG_DONTWAIT, (struct sockaddr *)&b,
	    &blen);
	why = bad_address(&a, alen);
	if (na != PKTLEN || nb != PKTLEN)
		notok(name, "lengths %zd and %zd, expected %d", na, nb, PKTLEN);
	else if (memcmp(pa, pb, PKTLEN) != 0)
		notok(name, "the bytes differ");
	else if (why != NULL)
		notok(name, "peeked address: %s", why);
	else if (alen != blen || memcmp(&a, &b, sizeof(a)) != 0)
		notok(name, "the addresses differ");
	else if ((why = empty(fd)) != NULL)
		notok(name, "after both: %s", why);
	else
		ok(name);
}

static void
test_trunc(int fd)
{
	const char *n1 = "MSG_TRUNC, 20-byte buffer: returns the whole length";
	const char *n2 = "no MSG_TRUNC, 20-byte buffer: returns 20, the rest "
	    "is dropped";
	const char *n3 = "recvmsg, 20-byte buffer: MSG_TRUNC in msg_flags";
	const char *n4 = "MSG_PEEK|MSG_TRUNC without a buffer: the length";
	u_char small[20], buf[PKTLEN];
	struct ip *ip = (struct ip *)(void *)small;
	struct msghdr msg;
	struct iovec iov;
	ssize_t r;

	if (inject(fd, 1, n1))
		return;
	if (!readable(fd, WAIT_MS)) {
		notok(n1, "no packet");
		return;
	}
	r = recv(fd, small, sizeof(small), MSG_TRUNC);
	if (r == PKTLEN && ip->ip_v == 4 && ntohs(ip->ip_len) == PKTLEN &&
	    empty(fd) == NULL)
		ok(n1);
	else
		notok(n1, "returned %zd (%s)", r, r < 0 ? strerror(errno) : "");

	if (inject(fd, 1, n2))
		return;
	if (!readable(fd, WAIT_MS)) {
		notok(n2, "no packet");
		return;
	}
	r = recvfrom(fd, small, sizeof(small), 0, NULL, NULL);
	if (r == (ssize_t)sizeof(small) && ip->ip_v == 4 && empty(fd) == NULL)
		ok(n2);
	else
		notok(n2, "returned %zd (%s)", r, r < 0 ? strerror(errno) : "");

	if (inject(fd, 1, n3))
		return;
	if (!readable(fd, WAIT_MS)) {
		notok(n3, "no packet");
		return;
	}
	iov.iov_base = small;
	iov.iov_len = sizeof(small);
	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	r = recvmsg(fd, &msg, 0);
	if (r == (ssize_t)sizeof(small) && (msg.msg_flags & MSG_TRUNC))
		ok(n3);
	else
		notok(n3, "returned %zd, msg_flags %#x", r, msg.msg_flags);

	if (inject(fd, 1, n4))
		return;
	if (!readable(fd, WAIT_MS)) {
		notok(n4, "no packet");
		return;
	}
	r = recv(fd, NULL, 0, MSG_PEEK | MSG_TRUNC);
	if (r == PKTLEN && recv(fd, buf, sizeof(buf), 0) == PKTLEN)
		ok(n4);
	else
		notok(n4, "returned %zd (%s)", r, r < 0 ? strerror(errno) : "");
}

static void
test_fionread(int fd)
{
	const char *name = "FIONREAD: the waiting packet's length, 0 when none";
	char buf[PKTLEN];
	int a = -1, b = -1;

	if (inject(fd, 1, name))
		return;
	if (!readable(fd, WAIT_MS)) {
		notok(name, "no packet");
		return;
	}
	if (ioctl(fd, FIONREAD, &a) == -1 ||
	    recv(fd, buf, sizeof(buf), 0) != PKTLEN ||
	    ioctl(fd, FIONREAD, &b) == -1)
		notok(name, "%s", strerror(errno));
	else if (a != PKTLEN || b != 0)
		notok(name, "%d with a packet, %d without", a, b);
	else
		ok(name);
}

static void
test_read_readv(int fd)
{
	const char *name = "readv into 20 + 64 bytes: the IP header, then "
	    "the rest";
	u_char hdr[20], rest[64];
	struct ip *ip = (struct ip *)(void *)hdr;
	struct iovec iov[2] = {
		{ .iov_base = hdr, .iov_len = sizeof(hdr) },
		{ .iov_base = rest, .iov_len = sizeof(rest) },
	};
	ssize_t r;

	if (inject(fd, 1, name))
		return;
	if (!readable(fd, WAIT_MS)) {
		notok(name, "no packet");
		return;
	}
	r = readv(fd, iov, 2);
	if (r == PKTLEN && ip->ip_v == 4 && ntohs(ip->ip_len) == PKTLEN &&
	    rest[0] == ICMP_ECHO)
		ok(name);
	else
		notok(name, "returned %zd (%s)", r, r < 0 ? strerror(errno) : "");
}

/* ---- recvmmsg and sendmmsg ---------------------------------------------- */

struct batch {
	struct mmsghdr vec[8];
	struct iovec iov[8];
	struct sockaddr_in sin[8];
	u_char buf[8][PKTLEN * 2];
};

static void
batch_init(struct batch *b)
{
	int i;

	memset(b, 0, sizeof(*b));
	for (i = 0; i < 8; i++) {
		b->iov[i].iov_base = b->buf[i];
		b->iov[i].iov_len = sizeof(b->buf[i]);
		b->vec[i].msg_hdr.msg_iov = &b->iov[i];
		b->vec[i].msg_hdr.msg_iovlen = 1;
		b->vec[i].msg_hdr.msg_name = &b->sin[i];
		b->vec[i].msg_hdr.msg_namelen = sizeof(b->sin[i]);
	}
}

/* NULL when the first n messages are n whole packets, in write order. */
static const char *
batch_bad(struct batch *b, int n, uint16_t first_id)
{
	const char *why;
	int i;

	for (i = 0; i < n; i++) {
		const struct ip *ip = (const struct ip *)(void *)b->buf[i];

		if (b->vec[i].msg_len != PKTLEN)
			return ("msg_len is not the packet's length");
		if (ntohs(ip->ip_id) != (uint16_t)(first_id + i))
			return ("not the packets written, in order");
		why = bad_address(&b->sin[i], b->vec[i].msg_hdr.msg_namelen);
		if (why != NULL)
			return (why);
	}
	return (NULL);
}

static void
test_recvmmsg(int fd)
{
	const char *n1 = "recvmmsg, 3 messages, blocking: waits for 3 packets";
	const char *n2 = "recvmmsg MSG_WAITFORONE: 1 packet, no wait for more";
	const char *n3 = "recvmmsg with a timeout and nothing queued: 0 after "
	    "the timeout (FreeBSD's libc)";
	const char *n4 = "recvmmsg with a timeout: a waiting packet at once, "
	    "the timeout left alone";
	const char *n5 = "recvmmsg, 2 of 3 queued: 2, then the third";
	struct timespec to;
	struct batch b;
	const char *why;
	uint16_t first;
	double t0, dt;
	int r;

	batch_init(&b);
	first = next_id;
	if (inject(fd, 3, n1))
		return;
	alarm(10);
	r = recvmmsg(fd, b.vec, 3, 0, NULL);
	alarm(0);
	if (r != 3)
		notok(n1, "returned %d (%s)", r, strerror(errno));
	else if ((why = batch_bad(&b, 3, first)) != NULL)
		notok(n1, "%s", why);
	else
		ok(n1);

	batch_init(&b);
	first = next_id;
	if (inject(fd, 1, n2))
		return;
	alarm(10);
	r = recvmmsg(fd, b.vec, 8, MSG_WAITFORONE, NULL);
	alarm(0);
	if (r != 1)
		notok(n2, "returned %d (%s)", r, strerror(errno));
	else if ((why = batch_bad(&b, 1, first)) != NULL)
		notok(n2, "%s", why);
	else
		ok(n2);

	batch_init(&b);
	to.tv_sec = 0;
	to.tv_nsec = 300000000;
	alarm(10);
	t0 = now();
	r = recvmmsg(fd, b.vec, 8, 0, &to);
	dt = now() - t0;
	alarm(0);
	if (r == 0 && dt > 0.25 && dt < 3 && to.tv_nsec == 300000000)
		ok(n3);
	else
		notok(n3, "returned %d (%s) after %.2fs", r, strerror(errno),
		    dt);

	batch_init(&b);
	first = next_id;
	if (inject(fd, 1, n4))
		return;
	to.tv_sec = 5;
	to.tv_nsec = 0;
	alarm(10);
	t0 = now();
	r = recvmmsg(fd, b.vec, 8, MSG_WAITFORONE, &to);
	dt = now() - t0;
	alarm(0);
	if (r != 1 || dt > 2.5)
		notok(n4, "returned %d (%s) after %.2fs", r, strerror(errno),
		    dt);
	else if ((why = batch_bad(&b, 1, first)) != NULL)
		notok(n4, "%s", why);
	else if (to.tv_sec != 5 || to.tv_nsec != 0)
		notok(n4, "the timeout was changed");
	else
		ok(n4);

	batch_init(&b);
	first = next_id;
	if (inject(fd, 3, n5))
		return;
	alarm(10);
	r = recvmmsg(fd, b.vec, 2, 0, NULL);
	if (r == 2 && (why = batch_bad(&b, 2, first)) == NULL) {
		batch_init(&b);
		r = recvmmsg(fd, b.vec, 8, MSG_WAITFORONE, NULL);
		if (r != 1)
			why = "the third packet did not come alone";
		else
			why = batch_bad(&b, 1, (uint16_t)(first + 2));
	} else if (r != 2)
		why = "did not return 2";
	alarm(0);
	if (why != NULL)
		notok(n5, "%s (returned %d)", why, r);
	else
		ok(n5);
}

static void
test_sendmmsg(int fd)
{
	const char *n1 = "sendmmsg of 3: 3, msg_len set, all 3 diverted back";
	const char *n2 = "sendmmsg, the 2nd message bad: 1, only the 1st sent";
	const char *n3 = "sendmmsg, the 1st message bad: -1 EINVAL";
	const char *n4 = "sendmsg without an address: EDESTADDRREQ";
	struct sockaddr_in sin[3];
	struct mmsghdr vec[3];
	struct iovec iov[3];
	u_char pkt[3][PKTLEN];
	struct msghdr msg;
	struct batch b;
	const char *why;
	uint16_t first = next_id;
	int i, r;

	memset(vec, 0, sizeof(vec));
	for (i = 0; i < 3; i++) {
		make_packet(pkt[i], next_id++);
		sin[i] = outgoing();
		iov[i].iov_base = pkt[i];
		iov[i].iov_len = PKTLEN;
		vec[i].msg_hdr.msg_iov = &iov[i];
		vec[i].msg_hdr.msg_iovlen = 1;
		vec[i].msg_hdr.msg_name = &sin[i];
		vec[i].msg_hdr.msg_namelen = sizeof(sin[i]);
	}
	r = sendmmsg(fd, vec, 3, 0);
	batch_init(&b);
	alarm(10);
	if (r != 3)
		why = "did not return 3";
	else if (vec[0].msg_len != PKTLEN || vec[2].msg_len != PKTLEN)
		why = "msg_len is not the packet's length";
	else if (recvmmsg(fd, b.vec, 3, 0, NULL) != 3)
		why = "did not read 3 back";
	else
		why = batch_bad(&b, 3, first);
	alarm(0);
	if (why != NULL)
		notok(n1, "%s (returned %d, %s)", why, r, strerror(errno));
	else
		ok(n1);

	first = next_id;
	for (i = 0; i < 3; i++) {
		make_packet(pkt[i], next_id++);
		vec[i].msg_len = 0;
	}
	iov[1].iov_len = 10;		/* under 20 bytes: EINVAL */
	r = sendmmsg(fd, vec, 3, 0);
	batch_init(&b);
	if (r != 1)
		why = "did not return 1";
	else if (!readable(fd, WAIT_MS) ||
	    recvmmsg(fd, b.vec, 1, 0, NULL) != 1)
		why = "the 1st did not come back";
	else if ((why = batch_bad(&b, 1, first)) == NULL && readable(fd, 500))
		why = "more than the 1st was sent";
	if (why != NULL)
		notok(n2, "%s (returned %d, %s)", why, r, strerror(errno));
	else
		ok(n2);
	drain(fd);

	iov[0].iov_len = 10;
	errno = 0;
	r = sendmmsg(fd, vec, 3, 0);
	if (r == -1 && errno == EINVAL)
		ok(n3);
	else
		notok(n3, "returned %d (%s)", r, strerror(errno));

	memset(&msg, 0, sizeof(msg));
	iov[2].iov_len = PKTLEN;
	msg.msg_iov = &iov[2];
	msg.msg_iovlen = 1;
	errno = 0;
	r = (int)sendmsg(fd, &msg, 0);
	if (r == -1 && errno == EDESTADDRREQ)
		ok(n4);
	else
		notok(n4, "returned %d (%s)", r, strerror(errno));
}

/* ---- descriptors -------------------------------------------------------- */

static void
test_dupfd(int fd)
{
	const char *name = "F_DUPFD_CLOEXEC: the copy reads with the divert "
	    "address; close_range on it leaves the original working";
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	char buf[PKTLEN];
	const char *why = NULL;
	int d;

	d = fcntl(fd, F_DUPFD_CLOEXEC, 100);
	if (d < 100) {
		notok(name, "fcntl: %s", strerror(errno));
		return;
	}
	if (inject(fd, 2, name))
		return;
	alarm(10);
	if (recvfrom(d, buf, sizeof(buf), 0, (struct sockaddr *)&sin, &len) !=
	    PKTLEN)
		why = "the copy did not read a packet";
	else if ((why = bad_address(&sin, len)) != NULL)
		;
	else if (close_range((unsigned)d, (unsigned)d, 0) != 0)
		why = "close_range failed";
	else if (recv(fd, buf, sizeof(buf), 0) != PKTLEN)
		why = "the original did not read after close_range";
	alarm(0);
	if (why != NULL)
		notok(name, "%s", why);
	else
		ok(name);
}

/* msg writes the packet pkt as outgoing with tag 0. */
static void
outgoing_msg(struct msghdr *msg, struct iovec *iov, struct sockaddr_in *sin,
    u_char *pkt)
{
	*sin = outgoing();
	iov->iov_base = pkt;
	iov->iov_len = PKTLEN;
	memset(msg, 0, sizeof(*msg));
	msg->msg_iov = iov;
	msg->msg_iovlen = 1;
	msg->msg_name = sin;
	msg->msg_namelen = sizeof(*sin);
}

/* Every call below succeeds; none may change errno. */
static void
test_errno(int fd)
{
	struct sockaddr_in sin = outgoing();
	struct batch b;
	struct msghdr msg;
	struct iovec iov;
	u_char pkt[PKTLEN];
	char bad[512] = "";
	socklen_t len;
	int s, d, v, r;

#define KEEP(call) do {							\
		errno = SENTINEL;					\
		r = (int)(call);					\
		if (r < 0 || errno != SENTINEL)				\
			snprintf(bad + strlen(bad),			\
			    sizeof(bad) - strlen(bad), " %s=%d/%s",	\
			    #call, r, strerror(errno));			\
	} while (0)
	alarm(20);
	KEEP(s = socket(PF_DIVERT, SOCK_RAW, 0));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(9);
	KEEP(bind(s, (struct sockaddr *)&sin, sizeof(sin)));
	v = 100000;
	KEEP(setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v)));
	len = sizeof(v);
	KEEP(getsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, &len));
	KEEP(ioctl(s, FIONREAD, &v));
	KEEP(d = dup(s));
	KEEP(close(d));
	KEEP(d = fcntl(s, F_DUPFD_CLOEXEC, 0));
	KEEP(close_range((unsigned)d, (unsigned)d, 0));
	KEEP(close(s));

	sin = outgoing();
	make_packet(pkt, next_id++);
	KEEP(sendto(fd, pkt, sizeof(pkt), 0, (struct sockaddr *)&sin,
	    sizeof(sin)));
	KEEP(readable(fd, WAIT_MS) - 1);
	KEEP(recv(fd, pkt, sizeof(pkt), MSG_PEEK));
	KEEP(recvfrom(fd, pkt, sizeof(pkt), 0, NULL, NULL));
	make_packet(pkt, next_id++);
	outgoing_msg(&msg, &iov, &sin, pkt);
	KEEP(sendmsg(fd, &msg, 0));
	KEEP(readable(fd, WAIT_MS) - 1);
	KEEP(recvmsg(fd, &msg, 0));
	/* one packet for eight messages: the 2nd read finds nothing */
	make_packet(pkt, next_id++);
	outgoing_msg(&msg, &iov, &sin, pkt);
	KEEP(sendmsg(fd, &msg, 0));
	KEEP(readable(fd, WAIT_MS) - 1);
	batch_init(&b);
	KEEP(recvmmsg(fd, b.vec, 8, MSG_WAITFORONE, NULL));
	make_packet(pkt, next_id++);
	outgoing_msg(&b.vec[0].msg_hdr, &iov, &sin, pkt);
	KEEP(sendmmsg(fd, b.vec, 1, 0));
	KEEP(readable(fd, WAIT_MS) - 1);
	KEEP(read(fd, pkt, sizeof(pkt)));
	alarm(0);
#undef KEEP
	if (bad[0] != '\0')
		notok("errno untouched by calls that succeed", "%s", bad);
	else
		ok("errno untouched by calls that succeed");
}

/* ---- the fortified reads -------------------------------------------------- */

static int
chk(const char *how)
{
	char small[16];
	size_t len = smallcap + 1;	/* one byte too many */
	ssize_t r;
	int s;

	s = socket(PF_DIVERT, SOCK_RAW | SOCK_NONBLOCK, 0);
	if (s == -1)
		err(1, "socket");
	if (strcmp(how, "recv") == 0)
		r = recv(s, small, len, MSG_DONTWAIT);
	else if (strcmp(how, "recvfrom") == 0)
		r = recvfrom(s, small, len, MSG_DONTWAIT, NULL, NULL);
	else if (strcmp(how, "read") == 0)
		r = read(s, small, len);
	else
		errx(2, "chk: recv, recvfrom or read");
	printf("not ok - %s of %zu bytes into 16 returned %zd (%s)\n", how,
	    len, r, strerror(errno));
	return (1);
}

static int
lastwrite(int fd, const char *peer)
{
	struct sockaddr_in sin = outgoing();
	u_char pkt[PKTLEN];

	if (inject(fd, 1, "lastwrite") || !readable(fd, WAIT_MS)) {
		printf("not ok - lastwrite: no packet diverted to leave unread\n");
		return (1);
	}
	if (inet_pton(AF_INET, peer, &dst) != 1)
		errx(2, "bad address: %s", peer);
	make_packet(pkt, next_id++);
	if (sendto(fd, pkt, sizeof(pkt), 0, (struct sockaddr *)&sin,
	    sizeof(sin)) != PKTLEN) {
		printf("not ok - lastwrite: sendto: %s\n", strerror(errno));
		return (1);
	}
	close(fd);
	printf("ok - lastwrite: written, closed with a packet unread\n");
	return (0);
}

/* A socket bound to port (text), writing its packets to dst (text). */
static int
setup(const char *portarg, const char *dstarg)
{
	struct sockaddr_in sin;
	char *end;
	long port;
	int fd;

	port = strtol(portarg, &end, 10);
	if (*end != '\0' || port < 1 || port > 65535)
		errx(2, "bad port: %s", portarg);
	if (inet_pton(AF_INET, dstarg, &dst) != 1)
		errx(2, "bad address: %s", dstarg);
	next_id = (uint16_t)(getpid() << 4);
	alarm(120);		/* a hung daemon must not hang the suite */

	fd = socket(PF_DIVERT, SOCK_RAW, 0);
	if (fd == -1)
		err(1, "socket");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1)
		err(1, "bind %ld", port);
	return (fd);
}

int
main(int argc, char *argv[])
{
	char *end;
	int fd;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 3 && strcmp(argv[1], "chk") == 0)
		return (chk(argv[2]));
	if (argc == 2 && strcmp(argv[1], "nodaemon") == 0) {
		errno = 0;
		fd = socket(PF_DIVERT, SOCK_RAW, 0);
		if (fd == -1 && errno == EPROTONOSUPPORT) {
			printf("ok - no daemon: EPROTONOSUPPORT\n");
			return (0);
		}
		printf("not ok - no daemon: returned %d (%s)\n", fd,
		    strerror(errno));
		return (1);
	}
	if (argc == 5 && strcmp(argv[1], "lastwrite") == 0)
		return (lastwrite(setup(argv[2], argv[3]), argv[4]));
	if (argc != 4) {
		fprintf(stderr, "usage: conf_api PORT DST TAG | chk HOW | "
		    "nodaemon | lastwrite PORT DST PEER\n");
		return (2);
	}
	tag = strtol(argv[3], &end, 10);
	if (*end != '\0' || tag < 1 || tag > 65535)
		errx(2, "bad tag: %s", argv[3]);
	fd = setup(argv[1], argv[2]);

	test_readiness(fd);
	test_nonblocking(fd);
	test_peek(fd);
	test_trunc(fd);
	test_fionread(fd);
	test_read_readv(fd);
	test_recvmmsg(fd);
	test_sendmmsg(fd);
	test_dupfd(fd);
	test_errno(fd);
	close(fd);

	printf("%d passed, %d failed\n", npass, nfail);
	return (nfail != 0);
}
