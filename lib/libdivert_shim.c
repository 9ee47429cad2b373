/*
 * libdivert_shim.c: FreeBSD divert(4) sockets for unmodified programs, as
 * clients of divertd.  LD_PRELOAD it, or link it (-ldivert_shim) ahead of
 * libc: the same interposition works either way.
 *
 * Theory of operation.  socket(PF_DIVERT, SOCK_RAW, 0) (or the old form
 * socket(PF_INET, SOCK_RAW, IPPROTO_DIVERT)) does not reach the kernel: the
 * shim opens a SOCK_SEQPACKET connection to divertd's UNIX socket, reads the
 * daemon's DW_WELCOME (the connection id), makes a SOCK_SEQPACKET
 * socketpair, hands one end to divertd on the connection (DW_ATTACH) and
 * the other to the application as its divert fd.  Because the fd is a real
 * kernel socket, poll/select/epoll, O_NONBLOCK, SO_RCVTIMEO, shutdown and
 * fork need no help; the shim hooks only the calls whose meaning differs:
 *
 *   bind        a short-lived control connection carries DW_BIND {conn,
 *               port}; the daemon's DW_REPLY holds 0 or the errno.
 *   recv, recvfrom, recvmsg, read, readv (and the fortified __recv_chk,
 *   __recvfrom_chk, __read_chk)
 *               the next packet of the socket's shared-memory ring, copied
 *               into the caller's buffer (an empty ring is waited for at
 *               the socket); without a ring, one recvmsg whose first iovec
 *               is the wire header.  recvmmsg: one such read per message,
 *               as FreeBSD's libc does it.
 *   sendto, sendmsg, sendmmsg
 *               FreeBSD's checks (divert_wire_check_write), then the
 *               packet into the ring (a write-back), or one sendmsg of the
 *               header and the caller's iovecs.
 *   send, write, writev
 *               EDESTADDRREQ: a divert socket is never connected.
 *   get/setsockopt, getsockname, getpeername, connect, ioctl(FIONREAD)
 *               answered here as FreeBSD 14 answers them.
 *   close, close_range, closefrom, dup, dup2, dup3, fcntl(F_DUPFD*)
 *               keep the per-fd registry right.
 *
 * Every other fd passes straight through: while no divert fd is open (an
 * atomic count) a hook costs one load before it calls libc.  Which fds are
 * divert sockets is the registry's to say (shim_registry.c); the ring, with
 * which a read or a write-back makes no system call while packets flow, is
 * shim_ring.c's.
 *
 * The real functions come from dlsym(RTLD_NEXT) on first use (so a hook
 * called from another library's constructor, before ours, still works),
 * with libc itself as a fallback.  A thread-local flag marks the shim's own
 * work: a hook entered while it is set (from dlsym, malloc, ...) goes
 * straight to libc.  errno is preserved across the shim's own work;
 * nothing is printed unless $DIVERT_DEBUG is set.
 *
 * This file is the libc side of the shim: the exported hooks, each of
 * which only decides whether its call is about a divert socket and hands
 * it on (to the divert socket's code, or to libc); the real functions;
 * setup.  Its SHIM_EXPORT hooks are the library's only exported symbols:
 * everything else is hidden.  The rest, one responsibility a file (shim.h
 * declares what crosses files, grouped by file):
 *
 *   shim_registry.c  fd -> struct divsock: lookups, dup, close
 *   shim_relay.c     the control protocol with divertd: socket, bind,
 *                    socket options
 *   shim_ring.c      the shared-memory ring, the program's side
 *   shim_packet.c    receiving and sending packets
 *   shim_wch.c       the write channel: new packets and their errno
 *   shim_watch.c     the watcher thread: divertd going away and coming back
 *   shim_debug.c     $DIVERT_DEBUG's output
 */
#include "shim.h"	/* first: it turns _FORTIFY_SOURCE off */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* the library is built with hidden visibility: these alone are seen */
#define SHIM_EXPORT __attribute__((visibility("default")))

#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* ---- the real functions ---------------------------------------------- */

/*
 * The fortified entry points a program built with _FORTIFY_SOURCE calls
 * instead of read, recv and recvfrom when the buffer's size is known at
 * compile time but the length is not provably within it.  glibc declares
 * them only for fortified builds; these are its prototypes (2.36), which
 * readv, recvmsg and the rest do not have.
 */
ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen);
ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags);
ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen,
		       int flags, struct sockaddr *from, socklen_t *fromlen);
void __chk_fail(void) __attribute__((noreturn));

static const char *const real_name[R_MAX] = {
#define X(fn) #fn,
	SHIM_HOOKS(X)
#undef X
};

static _Atomic(void *) real_fn[R_MAX];

/* Set while the shim does its own work on this thread. */
__thread int shim_busy __attribute__((tls_model("initial-exec")));

void *real_get(enum real_id id)
{
	void *p = atomic_load_explicit(&real_fn[id], memory_order_acquire);
	void *libc;
	int saved;

	if (p != NULL)
		return p;
	if (shim_busy)		/* dlsym itself got here: do not recurse */
		return NULL;
	saved = errno;
	shim_busy = 1;
	p = dlsym(RTLD_NEXT, real_name[id]);
	if (p == NULL) {
		/* the shim was loaded after libc (dlopen): ask libc */
		libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
		if (libc != NULL) {
			p = dlsym(libc, real_name[id]);
			dlclose(libc);
		}
	}
	shim_busy = 0;
	errno = saved;
	if (p != NULL)
		atomic_store_explicit(&real_fn[id], p, memory_order_release);
	return p;
}

/* ---- the hooks: thin, forwarding, exported ----------------------------- */

SHIM_EXPORT int socket(int domain, int type, int protocol)
{
	if (shim_busy || !is_divert(domain, type, protocol))
		return CALL_REAL(socket, domain, type, protocol);
	if (REAL(socket) == NULL)
		return set_errno(ENOSYS);
	return div_socket(type);
}

SHIM_EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(bind, fd, addr, len);
	return div_bind(fd, addr, len);
}

SHIM_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(connect, fd, addr, len);
	return set_errno(EOPNOTSUPP);
}

SHIM_EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(getsockname, fd, addr, len);
	return set_errno(EOPNOTSUPP);
}

SHIM_EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(getpeername, fd, addr, len);
	return set_errno(ENOTCONN);
}

SHIM_EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(recvmsg, fd, msg, flags);
	if (msg == NULL)
		return set_errno(EFAULT);
	return div_recvmsg(fd, msg, flags);
}

SHIM_EXPORT int recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen,
			 int flags, struct timespec *timeout)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(recvmmsg, fd, vec, vlen, flags, timeout);
	return div_recvmmsg(fd, vec, vlen, flags, timeout);
}

SHIM_EXPORT ssize_t recvfrom(int fd, void *buf, size_t len, int flags,
			     struct sockaddr *from, socklen_t *fromlen)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(recvfrom, fd, buf, len, flags, from, fromlen);
	return div_recvfrom(fd, buf, len, flags, from, fromlen);
}

SHIM_EXPORT ssize_t recv(int fd, void *buf, size_t len, int flags)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(recv, fd, buf, len, flags);
	return div_recvfrom(fd, buf, len, flags, NULL, NULL);
}

SHIM_EXPORT ssize_t read(int fd, void *buf, size_t len)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(read, fd, buf, len);
	return div_recvfrom(fd, buf, len, 0, NULL, NULL);
}

SHIM_EXPORT ssize_t readv(int fd, const struct iovec *iov, int iovcnt)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(readv, fd, iov, iovcnt);
	return div_readv(fd, iov, iovcnt);
}

/* The fortified forms check as glibc does, then go where the plain ones go. */
SHIM_EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t len,
				   size_t buflen, int flags,
				   struct sockaddr *from, socklen_t *fromlen)
{
	if (len > buflen)
		__chk_fail();
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(__recvfrom_chk, fd, buf, len, buflen, flags,
				 from, fromlen);
	return div_recvfrom(fd, buf, len, flags, from, fromlen);
}

SHIM_EXPORT ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen,
			       int flags)
{
	if (len > buflen)
		__chk_fail();
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(__recv_chk, fd, buf, len, buflen, flags);
	return div_recvfrom(fd, buf, len, flags, NULL, NULL);
}

SHIM_EXPORT ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen)
{
	if (len > buflen)
		__chk_fail();
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(__read_chk, fd, buf, len, buflen);
	return div_recvfrom(fd, buf, len, 0, NULL, NULL);
}

SHIM_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	struct divsock_opts o;

	if (!reg_lookup(fd, &o))
		return CALL_REAL(sendmsg, fd, msg, flags);
	if (msg == NULL)
		return set_errno(EFAULT);
	return div_sendmsg(fd, &o, msg, flags);
}

SHIM_EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen,
			 int flags)
{
	struct divsock_opts o;

	if (!reg_lookup(fd, &o))
		return CALL_REAL(sendmmsg, fd, vec, vlen, flags);
	return div_sendmmsg(fd, &o, vec, vlen, flags);
}

SHIM_EXPORT ssize_t sendto(int fd, const void *buf, size_t len, int flags,
			   const struct sockaddr *to, socklen_t tolen)
{
	struct divsock_opts o;

	if (!reg_lookup(fd, &o))
		return CALL_REAL(sendto, fd, buf, len, flags, to, tolen);
	return div_sendto(fd, &o, buf, len, flags, to, tolen);
}

SHIM_EXPORT ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(send, fd, buf, len, flags);
	return set_errno(EDESTADDRREQ);
}

SHIM_EXPORT ssize_t write(int fd, const void *buf, size_t len)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(write, fd, buf, len);
	return set_errno(EDESTADDRREQ);
}

SHIM_EXPORT ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(writev, fd, iov, iovcnt);
	return set_errno(EDESTADDRREQ);
}

SHIM_EXPORT int getsockopt(int fd, int level, int name, void *optval,
			   socklen_t *optlen)
{
	struct divsock_opts o;

	if (!reg_lookup(fd, &o))
		return CALL_REAL(getsockopt, fd, level, name, optval, optlen);
	return div_getsockopt(fd, &o, level, name, optval, optlen);
}

SHIM_EXPORT int setsockopt(int fd, int level, int name, const void *optval,
			   socklen_t optlen)
{
	if (!reg_lookup(fd, NULL))
		return CALL_REAL(setsockopt, fd, level, name, optval, optlen);
	return div_setsockopt(fd, level, name, optval, optlen);
}

SHIM_EXPORT int ioctl(int fd, unsigned long req, ...)
{
	void *arg;
	va_list ap;

	va_start(ap, req);
	arg = va_arg(ap, void *);	/* as libc reads it: one word */
	va_end(ap);
	if (req != FIONREAD || !reg_lookup(fd, NULL))
		return CALL_REAL(ioctl, fd, req, arg);
	return div_fionread(fd, arg);
}

SHIM_EXPORT int close(int fd)
{
	if (reg_active())
		reg_remove(fd);
	return CALL_REAL(close, fd);
}

SHIM_EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
	/* only a call that will close fds: the kernel refuses the rest */
	if (first <= last && !(flags & (int)CLOSE_RANGE_CLOEXEC) &&
	    !(flags & ~(int)(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC)))
		reg_remove_range(first, last);
	return CALL_REAL(close_range, first, last, flags);
}

SHIM_EXPORT void closefrom(int lowfd)
{
	__typeof__(&closefrom) real = REAL(closefrom);

	reg_remove_range(lowfd < 0 ? 0 : (unsigned)lowfd, UINT_MAX);
	if (real != NULL)
		real(lowfd);
}

SHIM_EXPORT int dup(int fd)
{
	struct divsock *ds = reg_ref(fd);
	int nfd;

	nfd = CALL_REAL(dup, fd);
	if (ds == NULL)
		return nfd;
	if (nfd < 0) {
		reg_unref(ds);
		return -1;
	}
	return dup_register(nfd, ds);
}

SHIM_EXPORT int dup2(int oldfd, int newfd)
{
	return div_dup_onto(oldfd, newfd, 0, false);
}

SHIM_EXPORT int dup3(int oldfd, int newfd, int flags)
{
	return div_dup_onto(oldfd, newfd, flags, true);
}

/*
 * fcntl's third argument is an int, a pointer or absent depending on cmd;
 * each is read as what it is (unknown commands as a pointer-sized word,
 * which is how libc itself passes them on).
 */
#define FCNTL_HOOK(fn)							\
	int cmd_int, r;							\
	void *cmd_ptr;							\
	struct divsock *ds;						\
	va_list ap;							\
									\
	switch (cmd) {							\
	case F_GETFD: case F_GETFL: case F_GETOWN: case F_GETSIG:	\
	case F_GETLEASE: case F_GETPIPE_SZ: case F_GET_SEALS:		\
		return CALL_REAL(fn, fd, cmd);				\
	case F_DUPFD: case F_DUPFD_CLOEXEC:				\
	case F_SETFD: case F_SETFL: case F_SETOWN: case F_SETSIG:	\
	case F_SETLEASE: case F_NOTIFY: case F_SETPIPE_SZ:		\
	case F_ADD_SEALS:						\
		va_start(ap, cmd);					\
		cmd_int = va_arg(ap, int);				\
		va_end(ap);						\
		if (cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC)		\
			return CALL_REAL(fn, fd, cmd, cmd_int);		\
		ds = reg_ref(fd);					\
		r = CALL_REAL(fn, fd, cmd, cmd_int);			\
		if (ds == NULL)						\
			return r;					\
		if (r < 0) {						\
			reg_unref(ds);					\
			return -1;					\
		}							\
		return dup_register(r, ds);				\
	default:							\
		va_start(ap, cmd);					\
		cmd_ptr = va_arg(ap, void *);				\
		va_end(ap);						\
		return CALL_REAL(fn, fd, cmd, cmd_ptr);			\
	}

SHIM_EXPORT int fcntl(int fd, int cmd, ...)
{
	FCNTL_HOOK(fcntl)
}

SHIM_EXPORT int fcntl64(int fd, int cmd, ...)
{
	FCNTL_HOOK(fcntl64)
}

/* ---- setup --------------------------------------------------------------- */

__attribute__((constructor))
static void shim_init(void)
{
	int saved = errno;
	int i;

	for (i = 0; i < R_MAX; i++)
		(void)real_get((enum real_id)i);
	pthread_atfork(reg_atfork_prepare, reg_atfork_release,
		       reg_atfork_child);
	pthread_atfork(wch_atfork_prepare, wch_atfork_parent, wch_atfork_child);
	(void)debug_enabled();
	errno = saved;
}
