/*
 * libdivert_shim.c: FreeBSD divert(4) sockets for unmodified programs, as
 * clients of divertd.  LD_PRELOAD it, or link it (-ldivert_shim) ahead of
 * libc: the same interposition works either way.
 *
 * Theory of operation.  socket(PF_DIVERT, SOCK_RAW, 0) (or the old form
 * socket(PF_INET, SOCK_RAW, IPPROTO_DIVERT)) does not reach the kernel: the
 * shim opens a SOCK_SEQPACKET connection to divertd's UNIX socket, reads the
 * daemon's DW_WELCOME (the connection id) and hands that connection to the
 * application as its divert fd.  Because the fd is a real kernel socket,
 * poll/select/epoll, O_NONBLOCK, SO_RCVTIMEO, shutdown and fork need no
 * help; the shim hooks only the calls whose meaning differs:
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
 * atomic count) a hook costs one load before it calls libc.  The registry
 * maps an fd to a refcounted struct divsock shared by dup'ed fds; it is
 * locked, allocates only in socket/dup paths, and an entry leaves it before
 * the real close so that a recycled fd number is never mistaken for ours.
 *
 * The ring (divert_wire.h) is asked for at socket(); $DIVERT_RING=0 says
 * not to.  While packets flow a read or a write-back makes no system
 * call; the socket still wakes a reader, so poll and friends work as on a
 * socket that carries the packets itself.
 *
 * The real functions come from dlsym(RTLD_NEXT) on first use (so a hook
 * called from another library's constructor, before ours, still works),
 * with libc itself as a fallback.  A thread-local flag marks the shim's own
 * work: a hook entered while it is set (from dlsym, malloc, ...) goes
 * straight to libc.  errno is preserved across the shim's own work;
 * nothing is printed unless $DIVERT_DEBUG is set.
 */
#undef _FORTIFY_SOURCE		/* we define read, recv, recvfrom themselves */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <linux/sockios.h>

#include "divert.h"
#include "divert_wire.h"

#define SHIM_EXPORT __attribute__((visibility("default")))

#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define SHIM_SOCK_TYPE_MASK 0xf		/* the kernel's SOCK_TYPE_MASK */
#define SHIM_TIMEOUT_MS 5000		/* connect, welcome, bind reply */
#define SHIM_RETRY_MS 50		/* divertd gone: tries to reach it */
#define SHIM_AWAY_WAIT_MS 1000		/* divertd gone: a new packet waits, */
#define SHIM_AWAY_WAIT_MAX 60000	/* ... or DIVERT_WAIT ms, up to this */
#define SHIM_IOV_MAX 64			/* caller iovecs per packet */
#define SHIM_READS 1024			/* reads remembered per socket */

/* ---- the real functions ---------------------------------------------- */

#define SHIM_HOOKS(X) \
	X(socket) X(bind) X(connect) X(getsockname) X(getpeername) \
	X(close) X(close_range) X(closefrom) X(dup) X(dup2) X(dup3) \
	X(fcntl) X(fcntl64) X(ioctl) X(getsockopt) X(setsockopt) \
	X(read) X(readv) X(recv) X(recvfrom) X(recvmsg) X(recvmmsg) \
	X(__read_chk) X(__recv_chk) X(__recvfrom_chk) \
	X(write) X(writev) X(send) X(sendto) X(sendmsg) X(sendmmsg)

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

enum real_id {
#define X(fn) R_##fn,
	SHIM_HOOKS(X)
#undef X
	R_MAX
};

static const char *const real_name[R_MAX] = {
#define X(fn) #fn,
	SHIM_HOOKS(X)
#undef X
};

static _Atomic(void *) real_fn[R_MAX];

/* Set while the shim does its own work on this thread. */
static __thread int shim_busy __attribute__((tls_model("initial-exec")));

static void *real_get(enum real_id id)
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

#define REAL(fn) ((__typeof__(&fn))real_get(R_##fn))

/* Call the real fn; -1/ENOSYS if libc has none (never in practice). */
#define CALL_REAL(fn, ...) ({						\
	__typeof__(&fn) real_ = REAL(fn);				\
	real_ != NULL ? real_(__VA_ARGS__) : (errno = ENOSYS, -1);	\
})

static int set_errno(int err)
{
	errno = err;
	return -1;
}

/* ---- debug output ---------------------------------------------------- */

static atomic_int debug_on = -1;

static bool debug_enabled(void)
{
	int on = atomic_load_explicit(&debug_on, memory_order_relaxed);
	const char *v;

	if (on < 0) {
		/* not for a set-uid program: its user's stderr */
		v = secure_getenv("DIVERT_DEBUG");
		on = v != NULL && *v != '\0' && strcmp(v, "0") != 0;
		atomic_store_explicit(&debug_on, on, memory_order_relaxed);
	}
	return on;
}

/* How long a new packet written while divertd is away waits for the
 * next one: DIVERT_WAIT milliseconds (0 to SHIM_AWAY_WAIT_MAX), else
 * SHIM_AWAY_WAIT_MS; for hosts where divertd takes longer to start. */
static int away_wait_ms(void)
{
	static atomic_int ms = -1;
	int v = atomic_load_explicit(&ms, memory_order_relaxed);
	const char *s;
	char *end;
	long n;

	if (v < 0) {
		s = secure_getenv("DIVERT_WAIT");
		v = SHIM_AWAY_WAIT_MS;
		if (s != NULL && *s != '\0') {
			errno = 0;
			n = strtol(s, &end, 10);
			if (errno == 0 && *end == '\0' && n >= 0 &&
			    n <= SHIM_AWAY_WAIT_MAX)
				v = (int)n;
		}
		atomic_store_explicit(&ms, v, memory_order_relaxed);
	}
	return v;
}

__attribute__((format(printf, 1, 2)))
static void dbg(const char *fmt, ...)
{
	char buf[256];
	int saved = errno;
	int n, m;
	va_list ap;

	if (!debug_enabled())
		return;
	n = snprintf(buf, sizeof(buf), "libdivert_shim: [%d] ", (int)getpid());
	va_start(ap, fmt);
	m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	n = m < 0 ? n : n + m;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (REAL(write) != NULL)
		(void)REAL(write)(STDERR_FILENO, buf, (size_t)n);
	errno = saved;
}

/* ---- the registry ---------------------------------------------------- */

/*
 * A socket's shared-memory ring (divert_wire.h), mapped once and shared by
 * its dup'ed fds and by a child after fork.  A call that uses it holds a
 * reference, so that a close in another thread cannot unmap it under the
 * call.  The locks live in the ring's own header (its shim bytes), shared
 * with a forked child, and are robust: a process killed while holding one
 * does not stop the others.
 */
struct divring {
	atomic_uint refs;
	struct dw_ring_map *map;
	size_t maplen;
	uint8_t *rx, *tx;		/* the rings' bytes */
	uint32_t rx_size, tx_size;
};

struct ring_locks {
	pthread_mutex_t rx, tx;
	atomic_int tx_kick_owed;	/* a write-back divertd must be woken
					 * for, when the reader has read all */
};

_Static_assert(sizeof(struct ring_locks) <= DW_RING_SHIM, "ring locks");

static struct ring_locks *ring_locks(struct divring *rg)
{
	return (struct ring_locks *)(void *)rg->map->shim;
}

static void ring_put(struct divring *rg)
{
	if (rg != NULL && atomic_fetch_sub(&rg->refs, 1) == 1) {
		munmap(rg->map, rg->maplen);
		free(rg);
	}
}

/*
 * What a divert socket is, shared by its dup'ed fds.  The application's
 * fd is one end of a socketpair; divertd holds the other (DW_ATTACH), and
 * so do we (pair), so the fd never ends while the program has it: when
 * divertd goes away, its connection (conn) ends, the watcher thread sees
 * it and attaches the pair, and the ring, to the next divertd.
 */
struct divsock {
	unsigned refs;			/* registry slots pointing here, and
					 * the watcher's while it watches */
	unsigned slots;			/* registry slots alone */
	struct divsock *next;		/* every live one (socks) */
	struct divring *ring;		/* NULL: packets come on the socket */
	int pair;			/* the pair's other end (ours) */
	int conn;			/* the connection to divertd, or -1 */
	int ringfd;			/* the ring's memfd, or -1 */
	bool shut;			/* the program closed it */
	bool watched;			/* in the watcher's epoll (a ref) */
	bool seen;			/* ever: events may name it */
	bool passive;			/* another process attached it again */
	unsigned round;			/* the watcher's last try */
	uint32_t refused;		/* writes refused while away */
	struct divsock_opts {
		uint64_t conn;		/* the daemon's connection id */
		int rcvbuf, sndbuf;	/* SO_RCVBUF, SO_SNDBUF */
		uint16_t port;		/* bound divert port */
		bool bound;
		bool away;		/* divertd is gone: attaching again */
	} o;
	struct sockaddr_un path;	/* the daemon, for bind's control */
	socklen_t pathlen;		/* connection */
	/* packets read and not written back yet, oldest first: a write that
	 * answers one goes on the socket itself (the daemon gives the held
	 * packet its verdict); any other write is a new packet, whose errors
	 * sendto() must return, so it goes through the write channel */
	struct {
		uint32_t key;		/* divert_wire_packet_key; 0: taken */
		bool incoming;
	} reads[SHIM_READS];
	unsigned rhead, rcount;
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reg_back = PTHREAD_COND_INITIALIZER; /* away ended */
static struct divsock **reg_slot;	/* indexed by fd */
static size_t reg_nslot;
static atomic_uint reg_count;		/* divert fds open */
static struct divsock *socks;		/* every live divsock */
static struct divsock *graves;		/* shut, for the watcher to free */

static void watch_forget_locked(struct divsock *ds);
static void watch_start(void);
static atomic_bool watch_on;		/* the watcher runs in this process */

/*
 * The lock, with the thread marked busy while it is held: should free() or
 * realloc() come back into a hook (an allocator closing an fd), the hook
 * goes straight to libc instead of deadlocking on the lock.
 */
static int reg_enter(void)
{
	int busy = shim_busy;

	shim_busy = 1;
	pthread_mutex_lock(&reg_lock);
	return busy;
}

static void reg_leave(int busy)
{
	pthread_mutex_unlock(&reg_lock);
	shim_busy = busy;
}

static void ds_free(struct divsock *ds)
{
	ring_put(ds->ring);
	free(ds);
}

/* Drop a reference; the last frees ds, or leaves that to the watcher if
 * an event of its may still name ds. */
static void ds_put_locked(struct divsock *ds)
{
	if (--ds->refs > 0)
		return;
	if (ds->seen) {
		ds->next = graves;
		graves = ds;
	} else {
		ds_free(ds);
	}
}

/* A registry slot lets go of ds; the last one shuts it: its hidden
 * descriptors close (divertd sees the connection end and frees the port),
 * and it is freed once the watcher, if it watches, lets go too. */
static void reg_unref_locked(struct divsock *ds)
{
	if (ds->slots > 0 && --ds->slots == 0) {
		struct divsock **pp;

		ds->shut = true;
		for (pp = &socks; *pp != NULL; pp = &(*pp)->next)
			if (*pp == ds) {
				*pp = ds->next;
				break;
			}
		watch_forget_locked(ds);
		if (ds->conn >= 0)
			REAL(close)(ds->conn);
		if (ds->pair >= 0)
			REAL(close)(ds->pair);
		if (ds->ringfd >= 0)
			REAL(close)(ds->ringfd);
		ds->conn = ds->pair = ds->ringfd = -1;
		pthread_cond_broadcast(&reg_back);
	}
	ds_put_locked(ds);
}

static void reg_unref(struct divsock *ds)
{
	int busy = reg_enter();

	reg_unref_locked(ds);
	reg_leave(busy);
}

/* True when hooks must look at the registry at all. */
static inline bool reg_active(void)
{
	return atomic_load_explicit(&reg_count, memory_order_relaxed) != 0 &&
	       !shim_busy;
}

/* The live entry of fd, or NULL; the lock is held. */
static struct divsock *reg_get_locked(int fd)
{
	if (fd < 0 || (size_t)fd >= reg_nslot)
		return NULL;
	return reg_slot[fd];
}

/* Copy fd's options out; false when fd is not a divert fd. */
static bool reg_lookup(int fd, struct divsock_opts *o)
{
	struct divsock *ds;
	int busy;

	if (!reg_active())
		return false;
	busy = reg_enter();
	ds = reg_get_locked(fd);
	if (ds != NULL && o != NULL)
		*o = ds->o;
	reg_leave(busy);
	/* a child after fork starts its own watcher at its first call */
	if (ds != NULL &&
	    !atomic_load_explicit(&watch_on, memory_order_relaxed))
		watch_start();
	return ds != NULL;
}

/* A reference to fd's ring, or NULL (none, or not a divert fd). */
static struct divring *reg_ring(int fd)
{
	struct divsock *ds;
	struct divring *rg = NULL;
	int busy;

	if (!reg_active())
		return NULL;
	busy = reg_enter();
	ds = reg_get_locked(fd);
	if (ds != NULL && ds->ring != NULL) {
		rg = ds->ring;
		atomic_fetch_add(&rg->refs, 1);
	}
	reg_leave(busy);
	return rg;
}

/* A new reference to fd's state (for dup), or NULL. */
static struct divsock *reg_ref(int fd)
{
	struct divsock *ds;
	int busy;

	if (!reg_active())
		return NULL;
	busy = reg_enter();
	ds = reg_get_locked(fd);
	if (ds != NULL) {
		ds->refs++;
		ds->slots++;
	}
	reg_leave(busy);
	return ds;
}

/* Take fd out of the registry and return its reference, or NULL. */
static struct divsock *reg_take_locked(int fd)
{
	struct divsock *ds = reg_get_locked(fd);

	if (ds != NULL) {
		reg_slot[fd] = NULL;
		atomic_fetch_sub_explicit(&reg_count, 1, memory_order_relaxed);
	}
	return ds;
}

static struct divsock *reg_take(int fd)
{
	struct divsock *ds;
	int busy;

	if (!reg_active())
		return NULL;
	busy = reg_enter();
	ds = reg_take_locked(fd);
	reg_leave(busy);
	return ds;
}

/* Forget fd (it is about to be closed). */
static void reg_remove(int fd)
{
	struct divsock *ds = reg_take(fd);

	if (ds != NULL) {
		dbg("fd %d closed", fd);
		reg_unref(ds);
	}
}

/* Forget every fd in [lo, hi]. */
static void reg_remove_range(unsigned lo, unsigned hi)
{
	struct divsock *ds;
	size_t fd;
	int busy;

	if (!reg_active())
		return;
	busy = reg_enter();
	for (fd = lo; fd < reg_nslot && fd <= hi; fd++) {
		ds = reg_take_locked((int)fd);
		if (ds != NULL)
			reg_unref_locked(ds);
	}
	reg_leave(busy);
}

/* Register fd with one reference to ds (consumed, also on failure). */
static int reg_insert(int fd, struct divsock *ds)
{
	struct divsock **slot, *old;
	size_t n;
	int saved = errno, busy;

	busy = reg_enter();
	if ((size_t)fd >= reg_nslot) {
		n = reg_nslot ? reg_nslot : 64;
		while (n <= (size_t)fd)
			n *= 2;
		slot = realloc(reg_slot, n * sizeof(*slot));
		if (slot == NULL) {
			reg_unref_locked(ds);
			reg_leave(busy);
			return set_errno(ENOMEM);
		}
		memset(slot + reg_nslot, 0, (n - reg_nslot) * sizeof(*slot));
		reg_slot = slot;
		reg_nslot = n;
	}
	old = reg_take_locked(fd);	/* stale: closed behind our back */
	if (old != NULL)
		reg_unref_locked(old);
	reg_slot[fd] = ds;
	atomic_fetch_add_explicit(&reg_count, 1, memory_order_relaxed);
	reg_leave(busy);
	errno = saved;
	return 0;
}

/* Record fd's bound port. */
static void reg_set_port(int fd, uint16_t port)
{
	struct divsock *ds;
	int busy = reg_enter();

	ds = reg_get_locked(fd);
	if (ds != NULL) {
		ds->o.port = port;
		ds->o.bound = true;
	}
	reg_leave(busy);
}

/* Record fd's SO_RCVBUF or SO_SNDBUF. */
static void reg_set_buf(int fd, int name, int v)
{
	struct divsock *ds;
	int busy = reg_enter();

	ds = reg_get_locked(fd);
	if (ds != NULL && name == SO_RCVBUF)
		ds->o.rcvbuf = v;
	else if (ds != NULL)
		ds->o.sndbuf = v;
	reg_leave(busy);
}

/* The daemon's path for fd's control connections. */
static bool reg_path(int fd, struct sockaddr_un *sun, socklen_t *len)
{
	struct divsock *ds;
	int busy = reg_enter();

	ds = reg_get_locked(fd);
	if (ds != NULL) {
		*sun = ds->path;
		*len = ds->pathlen;
	}
	reg_leave(busy);
	return ds != NULL;
}

static void reg_atfork_prepare(void)
{
	pthread_mutex_lock(&reg_lock);
}

static void reg_atfork_release(void)
{
	pthread_mutex_unlock(&reg_lock);
}

static void watch_atfork_child_locked(void);

static void reg_atfork_child(void)
{
	watch_atfork_child_locked();
	pthread_mutex_unlock(&reg_lock);
}

/* Remember that fd's socket read a packet with this identity. */
static void reads_note(int fd, uint32_t key, bool incoming)
{
	struct divsock *ds;
	int busy;

	if (key == 0 || !reg_active())
		return;
	busy = reg_enter();
	ds = reg_get_locked(fd);
	if (ds != NULL) {
		if (ds->rcount == SHIM_READS) {	/* forget the oldest */
			ds->rhead = (ds->rhead + 1) % SHIM_READS;
			ds->rcount--;
		}
		ds->reads[(ds->rhead + ds->rcount) % SHIM_READS].key = key;
		ds->reads[(ds->rhead + ds->rcount) % SHIM_READS].incoming = incoming;
		ds->rcount++;
	}
	reg_leave(busy);
}

/* True (and forgotten) when a packet like this was read and not yet
 * written back: the write answers it. */
static bool reads_take(int fd, uint32_t key, bool incoming)
{
	struct divsock *ds;
	bool found = false;
	int busy;

	if (key == 0 || !reg_active())
		return false;
	busy = reg_enter();
	ds = reg_get_locked(fd);
	for (unsigned i = 0; ds != NULL && i < ds->rcount; i++) {
		unsigned k = (ds->rhead + i) % SHIM_READS;

		if (ds->reads[k].key == key && ds->reads[k].incoming == incoming) {
			ds->reads[k].key = 0;
			found = true;
			break;
		}
	}
	while (ds != NULL && ds->rcount > 0 && ds->reads[ds->rhead].key == 0) {
		ds->rhead = (ds->rhead + 1) % SHIM_READS;
		ds->rcount--;
	}
	reg_leave(busy);
	return found;
}

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

/* ---- talking to divertd ---------------------------------------------- */

static int64_t now_ms(void)
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
static int daemon_connect(const struct sockaddr_un *sun, socklen_t len,
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
static int daemon_read(int fd, uint16_t want, struct divert_wire_hdr *hdr)
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

/* ---- the ring --------------------------------------------------------- */

/* Locks of the ring: robust, so a dead holder's lock is taken over (what
 * it left half done, ring_recv() puts right). */
static void ring_lock(pthread_mutex_t *m)
{
	if (pthread_mutex_lock(m) == EOWNERDEAD)
		pthread_mutex_consistent(m);
}

static int ring_locks_init(struct divring *rg)
{
	struct ring_locks *lk = ring_locks(rg);
	pthread_mutexattr_t a;
	int r;

	if ((r = pthread_mutexattr_init(&a)) != 0)
		return r;
	r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	if (r == 0)
		r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
	if (r == 0)
		r = pthread_mutex_init(&lk->rx, &a);
	if (r == 0)
		r = pthread_mutex_init(&lk->tx, &a);
	pthread_mutexattr_destroy(&a);
	return r;
}

/* The reply to DW_RING on fd, its memfd in *mfd (or -1); 0 or -errno. */
static int ring_reply(int fd, struct divert_wire_hdr *rep, int *mfd)
{
	int64_t deadline = now_ms() + SHIM_TIMEOUT_MS, left;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct iovec iov = { .iov_base = rep, .iov_len = sizeof(*rep) };
	struct msghdr m;
	struct cmsghdr *cm;
	ssize_t n;

	*mfd = -1;
	for (;;) {
		left = deadline - now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR)
			return -errno;
		memset(&m, 0, sizeof(m));
		m.msg_iov = &iov;
		m.msg_iovlen = 1;
		m.msg_control = ctl.buf;
		m.msg_controllen = sizeof(ctl.buf);
		n = REAL(recvmsg)(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n < 0)
			return -errno;
		break;
	}
	for (cm = CMSG_FIRSTHDR(&m); cm != NULL; cm = CMSG_NXTHDR(&m, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
		    cm->cmsg_len >= CMSG_LEN(sizeof(int)))
			memcpy(mfd, CMSG_DATA(cm), sizeof(int));
	if (n == 0)
		return -ECONNRESET;
	if ((size_t)n != sizeof(*rep) || rep->version != DIVERT_WIRE_VERSION ||
	    rep->type != DW_RING || (rep->arg == 0 && *mfd < 0))
		return -EPROTO;
	return 0;
}

/*
 * Ask divertd for a ring (unless $DIVERT_RING is 0).  0 with *out the
 * ring, or NULL when divertd said no (its packets come on the socket as
 * before); -errno when the socket is unusable.
 */
static int ring_attach(int fd, struct divring **out, int *ringfd)
{
	struct divert_wire_hdr req = {
		.type = DW_RING, .version = DIVERT_WIRE_VERSION,
	}, rep;
	const char *v = secure_getenv("DIVERT_RING");
	size_t len = DW_RING_LEN;
	struct divring *rg;
	struct stat st;
	void *map;
	int mfd, err;

	*out = NULL;
	*ringfd = -1;
	if (v != NULL && strcmp(v, "0") == 0)
		return 0;
	if (REAL(send)(fd, &req, sizeof(req), MSG_NOSIGNAL) != sizeof(req))
		return -errno;
	err = ring_reply(fd, &rep, &mfd);
	if (err == 0 && rep.arg != 0) {
		dbg("fd %d: no ring: %s", fd, strerror((int)rep.arg));
		if (mfd >= 0)
			REAL(close)(mfd);
		return 0;
	}
	if (err < 0) {
		if (mfd >= 0)
			REAL(close)(mfd);
		return err;
	}
	map = MAP_FAILED;
	if (fstat(mfd, &st) == 0 && (size_t)st.st_size == len)
		map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (map == MAP_FAILED) {
		REAL(close)(mfd);
		return -ENOBUFS;
	}
	shim_busy = 1;
	rg = calloc(1, sizeof(*rg));
	shim_busy = 0;
	if (rg == NULL) {
		munmap(map, len);
		REAL(close)(mfd);
		return -ENOBUFS;
	}
	atomic_init(&rg->refs, 1);
	rg->map = map;
	rg->maplen = len;
	rg->rx_size = DW_RING_RX;
	rg->tx_size = DW_RING_TX;
	rg->rx = dw_ring_rx(map);
	rg->tx = dw_ring_tx(map);
	if (rg->map->magic != DW_RING_MAGIC || rg->map->rx_size != DW_RING_RX ||
	    rg->map->tx_size != DW_RING_TX || ring_locks_init(rg) != 0) {
		ring_put(rg);
		REAL(close)(mfd);
		return -EPROTO;
	}
	*out = rg;
	*ringfd = mfd;		/* for the next divertd, should this one go */
	dbg("fd %d: ring of %u + %u bytes", fd, DW_RING_RX, DW_RING_TX);
	return 0;
}

/* Take the DW_KICK that the ring's emptying owes (see divert_wire.h);
 * divertd sends it at the end of its batch, if it has not yet.  Waited
 * for SHIM_TIMEOUT_MS at most: a divertd that never sent it must not
 * hang the program (a kick that comes later only makes the socket
 * readable once with nothing to read). */
static void ring_take_kick(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	int64_t deadline = now_ms() + SHIM_TIMEOUT_MS, left;
	struct divert_wire_hdr kick;

	for (;;) {
		ssize_t n = REAL(recv)(fd, &kick, sizeof(kick), MSG_DONTWAIT);

		if (n >= 0 || (errno != EAGAIN && errno != EINTR))
			return;		/* taken, or divertd is gone */
		left = deadline - now_ms();
		if (left <= 0) {
			dbg("fd %d: divertd owes a wakeup it did not send", fd);
			return;
		}
		(void)poll(&pfd, 1, (int)left);
	}
}

static void ring_send_kick(int fd)
{
	static const struct divert_wire_hdr kick = {
		.type = DW_KICK, .version = DIVERT_WIRE_VERSION,
	};

	(void)REAL(send)(fd, &kick, sizeof(kick), MSG_DONTWAIT | MSG_NOSIGNAL);
}

/* Copy len bytes of src into msg's iovecs; the bytes copied. */
static size_t iov_scatter(const struct msghdr *msg, const uint8_t *src,
			  size_t len)
{
	size_t done = 0;

	for (size_t i = 0; i < msg->msg_iovlen && done < len; i++) {
		size_t c = msg->msg_iov[i].iov_len < len - done
			   ? msg->msg_iov[i].iov_len : len - done;

		if (c > 0)
			memcpy(msg->msg_iov[i].iov_base, src + done, c);
		done += c;
	}
	return done;
}

/*
 * divertd sleeps and a write-back waits: wake it now (the reader has read
 * everything there is), unless someone has.  The kick is put off while
 * packets wait to be read, because a program that reads them writes more
 * back first: one wakeup then answers its whole batch.
 */
static void ring_kick_owed(int fd, struct divring *rg)
{
	struct ring_locks *lk = ring_locks(rg);

	if (atomic_load_explicit(&lk->tx_kick_owed, memory_order_relaxed) &&
	    atomic_exchange(&lk->tx_kick_owed, 0) &&
	    atomic_exchange(&rg->map->tx.wake, 0))
		ring_send_kick(fd);
}

/*
 * One packet from the ring, as div_recv_packet() reads one from the
 * socket (same returns).  An empty ring is waited on at the socket, with
 * MSG_PEEK: the wakeup stays for whoever empties the ring, and the
 * socket's O_NONBLOCK, SO_RCVTIMEO and signals act as on any read.
 */
static ssize_t ring_recv(int fd, struct divring *rg, struct msghdr *msg,
			 int flags, bool *eof)
{
	struct dw_ring *r = &rg->map->rx;
	pthread_mutex_t *lock = &ring_locks(rg)->rx;
	struct divert_wire_hdr kick;
	struct dw_rec rec;
	const uint8_t *p;
	uint64_t head, was;
	int64_t count;
	size_t copied;
	uint32_t key;
	int bad;
	ssize_t n;

	*eof = false;
	for (;;) {
		ring_lock(lock);
		count = atomic_load(&r->count);	/* before tail: see below */
		head = was = atomic_load_explicit(&r->head, memory_order_relaxed);
		p = dw_ring_next(rg->rx, rg->rx_size, &head,
				 atomic_load_explicit(&r->tail, memory_order_acquire),
				 &rec, &bad);
		if (p != NULL)
			break;
		if (head != was)	/* past a wrap mark */
			atomic_store(&r->head, head);
		if (bad) {
			pthread_mutex_unlock(lock);
			dbg("fd %d: divertd's ring is garbled", fd);
			return set_errno(EIO);
		}
		/* Empty, yet counted: a reader died between taking a packet
		 * and counting it (every post is counted after it is seen,
		 * and count was read first).  Its wakeup is still owed. */
		if (count >= 1 &&
		    atomic_compare_exchange_strong(&r->count, &count, 0))
			ring_take_kick(fd);
		pthread_mutex_unlock(lock);
		if (count >= 1)
			continue;
		ring_kick_owed(fd, rg);	/* before we wait */
		n = REAL(recv)(fd, &kick, sizeof(kick),
			       MSG_PEEK | (flags & MSG_DONTWAIT));
		if (n == 0)
			*eof = true;
		if (n <= 0)
			return n;
	}
	copied = iov_scatter(msg, p, rec.len);
	key = divert_wire_packet_key(p, rec.len);
	if (!(flags & MSG_PEEK)) {
		/* seq_cst, as head and count: divertd, waiting for room,
		 * raises wake and then reads them (ring_wait_room()) */
		atomic_store(&r->taken, atomic_load_explicit(&r->taken,
			     memory_order_relaxed) + rec.len + sizeof(rec.addr));
		atomic_store(&r->head, head + rec.size);
		if (atomic_fetch_sub(&r->count, 1) == 1) {
			ring_take_kick(fd);	/* empty: its wakeup goes */
			ring_kick_owed(fd, rg);
		}
		if (atomic_load(&r->wake) && atomic_exchange(&r->wake, 0))
			ring_send_kick(fd);	/* divertd waits for room */
	}
	pthread_mutex_unlock(lock);

	if (!(flags & MSG_PEEK))
		reads_note(fd, key, rec.addr.sin_addr.s_addr != INADDR_ANY);
	if (msg->msg_name != NULL) {
		size_t c = msg->msg_namelen < sizeof(rec.addr) ? msg->msg_namelen
							       : sizeof(rec.addr);
		memcpy(msg->msg_name, &rec.addr, c);
		msg->msg_namelen = sizeof(rec.addr);
	}
	msg->msg_controllen = 0;
	msg->msg_flags = copied < rec.len ? MSG_TRUNC : 0;
	return (flags & MSG_TRUNC) ? (ssize_t)rec.len : (ssize_t)copied;
}

/* A write-back into the ring; false when it does not fit (it goes on the
 * socket then).  divertd is woken only if it said it sleeps. */
static bool ring_send(int fd, struct divring *rg, const struct sockaddr_in *to,
		      const struct msghdr *msg, size_t len)
{
	struct dw_ring *r = &rg->map->tx;
	pthread_mutex_t *lock = &ring_locks(rg)->tx;
	struct dw_rec rec, *slot;
	uint64_t tail;
	size_t done = 0;

	ring_lock(lock);
	tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	slot = dw_ring_reserve(rg->tx, rg->tx_size,
			       atomic_load_explicit(&r->head, memory_order_acquire),
			       &tail, len, rg->tx_size);
	if (slot == NULL) {
		pthread_mutex_unlock(lock);
		return false;
	}
	memset(&rec, 0, sizeof(rec));
	rec.size = (uint32_t)dw_rec_size(len);
	rec.len = (uint32_t)len;
	rec.addr = *to;
	memcpy(slot, &rec, sizeof(rec));
	for (size_t i = 0; i < msg->msg_iovlen && done < len; i++) {
		size_t c = msg->msg_iov[i].iov_len < len - done
			   ? msg->msg_iov[i].iov_len : len - done;

		if (c > 0)
			memcpy((uint8_t *)(slot + 1) + done,
			       msg->msg_iov[i].iov_base, c);
		done += c;
	}
	atomic_store(&r->tail, tail + rec.size);
	if (atomic_load(&r->wake)) {
		/* divertd sleeps: if packets wait to be read, the reader
		 * wakes it when it has read them (ring_kick_owed()) */
		atomic_store(&ring_locks(rg)->tx_kick_owed, 1);
		if (atomic_load(&rg->map->rx.count) <= 0)
			ring_kick_owed(fd, rg);
	}
	pthread_mutex_unlock(lock);
	return true;
}

/* FIONREAD from the ring: the next packet's length, 0 when none. */
static int ring_fionread(struct divring *rg, int *np)
{
	struct dw_ring *r = &rg->map->rx;
	pthread_mutex_t *lock = &ring_locks(rg)->rx;
	struct dw_rec rec;
	uint64_t head;
	int bad;

	ring_lock(lock);
	head = atomic_load_explicit(&r->head, memory_order_relaxed);
	*np = dw_ring_next(rg->rx, rg->rx_size, &head,
			   atomic_load_explicit(&r->tail, memory_order_acquire),
			   &rec, &bad) != NULL ? (int)rec.len : 0;
	pthread_mutex_unlock(lock);
	return 0;
}

/* DW_ATTACH on conn: the pair's end and (ringfd >= 0) the ring's memfd;
 * 0 or -errno (the daemon's answer, or the connection's). */
static int daemon_attach(int conn, int pair, int ringfd, uint32_t arg,
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

static int daemon_bind(const struct sockaddr_un *sun, socklen_t sunlen,
		       uint64_t conn, uint16_t port);

/* ---- the watcher: divertd restarting ------------------------------------
 *
 * One thread per process, started with its first divert socket (again in
 * a child after fork, at its first call on one), watches every socket's
 * connection to divertd.  When one ends (divertd exited, was killed or
 * restarts), the socket is "away": its fd goes quiet (the pair lives on),
 * reads wait as for any packet, a write-back goes into the ring or the
 * pair for the next divertd (ENOBUFS when they are full), a new packet
 * waits for the next divertd at most away_wait_ms() (then ENOBUFS).
 * The watcher tries to reach divertd's socket when a file appears in its
 * directory (divertd renames it into place once ready), and every
 * SHIM_RETRY_MS in case it missed one; once one answers, it attaches the pair and the ring (which both keep what
 * they hold), sets the socket's buffer sizes and binds its port again.
 * Nothing here runs while divertd is up: the per-packet path only reads
 * the away flag its registry lookup copies anyway.
 */
static int watch_ep = -1;		/* epoll of the connections */
static int watch_ev = -1;		/* eventfd: look at the sockets */
static int watch_in = -1;		/* inotify: the socket's directory */
static char watch_in_mark;		/* its epoll data.ptr */
static pthread_mutex_t watch_start_lock = PTHREAD_MUTEX_INITIALIZER;

/* Watch ds's connection; the lock is held. */
static void watch_add_locked(struct divsock *ds)
{
	struct epoll_event ev = { .events = EPOLLRDHUP, .data.ptr = ds };

	if (watch_ep < 0 || ds->watched || ds->conn < 0)
		return;
	if (epoll_ctl(watch_ep, EPOLL_CTL_ADD, ds->conn, &ev) < 0) {
		dbg("cannot watch connection %d: %s", ds->conn, strerror(errno));
		return;
	}
	ds->watched = ds->seen = true;
	ds->refs++;
}

static void watch_forget_locked(struct divsock *ds)
{
	if (!ds->watched)
		return;
	(void)epoll_ctl(watch_ep, EPOLL_CTL_DEL, ds->conn, NULL);
	ds->watched = false;
	ds_put_locked(ds);	/* never the last: the caller holds one */
}

/*
 * Before the next divertd takes the ring: the reader's wakeup (a DW_KICK
 * waiting on the program's fd while the rx ring holds a record, see
 * divert_wire.h) must be right, whatever the last one died in the middle
 * of.  What divertd sent that the program has not read is what the pair's
 * end has outstanding (SIOCOUTQ); with a ring, only kicks.
 */
static void ring_fix_kicks(struct divring *rg, int pair)
{
	static const struct divert_wire_hdr kick = {
		.type = DW_KICK, .version = DIVERT_WIRE_VERSION,
	};
	struct dw_ring *r = &rg->map->rx;
	pthread_mutex_t *lock = &ring_locks(rg)->rx;
	uint64_t head, tail;
	struct dw_rec rec;
	int64_t n = 0;
	int bad, outq = 0;

	ring_lock(lock);
	head = atomic_load(&r->head);
	tail = atomic_load(&r->tail);
	while (n < INT32_MAX &&
	       dw_ring_next(rg->rx, rg->rx_size, &head, tail, &rec, &bad) != NULL) {
		head += rec.size;
		n++;
	}
	atomic_store(&r->count, n);
	if (REAL(ioctl)(pair, SIOCOUTQ, &outq) == 0 && n > 0 && outq == 0)
		(void)REAL(send)(pair, &kick, sizeof(kick),
				 MSG_DONTWAIT | MSG_NOSIGNAL);
	pthread_mutex_unlock(lock);
	if (n > 0)
		dbg("%lld packets wait in the ring for the program", (long long)n);
}

/* What attaching again needs, copied out of the registry. */
struct reattach {
	struct sockaddr_un path;
	socklen_t pathlen;
	int pair, ringfd;		/* our own duplicates */
	struct divring *ring;		/* a reference */
	struct divsock_opts o;
	uint32_t refused;
};

/* Attach again; the new connection, its id in *conn, or -errno. */
static int reattach(const struct reattach *ra, uint64_t *conn)
{
	struct divert_wire_hdr hdr;
	int fd, err;

	fd = daemon_connect(&ra->path, ra->pathlen, SOCK_CLOEXEC);
	if (fd < 0)
		return fd;
	err = daemon_read(fd, DW_WELCOME, &hdr);
	if (err == 0 && hdr.arg != 0)
		err = -(int)hdr.arg;
	if (err < 0)
		goto fail;
	*conn = hdr.conn;
	for (int name = SO_RCVBUF, i = 0; i < 2; name = SO_SNDBUF, i++) {
		struct divert_wire_hdr opt = {
			.type = DW_SETOPT, .version = DIVERT_WIRE_VERSION,
			.arg = (uint32_t)name,
			.val = (uint32_t)(i == 0 ? ra->o.rcvbuf : ra->o.sndbuf),
		};

		if (opt.val != DIVERT_SOCKBUF_DEFAULT)
			(void)REAL(send)(fd, &opt, sizeof(opt), MSG_NOSIGNAL);
	}
	if (ra->ring != NULL)
		ring_fix_kicks(ra->ring, ra->pair);
	err = daemon_attach(fd, ra->pair, ra->ring != NULL ? ra->ringfd : -1,
			    DW_ATTACH_AGAIN | (ra->ring != NULL ? DW_ATTACH_RING : 0),
			    ra->refused);
	if (err < 0)
		goto fail;
	if (ra->o.bound) {
		/* the port may still be the dead one's for an instant */
		for (int i = 0; i < SHIM_TIMEOUT_MS / SHIM_RETRY_MS; i++) {
			err = daemon_bind(&ra->path, ra->pathlen, *conn, ra->o.port);
			if (err != EADDRINUSE)
				break;
			poll(NULL, 0, SHIM_RETRY_MS);
		}
		if (err != 0)
			dbg("port %u not bound again: %s", ra->o.port,
			    strerror(err));
	}
	return fd;
fail:
	REAL(close)(fd);
	return err;
}

/* The connection of ds ended: it is away until attached again. */
static void went_away_locked(struct divsock *ds)
{
	char dir[sizeof(ds->path.sun_path)];
	char *slash;
	int conn = ds->conn;

	memcpy(dir, ds->path.sun_path, sizeof(dir));
	dir[sizeof(dir) - 1] = '\0';
	slash = strrchr(dir, '/');
	if (slash != NULL && watch_in >= 0) {
		*slash = '\0';
		if (inotify_add_watch(watch_in, slash == dir ? "/" : dir,
				      IN_CREATE | IN_MOVED_TO) < 0)
			dbg("cannot watch %s: %s", dir, strerror(errno));
	}

	watch_forget_locked(ds);
	REAL(close)(conn);
	ds->conn = -1;
	ds->o.away = true;
	dbg("divertd went away: divert socket of port %u waits for it",
	    ds->o.port);
}

/* Try to attach every socket that is away; true when some still are. */
static bool reattach_all(void)
{
	static unsigned round;
	struct divsock *ds;
	struct reattach ra;
	uint64_t conn = 0;
	bool left = false;
	int fd;

	round++;
	pthread_mutex_lock(&reg_lock);
	for (;;) {
		for (ds = socks; ds != NULL; ds = ds->next)
			if (ds->o.away && !ds->passive && ds->round != round)
				break;
		if (ds == NULL)
			break;
		ds->round = round;
		ds->refs++;
		ra.path = ds->path;
		ra.pathlen = ds->pathlen;
		ra.pair = REAL(fcntl)(ds->pair, F_DUPFD_CLOEXEC, 0);
		ra.ringfd = ds->ringfd >= 0
			    ? REAL(fcntl)(ds->ringfd, F_DUPFD_CLOEXEC, 0) : -1;
		ra.ring = ds->ringfd >= 0 ? ds->ring : NULL;
		if (ra.ring != NULL)
			atomic_fetch_add(&ra.ring->refs, 1);
		ra.o = ds->o;
		ra.refused = ds->refused;
		pthread_mutex_unlock(&reg_lock);

		fd = ra.pair < 0 || (ra.ring != NULL && ra.ringfd < 0)
		     ? -EMFILE : reattach(&ra, &conn);

		pthread_mutex_lock(&reg_lock);
		if (ra.pair >= 0)
			REAL(close)(ra.pair);
		if (ra.ringfd >= 0)
			REAL(close)(ra.ringfd);
		ring_put(ra.ring);
		if (fd >= 0 && ds->shut) {
			REAL(close)(fd);
		} else if (fd >= 0) {
			ds->conn = fd;
			ds->o.conn = conn;
			ds->o.away = false;
			ds->refused -= ra.refused;
			watch_add_locked(ds);
			/* (never the connection id: it is a secret) */
			dbg("fd of port %u attached again to divertd",
			    ds->o.port);
		} else if (fd == -EBUSY && !ds->shut) {
			/* a process sharing it (fork) was first */
			ds->passive = true;
			ds->o.away = false;
			dbg("divert socket attached again by another process");
		} else if (!ds->shut) {
			left = true;
		}
		pthread_cond_broadcast(&reg_back);
		ds_put_locked(ds);
		if (fd == -ENOENT || fd == -ECONNREFUSED || fd == -EAGAIN) {
			left = true;	/* no divertd yet: the others wait too */
			break;
		}
	}
	pthread_mutex_unlock(&reg_lock);
	return left;
}

static void *watch_main(void *arg)
{
	struct epoll_event ev[16];
	char evbuf[4096] __attribute__((aligned(8)));
	bool away = false;
	uint64_t v;
	int n;

	(void)arg;
	shim_busy = 1;		/* this thread's calls are all our own */
	for (;;) {
		pthread_mutex_lock(&reg_lock);
		while (graves != NULL) {
			struct divsock *ds = graves;

			graves = ds->next;
			ds_free(ds);
		}
		pthread_mutex_unlock(&reg_lock);
		n = epoll_wait(watch_ep, ev, 16, away ? SHIM_RETRY_MS : -1);
		pthread_mutex_lock(&reg_lock);
		for (int i = 0; i < n; i++) {
			struct divsock *ds = ev[i].data.ptr;

			if (ds == NULL)
				(void)!REAL(read)(watch_ev, &v, sizeof(v));
			else if ((void *)ds == &watch_in_mark)
				while (REAL(read)(watch_in, evbuf,
						  sizeof(evbuf)) > 0)
					;	/* something new there: try */
			else if (ds->watched && !ds->shut)
				went_away_locked(ds);
		}
		pthread_mutex_unlock(&reg_lock);
		away = reattach_all();
	}
	return NULL;
}

/* A new socket joins the list, and is watched if the watcher runs. */
static void socks_add(struct divsock *ds)
{
	int busy = reg_enter();

	ds->next = socks;
	socks = ds;
	watch_add_locked(ds);
	reg_leave(busy);
}

/* Start the watcher in this process if it does not run yet. */
static void watch_start(void)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	sigset_t all, old;
	pthread_attr_t attr;
	pthread_t t;
	struct divsock *ds;
	int busy = shim_busy, err;

	if (atomic_load_explicit(&watch_on, memory_order_acquire))
		return;
	shim_busy = 1;
	pthread_mutex_lock(&watch_start_lock);
	if (atomic_load(&watch_on))
		goto out;
	if (watch_ep < 0)
		watch_ep = epoll_create1(EPOLL_CLOEXEC);
	if (watch_ev < 0)
		watch_ev = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (watch_ep < 0 || watch_ev < 0 ||
	    epoll_ctl(watch_ep, EPOLL_CTL_ADD, watch_ev, &ev) < 0) {
		dbg("no watcher: %s", strerror(errno));
		goto out;
	}
	if (watch_in < 0) {
		/* without it, the watcher only tries every SHIM_RETRY_MS */
		struct epoll_event iev = { .events = EPOLLIN,
					   .data.ptr = &watch_in_mark };

		watch_in = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
		if (watch_in >= 0 &&
		    epoll_ctl(watch_ep, EPOLL_CTL_ADD, watch_in, &iev) < 0) {
			REAL(close)(watch_in);
			watch_in = -1;
		}
	}
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);	/* the program's signals
							 * stay the program's */
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 128 * 1024);
	err = pthread_create(&t, &attr, watch_main, NULL);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err != 0) {
		dbg("no watcher: %s", strerror(err));
		goto out;
	}
	pthread_mutex_lock(&reg_lock);
	for (ds = socks; ds != NULL; ds = ds->next)
		watch_add_locked(ds);
	pthread_mutex_unlock(&reg_lock);
	atomic_store(&watch_on, true);
out:
	pthread_mutex_unlock(&watch_start_lock);
	shim_busy = busy;
}

/* fork: the child's watcher is its own, started when it needs one; the
 * parent's epoll and eventfd are not the child's.  The lock is held. */
static void watch_atfork_child_locked(void)
{
	struct divsock *ds;

	for (ds = socks; ds != NULL; ds = ds->next)
		if (ds->watched) {
			ds->watched = false;
			ds->refs--;	/* the parent's watcher's */
		}
	if (watch_ep >= 0)
		REAL(close)(watch_ep);
	if (watch_ev >= 0)
		REAL(close)(watch_ev);
	if (watch_in >= 0)
		REAL(close)(watch_in);
	watch_ep = watch_ev = watch_in = -1;
	atomic_store(&watch_on, false);
	pthread_mutex_init(&watch_start_lock, NULL);
}

/*
 * Wait (at most ms, the lock not held) until fd's socket is back, as a
 * write or bind must; *o is its state then.  False when it is still away
 * (or closed).
 */
static bool away_wait(int fd, struct divsock_opts *o, int ms)
{
	struct timespec until;
	struct divsock *ds;
	int busy, saved = errno;

	clock_gettime(CLOCK_REALTIME, &until);	/* the condition's clock */
	until.tv_sec += ms / 1000;
	until.tv_nsec += (long)(ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	busy = reg_enter();
	while ((ds = reg_get_locked(fd)) != NULL && ds->o.away && ms > 0 &&
	       pthread_cond_timedwait(&reg_back, &reg_lock, &until) == 0)
		;
	if (ds != NULL)
		*o = ds->o;
	reg_leave(busy);
	errno = saved;
	return ds != NULL && !ds->o.away;
}

/* True when a write on fd must not wait: MSG_DONTWAIT or O_NONBLOCK. */
static bool write_nonblocking(int fd, int flags)
{
	int fl;

	if (flags & MSG_DONTWAIT)
		return true;
	fl = REAL(fcntl)(fd, F_GETFL);
	return fl >= 0 && (fl & O_NONBLOCK);
}

/* A write refused while divertd is away: counted, told to the next. */
static void away_refused(int fd)
{
	struct divsock *ds;
	int busy = reg_enter();

	if ((ds = reg_get_locked(fd)) != NULL)
		ds->refused++;
	reg_leave(busy);
}

/* ---- socket ------------------------------------------------------------ */

/*
 * PF_DIVERT, or the old form with IPPROTO_DIVERT: FreeBSD's 258, or the
 * 254 that divert programs built for Linux define for themselves (glibc
 * has no IPPROTO_DIVERT; Debian's libdaq2 daq_ipfw.so is built so).
 */
static bool is_divert(int domain, int type, int protocol)
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

static int div_socket(int type)
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

/* DW_BIND on a control connection of its own: 0 or the errno for bind()
 * (EADDRNOTAVAIL: no daemon; ETIMEDOUT: no answer). */
static int daemon_bind(const struct sockaddr_un *sun, socklen_t sunlen,
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

static int div_bind(int fd, const struct sockaddr *addr, socklen_t len)
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

/* ---- receiving --------------------------------------------------------- */

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

static ssize_t div_recvmsg(int fd, struct msghdr *msg, int flags)
{
	bool eof;

	return div_recv_packet(fd, msg, flags, &eof);
}

static ssize_t div_recvfrom(int fd, void *buf, size_t len, int flags,
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

static ssize_t div_readv(int fd, const struct iovec *iov, int iovcnt)
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
static int div_recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen,
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
static int div_fionread(int fd, int *np)
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

/*
 * The write channel: one connection per process, kept open, on which new
 * packets are written and answered one at a time, so that sendto() returns
 * what the daemon's injection met (EADDRNOTAVAIL, ENETUNREACH, EMSGSIZE,
 * ...).  A child after fork opens its own.  Its descriptor belongs to us:
 * before each use we make sure it is still the socket we opened (a
 * program that closes every descriptor, as daemons do, may have closed it
 * and reused the number).
 */
static pthread_mutex_t wch_lock = PTHREAD_MUTEX_INITIALIZER;
static int wch_fd = -1;
static pid_t wch_pid;
static dev_t wch_dev;
static ino_t wch_ino;
static uint32_t wch_seq;

static bool wch_alive(void)
{
	struct stat st;

	return wch_fd >= 0 && wch_pid == getpid() &&
	       fstat(wch_fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
	       st.st_dev == wch_dev && st.st_ino == wch_ino;
}

/* fork: the child must not inherit a held lock or the parent's channel */
static void wch_atfork_prepare(void)
{
	pthread_mutex_lock(&wch_lock);
}

static void wch_atfork_parent(void)
{
	pthread_mutex_unlock(&wch_lock);
}

static void wch_atfork_child(void)
{
	struct stat st;

	/* the parent's channel, if the number still holds it, is ours to
	 * close; the child opens its own when it needs one */
	if (wch_fd >= 0 && fstat(wch_fd, &st) == 0 &&
	    st.st_dev == wch_dev && st.st_ino == wch_ino)
		REAL(close)(wch_fd);
	wch_fd = -1;
	pthread_mutex_unlock(&wch_lock);
}

/* Open the channel to the daemon that owns ds's socket. */
static int wch_open(const struct sockaddr_un *sun, socklen_t len)
{
	struct timeval tv = { SHIM_TIMEOUT_MS / 1000, 0 };
	struct divert_wire_hdr hello;
	struct stat st;
	int fd;

	if (wch_alive())
		REAL(close)(wch_fd);	/* ours, but broken */
	wch_fd = -1;
	fd = daemon_connect(sun, len, SOCK_CLOEXEC);
	if (fd < 0)
		return ENOBUFS;		/* divertd restarting: cannot send now */
	/* a daemon that stops reading cannot hold a write forever */
	(void)REAL(setsockopt)(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (daemon_read(fd, DW_WELCOME, &hello) < 0 || fstat(fd, &st) < 0) {
		REAL(close)(fd);
		return ENOBUFS;
	}
	wch_fd = fd;
	wch_pid = getpid();
	wch_dev = st.st_dev;
	wch_ino = st.st_ino;
	return 0;
}

/* Send m (a DW_WRITE for the socket fd) and wait for its answer; 0 or the
 * errno.  Cancellation is off while the channel's lock is held. */
static int write_channel(const struct sockaddr_un *sun, socklen_t sunlen,
			 struct msghdr *m)
{
	struct divert_wire_hdr *hdr = m->msg_iov[0].iov_base, reply;
	int err = 0, cancel;

	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
	pthread_mutex_lock(&wch_lock);
	for (int attempt = 0; attempt < 2; attempt++) {
		if (!wch_alive() && (err = wch_open(sun, sunlen)) != 0)
			break;
		hdr->val = ++wch_seq;
		if (REAL(sendmsg)(wch_fd, m, MSG_NOSIGNAL) < 0) {
			err = errno == EAGAIN ? ETIMEDOUT : errno;
			REAL(close)(wch_fd);
			wch_fd = -1;
			continue;	/* the daemon restarted? once more */
		}
		do {
			err = daemon_read(wch_fd, DW_REPLY, &reply);
		} while (err == 0 && reply.val != hdr->val);
		/* gone before it answered: restarting, cannot send now */
		err = err < 0 ? (err == -ETIMEDOUT ? ETIMEDOUT : ENOBUFS)
			      : (int)reply.arg;
		break;
	}
	pthread_mutex_unlock(&wch_lock);
	pthread_setcancelstate(cancel, NULL);
	return err;
}

/*
 * Write one packet, msg's iovecs, to msg_name (NULL: outgoing).  FreeBSD's
 * checks first, on the first 20 bytes (gathered when the first iovec is
 * shorter); then one sendmsg of the wire header and the caller's iovecs.
 */
static ssize_t div_sendmsg(int fd, const struct divsock_opts *o,
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

static ssize_t div_sendto(int fd, const struct divsock_opts *o,
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
static int div_sendmmsg(int fd, const struct divsock_opts *o,
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

static int div_getsockopt(int fd, const struct divsock_opts *o, int level,
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

static int div_setsockopt(int fd, int level,
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

/* ---- dup --------------------------------------------------------------- */

/* After a successful dup of a divert fd: register nfd (consumes ds). */
static int dup_register(int nfd, struct divsock *ds)
{
	if (reg_insert(nfd, ds) < 0) {
		REAL(close)(nfd);
		return set_errno(ENOMEM);
	}
	dbg("fd %d: duplicate of a divert socket", nfd);
	return nfd;
}

/* dup2 / dup3 onto newfd, which may itself be a divert fd. */
static int div_dup_onto(int oldfd, int newfd, int flags, bool is_dup3)
{
	struct divsock *ds, *dropped;
	int r;

	if (oldfd == newfd || !reg_active())
		return is_dup3 ? CALL_REAL(dup3, oldfd, newfd, flags)
			       : CALL_REAL(dup2, oldfd, newfd);
	ds = reg_ref(oldfd);
	dropped = reg_take(newfd);	/* newfd gets closed by the call */
	r = is_dup3 ? CALL_REAL(dup3, oldfd, newfd, flags)
		    : CALL_REAL(dup2, oldfd, newfd);
	if (r < 0) {
		if (dropped != NULL)	/* newfd is untouched */
			(void)reg_insert(newfd, dropped);
		if (ds != NULL)
			reg_unref(ds);
		return -1;
	}
	if (dropped != NULL)
		reg_unref(dropped);
	return ds != NULL ? dup_register(r, ds) : r;
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
