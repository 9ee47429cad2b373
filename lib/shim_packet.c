/*
 * shim_packet.c: packets in and out of a divert fd.
 *
 * Receiving (recv, recvfrom, recvmsg, read, readv and the fortified forms;
 * recvmmsg as FreeBSD's libc builds it; FIONREAD): the next packet of the
 * ring (shim_ring.c), or, without one, one recvmsg whose first iovec is
 * the wire header, so that the packet lands in the caller's buffers; its
 * divert address into msg_name.
 *
 * Sending (sendto, sendmsg, sendmmsg): FreeBSD's checks first
 * (divert_wire_check_write), then by what the packet is.  A write-back of
 * a packet the socket read (reads_take()) goes into the ring or onto the
 * socket, and divertd gives the held packet its verdict; a new packet goes
 * through the write channel (shim_wch.c), so that sendto() returns what
 * its injection met.  While divertd is away a write-back waits in the
 * ring or the pair, a new packet for the next divertd a little
 * (away_wait()).
 *
 * In: the hooks' arguments and the socket's options (struct divsock_opts).
 * Out: bytes and errnos as FreeBSD 14 gives them, and the identity of
 * each packet read, for the registry (reads_note()).
 */
#include "shim.h"	/* first: it turns _FORTIFY_SOURCE off */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <netinet/in.h>

/* ---- receiving --------------------------------------------------------- */

/* The first want bytes of what iov holds (at most avail bytes). */
static size_t iov_head(const struct iovec *iov, size_t iovlen, size_t avail,
		       uint8_t *out, size_t want)
{
	size_t got = 0;

	if (want > avail)
		want = avail;
	for (size_t i = 0; i < iovlen && got < want; i++) {
		size_t c = iov[i].iov_len < want - got ? iov[i].iov_len
						      : want - got;
		if (c > 0)
			memcpy(out + got, iov[i].iov_base, c);
		got += c;
	}
	return got;
}

/*
 * One packet into msg's iovecs, its divert address into msg_name.  Messages
 * other than DW_PACKET (the daemon sends none after the welcome) are
 * skipped.  Returns the packet length (the full one with MSG_TRUNC), 0 when
 * the socket was shut down for reading (shutdown(SHUT_RD): divertd going
 * away never ends it, the shim holds the pair's other end; *eof
 * then says so, as a packet read into no buffer returns 0 too), or -1 with
 * errno as the kernel gave it.
 */
static ssize_t div_recv_packet(int fd, struct msghdr *msg, int flags,
			       bool *eof)
{
	struct iovec iov[1 + SHIM_IOV_MAX];
	struct divert_wire_hdr hdr;
	struct divring *rg;
	struct msghdr m;
	size_t c;
	ssize_t n;

	*eof = false;

	if (msg->msg_iovlen > SHIM_IOV_MAX)
		return set_errno(EMSGSIZE);
	if (msg->msg_iovlen > 0 && msg->msg_iov == NULL)
		return set_errno(EFAULT);
	if ((rg = reg_ring(fd)) != NULL) {
		n = ring_recv(fd, rg, msg, flags, eof);
		ring_put(rg);
		return n;
	}
	iov[0].iov_base = &hdr;
	iov[0].iov_len = sizeof(hdr);
	if (msg->msg_iovlen > 0)
		memcpy(&iov[1], msg->msg_iov, msg->msg_iovlen * sizeof(*iov));
	memset(&m, 0, sizeof(m));
	m.msg_iov = iov;
	m.msg_iovlen = 1 + msg->msg_iovlen;

	for (;;) {
		m.msg_flags = 0;
		n = REAL(recvmsg)(fd, &m, flags);
		if (n == 0)
			*eof = true;
		if (n <= 0)
			return n;
		if ((size_t)n >= sizeof(hdr) && hdr.type == DW_PACKET)
			break;
		dbg("fd %d: skipping a message of length %zd", fd, n);
		/* a peeked message stays: take it off, then peek again */
		if ((flags & MSG_PEEK) &&
		    REAL(recv)(fd, &hdr, sizeof(hdr), MSG_DONTWAIT) < 0 &&
		    errno != EAGAIN)
			return -1;
	}

	if (!(flags & MSG_PEEK)) {
		uint8_t head[20];
		size_t got = iov_head(msg->msg_iov, msg->msg_iovlen,
				      (size_t)n - sizeof(hdr), head, sizeof(head));

		/* the key reads bytes 0-9 only, but checks the packet's
		 * length (40 for IPv6): give it the real one */
		reads_note(fd, got >= 10 ? divert_wire_packet_key(head,
				(size_t)n - sizeof(hdr)) : 0,
			   hdr.addr.sin_addr.s_addr != INADDR_ANY);
	}
	if (msg->msg_name != NULL) {
		c = msg->msg_namelen < sizeof(hdr.addr) ? msg->msg_namelen
							: sizeof(hdr.addr);
		memcpy(msg->msg_name, &hdr.addr, c);
		msg->msg_namelen = sizeof(hdr.addr);
	}
	msg->msg_controllen = 0;
	msg->msg_flags = m.msg_flags;
	return n - (ssize_t)sizeof(hdr);
}

ssize_t div_recvmsg(int fd, struct msghdr *msg, int flags)
{
	bool eof;

	return div_recv_packet(fd, msg, flags, &eof);
}

ssize_t div_recvfrom(int fd, void *buf, size_t len, int flags,
		     struct sockaddr *from, socklen_t *fromlen)
{
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr msg;
	ssize_t n;

	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	if (from != NULL && fromlen != NULL) {
		msg.msg_name = from;
		msg.msg_namelen = *fromlen;
	}
	n = div_recvmsg(fd, &msg, flags);
	if (n > 0 && msg.msg_name != NULL)
		*fromlen = msg.msg_namelen;
	return n;
}

ssize_t div_readv(int fd, const struct iovec *iov, int iovcnt)
{
	struct msghdr msg;

	if (iovcnt < 0)
		return set_errno(EINVAL);
	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = (struct iovec *)(uintptr_t)iov;
	msg.msg_iovlen = (size_t)iovcnt;
	return div_recvmsg(fd, &msg, 0);
}

/*
 * recvmmsg as FreeBSD's libc builds it from recvmsg (lib/libc/gen/
 * recvmmsg.c), one packet per message: with a timeout, the first packet is
 * waited for at most that long (none: 0 messages); after the first packet
 * MSG_WAITFORONE stops waiting; an error after the first packet ends the
 * batch unreported.  The timeout is read, never written.  Linux's own
 * recvmmsg differs in ways a FreeBSD program would trip over: it blocks
 * for the first packet whatever the timeout and checks the timeout only
 * between packets (recvmmsg(2), BUGS), and it writes the time left back,
 * so a program reusing its timespec would soon poll with zero.
 */
int div_recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen,
		 int flags, const struct timespec *timeout)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN | POLLRDNORM |
						  POLLRDBAND | POLLPRI };
	bool waitforone = flags & MSG_WAITFORONE, eof;
	int saved = errno, r;
	unsigned int i;
	ssize_t n;

	if (vlen == 0)
		return 0;
	if (vec == NULL)
		return set_errno(EFAULT);
	if (vlen > INT_MAX)
		vlen = INT_MAX;		/* the count must fit the return */
	if (timeout != NULL) {
		r = ppoll(&pfd, 1, timeout, NULL);
		if (r <= 0)
			return r;	/* 0: timed out; -1: EINVAL, EINTR */
		if (pfd.revents & POLLNVAL)
			return set_errno(EBADF);
		if (!(pfd.revents & pfd.events))
			return set_errno(ETIMEDOUT);
	}
	flags &= ~MSG_WAITFORONE;
	for (i = 0; i < vlen; i++) {
		n = div_recv_packet(fd, &vec[i].msg_hdr, flags, &eof);
		if (n < 0 && i == 0)
			return -1;
		if (n < 0 || (eof && i > 0))
			break;
		vec[i].msg_len = (unsigned int)n;
		if (eof) {		/* shut down for reading: one empty read */
			i++;
			break;
		}
		if (waitforone)
			flags |= MSG_DONTWAIT;
	}
	errno = saved;
	return (int)i;
}

/*
 * FIONREAD: the length of the next packet, 0 when none.  Linux counts every
 * queued message of a SOCK_SEQPACKET socket, wire headers included, which
 * cannot be turned into packet bytes; FreeBSD counts the data of all queued
 * packets.  The next packet's length is what a reader sizes a buffer by,
 * and it is non-zero exactly when FreeBSD's is.
 */
int div_fionread(int fd, int *np)
{
	struct divert_wire_hdr hdr;
	struct divring *rg;
	int saved = errno;
	ssize_t n;

	if (np == NULL)
		return set_errno(EFAULT);
	if ((rg = reg_ring(fd)) != NULL) {
		ring_fionread(rg, np);
		ring_put(rg);
		return 0;
	}
	n = REAL(recv)(fd, &hdr, sizeof(hdr),
		       MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
	if (n < 0 && errno != EAGAIN)
		return -1;
	*np = n > (ssize_t)sizeof(hdr) && hdr.type == DW_PACKET
	      ? (int)(n - (ssize_t)sizeof(hdr)) : 0;
	errno = saved;
	return 0;
}

/* ---- sending ----------------------------------------------------------- */

/* True when a write on fd must not wait: MSG_DONTWAIT or O_NONBLOCK. */
static bool write_nonblocking(int fd, int flags)
{
	int fl;

	if (flags & MSG_DONTWAIT)
		return true;
	fl = REAL(fcntl)(fd, F_GETFL);
	return fl >= 0 && (fl & O_NONBLOCK);
}

/*
 * Write one packet, msg's iovecs, to msg_name (NULL: outgoing).  FreeBSD's
 * checks first, on the first 20 bytes (gathered when the first iovec is
 * shorter); then one sendmsg of the wire header and the caller's iovecs.
 */
ssize_t div_sendmsg(int fd, const struct divsock_opts *o,
		    const struct msghdr *msg, int flags)
{
	struct iovec iov[1 + SHIM_IOV_MAX];
	struct divert_wire_hdr hdr;
	struct divring *rg;
	uint8_t head[20];
	const void *pkt = head;
	struct msghdr m;
	size_t len = 0, got, c, i;
	uint32_t key;
	bool incoming;
	ssize_t n;
	int err;

	/* FreeBSD 14's sosend refuses a write without an address on a
	 * socket that is never connected, before it looks at anything else */
	if (msg->msg_name == NULL)
		return set_errno(EDESTADDRREQ);
	if (msg->msg_iovlen > SHIM_IOV_MAX)
		return set_errno(EMSGSIZE);
	if (msg->msg_iovlen > 0 && msg->msg_iov == NULL)
		return set_errno(EFAULT);
	for (i = 0; i < msg->msg_iovlen; i++)
		len = msg->msg_iov[i].iov_len > SIZE_MAX - len ? SIZE_MAX
				: len + msg->msg_iov[i].iov_len;
	if (msg->msg_iovlen > 0 && msg->msg_iov[0].iov_len >= sizeof(head)) {
		pkt = msg->msg_iov[0].iov_base;
	} else if (len >= sizeof(head)) {
		for (i = 0, got = 0; got < sizeof(head); i++) {
			c = msg->msg_iov[i].iov_len;
			if (c > sizeof(head) - got)
				c = sizeof(head) - got;
			if (c > 0)
				memcpy(head + got, msg->msg_iov[i].iov_base, c);
			got += c;
		}
	}
	err = divert_wire_check_write(pkt, len, msg->msg_name,
				      msg->msg_name ? msg->msg_namelen : 0,
				      (size_t)o->sndbuf);
	if (err != 0)
		return set_errno(err);

	memset(&hdr, 0, sizeof(hdr));
	hdr.type = DW_PACKET;
	hdr.version = DIVERT_WIRE_VERSION;
	hdr.arg = 1;
	memcpy(&hdr.addr, msg->msg_name, sizeof(hdr.addr));
	iov[0].iov_base = &hdr;
	iov[0].iov_len = sizeof(hdr);
	if (msg->msg_iovlen > 0)
		memcpy(&iov[1], msg->msg_iov, msg->msg_iovlen * sizeof(*iov));
	memset(&m, 0, sizeof(m));
	m.msg_iov = iov;
	m.msg_iovlen = 1 + msg->msg_iovlen;
	key = divert_wire_packet_key(pkt, len);
	incoming = hdr.addr.sin_addr.s_addr != INADDR_ANY;
	if (!reads_take(fd, key, incoming)) {
		/* a new packet: FreeBSD's sendto() reports its fate */
		struct sockaddr_un sun;
		struct divsock_opts now = *o;
		socklen_t sunlen;
		int saved = errno;

		if (!reg_path(fd, &sun, &sunlen))
			return set_errno(EBADF);
		/* divertd restarting: wait for the next one, a little */
		if (now.away && !away_wait(fd, &now, write_nonblocking(fd, flags)
					   ? 0 : away_wait_ms())) {
			away_refused(fd);
			return set_errno(ENOBUFS);
		}
		hdr.type = DW_WRITE;
		hdr.conn = now.conn;
		err = write_channel(&sun, sunlen, &m);
		if (err == ENOBUFS)	/* divertd went before we saw it */
			away_refused(fd);
		if (err != 0)
			return set_errno(err);
		errno = saved;
		return (ssize_t)len;
	}
	if ((rg = reg_ring(fd)) != NULL) {
		bool posted = ring_send(fd, rg, &hdr.addr, msg, len);

		ring_put(rg);
		if (posted)
			return (ssize_t)len;
	}
	/* into the pair, for divertd (the next one, if it is away: never
	 * wait for that, a full buffer is ENOBUFS then, as on FreeBSD) */
	n = REAL(sendmsg)(fd, &m, (flags & MSG_DONTWAIT) | MSG_NOSIGNAL |
			  (o->away ? MSG_DONTWAIT : 0));
	if (n < 0) {
		int saved = errno;

		reads_note(fd, key, incoming);	/* a retry is a write-back too */
		if (o->away && saved == EAGAIN) {
			away_refused(fd);
			saved = ENOBUFS;
		}
		errno = saved;
		return -1;
	}
	return n >= (ssize_t)sizeof(hdr) ? n - (ssize_t)sizeof(hdr) : 0;
}

ssize_t div_sendto(int fd, const struct divsock_opts *o,
		   const void *buf, size_t len, int flags,
		   const struct sockaddr *to, socklen_t tolen)
{
	struct iovec iov = { .iov_base = (void *)(uintptr_t)buf,
			     .iov_len = len };
	struct msghdr msg;

	memset(&msg, 0, sizeof(msg));
	msg.msg_name = (void *)(uintptr_t)to;
	msg.msg_namelen = tolen;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	return div_sendmsg(fd, o, &msg, flags);
}

/*
 * sendmmsg as FreeBSD's libc builds it from sendmsg: one packet per
 * message, each checked and sent as sendmsg does; an error after the first
 * ends the batch and the count so far is returned.
 */
int div_sendmmsg(int fd, const struct divsock_opts *o,
		 struct mmsghdr *vec, unsigned int vlen, int flags)
{
	int saved = errno;
	unsigned int i;
	ssize_t n;

	if (vlen > 0 && vec == NULL)
		return set_errno(EFAULT);
	if (vlen > INT_MAX)
		vlen = INT_MAX;
	for (i = 0; i < vlen; i++) {
		n = div_sendmsg(fd, o, &vec[i].msg_hdr, flags);
		if (n < 0 && i == 0)
			return -1;
		if (n < 0)
			break;
		vec[i].msg_len = (unsigned int)n;
	}
	errno = saved;
	return (int)i;
}
