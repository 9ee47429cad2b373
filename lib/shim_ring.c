/*
 * shim_ring.c: the program's side of a socket's shared-memory ring (its
 * layout, producer and consumer are divert_wire.h's).  The ring is asked
 * for at socket() with DW_RING ($DIVERT_RING=0 says not to), mapped once
 * and shared by the socket's dup'ed fds and by a child after fork.  rx
 * carries divertd's packets: ring_recv() takes one where a read would
 * take it from the socket.  tx carries write-backs: ring_send() posts one
 * where a sendmsg would.  While packets flow neither makes a system call;
 * the socket still wakes a reader (a DW_KICK waits on it while rx holds a
 * record), so poll and friends work as on a socket that carries the
 * packets itself, and divertd is woken only when it said it sleeps.
 *
 * Owns the ring's locks (robust, process-shared, in the ring's shim
 * bytes) and the wakeups' bookkeeping, down to putting it right for the
 * next divertd when one died (ring_fix_kicks()).  In: a reference to the
 * struct divring from the registry.  Out: packets and their divert
 * addresses into the caller's buffers, and the identity of each packet
 * taken, for the registry (reads_note()).
 */
#include "shim.h"	/* first: it turns _FORTIFY_SOURCE off */

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

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

/* Let go of a reference to rg; the last one unmaps the ring. */
void ring_put(struct divring *rg)
{
	if (rg != NULL && atomic_fetch_sub(&rg->refs, 1) == 1) {
		munmap(rg->map, rg->maplen);
		free(rg);
	}
}

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
int ring_attach(int fd, struct divring **out, int *ringfd)
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
ssize_t ring_recv(int fd, struct divring *rg, struct msghdr *msg,
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
bool ring_send(int fd, struct divring *rg, const struct sockaddr_in *to,
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
int ring_fionread(struct divring *rg, int *np)
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

/*
 * Before the next divertd takes the ring: the reader's wakeup (a DW_KICK
 * waiting on the program's fd while the rx ring holds a record, see
 * divert_wire.h) must be right, whatever the last one died in the middle
 * of.  What divertd sent that the program has not read is what the pair's
 * end has outstanding (SIOCOUTQ); with a ring, only kicks.
 */
void ring_fix_kicks(struct divring *rg, int pair)
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
