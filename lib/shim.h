/*
 * shim.h: the shim's private header.  The structs its files share, the
 * table of the real functions, and every function that crosses a file,
 * grouped by the file that defines it: read it as the map of lib/.
 *
 * None of it is exported: the library is built with hidden visibility,
 * and this header says so for its own declarations, so that calls between
 * the files are direct.  The exported symbols are libdivert_shim.c's
 * hooks (SHIM_EXPORT) and nothing else.
 */
#ifndef DIVERT_SHIM_H
#define DIVERT_SHIM_H

/*
 * Every shim file includes this header first, before any system header:
 * the shim defines read, recv and recvfrom itself, which glibc's fortified
 * inline versions would clash with, and the whole shim is built without
 * them (it checks as glibc does in its own __*_chk hooks).
 */
#undef _FORTIFY_SOURCE		/* we define read, recv, recvfrom themselves */
#if defined(__USE_FORTIFY_LEVEL) && __USE_FORTIFY_LEVEL > 0
#error "include shim.h before any system header"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <time.h>

#include "divert_wire.h"

#pragma GCC visibility push(hidden)

/* ---- limits ----------------------------------------------------------- */

#define SHIM_SOCK_TYPE_MASK 0xf		/* the kernel's SOCK_TYPE_MASK */
#define SHIM_TIMEOUT_MS 5000		/* connect, welcome, bind reply */
#define SHIM_RETRY_MS 50		/* divertd gone: tries to reach it */
#define SHIM_AWAY_WAIT_MS 1000		/* divertd gone: a new packet waits, */
#define SHIM_AWAY_WAIT_MAX 60000	/* ... or DIVERT_WAIT ms, up to this */
#define SHIM_IOV_MAX 64			/* caller iovecs per packet */
#define SHIM_READS 1024			/* reads remembered per socket */

/* ---- what a divert socket is ---------------------------------------- */

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

/* ---- libdivert_shim.c: the real functions, the hooks' guard ---------- */

#define SHIM_HOOKS(X) \
	X(socket) X(bind) X(connect) X(getsockname) X(getpeername) \
	X(close) X(close_range) X(closefrom) X(dup) X(dup2) X(dup3) \
	X(fcntl) X(fcntl64) X(ioctl) X(getsockopt) X(setsockopt) \
	X(read) X(readv) X(recv) X(recvfrom) X(recvmsg) X(recvmmsg) \
	X(__read_chk) X(__recv_chk) X(__recvfrom_chk) \
	X(write) X(writev) X(send) X(sendto) X(sendmsg) X(sendmmsg)

enum real_id {
#define X(fn) R_##fn,
	SHIM_HOOKS(X)
#undef X
	R_MAX
};

void *real_get(enum real_id id);

/* Set while the shim does its own work on this thread: a hook entered
 * while it is set goes straight to libc. */
extern __thread int shim_busy __attribute__((tls_model("initial-exec")));

#define REAL(fn) ((__typeof__(&fn))real_get(R_##fn))

/* Call the real fn; -1/ENOSYS if libc has none (never in practice). */
#define CALL_REAL(fn, ...) ({						\
	__typeof__(&fn) real_ = REAL(fn);				\
	real_ != NULL ? real_(__VA_ARGS__) : (errno = ENOSYS, -1);	\
})

static inline int set_errno(int err)
{
	errno = err;
	return -1;
}

/* ---- shim_debug.c ------------------------------------------------------ */

bool debug_enabled(void);
void dbg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- shim_registry.c: fd -> struct divsock ------------------------------ */

extern pthread_mutex_t reg_lock;	/* the registry's, and socks' */
extern pthread_cond_t reg_back;		/* away ended */
extern atomic_uint reg_count;		/* divert fds open */
extern struct divsock *socks;		/* every live divsock */
extern struct divsock *graves;		/* shut, for the watcher to free */

/* True when hooks must look at the registry at all. */
static inline bool reg_active(void)
{
	return atomic_load_explicit(&reg_count, memory_order_relaxed) != 0 &&
	       !shim_busy;
}

int reg_enter(void);
void reg_leave(int busy);
void ds_free(struct divsock *ds);
void ds_put_locked(struct divsock *ds);
void reg_unref(struct divsock *ds);
struct divsock *reg_get_locked(int fd);
bool reg_lookup(int fd, struct divsock_opts *o);
struct divring *reg_ring(int fd);
struct divsock *reg_ref(int fd);
struct divsock *reg_take(int fd);
void reg_remove(int fd);
void reg_remove_range(unsigned lo, unsigned hi);
int reg_insert(int fd, struct divsock *ds);
void reg_set_port(int fd, uint16_t port);
void reg_set_buf(int fd, int name, int v);
bool reg_path(int fd, struct sockaddr_un *sun, socklen_t *len);
void reg_atfork_prepare(void);
void reg_atfork_release(void);
void reg_atfork_child(void);
void reads_note(int fd, uint32_t key, bool incoming);
bool reads_take(int fd, uint32_t key, bool incoming);
void socks_add(struct divsock *ds);
int dup_register(int nfd, struct divsock *ds);
int div_dup_onto(int oldfd, int newfd, int flags, bool is_dup3);

/* ---- shim_relay.c: talking to divertd; socket, bind, options ------------ */

int64_t now_ms(void);
int daemon_connect(const struct sockaddr_un *sun, socklen_t len, int cloexec);
int daemon_read(int fd, uint16_t want, struct divert_wire_hdr *hdr);
int daemon_attach(int conn, int pair, int ringfd, uint32_t arg,
		  uint32_t refused);
int daemon_bind(const struct sockaddr_un *sun, socklen_t sunlen,
		uint64_t conn, uint16_t port);
bool is_divert(int domain, int type, int protocol);
int div_socket(int type);
int div_bind(int fd, const struct sockaddr *addr, socklen_t len);
int div_getsockopt(int fd, const struct divsock_opts *o, int level,
		   int name, void *optval, socklen_t *optlen);
int div_setsockopt(int fd, int level,
		   int name, const void *optval, socklen_t optlen);

/* ---- shim_ring.c: the shared-memory ring -------------------------------- */

void ring_put(struct divring *rg);
int ring_attach(int fd, struct divring **out, int *ringfd);
ssize_t ring_recv(int fd, struct divring *rg, struct msghdr *msg,
		  int flags, bool *eof);
bool ring_send(int fd, struct divring *rg, const struct sockaddr_in *to,
	       const struct msghdr *msg, size_t len);
int ring_fionread(struct divring *rg, int *np);
void ring_fix_kicks(struct divring *rg, int pair);

/* ---- shim_packet.c: receiving and sending ------------------------------- */

ssize_t div_recvmsg(int fd, struct msghdr *msg, int flags);
ssize_t div_recvfrom(int fd, void *buf, size_t len, int flags,
		     struct sockaddr *from, socklen_t *fromlen);
ssize_t div_readv(int fd, const struct iovec *iov, int iovcnt);
int div_recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen,
		 int flags, const struct timespec *timeout);
int div_fionread(int fd, int *np);
ssize_t div_sendmsg(int fd, const struct divsock_opts *o,
		    const struct msghdr *msg, int flags);
ssize_t div_sendto(int fd, const struct divsock_opts *o,
		   const void *buf, size_t len, int flags,
		   const struct sockaddr *to, socklen_t tolen);
int div_sendmmsg(int fd, const struct divsock_opts *o,
		 struct mmsghdr *vec, unsigned int vlen, int flags);

/* ---- shim_wch.c: the write channel -------------------------------------- */

void wch_atfork_prepare(void);
void wch_atfork_parent(void);
void wch_atfork_child(void);
int write_channel(const struct sockaddr_un *sun, socklen_t sunlen,
		  struct msghdr *m);

/* ---- shim_watch.c: the watcher, divertd restarting ---------------------- */

extern atomic_bool watch_on;		/* the watcher runs in this process */

void watch_add_locked(struct divsock *ds);
void watch_forget_locked(struct divsock *ds);
void watch_start(void);
void watch_atfork_child_locked(void);
bool away_wait(int fd, struct divsock_opts *o, int ms);
void away_refused(int fd);
int away_wait_ms(void);

#pragma GCC visibility pop

#endif /* DIVERT_SHIM_H */
