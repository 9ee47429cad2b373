/*
 * shim_watch.c: the watcher, divertd restarting.
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
 *
 * In: the registry's list of live sockets (socks, under reg_lock) and
 * their connections' ends.  Out: sockets attached again (a new conn and
 * connection id, away cleared, reg_back broadcast to the writers and
 * binds that wait in away_wait()), shut ones freed (graves).
 */
#include "shim.h"	/* first: it turns _FORTIFY_SOURCE off */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "divert.h"

atomic_bool watch_on;			/* the watcher runs in this process */
static int watch_ep = -1;		/* epoll of the connections */
static int watch_ev = -1;		/* eventfd: look at the sockets */
static int watch_in = -1;		/* inotify: the socket's directory */
static char watch_in_mark;		/* its epoll data.ptr */
static pthread_mutex_t watch_start_lock = PTHREAD_MUTEX_INITIALIZER;

/* Watch ds's connection; the lock is held. */
void watch_add_locked(struct divsock *ds)
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

void watch_forget_locked(struct divsock *ds)
{
	if (!ds->watched)
		return;
	(void)epoll_ctl(watch_ep, EPOLL_CTL_DEL, ds->conn, NULL);
	ds->watched = false;
	ds_put_locked(ds);	/* never the last: the caller holds one */
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
/* Start the watcher in this process if it does not run yet. */
void watch_start(void)
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
void watch_atfork_child_locked(void)
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
bool away_wait(int fd, struct divsock_opts *o, int ms)
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

/* A write refused while divertd is away: counted, told to the next. */
void away_refused(int fd)
{
	struct divsock *ds;
	int busy = reg_enter();

	if ((ds = reg_get_locked(fd)) != NULL)
		ds->refused++;
	reg_leave(busy);
}

/* How long a new packet written while divertd is away waits for the
 * next one: DIVERT_WAIT milliseconds (0 to SHIM_AWAY_WAIT_MAX), else
 * SHIM_AWAY_WAIT_MS; for hosts where divertd takes longer to start. */
int away_wait_ms(void)
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
