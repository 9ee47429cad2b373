/*
 * shim_registry.c: which fds are divert sockets.  The registry maps an fd
 * to a refcounted struct divsock (shim.h) shared by dup'ed fds, and keeps
 * the list of every live one (socks) that the watcher walks.  It is locked
 * (reg_lock, which the watcher takes too), allocates only in socket/dup
 * paths, and an entry leaves it before the real close so that a recycled
 * fd number is never mistaken for ours.  While no divert fd is open
 * (reg_count, an atomic), reg_active() is one load and the hooks pass
 * straight through.
 *
 * In: fds from the hooks (lookup; insert at socket and dup; remove at
 * close, close_range, closefrom, and dup2/dup3 onto a divert fd); the
 * identity of each packet a socket read (reads_note), which a write is
 * checked against (reads_take).  Out: copies of a socket's options and
 * path, references to it or its ring, and at the last reference its end:
 * its hidden descriptors closed (divertd frees its port), the struct
 * freed, or left in graves for the watcher while an event of its may
 * still name it.
 */
#include "shim.h"	/* first: it turns _FORTIFY_SOURCE off */

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Changed under reg_lock (reg_count is read without it too); the watcher
 * takes it to walk socks and empty graves. */
pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t reg_back = PTHREAD_COND_INITIALIZER; /* away ended */
static struct divsock **reg_slot;	/* indexed by fd */
static size_t reg_nslot;
atomic_uint reg_count;			/* divert fds open */
struct divsock *socks;			/* every live divsock */
struct divsock *graves;			/* shut, for the watcher to free */

/*
 * The lock, with the thread marked busy while it is held: should free() or
 * realloc() come back into a hook (an allocator closing an fd), the hook
 * goes straight to libc instead of deadlocking on the lock.
 */
int reg_enter(void)
{
	int busy = shim_busy;

	shim_busy = 1;
	pthread_mutex_lock(&reg_lock);
	return busy;
}

void reg_leave(int busy)
{
	pthread_mutex_unlock(&reg_lock);
	shim_busy = busy;
}

void ds_free(struct divsock *ds)
{
	ring_put(ds->ring);
	free(ds);
}

/* Drop a reference; the last frees ds, or leaves that to the watcher if
 * an event of its may still name ds. */
void ds_put_locked(struct divsock *ds)
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

void reg_unref(struct divsock *ds)
{
	int busy = reg_enter();

	reg_unref_locked(ds);
	reg_leave(busy);
}

/* The live entry of fd, or NULL; the lock is held. */
struct divsock *reg_get_locked(int fd)
{
	if (fd < 0 || (size_t)fd >= reg_nslot)
		return NULL;
	return reg_slot[fd];
}

/* Copy fd's options out; false when fd is not a divert fd. */
bool reg_lookup(int fd, struct divsock_opts *o)
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
struct divring *reg_ring(int fd)
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
struct divsock *reg_ref(int fd)
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

struct divsock *reg_take(int fd)
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
void reg_remove(int fd)
{
	struct divsock *ds = reg_take(fd);

	if (ds != NULL) {
		dbg("fd %d closed", fd);
		reg_unref(ds);
	}
}

/* Forget every fd in [lo, hi]. */
void reg_remove_range(unsigned lo, unsigned hi)
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
int reg_insert(int fd, struct divsock *ds)
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
void reg_set_port(int fd, uint16_t port)
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
void reg_set_buf(int fd, int name, int v)
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
bool reg_path(int fd, struct sockaddr_un *sun, socklen_t *len)
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

void reg_atfork_prepare(void)
{
	pthread_mutex_lock(&reg_lock);
}

void reg_atfork_release(void)
{
	pthread_mutex_unlock(&reg_lock);
}

void reg_atfork_child(void)
{
	watch_atfork_child_locked();
	pthread_mutex_unlock(&reg_lock);
}

/* Remember that fd's socket read a packet with this identity. */
void reads_note(int fd, uint32_t key, bool incoming)
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
bool reads_take(int fd, uint32_t key, bool incoming)
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

/* A new socket joins the list, and is watched if the watcher runs. */
void socks_add(struct divsock *ds)
{
	int busy = reg_enter();

	ds->next = socks;
	socks = ds;
	watch_add_locked(ds);
	reg_leave(busy);
}

/* ---- dup --------------------------------------------------------------- */

/* After a successful dup of a divert fd: register nfd (consumes ds). */
int dup_register(int nfd, struct divsock *ds)
{
	if (reg_insert(nfd, ds) < 0) {
		REAL(close)(nfd);
		return set_errno(ENOMEM);
	}
	dbg("fd %d: duplicate of a divert socket", nfd);
	return nfd;
}

/* dup2 / dup3 onto newfd, which may itself be a divert fd. */
int div_dup_onto(int oldfd, int newfd, int flags, bool is_dup3)
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
