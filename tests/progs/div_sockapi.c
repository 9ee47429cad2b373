/*
 * div_sockapi: the divert(4) socket API, checked the way FreeBSD's
 * regression tests check it.
 *
 *	div_sockapi BASEPORT
 *
 * Uses divert ports BASEPORT .. BASEPORT+9; no packet needs to flow.
 * Prints "ok - NAME" or "not ok - NAME: DETAILS" per check, then
 * "N passed, N failed"; exits 1 if any check failed.
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/ip.h>

#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "divert.h"

static int npass, nfail;
static long baseport;

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

/* The check passes when r is -1 with errno want. */
static void
expect_errno(const char *name, long r, int err, int want)
{
	if (r == -1 && err == want)
		ok(name);
	else if (r == -1)
		notok(name, "errno %d (%s), expected %d (%s)", err,
		    strerror(err), want, strerror(want));
	else
		notok(name, "returned %ld, expected -1 (%s)", r,
		    strerror(want));
}

static int
divsock(void)
{
	return (socket(PF_DIVERT, SOCK_RAW, 0));
}

static int
divbind(int s, long port)
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	return (bind(s, (struct sockaddr *)&sin, sizeof(sin)));
}

static struct sockaddr_in
outgoing(void)
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = INADDR_ANY;
	return (sin);
}

static void
test_create(void)
{
	int s;

	s = divsock();
	if (s == -1) {
		notok("create", "socket: %s", strerror(errno));
		return;
	}
	if (close(s) == -1)
		notok("create", "close: %s", strerror(errno));
	else
		ok("create");
}

static void
test_bind(void)
{
	int s;

	s = divsock();
	if (s == -1) {
		notok("bind", "socket: %s", strerror(errno));
		return;
	}
	if (divbind(s, baseport) == -1)
		notok("bind", "bind: %s", strerror(errno));
	else
		ok("bind");
	close(s);
}

static void
test_two_ports(void)
{
	int s1, s2;

	s1 = divsock();
	s2 = divsock();
	if (s1 == -1 || s2 == -1)
		notok("two sockets, two ports", "socket: %s", strerror(errno));
	else if (divbind(s1, baseport + 1) == -1 ||
	    divbind(s2, baseport + 2) == -1)
		notok("two sockets, two ports", "bind: %s", strerror(errno));
	else
		ok("two sockets, two ports");
	close(s1);
	close(s2);
}

static void
test_one_port(void)
{
	int s1, s2, r;

	s1 = divsock();
	s2 = divsock();
	if (s1 == -1 || s2 == -1) {
		notok("two sockets, one port", "socket: %s", strerror(errno));
		goto out;
	}
	if (divbind(s1, baseport + 3) == -1) {
		notok("two sockets, one port", "bind: %s", strerror(errno));
		goto out;
	}
	r = divbind(s2, baseport + 3);
	expect_errno("two sockets, one port", r, errno, EADDRINUSE);

	/* close() frees the port at once */
	close(s1);
	s1 = -1;
	if (divbind(s2, baseport + 3) == -1)
		notok("close frees the port", "bind: %s", strerror(errno));
	else
		ok("close frees the port");
out:
	if (s1 != -1)
		close(s1);
	if (s2 != -1)
		close(s2);
}

static void
test_rebind(void)
{
	int s1, s2;

	/* re-binding moves a socket: its old port is free again */
	s1 = divsock();
	s2 = divsock();
	if (s1 == -1 || s2 == -1)
		notok("rebind moves", "socket: %s", strerror(errno));
	else if (divbind(s1, baseport + 4) == -1 ||
	    divbind(s1, baseport + 5) == -1)
		notok("rebind moves", "bind: %s", strerror(errno));
	else if (divbind(s2, baseport + 4) == -1)
		notok("rebind moves", "old port still taken: %s",
		    strerror(errno));
	else
		ok("rebind moves");
	close(s1);
	close(s2);
}

static void
test_send(int s)
{
	struct sockaddr_in sin = outgoing();
	static char big[70000];
	char pkt[20];
	struct ip *ip = (struct ip *)(void *)pkt;
	long r;

	memset(pkt, 0, sizeof(pkt));
	ip->ip_v = 4;
	ip->ip_hl = 5;
	ip->ip_len = htons(sizeof(pkt));

	r = send(s, pkt, sizeof(pkt), 0);
	expect_errno("send without address", r, errno, EDESTADDRREQ);
	r = write(s, pkt, sizeof(pkt));
	expect_errno("write", r, errno, EDESTADDRREQ);

	r = sendto(s, pkt, 10, 0, (struct sockaddr *)&sin, sizeof(sin));
	expect_errno("sendto 10 bytes", r, errno, EINVAL);

	sin.sin_family = AF_INET6;
	r = sendto(s, pkt, sizeof(pkt), 0, (struct sockaddr *)&sin,
	    sizeof(sin));
	expect_errno("sendto AF_INET6 address", r, errno, EAFNOSUPPORT);
	sin.sin_family = AF_INET;

	r = sendto(s, pkt, sizeof(pkt), 0, (struct sockaddr *)&sin, 8);
	expect_errno("sendto addrlen 8", r, errno, EINVAL);

	ip->ip_v = 5;
	r = sendto(s, pkt, sizeof(pkt), 0, (struct sockaddr *)&sin,
	    sizeof(sin));
	expect_errno("sendto IP version 5", r, errno, EAFNOSUPPORT);

	memcpy(big, pkt, sizeof(pkt));
	big[0] = 0x45;
	r = sendto(s, big, sizeof(big), 0, (struct sockaddr *)&sin,
	    sizeof(sin));
	expect_errno("sendto 70000 bytes", r, errno, EMSGSIZE);
}

static void
test_sockbuf(int s)
{
	const char *name = "SO_RCVBUF/SO_SNDBUF";
	socklen_t len;
	int rcv = 0, snd = 0, v;

	len = sizeof(rcv);
	if (getsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcv, &len) == -1 ||
	    (len = sizeof(snd),
	    getsockopt(s, SOL_SOCKET, SO_SNDBUF, &snd, &len) == -1)) {
		notok(name, "getsockopt: %s", strerror(errno));
		return;
	}
	if (rcv != DIVERT_SOCKBUF_DEFAULT || snd != DIVERT_SOCKBUF_DEFAULT) {
		notok(name, "defaults %d/%d, expected %d", rcv, snd,
		    DIVERT_SOCKBUF_DEFAULT);
		return;
	}
	ok("SO_RCVBUF/SO_SNDBUF defaults");

	v = 200000;
	if (setsockopt(s, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v)) == -1 ||
	    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v)) == -1) {
		notok(name, "setsockopt: %s", strerror(errno));
		return;
	}
	len = sizeof(rcv);
	getsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcv, &len);
	len = sizeof(snd);
	getsockopt(s, SOL_SOCKET, SO_SNDBUF, &snd, &len);
	if (rcv != v || snd != v)
		notok(name, "set %d, got %d/%d", v, rcv, snd);
	else
		ok("SO_RCVBUF/SO_SNDBUF set and get");
}

static void
test_sockname(int s)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	long r;

	r = getsockname(s, (struct sockaddr *)&sin, &len);
	expect_errno("getsockname", r, errno, EOPNOTSUPP);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	r = connect(s, (struct sockaddr *)&sin, sizeof(sin));
	expect_errno("connect", r, errno, EOPNOTSUPP);
}

static void
test_ipopts(int s)
{
	int ttl = 32;
	socklen_t len = sizeof(ttl);
	long r;

	r = setsockopt(s, IPPROTO_IP, IP_TTL, &ttl, sizeof(ttl));
	expect_errno("setsockopt IPPROTO_IP", r, errno, ENOPROTOOPT);
	r = getsockopt(s, IPPROTO_IP, IP_TTL, &ttl, &len);
	expect_errno("getsockopt IPPROTO_IP", r, errno, ENOPROTOOPT);
}

static void
test_types(void)
{
	int s, fl;
	char buf[100];
	long r;

	s = socket(PF_DIVERT, SOCK_DGRAM, 0);
	expect_errno("SOCK_DGRAM", s, errno, EPROTOTYPE);
	if (s != -1)
		close(s);

	s = socket(PF_DIVERT, SOCK_RAW | SOCK_NONBLOCK, 0);
	if (s == -1) {
		notok("SOCK_NONBLOCK", "socket: %s", strerror(errno));
	} else {
		r = recvfrom(s, buf, sizeof(buf), 0, NULL, NULL);
		expect_errno("SOCK_NONBLOCK", r, errno, EAGAIN);
		close(s);
	}

	s = socket(PF_DIVERT, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (s == -1) {
		notok("SOCK_CLOEXEC", "socket: %s", strerror(errno));
	} else {
		fl = fcntl(s, F_GETFD);
		if (fl == -1 || !(fl & FD_CLOEXEC))
			notok("SOCK_CLOEXEC", "F_GETFD gives %d", fl);
		else
			ok("SOCK_CLOEXEC");
		close(s);
	}

	s = divsock();
	if (s != -1) {
		fl = fcntl(s, F_GETFD);
		if (fl != 0)
			notok("no SOCK_CLOEXEC", "F_GETFD gives %d", fl);
		else
			ok("no SOCK_CLOEXEC");
		close(s);
	}
}

static void
test_oldform(void)
{
	int s;

	s = socket(PF_INET, SOCK_RAW, IPPROTO_DIVERT);
	if (s == -1)
		notok("PF_INET/IPPROTO_DIVERT", "socket: %s", strerror(errno));
	else if (divbind(s, baseport + 6) == -1)
		notok("PF_INET/IPPROTO_DIVERT", "bind: %s", strerror(errno));
	else
		ok("PF_INET/IPPROTO_DIVERT");
	if (s != -1)
		close(s);
}

static void
test_dup(void)
{
	struct sockaddr_in sin = outgoing();
	char pkt[10];
	int s, d;
	long r;

	s = divsock();
	if (s == -1) {
		notok("dup", "socket: %s", strerror(errno));
		return;
	}
	d = dup(s);
	close(s);
	if (d == -1) {
		notok("dup", "dup: %s", strerror(errno));
		return;
	}
	if (divbind(d, baseport + 7) == -1) {
		notok("dup", "bind on the duplicate: %s", strerror(errno));
	} else {
		memset(pkt, 0, sizeof(pkt));
		r = sendto(d, pkt, sizeof(pkt), 0, (struct sockaddr *)&sin,
		    sizeof(sin));
		expect_errno("dup", r, errno, EINVAL);
	}
	close(d);
}

static void
test_bind_args(void)
{
	struct sockaddr_in sin;
	int s;
	long r;

	s = divsock();
	if (s == -1) {
		notok("bind AF_INET6", "socket: %s", strerror(errno));
		return;
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET6;
	sin.sin_port = htons((uint16_t)(baseport + 8));
	r = bind(s, (struct sockaddr *)&sin, sizeof(sin));
	expect_errno("bind AF_INET6", r, errno, EAFNOSUPPORT);

	sin.sin_family = AF_INET;
	r = bind(s, (struct sockaddr *)&sin, 8);
	expect_errno("bind addrlen 8", r, errno, EINVAL);
	close(s);
}

int
main(int argc, char *argv[])
{
	char *end;
	int s;

	if (argc != 2) {
		fprintf(stderr, "usage: div_sockapi BASEPORT\n");
		return (2);
	}
	baseport = strtol(argv[1], &end, 10);
	if (*end != '\0' || baseport < 1 || baseport > 65535 - 9)
		errx(2, "bad base port: %s", argv[1]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	alarm(60);		/* a hung daemon must not hang the suite */

	test_create();
	test_bind();
	test_two_ports();
	test_one_port();
	test_rebind();

	s = divsock();
	if (s == -1) {
		notok("socket", "%s", strerror(errno));
	} else {
		test_send(s);
		test_sockbuf(s);
		test_sockname(s);
		test_ipopts(s);
		close(s);
	}
	test_types();
	test_oldform();
	test_dup();
	test_bind_args();

	printf("%d passed, %d failed\n", npass, nfail);
	return (nfail != 0);
}
