/*
 * shim_relay.c: the control side of a divert socket, and how the shim
 * talks to divertd.  Every exchange is on a SOCK_SEQPACKET connection to
 * divertd's UNIX socket ($DIVERT_SOCKET, or DIVERT_SOCKET_DEFAULT) in
 * fixed-size struct divert_wire_hdr messages (divert_wire.h), every wait
 * bounded by SHIM_TIMEOUT_MS: the DW_WELCOME that names the connection,
 * DW_ATTACH of the socket's pair (and ring) and its DW_REPLY, DW_BIND on a
 * short-lived control connection of its own.
 *
 * On those, the calls that make and set up a divert socket: socket() (the
 * connection, its ring, the socketpair whose one end is the program's fd
 * and whose other goes to divertd), bind(), and get/setsockopt, answered
 * as FreeBSD 14 answers them (SO_RCVBUF and SO_SNDBUF are also told to
 * divertd, with DW_SETOPT).
 *
 * In: the hooks' arguments; divertd's replies, checked for length, version
 * and type before anything is taken from them.  Out: the errno FreeBSD
 * would give, new registry entries, and the exchanges themselves
 * (daemon_connect, daemon_read, daemon_attach, daemon_bind) for the
 * watcher and the write channel, which speak the same protocol.
 */
#include "shim.h"	/* first: it turns _FORTIFY_SOURCE off */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <netinet/in.h>

#include "divert.h"

/* ---- talking to divertd ---------------------------------------------- */

int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Fill sun with $DIVERT_SOCKET or the default; -errno. */
static int daemon_path(struct sockaddr_un *sun, socklen_t *len)
{
	const char *path = secure_getenv("DIVERT_SOCKET");
	size_t n;

	if (path == NULL || *path == '\0')
		path = DIVERT_SOCKET_DEFAULT;
	n = strlen(path);
	if (n >= sizeof(sun->sun_path)) {
		dbg("DIVERT_SOCKET too long: %s", path);
		return -ENAMETOOLONG;
	}
	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	memcpy(sun->sun_path, path, n);
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	return 0;
}

/*
 * A new connection to the daemon; fd or -errno (of connect, unmapped).
 * SO_SNDTIMEO bounds the wait when the daemon's backlog is full; it is
 * reset before the fd is used.
 */
int daemon_connect(const struct sockaddr_un *sun, socklen_t len,
		   int cloexec)
{
	struct timeval tv = { SHIM_TIMEOUT_MS / 1000, 0 }, zero = { 0, 0 };
	int fd, err;

	fd = REAL(socket)(AF_UNIX, SOCK_SEQPACKET | cloexec, 0);
	if (fd < 0)
		return -errno;
	(void)REAL(setsockopt)(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (REAL(connect)(fd, (const struct sockaddr *)sun, len) < 0) {
		err = errno == EINPROGRESS ? EAGAIN : errno;
		dbg("connect %s: %s", sun->sun_path, strerror(err));
		REAL(close)(fd);
		return -err;
	}
	(void)REAL(setsockopt)(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof(zero));
	return fd;
}

/*
 * Read one control message of type want (a DW_WELCOME before it is
 * skipped unless want is DW_WELCOME) within SHIM_TIMEOUT_MS; 0 or -errno:
 * ETIMEDOUT, ECONNRESET (the daemon closed), EPROTO (not the protocol).
 */
int daemon_read(int fd, uint16_t want, struct divert_wire_hdr *hdr)
{
	int64_t deadline = now_ms() + SHIM_TIMEOUT_MS, left;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	ssize_t n;
	int r;

	for (;;) {
		left = deadline - now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		r = poll(&pfd, 1, (int)left);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r <= 0)
			continue;
		n = REAL(recv)(fd, hdr, sizeof(*hdr), MSG_DONTWAIT | MSG_TRUNC);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET;
		if ((size_t)n != sizeof(*hdr) ||
		    hdr->version != DIVERT_WIRE_VERSION) {
			dbg("bad message from divertd: length %zd version %u",
			    n, (size_t)n >= 4 ? hdr->version : 0);
			return -EPROTO;
		}
		if (hdr->type == want)
			return 0;
		if (hdr->type != DW_WELCOME) {
			dbg("unexpected message type %u from divertd",
			    hdr->type);
			return -EPROTO;
		}
	}
}

/* DW_ATTACH on conn: the pair's end and (ringfd >= 0) the ring's memfd;
 * 0 or -errno (the daemon's answer, or the connection's). */
int daemon_attach(int conn, int pair, int ringfd, uint32_t arg,
		  uint32_t refused)
{
	struct divert_wire_hdr req = {
		.type = DW_ATTACH, .version = DIVERT_WIRE_VERSION,
		.arg = arg, .val = refused,
	}, rep;
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(2 * sizeof(int))];
	} ctl;
	int fds[2] = { pair, ringfd }, n = ringfd >= 0 ? 2 : 1, err;
	struct iovec iov = { .iov_base = &req, .iov_len = sizeof(req) };
	struct msghdr m = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.buf,
		.msg_controllen = CMSG_SPACE((size_t)n * sizeof(int)),
	};
	struct cmsghdr *cm;

	memset(&ctl, 0, sizeof(ctl));
	cm = CMSG_FIRSTHDR(&m);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN((size_t)n * sizeof(int));
	memcpy(CMSG_DATA(cm), fds, (size_t)n * sizeof(int));
	if (REAL(sendmsg)(conn, &m, MSG_NOSIGNAL) != (ssize_t)sizeof(req))
		return -errno;
	err = daemon_read(conn, DW_REPLY, &rep);
	if (err < 0)
		return err;
	return rep.arg == 0 ? 0 : -(int)(rep.arg < 4096 ? rep.arg : EPROTO);
}

/* DW_BIND on a control connection of its own: 0 or the errno for bind()
 * (EADDRNOTAVAIL: no daemon; ETIMEDOUT: no answer). */
int daemon_bind(const struct sockaddr_un *sun, socklen_t sunlen,
		uint64_t conn, uint16_t port)
{
	struct divert_wire_hdr req, rep;
	int cfd, err;

	cfd = daemon_connect(sun, sunlen, SOCK_CLOEXEC);
	if (cfd < 0)
		return EADDRNOTAVAIL;
	memset(&req, 0, sizeof(req));
	req.type = DW_BIND;
	req.version = DIVERT_WIRE_VERSION;
	req.conn = conn;
	req.val = port;
	if (REAL(send)(cfd, &req, sizeof(req), MSG_NOSIGNAL) != sizeof(req)) {
		dbg("bind: sending DW_BIND: %s", strerror(errno));
		REAL(close)(cfd);
		return EADDRNOTAVAIL;
	}
	err = daemon_read(cfd, DW_REPLY, &rep);
	REAL(close)(cfd);
	if (err < 0) {
		dbg("bind: no reply from divertd: %s", strerror(-err));
		return err == -ETIMEDOUT ? ETIMEDOUT : EADDRNOTAVAIL;
	}
	return rep.arg == 0 ? 0 : rep.arg < 4096 ? (int)rep.arg : EPROTO;
}

/* ---- socket ------------------------------------------------------------ */

/*
 * PF_DIVERT, or the old form with IPPROTO_DIVERT: FreeBSD's 258, or the
 * 254 that divert programs built for Linux define for themselves (glibc
 * has no IPPROTO_DIVERT; Debian's libdaq2 daq_ipfw.so is built so).
 */
bool is_divert(int domain, int type, int protocol)
{
	return domain == PF_DIVERT ||
	       (domain == AF_INET &&
		(type & SHIM_SOCK_TYPE_MASK) == SOCK_RAW &&
		(protocol == IPPROTO_DIVERT || protocol == DIVERT_IPPROTO_LINUX));
}

/* errno for socket() when the daemon cannot be reached */
static int socket_errno(int err)
{
	switch (err) {
	case ENOENT:
	case ENOTDIR:
	case ECONNREFUSED:
	case ENAMETOOLONG:
		return EPROTONOSUPPORT;	/* as FreeBSD without ipdivert */
	case EACCES:
	case EPERM:
		return EPERM;
	case EAGAIN:
		return ETIMEDOUT;	/* the daemon's backlog stayed full */
	default:
		return err;
	}
}

int div_socket(int type)
{
	struct divert_wire_hdr hdr;
	struct divsock *ds;
	int saved = errno, fd, err, fl, sv[2];

	if (type & ~(SHIM_SOCK_TYPE_MASK | SOCK_CLOEXEC | SOCK_NONBLOCK))
		return set_errno(EINVAL);
	if ((type & SHIM_SOCK_TYPE_MASK) != SOCK_RAW)
		return set_errno(EPROTOTYPE);
	/* who may divert is divertd's to say (root, or its group): the
	 * socket file's mode and the welcome tell */

	shim_busy = 1;
	ds = calloc(1, sizeof(*ds));
	shim_busy = 0;
	if (ds == NULL)
		return set_errno(ENOBUFS);
	ds->refs = ds->slots = 1;
	ds->pair = ds->conn = ds->ringfd = -1;
	ds->o.rcvbuf = ds->o.sndbuf = DIVERT_SOCKBUF_DEFAULT;
	err = daemon_path(&ds->path, &ds->pathlen);
	if (err < 0) {
		free(ds);
		return set_errno(socket_errno(-err));
	}

	ds->conn = daemon_connect(&ds->path, ds->pathlen, SOCK_CLOEXEC);
	if (ds->conn < 0) {
		err = ds->conn;
		free(ds);
		return set_errno(socket_errno(-err));
	}
	err = daemon_read(ds->conn, DW_WELCOME, &hdr);
	if (err == 0 && hdr.arg != 0)
		err = -(int)hdr.arg;	/* refused: EPERM, ENOBUFS */
	if (err < 0) {
		dbg("no welcome from divertd: %s", strerror(-err));
		/* closed at once: over its client limit; garbled: not ours */
		err = err == -ECONNRESET ? -ENOBUFS :
		      err == -EPROTO ? -EPROTONOSUPPORT : err;
		goto fail;
	}
	ds->o.conn = hdr.conn;
	err = ring_attach(ds->conn, &ds->ring, &ds->ringfd);
	if (err < 0) {
		dbg("ring: %s", strerror(-err));
		err = err == -ETIMEDOUT ? -ETIMEDOUT : -ENOBUFS;
		goto fail;
	}
	/* the program's fd, and the end divertd gets (and we keep) */
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | (type & SOCK_CLOEXEC), 0,
		       sv) < 0) {
		err = -errno;
		goto fail;
	}
	ds->pair = sv[1];
	fd = sv[0];
	if (REAL(fcntl)(ds->pair, F_SETFD, FD_CLOEXEC) < 0 ||
	    (err = daemon_attach(ds->conn, ds->pair, -1, 0, 0)) < 0) {
		dbg("attach: %s", strerror(-err));
		REAL(close)(fd);
		err = err == -ETIMEDOUT ? -ETIMEDOUT : -ENOBUFS;
		goto fail;
	}
	if (type & SOCK_NONBLOCK) {
		fl = REAL(fcntl)(fd, F_GETFL);
		if (fl < 0 || REAL(fcntl)(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
			err = -errno;
			REAL(close)(fd);
			goto fail;
		}
	}
	if (reg_insert(fd, ds) < 0) {	/* ds went with it */
		REAL(close)(fd);
		return set_errno(ENOBUFS);
	}
	socks_add(ds);
	watch_start();
	dbg("fd %d: divert socket", fd);
	errno = saved;
	return fd;
fail:
	if (ds->pair >= 0)
		REAL(close)(ds->pair);
	if (ds->ringfd >= 0)
		REAL(close)(ds->ringfd);
	REAL(close)(ds->conn);
	ring_put(ds->ring);
	free(ds);
	return set_errno(-err);
}

/* ---- bind -------------------------------------------------------------- */

int div_bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_in sin;
	struct sockaddr_un sun;
	struct divsock_opts o;
	socklen_t sunlen;
	int saved = errno, err;
	uint16_t port;

	if (addr == NULL || len < sizeof(sa_family_t))
		return set_errno(EINVAL);
	if (addr->sa_family != AF_INET)
		return set_errno(EAFNOSUPPORT);
	if (len != sizeof(struct sockaddr_in))
		return set_errno(EINVAL);
	memcpy(&sin, addr, sizeof(sin));
	port = ntohs(sin.sin_port);
	if (!reg_lookup(fd, &o) || !reg_path(fd, &sun, &sunlen))
		return set_errno(EBADF);	/* closed meanwhile */
	/* divertd restarting: the watcher attaches the socket again soon */
	if (o.away && !away_wait(fd, &o, SHIM_TIMEOUT_MS))
		return set_errno(EADDRNOTAVAIL);
	err = daemon_bind(&sun, sunlen, o.conn, port);
	if (err != 0) {
		dbg("fd %d: bind to port %u: %s", fd, port, strerror(err));
		return set_errno(err);
	}
	reg_set_port(fd, port);
	dbg("fd %d: bound to port %u", fd, port);
	errno = saved;
	return 0;
}

/* ---- socket options ---------------------------------------------------- */

static int put_int_opt(void *optval, socklen_t *optlen, int v)
{
	socklen_t c;

	if (optval == NULL || optlen == NULL)
		return set_errno(EFAULT);
	/* as both kernels do: a short buffer gets the first bytes */
	c = *optlen < sizeof(int) ? *optlen : sizeof(int);
	memcpy(optval, &v, c);
	*optlen = c;
	return 0;
}

int div_getsockopt(int fd, const struct divsock_opts *o, int level,
		   int name, void *optval, socklen_t *optlen)
{
	if (level != SOL_SOCKET)
		return set_errno(ENOPROTOOPT);	/* no pr_ctloutput */
	switch (name) {
	case SO_RCVBUF:
		return put_int_opt(optval, optlen, o->rcvbuf);
	case SO_SNDBUF:
		return put_int_opt(optval, optlen, o->sndbuf);
	case SO_TYPE:
		return put_int_opt(optval, optlen, SOCK_RAW);
	case SO_DOMAIN:
		return put_int_opt(optval, optlen, PF_DIVERT);
	case SO_PROTOCOL:
		return put_int_opt(optval, optlen, 0);
	default:
		return CALL_REAL(getsockopt, fd, level, name, optval, optlen);
	}
}

int div_setsockopt(int fd, int level,
		   int name, const void *optval, socklen_t optlen)
{
	struct divert_wire_hdr hdr;
	int saved = errno, v;

	if (level != SOL_SOCKET)
		return set_errno(ENOPROTOOPT);
	if (name != SO_RCVBUF && name != SO_SNDBUF)
		return CALL_REAL(setsockopt, fd, level, name, optval, optlen);
	if (optval == NULL)
		return set_errno(EFAULT);
	if (optlen < sizeof(int))
		return set_errno(EINVAL);
	memcpy(&v, optval, sizeof(v));
	if (v <= 0)
		return set_errno(EINVAL);
	if (v > DIVERT_WIRE_SOCKBUF_MAX)
		return set_errno(ENOBUFS);
	reg_set_buf(fd, name, v);

	/* tell the daemon, which queues and checks by these; it is advice:
	 * a full socket or a daemon gone does not fail the call */
	memset(&hdr, 0, sizeof(hdr));
	hdr.type = DW_SETOPT;
	hdr.version = DIVERT_WIRE_VERSION;
	hdr.arg = (uint32_t)name;
	hdr.val = (uint32_t)v;
	if (REAL(send)(fd, &hdr, sizeof(hdr), MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		dbg("fd %d: DW_SETOPT not sent: %s", fd, strerror(errno));
	errno = saved;
	return 0;
}
