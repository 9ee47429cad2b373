/*
 * divert_sock.c: the client side.  The only code that speaks the client
 * protocol (divert_wire.h).
 *
 * Each client is a SOCK_SEQPACKET connection on our UNIX socket; the shim
 * hands it to the application as its divert socket.  Only root and the
 * configured group get one, each named by a random id that only that
 * connection is told (listener_event()).  A client is bound to
 * at most one divert port (port_owner[] maps ports to clients, as FreeBSD's
 * divert pcb lookup does).  What flows through here:
 *
 *  kernel -> client   divert_sock_packet() gets each NFQUEUE packet from
 *      nfq_bridge.c.  No client on the port: a divert drops it (counted as
 *      "no socket", div_noport on FreeBSD), a tee lets it go on.  Otherwise
 *      the packet goes to the client with its FreeBSD address, and a
 *      divert's packet is HELD: the kernel keeps it, and we remember its
 *      NFQUEUE id.  A client with a shared-memory ring (the shim asks for
 *      one) gets it copied there, and one wakeup per batch if the ring
 *      was empty ("rings" below); for any other, sends are collected
 *      during a netlink batch and go out with one sendmmsg() per client
 *      run (divert_sock_flush()).  What does not fit in the client's
 *      buffer is dropped ("full"), and until it has room its port's queue
 *      is paused (client_full()).
 *
 *  client -> kernel   a written packet (from the client's tx ring, once
 *      per loop round, or from its socket) that answers a held one (same
 *      client, same direction, same identity: IPv4 id and protocol, or IPv6
 *      next header and length; oldest first) becomes that packet's verdict:
 *      NF_REPEAT, with the tag in our mark bits, so the hook's base chain
 *      runs again and its dispatch resumes after the tag.  Unchanged bytes
 *      (compared by hash) leave the kernel's packet as it is; changed bytes
 *      go with the verdict.  A write that answers nothing is a new packet
 *      (inject.c).
 *
 *  held packets are consumed as on FreeBSD, where the program owns what it
 *  read: a packet never written back is dropped when its client closes,
 *  when the client holds too many, or after the hold time.
 *
 * Nothing on the per-packet path allocates: held packets come from a pool
 * made at start, buffers are static.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <xxhash.h>

#include "divertd.h"
#include "divert.h"
#include "divert_wire.h"

/* The hash that recognises an unchanged write-back, over every byte of
 * each packet at its arrival and again at its write-back: XXH3, through
 * libxxhash's run-time dispatch on x86 (AVX2 or AVX-512 where the CPU has
 * them; the library's plain XXH3_64bits() is SSE2 only, several times
 * slower on a 64 KiB GSO packet). */
#ifndef packet_hash
#if defined(__x86_64__) || defined(__i386__)
#define XXH_DISPATCH_DISABLE_REPLACE
#include <xxh_x86dispatch.h>
#define packet_hash(p, len) XXH3_64bits_dispatch(p, len)
#else
#define packet_hash(p, len) XXH3_64bits(p, len)
#endif
#endif

#define HELD_POOL	16384		/* held packets, all clients */
#define CLIENT_HELD_MAX	4096		/* held packets, one client */
#define CLIENT_WAIT_MAX	(1024 * 1024)	/* bytes of kernel storage that
					 * may wait for one client */
#define PENDING_MAX	256		/* sends collected in one batch */
#define WRITE_BATCH	16		/* client messages per recvmmsg */
#define WRITE_SLOT	(sizeof(struct divert_wire_hdr) + DIVERT_WIRE_MAXPKT + 1)
#define RING_WAIT_MAX	(CLIENT_HELD_MAX / 2)	/* packets waiting in a ring:
					 * the oldest held one, evicted at
					 * CLIENT_HELD_MAX, was read already */

struct held;

struct client {
	struct pollable p;		/* first: epoll data.ptr; the data
					 * socket (the program's peer) */
	struct pollable ctl;		/* once attached: the connection it
					 * came on, watched for its end */
	uint64_t id;			/* random: a secret of the connection */
	bool root;			/* may change the rules (divertctl) */
	bool full;			/* its buffer was full: drop at once
					 * until it has room (EPOLLOUT) */
	bool paused;			/* and its port's queue is paused */
	bool bound;
	uint16_t port;
	uint32_t rcvbuf;
	uint64_t rx_posted;		/* its ring's bytes as FreeBSD counts a
					 * socket buffer's: packets and their
					 * 16-byte addresses, since it began */
	pid_t pid;
	struct dw_ring_map *ring;	/* NULL: packets go on the socket */
	uint8_t *rx, *tx;		/* the rings' bytes */
	uint64_t rx_tail, tx_head;	/* our own positions in them */
	unsigned look_ms;		/* ring_unread_held(): its next look */
	unsigned kicks_due;		/* DW_KICKs to send at the flush (in
					 * kicks[] while not 0): one for each
					 * time its rx ring stopped being empty */
	struct held *head, *tail;	/* held packets, oldest first */
	unsigned nheld;
	bool dead;			/* closed: freed after the loop's round
					 * (an event of this round may name it) */
	struct client *next_dead;
};

struct held {
	struct held *cnext, *cprev;	/* the client's list */
	struct held *gnext, *gprev;	/* all held, by deadline */
	struct held *knext, *kprev;	/* its index bucket (held_find()) */
	struct client *c;
	uint64_t deadline;		/* ms, CLOCK_MONOTONIC */
	uint64_t hash;
	uint32_t id, mark, key, len;
	uint16_t queue;
	uint8_t dir;
};

struct pending {
	struct client *c;
	struct held *h;			/* NULL for a tee copy */
	uint32_t id;			/* h's packet, to tell if h moved on */
	struct divert_wire_hdr hdr;
	struct iovec iov[2];
};

static const struct divert_config *cfg;
static struct pollable listener = { .fd = -1 };
static int reserve_fd = -1;		/* given up when accept hits EMFILE */
static char listen_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static struct client *port_owner[65536];
static struct client **clients;		/* cfg->max_clients of them */
static unsigned nclients;
static struct client *dead_clients;	/* closed this round, to free */
static struct client **kicks;		/* ring clients to wake at the flush */
static unsigned nkicks;
static uint8_t ring_pkt[DIVERT_WIRE_MAXPKT];	/* a write read out of a ring */

static struct held *held_pool, *held_free;
static struct held *gfirst, *glast;
/* held packets by client, direction and identity: a write finds the one it
 * answers without walking its client's thousands (each bucket in arrival
 * order, so the first match is the oldest) */
#define HELD_BUCKETS HELD_POOL
static struct { struct held *first, *last; } *held_index;

static uint64_t batch_now;		/* now_ms() for this batch, or 0 */
static struct pending pending[PENDING_MAX];
static struct mmsghdr pending_msgs[PENDING_MAX];
static unsigned npending;

static uint8_t *wbuf;			/* WRITE_BATCH * WRITE_SLOT */
static struct mmsghdr wmsgs[WRITE_BATCH];
static struct iovec wiov[WRITE_BATCH];
static union {				/* DW_ATTACH's descriptors */
	struct cmsghdr align;
	char buf[CMSG_SPACE(DW_ATTACH_MAXFDS * sizeof(int))];
} wctl[WRITE_BATCH];

static struct divert_stats stats;
static struct log_ratelimit rl_inject, rl_client, rl_evict;

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- held packets ---------------------------------------------------- */

static unsigned held_bucket(const struct client *c, uint8_t dir, uint32_t key)
{
	uint32_t x = (uint32_t)((uintptr_t)c >> 4) * 0x9e3779b1u ^
		     (key + dir) * 0x85ebca77u;

	return (x ^ x >> 15) % HELD_BUCKETS;
}

/* Into the index, once its client, direction and identity are set. */
static void held_index_add(struct held *h)
{
	unsigned b = held_bucket(h->c, h->dir, h->key);

	h->knext = NULL;
	h->kprev = held_index[b].last;
	if (h->kprev != NULL)
		h->kprev->knext = h;
	else
		held_index[b].first = h;
	held_index[b].last = h;
}

static void held_index_del(struct held *h)
{
	unsigned b = held_bucket(h->c, h->dir, h->key);

	if (h->kprev != NULL)
		h->kprev->knext = h->knext;
	else
		held_index[b].first = h->knext;
	if (h->knext != NULL)
		h->knext->kprev = h->kprev;
	else
		held_index[b].last = h->kprev;
}

static void held_release(struct held *h)
{
	struct client *c = h->c;

	held_index_del(h);
	if (h->cprev)
		h->cprev->cnext = h->cnext;
	else
		c->head = h->cnext;
	if (h->cnext)
		h->cnext->cprev = h->cprev;
	else
		c->tail = h->cprev;
	c->nheld--;
	if (h->gprev)
		h->gprev->gnext = h->gnext;
	else
		gfirst = h->gnext;
	if (h->gnext)
		h->gnext->gprev = h->gprev;
	else
		glast = h->gprev;
	h->c = NULL;
	h->gnext = held_free;
	held_free = h;
}

/* Consume a held packet: the kernel drops it. */
static void held_drop(struct held *h)
{
	nfqb_verdict(h->queue, h->id, NF_DROP, NULL, NULL, 0);
	held_release(h);
}

static struct held *held_get(struct client *c, uint64_t now)
{
	struct held *h;

	if (c->nheld >= CLIENT_HELD_MAX || held_free == NULL) {
		/* the oldest is the one least likely to be written back; never
		 * one sent in this batch (those are the newest: the pool and
		 * the quota are far larger than a batch) */
		h = c->nheld >= CLIENT_HELD_MAX ? c->head : gfirst;
		log_limited(&rl_evict, 4, "%s: the oldest held packet (of "
			    "pid %d) dropped", c->nheld >= CLIENT_HELD_MAX ?
			    "a program holds 4096 packets, its limit" :
			    "16384 packets are held in all, the limit",
			    (int)h->c->pid);
		held_drop(h);
		stats.evicted++;
	}
	h = held_free;
	held_free = h->gnext;
	memset(h, 0, sizeof(*h));
	h->c = c;
	h->cprev = c->tail;
	if (c->tail)
		c->tail->cnext = h;
	else
		c->head = h;
	c->tail = h;
	c->nheld++;
	h->gprev = glast;
	if (glast)
		glast->gnext = h;
	else
		gfirst = h;
	glast = h;
	h->deadline = now + cfg->hold_ms;
	return h;
}

/* The held packet a write answers: the oldest with the same bytes, else
 * the oldest with the same identity (the program rewrote it). */
static struct held *held_find(struct client *c, uint8_t dir, uint32_t key,
			      uint64_t hash, uint32_t len)
{
	struct held *first = NULL;

	for (struct held *h = held_index[held_bucket(c, dir, key)].first;
	     h != NULL; h = h->knext) {
		if (h->c != c || h->dir != dir || h->key != key)
			continue;
		if (h->hash == hash && h->len == len)
			return h;
		if (first == NULL)
			first = h;
	}
	return first;
}

/* A held packet written back: on it goes, after the rule its tag names
 * (pkt NULL: with the kernel's own bytes). */
static void held_reinject(struct held *h, bool out, uint16_t tag,
			  const uint8_t *pkt, uint32_t len)
{
	uint32_t mark = mark_with_tag(cfg->ml, h->mark,
				      rules_resume_tag(cfg->rs, tag));

	nfqb_verdict(h->queue, h->id, NF_REPEAT, &mark, pkt, len);
	if (out)
		stats.reinjected_out++;
	else
		stats.reinjected_in++;
	held_release(h);
}

/*
 * A ring client that holds packets while others wait unread in its rx ring
 * may write back without waking us: its shim puts the wakeup off until the
 * reader has read what waits (SHIM.md), so that one wakeup answers a
 * batch.  A program that writes back and then pauses instead of reading
 * on (a shaper pacing its output) would hold its write-backs until the
 * ring empties; so while any client is in that state, the loop looks at
 * the tx rings again after RING_LOOK_MS even with nothing else to do.
 * Each look that finds nothing doubles that client's wait, up to
 * RING_LOOK_MAX_MS: the state is the client's to claim (its ring's count),
 * and one that claims it forever costs a few wakeups a second, not 1,000.
 */
#define RING_LOOK_MS 1
#define RING_LOOK_MAX_MS 64

/* How soon a look at the tx rings is due, in ms; -1: none. */
static int ring_unread_held(void)
{
	int t = -1;

	for (unsigned i = 0; i < nclients; i++) {
		const struct client *c = clients[i];

		if (c->ring != NULL && c->nheld > 0 &&
		    atomic_load_explicit(&c->ring->rx.count,
					 memory_order_relaxed) > 0 &&
		    (t < 0 || (int)c->look_ms < t))
			t = (int)c->look_ms;
	}
	return t;
}

int divert_sock_timeout(void)
{
	uint64_t now;
	int t = -1, look = ring_unread_held();

	if (gfirst != NULL) {
		now = now_ms();
		t = gfirst->deadline <= now ? 0 : (int)(gfirst->deadline - now);
	}
	if (look >= 0 && (t < 0 || t > look))
		t = look;
	return t;
}

void divert_sock_expire(void)
{
	uint64_t now = now_ms();

	while (gfirst != NULL && gfirst->deadline <= now) {
		held_drop(gfirst);
		stats.expired++;
	}
}

/* ---- rings -------------------------------------------------------------
 *
 * A client that asked for one (DW_RING) reads and writes back through a
 * shared-memory ring (divert_wire.h): divertd copies each packet into
 * the rx ring and wakes the client only when the ring was empty, once per
 * batch; the client's write-backs wait in the tx ring, which the loop
 * empties once per round (divert_sock_idle()), waking up for them only
 * when it was about to sleep.  The ring is the client's memory as much as
 * ours: a write is copied out before it is looked at, positions are
 * checked, and a client that breaks the format is disconnected.
 */

static int ring_open(struct client *c)
{
	struct dw_ring_map *map;
	int fd;

	if (c->ring != NULL || c->bound)
		return -EISCONN;	/* packets may be on the socket */
	fd = memfd_create("divertd-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	/* sealed: a client that shrank it would fault us (SIGBUS) */
	if (ftruncate(fd, DW_RING_LEN) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		goto fail;
	map = mmap(NULL, DW_RING_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		goto fail;
	map->magic = DW_RING_MAGIC;
	map->version = DIVERT_WIRE_VERSION;
	map->rx_size = DW_RING_RX;
	map->tx_size = DW_RING_TX;
	c->ring = map;
	c->rx = dw_ring_rx(map);
	c->tx = dw_ring_tx(map);
	c->rx_tail = c->tx_head = c->rx_posted = 0;
	return fd;
fail:
	close(fd);
	return -errno;
}

/*
 * A ring the client already has (DW_ATTACH after a restart of divertd):
 * the memfd an earlier divertd made, still mapped by the program.  What
 * it holds stays: packets posted and not read yet are read (their
 * write-backs are new packets now: the kernel dropped the held ones with
 * the old queue), write-backs not drained yet are drained.  Checked as
 * any client input: a sealed memfd of the right size and layout; the
 * positions are the client's, which dw_ring_reserve() and dw_ring_next()
 * never trust.  0 or -errno.
 */
static int ring_adopt(struct client *c, int fd)
{
	const int need = F_SEAL_SHRINK | F_SEAL_GROW;
	struct dw_ring_map *map;
	struct stat st;
	int seals;

	if (c->ring != NULL || c->bound)
		return -EISCONN;
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || (seals & need) != need || fstat(fd, &st) < 0 ||
	    !S_ISREG(st.st_mode) || st.st_size != (off_t)DW_RING_LEN)
		return -EINVAL;
	map = mmap(NULL, DW_RING_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		return -errno;
	if (map->magic != DW_RING_MAGIC || map->version != DIVERT_WIRE_VERSION ||
	    map->rx_size != DW_RING_RX || map->tx_size != DW_RING_TX) {
		munmap(map, DW_RING_LEN);
		return -EINVAL;
	}
	c->ring = map;
	c->rx = dw_ring_rx(map);
	c->tx = dw_ring_tx(map);
	c->rx_tail = atomic_load(&map->rx.tail);
	c->tx_head = atomic_load(&map->tx.head);
	c->rx_posted = atomic_load(&map->rx.taken);	/* counts from now */
	atomic_store(&map->rx.wake, 0);
	atomic_store(&map->tx.wake, 0);
	return 0;
}

/* DW_RING: make the ring and send it, or the errno. */
static void client_ring(struct client *c)
{
	struct divert_wire_hdr hdr = {
		.type = DW_RING, .version = DIVERT_WIRE_VERSION,
	};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct iovec iov = { .iov_base = &hdr, .iov_len = sizeof(hdr) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cm;
	int fd = ring_open(c);

	if (fd < 0) {
		hdr.arg = (uint32_t)-fd;
	} else {
		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = sizeof(ctl.buf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	if (sendmsg(c->p.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && fd >= 0) {
		/* it will never read from the ring: the socket it is */
		munmap(c->ring, DW_RING_LEN);
		c->ring = NULL;
	}
	if (fd >= 0)
		close(fd);
}

static void ring_close(struct client *c)
{
	if (c->kicks_due > 0)
		for (unsigned i = 0; i < nkicks; i++)
			if (kicks[i] == c) {
				kicks[i] = kicks[--nkicks];
				break;
			}
	if (c->ring != NULL)
		munmap(c->ring, DW_RING_LEN);
	c->ring = NULL;
}

/*
 * Bytes waiting in c's rx ring as FreeBSD counts a socket buffer's (each
 * packet and its 16-byte address), from what its reader says it took;
 * a reader that says more than was posted has it all waiting.
 */
static uint64_t ring_waiting(const struct client *c)
{
	uint64_t w = c->rx_posted - atomic_load(&c->ring->rx.taken);

	return w > c->rx_posted ? c->rx_posted : w;
}

/* Room again, as a socket is writable again: half of each limit
 * ring_post() applies free (SO_RCVBUF's bytes, RING_WAIT_MAX packets). */
static bool ring_room(const struct client *c)
{
	return ring_waiting(c) <= c->rcvbuf / 2 &&
	       atomic_load(&c->ring->rx.count) <= RING_WAIT_MAX / 2;
}

/* Post a packet to c's rx ring; false when it does not fit. */
static bool ring_post(struct client *c, const struct sockaddr_in *addr,
		      const uint8_t *pkt, uint32_t len)
{
	struct dw_ring *r = &c->ring->rx;
	uint64_t tail = c->rx_tail;
	struct dw_rec rec, *slot;

	/* FreeBSD's sbappendaddr(): the packet and its address must fit in
	 * what SO_RCVBUF leaves */
	if (ring_waiting(c) + len + sizeof(*addr) > c->rcvbuf ||
	    atomic_load_explicit(&r->count, memory_order_relaxed) >= RING_WAIT_MAX)
		return false;
	slot = dw_ring_reserve(c->rx, DW_RING_RX,
			       atomic_load_explicit(&r->head, memory_order_acquire),
			       &tail, len, DW_RING_RX);
	if (slot == NULL)
		return false;
	memset(&rec, 0, sizeof(rec));
	rec.size = (uint32_t)dw_rec_size(len);
	rec.len = len;
	rec.addr = *addr;
	memcpy(slot, &rec, sizeof(rec));
	memcpy(slot + 1, pkt, len);
	c->rx_tail = tail + rec.size;
	c->rx_posted += len + sizeof(*addr);
	atomic_store_explicit(&r->tail, c->rx_tail, memory_order_release);
	/* it was empty: a wakeup, which the reader takes when it empties
	 * the ring again (maybe before the flush: then the next one is owed
	 * too) */
	if (atomic_fetch_add(&r->count, 1) == 0 && c->kicks_due++ == 0)
		kicks[nkicks++] = c;
	return true;
}

/* Wake the readers of rings that were empty: a message each time. */
static void ring_kick_flush(void)
{
	static const struct divert_wire_hdr kick = {
		.type = DW_KICK, .version = DIVERT_WIRE_VERSION,
	};

	for (unsigned i = 0; i < nkicks; i++) {
		/* only extra ones, of a client that miscounts, can fail */
		for (; kicks[i]->kicks_due > 0; kicks[i]->kicks_due--)
			(void)send(kicks[i]->p.fd, &kick, sizeof(kick),
				   MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	nkicks = 0;
}

static int client_write(struct client *c, const struct divert_wire_hdr *m,
			uint8_t *pkt, size_t len);

/*
 * A write-back that left the packet as it was needs none of its bytes: its
 * verdict leaves the kernel's copy alone.  So it is recognised in the
 * ring, where the client may still be writing (the worst that does is to
 * make this miss), and only a packet that changed, or answers nothing, is
 * copied out and handled as a socket's write (client_write()).
 */
static void ring_write(struct client *c, const struct divert_wire_hdr *m,
		       const uint8_t *p, uint32_t len)
{
	uint8_t head[40];
	size_t n = len < sizeof(head) ? len : sizeof(head);
	bool out = divert_wire_is_outgoing(&m->addr);
	struct held *h;
	uint64_t hash;

	memcpy(head, p, n);
	if (divert_wire_check_write(head, len, (const struct sockaddr *)&m->addr,
				    sizeof(m->addr), DIVERT_WIRE_MAXPKT) == 0) {
		hash = packet_hash(p, len);
		h = held_find(c, out ? DIR_OUT : DIR_IN,
			      divert_wire_packet_key(head, len), hash, len);
		if (h != NULL && h->len == len && h->hash == hash) {
			held_reinject(h, out, m->addr.sin_port, NULL, 0);
			return;
		}
	}
	memcpy(ring_pkt, p, len);	/* ours now: then checked */
	client_write(c, m, ring_pkt, len);
}

/* What c wrote back into its tx ring (how many); -1 when it broke the
 * format. */
static int ring_drain(struct client *c)
{
	struct dw_ring *r = &c->ring->tx;
	uint64_t tail = atomic_load(&r->tail);
	struct divert_wire_hdr m = {
		.type = DW_PACKET, .version = DIVERT_WIRE_VERSION, .arg = 1,
	};
	struct dw_rec rec;
	const uint8_t *p;
	int bad;

	int n = 0;

	while ((p = dw_ring_next(c->tx, DW_RING_TX, &c->tx_head, tail, &rec,
				 &bad)) != NULL) {
		m.addr = rec.addr;
		ring_write(c, &m, p, rec.len);
		c->tx_head += rec.size;
		atomic_store_explicit(&r->head, c->tx_head, memory_order_release);
		n++;
	}
	if (bad) {
		stats.bad_writes++;
		log_limited(&rl_client, 4, "client %d broke its ring: "
			    "disconnected", (int)c->pid);
		return -1;
	}
	return n;
}

/* ---- clients --------------------------------------------------------- */

/* A client whose buffer filled up: until it has room again (EPOLLOUT),
 * what is diverted to it is dropped at once, as FreeBSD drops what does
 * not fit in a socket buffer, and the cheapest way: its port's queue is
 * not read and may hold no more than the packets the program holds, so
 * the kernel drops the rest on arrival (counted as kernel_drops) instead
 * of the daemon reading each one only to drop it.  Not for a port a tee
 * rule sends to: the originals of the tee pass through that queue, and
 * they must go on at once. */
static bool tee_port(uint16_t port)
{
	for (size_t i = 0; i < cfg->rs->n; i++)
		if (cfg->rs->rules[i].action == ACT_TEE &&
		    cfg->rs->rules[i].arg == port)
			return true;
	return false;
}

static void client_room(struct client *c);

/*
 * A ring client that is full: true (and it is not any more) when its ring
 * has room, else its reader is asked to kick us when it takes a packet.
 * The flag goes up before the ring is looked at: a reader that took
 * packets just now either is seen here or sees the flag.  Called again at
 * each kick and round of the loop until there is room.
 */
static bool ring_wait_room(struct client *c)
{
	atomic_store(&c->ring->rx.wake, 1);
	if (!ring_room(c))
		return false;
	client_room(c);
	return true;
}

static void client_full(struct client *c)
{
	if (c->full)
		return;
	if (c->ring == NULL && loop_mod(&c->p, EPOLLIN | EPOLLOUT) < 0)
		return;
	c->full = true;
	if (c->ring != NULL && ring_wait_room(c))
		return;
	if (!c->bound || port_owner[c->port] != c || tee_port(c->port))
		return;
	nfqb_pause(c->port, true, c->nheld);
	c->paused = true;
}

void divert_sock_rules_changed(void)
{
	/* a paused queue that a tee rule now uses carries originals */
	for (unsigned i = 0; i < nclients; i++)
		if (clients[i]->paused && tee_port(clients[i]->port)) {
			nfqb_pause(clients[i]->port, false, 0);
			clients[i]->paused = false;
		}
}

static void client_room(struct client *c)
{
	if (!c->full)
		return;
	if (c->ring != NULL)
		atomic_store(&c->ring->rx.wake, 0);
	else if (loop_mod(&c->p, EPOLLIN) < 0)
		return;
	c->full = false;
	if (c->paused)
		nfqb_pause(c->port, false, 0);
	c->paused = false;
}

static void client_unbind(struct client *c)
{
	if (c->paused)
		nfqb_pause(c->port, false, 0);	/* someone else's now */
	c->paused = false;
	if (c->bound && port_owner[c->port] == c)
		port_owner[c->port] = NULL;
	c->bound = false;
}

static void client_close(struct client *c)
{
	/* sends collected for it in this batch go nowhere now */
	for (unsigned i = 0; i < npending; i++)
		if (pending[i].c == c)
			pending[i].c = NULL;
	while (c->head != NULL) {
		held_drop(c->head);
		stats.evicted++;
	}
	client_unbind(c);
	ring_close(c);
	close(c->p.fd);		/* also leaves the epoll set */
	if (c->ctl.fd >= 0)
		close(c->ctl.fd);
	for (unsigned i = 0; i < nclients; i++)
		if (clients[i] == c) {
			clients[i] = clients[--nclients];
			break;
		}
	c->dead = true;
	c->next_dead = dead_clients;
	dead_clients = c;
}

/* Free the clients closed in this round of the loop. */
static void clients_bury(void)
{
	while (dead_clients != NULL) {
		struct client *c = dead_clients;

		dead_clients = c->next_dead;
		free(c);
	}
}

/* close() frees the port at once on FreeBSD.  Here the holder's hangup
 * may wait in the same epoll round as the new bind: a holder that has
 * hung up gives its port away now (its last writes are still read and
 * handled when its own event comes). */
static bool client_hung_up(struct client *c)
{
	struct pollfd pfd[2] = {
		{ .fd = c->p.fd, .events = POLLRDHUP },
		{ .fd = c->ctl.fd, .events = POLLRDHUP },	/* -1: none */
	};

	if (poll(pfd, 2, 0) >= 1 &&
	    ((pfd[0].revents | pfd[1].revents) & (POLLHUP | POLLRDHUP))) {
		client_unbind(c);
		return true;
	}
	return false;
}

static struct client *client_by_id(uint64_t id)
{
	for (unsigned i = 0; i < nclients; i++)
		if (clients[i]->id == id)
			return clients[i];
	return NULL;
}

static void client_reply_seq(struct client *c, int err, uint32_t seq)
{
	struct divert_wire_hdr hdr = {
		.type = DW_REPLY, .version = DIVERT_WIRE_VERSION,
		.arg = (uint32_t)err, .val = seq,
	};

	if (send(c->p.fd, &hdr, sizeof(hdr), MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		log_limited(&rl_client, 4, "cannot answer client %d: %s",
			    (int)c->pid, strerror(errno));
}

static void client_reply(struct client *c, int err)
{
	client_reply_seq(c, err, 0);
}

static void client_bind(struct client *ctl, const struct divert_wire_hdr *m)
{
	struct client *c = client_by_id(m->conn);
	uint16_t port = (uint16_t)m->val;

	if (c == NULL || m->val > 65535) {
		client_reply(ctl, EINVAL);
		return;
	}
	if (port_owner[port] != NULL && port_owner[port] != c &&
	    !client_hung_up(port_owner[port])) {
		client_reply(ctl, EADDRINUSE);
		return;
	}
	client_unbind(c);	/* a second bind moves the socket */
	port_owner[port] = c;
	c->bound = true;
	c->port = port;
	log_debug("client %d bound to divert port %u", (int)c->pid, port);
	client_reply(ctl, 0);
}

/*
 * What a client without a ring has not read yet waits in our end's send
 * buffer (a ring is counted exactly as FreeBSD counts: ring_post()).  FreeBSD
 * limits a socket buffer twice: rcvbuf bytes of data (sb_hiwat) and eight
 * times that of mbuf storage (sb_mbmax, sb_efficiency); Linux counts each
 * message's whole allocation (truesize) against one limit, which is far
 * more than the data for small packets.  So the limit is the storage one:
 * 8 x rcvbuf of truesize (the kernel doubles what SO_SNDBUF asks for),
 * about as many small packets as FreeBSD's buffer holds (over 700 of 64
 * bytes, where 2 x rcvbuf held 180), and a few GSO packets of 64 KiB.
 * At most CLIENT_WAIT_MAX, though: every packet waiting there is held,
 * and the smallest message costs over 600 bytes, so no more than 1,700
 * can wait, well under the CLIENT_HELD_MAX a client may hold (past which
 * the oldest held packet is dropped: it must never be one still waiting
 * to be read).  FORCE: not capped at net.core.wmem_max, as FreeBSD's is
 * not below kern.ipc.maxsockbuf.
 */
static void client_set_rcvbuf(struct client *c, uint32_t rcvbuf)
{
	int v = (int)(rcvbuf * 8 > CLIENT_WAIT_MAX ? CLIENT_WAIT_MAX
						   : rcvbuf * 8) / 2;

	c->rcvbuf = rcvbuf;
	setsockopt(c->p.fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof(v));
}

static void client_setopt(struct client *c, const struct divert_wire_hdr *m)
{
	int v = (int)m->val;

	if (m->arg != SO_RCVBUF && m->arg != SO_SNDBUF)
		stats.bad_writes++;
	if (m->arg != SO_RCVBUF)
		return;
	if (v <= 0 || m->val > DIVERT_WIRE_SOCKBUF_MAX) {
		/* the shim refuses these (ENOBUFS); a client that sends one
		 * anyway gets nothing: the buffer is what the daemon pays */
		stats.bad_writes++;
		return;
	}
	client_set_rcvbuf(c, m->val);
}

/* The interface an incoming write arrives on (FreeBSD div_output_inbound):
 * the name in sin_zero when it is NUL-terminated there and names one, else
 * the interface owning sin_addr. */
static const struct iface *incoming_iface(const struct sockaddr_in *sin)
{
	const char *zero = (const char *)sin->sin_zero;
	const struct iface *ifc = NULL;

	if (memchr(zero, '\0', sizeof(sin->sin_zero)) != NULL && zero[0] != '\0')
		ifc = iftable_by_name(zero);
	if (ifc == NULL)
		ifc = iftable_by_v4(sin->sin_addr);
	return ifc;
}

/* True when a rule of the running list names the interface. */
static bool rules_name(const char *ifname)
{
	for (size_t i = 0; i < cfg->rs->n; i++)
		for (int k = 0; k < cfg->rs->rules[i].nifaces; k++)
			if (strcmp(cfg->rs->rules[i].ifaces[k].name, ifname) == 0)
				return true;
	return false;
}

/*
 * What a member of divertd's group (-g), not root, may not do with a new
 * packet: inject from a socket bound to no port, or make one arrive on an
 * interface that is down, or on loopback unless a rule names it (where it
 * would pass for the host's own traffic).  0 or the errno.  Root may do
 * all of it, as on FreeBSD.
 */
static int member_limits(const struct client *c, const struct iface *in)
{
	if (c->root)
		return 0;
	if (!c->bound)
		return EPERM;
	if (in != NULL && (!in->up || (in->loopback && !rules_name(in->name))))
		return EADDRNOTAVAIL;
	return 0;
}

/* A written packet: the verdict of the held packet it answers, or new.
 * Returns 0 or the errno FreeBSD's sendto() would give (the address names
 * no interface, the route fails, ...). */
static int client_write(struct client *c, const struct divert_wire_hdr *m,
			 uint8_t *pkt, size_t len)
{
	const struct sockaddr_in *sin = m->arg ? &m->addr : NULL;
	bool out = divert_wire_is_outgoing(sin);
	uint16_t tag = sin != NULL ? sin->sin_port : 0;
	uint16_t resume = rules_resume_tag(cfg->rs, tag);
	bool v4;
	struct held *h;
	uint64_t hash;
	uint32_t mark;
	int err;

	err = divert_wire_check_write(pkt, len, (const struct sockaddr *)sin,
				      sizeof(*sin), DIVERT_WIRE_MAXPKT);
	if (err != 0) {
		stats.bad_writes++;
		return err;
	}
	v4 = (pkt[0] >> 4) == 4;	/* len >= 20 now */
	hash = packet_hash(pkt, len);
	h = held_find(c, out ? DIR_OUT : DIR_IN, divert_wire_packet_key(pkt, len), hash,
		      (uint32_t)len);
	if (h != NULL && !(h->len == len && h->hash == hash) &&
	    (len > NFQB_MAX_VERDICT_PAYLOAD ||
	     (out && v4 && memcmp(pkt + 12, "\0\0\0\0", 4) == 0))) {
		/* a verdict cannot carry this much, or the program left the
		 * source address for the stack to fill in (FreeBSD does, for
		 * outgoing writes; a verdict would not): the program's bytes
		 * go out as a new packet, the kernel's copy is consumed */
		held_drop(h);
		h = NULL;
	}
	if (h != NULL) {
		bool same = h->len == len && h->hash == hash;

		if (!same && v4) {
			if (out) {
				cksum_set_ipv4_header(pkt, len);
			} else if (!cksum_ipv4_header_ok(pkt, len)) {
				stats.bad_cksum_in++;	/* silently, as FreeBSD */
				held_drop(h);
				return 0;
			}
		}
		held_reinject(h, out, tag, same ? NULL : pkt, (uint32_t)len);
		return 0;
	}
	/* A new packet enters the stack at once, a verdict when its batch is
	 * sent: the verdicts given before this write go first, so that it
	 * overtakes neither what the program wrote before it nor a tee's
	 * original (a copy that met its original's unconfirmed conntrack
	 * entry would cost one of them: the clash drops the later). */
	nfqb_flush();
	mark = mark_with_tag(cfg->ml, 0, resume);
	if ((err = member_limits(c, out ? NULL : incoming_iface(sin))) != 0) {
		stats.bad_writes++;
		return err;
	}
	if (out) {
		err = inject_out(pkt, len, mark);
		if (err == 0)
			stats.injected_out++;
	} else {
		const struct iface *ifc = incoming_iface(sin);

		if (ifc == NULL) {
			stats.no_iface++;
			return EADDRNOTAVAIL;
		}
		if (v4 && !cksum_ipv4_header_ok(pkt, len)) {
			stats.bad_cksum_in++;
			return 0;
		}
		err = inject_in(pkt, len, mark, ifc);
		if (err == 0)
			stats.injected_in++;
	}
	if (err < 0) {
		stats.inject_errors++;
		log_limited(&rl_inject, 7, "cannot inject a packet %s: %s",
			    out ? "outgoing" : "incoming", strerror(-err));
		return -err;
	}
	return 0;
}

/* ---- attaching: a data socket of the client's own ---------------------
 *
 * The shim makes the program's divert fd one end of a socketpair and
 * hands us the other end (DW_ATTACH, SCM_RIGHTS) on the connection it
 * made; packets and write-backs flow on that pair from then on, and the
 * connection only tells us when the client is gone.  The point: when
 * divertd goes away, the program's fd does not end (the shim holds the
 * pair's other end too), it only goes quiet, and the shim attaches the
 * same pair, and its ring, to the next divertd (docs/SHIM.md).
 */

static void client_ctl_event(struct pollable *p, uint32_t events)
{
	struct client *c = (struct client *)(void *)((char *)p -
					offsetof(struct client, ctl));
	struct divert_wire_hdr m;
	ssize_t n;

	if (c->dead)
		return;
	/* nothing is said on it once attached: read (descriptors sent
	 * along are closed by the kernel, no control buffer) and count */
	for (int i = 0; i < WRITE_BATCH; i++) {
		n = recv(p->fd, &m, sizeof(m), MSG_DONTWAIT | MSG_TRUNC);
		if (n > 0) {
			stats.bad_writes++;
			continue;
		}
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			goto gone;
		break;
	}
	if (!(events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)))
		return;
gone:
	log_debug("client %d closed its connection", (int)c->pid);
	if (c->ring != NULL)
		(void)ring_drain(c);
	client_close(c);
}

/* True when sock is a SOCK_SEQPACKET UNIX socket. */
static bool seqpacket_unix(int sock)
{
	int dom = 0, type = 0;
	socklen_t l1 = sizeof(dom), l2 = sizeof(type);

	return getsockopt(sock, SOL_SOCKET, SO_DOMAIN, &dom, &l1) == 0 &&
	       getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &l2) == 0 &&
	       dom == AF_UNIX && type == SOCK_SEQPACKET;
}

/* DW_ATTACH with its descriptors (all consumed); the reply goes on the
 * connection it came on, then the data socket takes its place. */
static void client_attach(struct client *c, const struct divert_wire_hdr *m,
			  int *fds, int nfds)
{
	bool ring = m->arg & DW_ATTACH_RING;
	int err = 0, fl, data = nfds > 0 ? fds[0] : -1;

	if (c->ctl.fd >= 0) {		/* a reply would go to its program */
		stats.bad_writes++;
		while (nfds > 0)
			close(fds[--nfds]);
		return;
	}
	if (nfds != 1 + ring ||
	    (m->arg & ~(DW_ATTACH_RING | DW_ATTACH_AGAIN)))
		err = EINVAL;
	else if (!seqpacket_unix(data))
		err = ENOTSOCK;
	else if ((fl = fcntl(data, F_GETFL)) < 0 ||
		 fcntl(data, F_SETFL, fl | O_NONBLOCK) < 0)
		err = errno;
	else if (ring)
		err = -ring_adopt(c, fds[1]);
	for (int i = 1; i < nfds; i++)
		close(fds[i]);		/* the ring stays mapped */
	client_reply(c, err);
	if (err != 0) {
		stats.bad_writes++;
		if (data >= 0)
			close(data);
		return;
	}
	loop_del(&c->p);
	c->ctl.fd = c->p.fd;
	c->ctl.handle = client_ctl_event;
	c->p.fd = data;
	if (loop_add(&c->p, EPOLLIN) < 0 ||
	    loop_add(&c->ctl, EPOLLIN | EPOLLRDHUP) < 0) {
		/* as before: the connection carries it all (the fd it sees
		 * is never read: its program waits, as on a full daemon) */
		loop_del(&c->p);
		close(data);
		c->p.fd = c->ctl.fd;
		c->ctl.fd = -1;
		(void)loop_add(&c->p, EPOLLIN);
		log_limited(&rl_client, 4, "client %d: cannot watch its data "
			    "socket: %s", (int)c->pid, strerror(errno));
		return;
	}
	client_set_rcvbuf(c, c->rcvbuf);
	if (m->arg & DW_ATTACH_AGAIN)
		stats.reattached++;
	stats.away_refused += m->val;
	log_debug("client %d attached its data socket%s", (int)c->pid,
		  m->arg & DW_ATTACH_AGAIN ? " again (divertd restarted)" : "");
}

/* The descriptors an SCM_RIGHTS message brought (at most max; any
 * beyond are closed), and msg made ready for the next receive. */
static int msg_fds(struct msghdr *msg, int *fds, int max)
{
	struct cmsghdr *cm;
	int n = 0;

	for (cm = CMSG_FIRSTHDR(msg); cm != NULL; cm = CMSG_NXTHDR(msg, cm)) {
		size_t k;

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(fd));
			if (n < max)
				fds[n++] = fd;
			else
				close(fd);
		}
	}
	msg->msg_controllen = sizeof(wctl[0].buf);
	msg->msg_flags = 0;
	return n;
}

/* ---- divertctl -------------------------------------------------------- */

#define CTL_MAXARGS 256

/* DW_CTL: the command's argv after the header; control.c runs it, the
 * output goes back in DW_CTLREPLY messages.  The connection's send buffer
 * is made big enough for the whole reply first, so nothing here waits for
 * divertctl to read. */
static void client_control(struct client *c, const struct divert_wire_hdr *m,
			   char *args, size_t len)
{
	static char nomem[] = "divertd: out of memory\n";
	char *argv[CTL_MAXARGS + 1];
	struct divert_wire_hdr hdr = {
		.type = DW_CTLREPLY, .version = DIVERT_WIRE_VERSION,
	};
	char *text;
	char *out = NULL;
	size_t tlen, off = 0;
	int argc = 0, status, buf;

	/* the strings: NUL-terminated, the last one too */
	if (len > 0 && args[len - 1] != '\0') {
		stats.bad_writes++;
		return;
	}
	for (size_t i = 0; i < len && argc < CTL_MAXARGS; i += strlen(args + i) + 1)
		argv[argc++] = args + i;
	argv[argc] = NULL;
	status = control_run(argc, argv, (m->arg & DW_CTL_JSON) |
			     (c->root ? CTL_ROOT : 0), &out);
	text = out != NULL ? out : nomem;
	tlen = strlen(text);
	hdr.arg = out != NULL ? (uint32_t)status : 1;
	buf = (int)(tlen + tlen / 4 +
		    (tlen / DW_CTL_MAXREPLY + 1) * (sizeof(hdr) + 1024) + 65536);
	if (tlen < 64u << 20)
		setsockopt(c->p.fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof(buf));
	do {
		size_t part = tlen - off > DW_CTL_MAXREPLY ? DW_CTL_MAXREPLY
							   : tlen - off;
		struct iovec iov[2] = {
			{ .iov_base = &hdr, .iov_len = sizeof(hdr) },
			{ .iov_base = text + off, .iov_len = part },
		};
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };

		hdr.val = off + part < tlen;
		if (sendmsg(c->p.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
			log_limited(&rl_client, 4, "cannot answer divertctl "
				    "(pid %d): %s", (int)c->pid, strerror(errno));
			break;
		}
		off += part;
	} while (off < tlen);
	free(out);
}

static void client_message(struct client *c, uint8_t *buf, size_t n)
{
	struct divert_wire_hdr m;

	if (n < sizeof(m)) {
		stats.bad_writes++;
		return;
	}
	memcpy(&m, buf, sizeof(m));
	if (m.version != DIVERT_WIRE_VERSION) {
		stats.bad_writes++;
		return;
	}
	switch (m.type) {
	case DW_PACKET:
		client_write(c, &m, buf + sizeof(m), n - sizeof(m));
		break;
	case DW_ATTACH:		/* with no descriptor */
		client_attach(c, &m, NULL, 0);
		break;
	case DW_WRITE: {
		/* on a process's write channel, for the socket m.conn */
		struct client *owner = client_by_id(m.conn);
		int err;

		stats.channel_writes++;
		err = owner == NULL ? EBADF
			: client_write(owner, &m, buf + sizeof(m), n - sizeof(m));
		client_reply_seq(c, err, m.val);
		break;
	}
	case DW_BIND:
		client_bind(c, &m);
		break;
	case DW_SETOPT:
		client_setopt(c, &m);
		break;
	case DW_CTL:
		client_control(c, &m, (char *)buf + sizeof(m), n - sizeof(m));
		break;
	case DW_RING:
		client_ring(c);
		break;
	case DW_KICK:		/* it wrote to its ring, or took from it */
		break;
	default:
		stats.bad_writes++;
		break;
	}
}

static void client_event(struct pollable *p, uint32_t events)
{
	struct client *c = (struct client *)p;
	int fds[DW_ATTACH_MAXFDS], nfds, n;

	if (c->dead)
		return;
	if (events & EPOLLOUT)
		client_room(c);		/* it has read: room again */

	/* a few batches, then give the others a turn */
	for (int round = 0; round < 4; round++) {
		n = recvmmsg(c->p.fd, wmsgs, WRITE_BATCH,
			     MSG_DONTWAIT | MSG_CMSG_CLOEXEC, NULL);
		if (n < 0 && errno == ECONNRESET)
			/* the program closed with packets unread: Linux says
			 * so once, ahead of what it wrote before closing (which
			 * FreeBSD would have sent at sendto()): read on */
			n = recvmmsg(c->p.fd, wmsgs, WRITE_BATCH,
				     MSG_DONTWAIT | MSG_CMSG_CLOEXEC, NULL);
		if (n <= 0)
			break;
		for (int i = 0; i < n; i++) {
			bool trunc = wmsgs[i].msg_hdr.msg_flags & MSG_TRUNC;

			nfds = msg_fds(&wmsgs[i].msg_hdr, fds, DW_ATTACH_MAXFDS);
			if (wmsgs[i].msg_len == 0 && !trunc) {
				for (int j = i + 1; j < n; j++)	/* unread */
					nfds += msg_fds(&wmsgs[j].msg_hdr,
							fds + nfds, 0);
				while (nfds > 0)
					close(fds[--nfds]);
				goto gone;	/* EOF */
			}
			if (nfds > 0 && !trunc &&
			    wmsgs[i].msg_len == sizeof(struct divert_wire_hdr) &&
			    ((struct divert_wire_hdr *)wiov[i].iov_base)->type ==
			    DW_ATTACH) {
				struct divert_wire_hdr m;

				memcpy(&m, wiov[i].iov_base, sizeof(m));
				client_attach(c, &m, fds, nfds);
				continue;
			}
			while (nfds > 0)	/* descriptors nothing asked for */
				close(fds[--nfds]);
			if (trunc)
				stats.bad_writes++;
			else
				client_message(c, wiov[i].iov_base,
					       wmsgs[i].msg_len);
		}
		if (n < WRITE_BATCH)
			break;
	}
	if (n < 0 && errno != EAGAIN && errno != EINTR)
		goto gone;
	if ((events & (EPOLLHUP | EPOLLERR)) && n <= 0)
		goto gone;
	if (c->ring != NULL) {
		if (ring_drain(c) < 0) {
			client_close(c);
			return;
		}
		if (c->full)
			(void)ring_wait_room(c);
	}
	return;
gone:
	log_debug("client %d closed", (int)c->pid);
	if (c->ring != NULL)	/* what it wrote back before it closed */
		(void)ring_drain(c);
	client_close(c);
}

/* May this peer divert?  Root, or a member of the configured group (its
 * primary group or one of its supplementary groups, SO_PEERGROUPS). */
static bool peer_allowed(int fd, const struct ucred *cred)
{
	gid_t groups[256];
	socklen_t len = sizeof(groups);

	if (cred->uid == 0)
		return true;
	if (cfg->group == (gid_t)-1)
		return false;
	if (cred->gid == cfg->group)
		return true;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
		return false;
	for (size_t i = 0; i < len / sizeof(groups[0]); i++)
		if (groups[i] == cfg->group)
			return true;
	return false;
}

/* Turn a connection away with the errno its socket() should fail with. */
static void refuse(int fd, int err)
{
	struct divert_wire_hdr no = {
		.type = DW_WELCOME, .version = DIVERT_WIRE_VERSION,
		.arg = (uint32_t)err,
	};

	send(fd, &no, sizeof(no), MSG_DONTWAIT | MSG_NOSIGNAL);
	close(fd);
}

/* A connection id no one can guess, and no client has. */
static uint64_t new_conn_id(void)
{
	uint64_t id;

	do {
		if (getrandom(&id, sizeof(id), 0) != sizeof(id))
			return 0;
	} while (id == 0 || client_by_id(id) != NULL);
	return id;
}

static void listener_event(struct pollable *p, uint32_t events)
{
	struct divert_wire_hdr hello = {
		.type = DW_WELCOME, .version = DIVERT_WIRE_VERSION,
	};
	struct ucred cred;
	socklen_t credlen = sizeof(cred);
	struct client *c;
	int fd;

	(void)events;
	for (;;) {
		fd = accept4(p->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0 && (errno == EMFILE || errno == ENFILE) &&
		    reserve_fd >= 0) {
			/* out of descriptors: take the connection with the
			 * one we kept back and close it, so the listener
			 * does not stay readable and spin the loop */
			close(reserve_fd);
			fd = accept4(p->fd, NULL, NULL, SOCK_CLOEXEC);
			if (fd >= 0)
				close(fd);
			reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
			log_limited(&rl_client, 4, "refusing a client: out of "
				    "file descriptors");
			continue;
		}
		if (fd < 0)
			break;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) < 0 ||
		    !peer_allowed(fd, &cred)) {
			/* a divert socket takes privilege, as on FreeBSD */
			log_limited(&rl_client, 5, "refusing a client (uid %d, "
				    "pid %d): neither root nor in divertd's "
				    "group", (int)cred.uid, (int)cred.pid);
			refuse(fd, EPERM);
			continue;
		}
		if (nclients >= cfg->max_clients) {
			log_limited(&rl_client, 4, "refusing a client (pid %d): "
				    "%u clients, the limit (-c)", (int)cred.pid,
				    nclients);
			refuse(fd, ENOBUFS);
			continue;
		}
		if ((c = calloc(1, sizeof(*c))) == NULL ||
		    (c->id = new_conn_id()) == 0) {
			log_limited(&rl_client, 4, "refusing a client: %s",
				    strerror(errno));
			free(c);
			refuse(fd, ENOBUFS);
			continue;
		}
		c->p.fd = fd;
		c->p.handle = client_event;
		c->ctl.fd = -1;
		c->look_ms = RING_LOOK_MS;
		c->root = cred.uid == 0;
		c->pid = cred.pid;
		client_set_rcvbuf(c, DIVERT_SOCKBUF_DEFAULT);
		hello.conn = c->id;
		if (send(fd, &hello, sizeof(hello), MSG_NOSIGNAL) < 0 ||
		    loop_add(&c->p, EPOLLIN) < 0) {
			close(fd);
			free(c);
			continue;
		}
		clients[nclients++] = c;
	}
}

/* ---- packets from the kernel ----------------------------------------- */

void divert_sock_packet(struct nfqb_packet *pkt, void *arg)
{
	uint16_t tag = mark_tag(cfg->ml, pkt->mark);
	const struct rule *r = rules_find_tee_rule(cfg->rs, tag, pkt->queue);
	bool tee = r != NULL;

	/* a tee's packets carry a value of their own; the program sees the
	 * tee's rule number, and the original resumes right after the tee */
	if (tee)
		tag = r->num;
	struct client *c = port_owner[pkt->queue];
	const struct iface *in;
	struct pending *pd;
	struct held *h = NULL;

	(void)arg;
	if (tee)	/* the original goes on after the tee rule at once */
		nfqb_verdict(pkt->queue, pkt->id, NF_REPEAT, &pkt->mark, NULL, 0);
	if (c == NULL) {
		if (!tee) {
			nfqb_verdict(pkt->queue, pkt->id, NF_DROP, NULL, NULL, 0);
			stats.noport++;
		}
		return;
	}
	if (c->full) {
		/* its buffer is full, as FreeBSD's sbappendaddr() finds it:
		 * dropped, without checksum, hash or send first, so that an
		 * overloaded program costs the daemon as little as possible */
		if (!tee)
			nfqb_verdict(pkt->queue, pkt->id, NF_DROP, NULL, NULL, 0);
		stats.full++;
		return;
	}
	if (npending == PENDING_MAX)
		divert_sock_flush();
	if (pkt->csum_not_ready)
		cksum_complete_l4(pkt->data, pkt->len);
	in = iftable_by_index((int)pkt->indev);
	if (c->ring != NULL) {
		struct sockaddr_in addr;

		divert_wire_make_addr(&addr, tag,
				      pkt->hook == NF_INET_PRE_ROUTING,
				      in != NULL ? in->first_v4
						 : (struct in_addr){ 0 },
				      in != NULL ? in->name : NULL);
		if (!ring_post(c, &addr, pkt->data, pkt->len)) {
			if (!tee)
				nfqb_verdict(pkt->queue, pkt->id, NF_DROP,
					     NULL, NULL, 0);
			stats.full++;
			client_full(c);
			return;
		}
		if (tee) {
			stats.teed++;
			return;
		}
		stats.diverted++;
	}
	if (!tee) {
		if (batch_now == 0)
			batch_now = now_ms();	/* one clock read per batch */
		h = held_get(c, batch_now);
		h->queue = pkt->queue;
		h->id = pkt->id;
		h->mark = pkt->mark;
		h->dir = pkt->hook == NF_INET_PRE_ROUTING ? DIR_IN : DIR_OUT;
		h->key = divert_wire_packet_key(pkt->data, pkt->len);
		h->len = pkt->len;
		h->hash = packet_hash(pkt->data, pkt->len);
		held_index_add(h);
	}
	if (c->ring != NULL)
		return;
	pd = &pending[npending++];
	pd->c = c;
	pd->h = h;
	pd->id = pkt->id;
	memset(&pd->hdr, 0, sizeof(pd->hdr));
	pd->hdr.type = DW_PACKET;
	pd->hdr.version = DIVERT_WIRE_VERSION;
	divert_wire_make_addr(&pd->hdr.addr, tag,
			      pkt->hook == NF_INET_PRE_ROUTING,
			      in != NULL ? in->first_v4 : (struct in_addr){ 0 },
			      in != NULL ? in->name : NULL);
	pd->iov[0].iov_base = &pd->hdr;
	pd->iov[0].iov_len = sizeof(pd->hdr);
	pd->iov[1].iov_base = pkt->data;
	pd->iov[1].iov_len = pkt->len;
}

/* A send that failed: the client's buffer is full (FreeBSD drops the
 * packet when the socket buffer is), or the client is gone. */
static void pending_failed(struct pending *pd)
{
	if (pd->h != NULL && pd->h->c == pd->c && pd->h->id == pd->id)
		held_drop(pd->h);
	stats.full++;
}

/* Send what this batch collected: one sendmmsg per client, each client's
 * packets in the order they came. */
void divert_sock_flush(void)
{
	static struct pending *order[PENDING_MAX];

	for (unsigned first = 0; first < npending; first++) {
		struct client *c = pending[first].c;
		unsigned run = 0, sent = 0;

		if (c == NULL)		/* sent already, or client closed */
			continue;
		for (unsigned k = first; k < npending; k++) {
			if (pending[k].c != c)
				continue;
			order[run] = &pending[k];
			memset(&pending_msgs[run], 0, sizeof(pending_msgs[0]));
			pending_msgs[run].msg_hdr.msg_iov = pending[k].iov;
			pending_msgs[run].msg_hdr.msg_iovlen = 2;
			run++;
		}
		while (sent < run) {
			int n = sendmmsg(c->p.fd, &pending_msgs[sent], run - sent,
					 MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n <= 0 && errno == EAGAIN)
				client_full(c);
			if (n <= 0) {
				/* the first unsent one failed: drop it, try
				 * the rest (a smaller one may still fit) */
				pending_failed(order[sent]);
				sent++;
				continue;
			}
			for (int k = 0; k < n; k++) {
				if (order[sent + (unsigned)k]->h != NULL)
					stats.diverted++;
				else
					stats.teed++;
			}
			sent += (unsigned)n;
		}
		for (unsigned k = 0; k < run; k++)
			order[k]->c = NULL;
	}
	npending = 0;
	batch_now = 0;
	ring_kick_flush();
}

/* The loop woke up: it will look at every tx ring before it sleeps again,
 * so a write-back needs no wakeup until then. */
void divert_sock_awake(void)
{
	for (unsigned i = 0; i < nclients; i++)
		if (clients[i]->ring != NULL)
			atomic_store_explicit(&clients[i]->ring->tx.wake, 0,
					      memory_order_relaxed);
}

/*
 * The loop is about to wait: what the ring clients wrote back is handled
 * now, and each is told that we sleep (tx.wake), so that its next write
 * wakes us.  The flag goes up before the ring is looked at: a write that
 * this look misses sees the flag.
 */
void divert_sock_idle(void)
{
	for (unsigned i = nclients; i-- > 0;) {
		struct client *c = clients[i];

		if (c->ring == NULL)
			continue;
		int n;

		atomic_store(&c->ring->tx.wake, 1);
		if ((n = ring_drain(c)) < 0) {
			client_close(c);	/* moves the last one to i */
			continue;
		}
		/* a look that found nothing: the next one waits longer */
		c->look_ms = n > 0 ? RING_LOOK_MS : c->look_ms >= RING_LOOK_MAX_MS
			     ? RING_LOOK_MAX_MS : c->look_ms * 2;
		if (c->full)
			(void)ring_wait_room(c);
	}
	divert_sock_flush();
	clients_bury();
}

/* ---- the listening socket -------------------------------------------- */

/*
 * The socket's directory, made (0755) if it is missing.  divertd binds,
 * chowns and renames a file in it as root, so it must be a real directory
 * (not a symlink) that only root can write: one that a user can write
 * lets that user swap the new socket for a symlink and have root hand him
 * any file.  An O_PATH descriptor of it, with the socket's name in it in
 * *base, or -1 with the reason logged.
 */
static int socket_dir(const char *path, const char **base)
{
	char dir[sizeof(listen_path)];
	const char *slash = strrchr(path, '/');
	struct stat st;
	int dfd;

	if (slash == NULL) {
		snprintf(dir, sizeof(dir), ".");
		*base = path;
	} else {
		snprintf(dir, sizeof(dir), "%.*s", slash == path ? 1 :
			 (int)(slash - path), path);
		*base = slash + 1;
	}
	if (**base == '\0' || strcmp(*base, ".") == 0 ||
	    strcmp(*base, "..") == 0) {
		log_err("%s: not a socket file name", path);
		return -1;
	}
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		log_err("cannot create the directory %s: %s", dir, strerror(errno));
		return -1;
	}
	dfd = open(dir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0) {
		log_err("the socket's directory %s: %s", dir, errno == ELOOP ||
			errno == ENOTDIR ? "a symlink or not a directory: "
			"refused" : strerror(errno));
		return -1;
	}
	if (fstat(dfd, &st) < 0 || st.st_uid != 0 ||
	    (st.st_mode & (S_IWGRP | S_IWOTH))) {
		log_err("the socket's directory %s is writable by others than "
			"root (owner %d, mode %04o): refused, since whoever can "
			"write it could make divertd change any file", dir,
			(int)st.st_uid, (unsigned)(st.st_mode & 07777));
		close(dfd);
		return -1;
	}
	if (fstatat(dfd, *base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    !S_ISSOCK(st.st_mode)) {
		log_err("%s exists and is not a socket: refused", path);
		close(dfd);
		return -1;
	}
	return dfd;
}

int divert_sock_open(const struct divert_config *c)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char tmp[sizeof(sun.sun_path)];
	const char *base, *tbase;
	mode_t mask;
	int fd, dfd, r;

	cfg = c;
	if (strlen(c->socket_path) >= sizeof(sun.sun_path) - 16) {
		log_err("socket path too long: %s", c->socket_path);
		return -1;
	}
	held_pool = calloc(HELD_POOL, sizeof(*held_pool));
	held_index = calloc(HELD_BUCKETS, sizeof(*held_index));
	wbuf = malloc((size_t)WRITE_BATCH * WRITE_SLOT);
	clients = calloc(c->max_clients, sizeof(*clients));
	kicks = calloc(c->max_clients, sizeof(*kicks));
	if (held_pool == NULL || held_index == NULL || wbuf == NULL ||
	    clients == NULL || kicks == NULL)
		return -1;
	for (size_t i = 0; i < HELD_POOL; i++) {
		held_pool[i].gnext = held_free;
		held_free = &held_pool[i];
	}
	for (int i = 0; i < WRITE_BATCH; i++) {
		wiov[i].iov_base = wbuf + (size_t)i * WRITE_SLOT;
		wiov[i].iov_len = WRITE_SLOT;
		wmsgs[i].msg_hdr.msg_iov = &wiov[i];
		wmsgs[i].msg_hdr.msg_iovlen = 1;
		wmsgs[i].msg_hdr.msg_control = wctl[i].buf;
		wmsgs[i].msg_hdr.msg_controllen = sizeof(wctl[i].buf);
	}

	reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if ((dfd = socket_dir(c->socket_path, &base)) < 0)
		return -1;
	/* bind a temporary name and rename it into place: the socket file
	 * appears only when it already accepts connections.  Its mode comes
	 * from the umask at bind (0660), its group by descriptor-relative
	 * calls that follow no symlink. */
	snprintf(tmp, sizeof(tmp), "%s.%d", c->socket_path, (int)getpid());
	tbase = tmp + (base - c->socket_path);
	(void)unlinkat(dfd, tbase, 0);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", tmp);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	mask = umask(0117);
	r = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(mask);
	if (r < 0 ||
	    fchownat(dfd, tbase, 0, c->group == (gid_t)-1 ? 0 : c->group,
		     AT_SYMLINK_NOFOLLOW) < 0 ||
	    listen(fd, SOMAXCONN) < 0 ||
	    renameat(dfd, tbase, dfd, base) < 0) {
		log_err("cannot listen on %s: %s", c->socket_path, strerror(errno));
		(void)unlinkat(dfd, tbase, 0);
		if (fd >= 0)
			close(fd);
		close(dfd);
		return -1;
	}
	close(dfd);
	snprintf(listen_path, sizeof(listen_path), "%s", c->socket_path);
	listener.fd = fd;
	listener.handle = listener_event;
	return loop_add(&listener, EPOLLIN);
}

void divert_sock_close(void)
{
	while (clients != NULL && nclients > 0)
		client_close(clients[0]);
	clients_bury();
	while (gfirst != NULL)
		held_drop(gfirst);
	if (listener.fd >= 0) {
		close(listener.fd);
		unlink(listen_path);
	}
	listener.fd = -1;
	if (reserve_fd >= 0)
		close(reserve_fd);
	reserve_fd = -1;
	free(held_pool);
	free(held_index);
	held_index = NULL;
	free(wbuf);
	free(clients);
	free(kicks);
	kicks = NULL;
	nkicks = 0;
	held_free = NULL;	/* pointed into the pool */
	held_pool = NULL;
	wbuf = NULL;
	clients = NULL;
}

const struct divert_stats *divert_sock_stats(void)
{
	return &stats;
}

size_t divert_sock_ports(struct divert_sock_info *out, size_t max)
{
	size_t n = 0;

	for (unsigned p = 0; p < 65536 && n < max; p++) {
		const struct client *c = port_owner[p];

		if (c == NULL)
			continue;
		out[n].port = (uint16_t)p;
		out[n].pid = c->pid;
		out[n].held = c->nheld;
		n++;
	}
	return n;
}

unsigned divert_sock_clients(void)
{
	return nclients;
}

unsigned divert_sock_held(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < nclients; i++)
		n += clients[i]->nheld;
	return n;
}
