/*
 * ring.c: the daemon's side of the shared-memory rings.
 *
 * A client that asked for one (DW_RING) reads and writes back through a
 * shared-memory ring (divert_wire.h): divertd copies each packet into
 * the rx ring and wakes the client only when the ring was empty, once per
 * batch; the client's write-backs wait in the tx ring, which the loop
 * empties once per round (divert_sock_idle()), waking up for them only
 * when it was about to sleep.  The ring is the client's memory as much as
 * ours: a write is copied out before it is looked at, positions are
 * checked, and a client that breaks the format is disconnected.
 *
 * Owns each client's mapping and our positions in it (the ring fields of
 * struct client), the clients to wake at the end of a batch (kicks[]) and
 * the copy of a write taken out of a ring.  What flows through here:
 *
 *  in    a memfd made for a client (ring_open(): client.c's DW_RING) or
 *        adopted from it (ring_adopt(): DW_ATTACH after a restart of
 *        divertd); packets to post (ring_post(): divert_sock.c's packet
 *        path); the loop's rounds (ring_drain(), ring_kick_flush(),
 *        ring_unread_held()).
 *
 *  out   DW_KICKs to readers whose ring was empty; each write-back, as the
 *        verdict of the packet it answers when its bytes are unchanged
 *        (held.c), else as a socket's write (client_write(): client.c);
 *        room again for a client that was full (client_room()).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "divert_sock.h"

#define RING_WAIT_MAX	(CLIENT_HELD_MAX / 2)	/* packets waiting in a ring:
					 * the oldest held one, evicted at
					 * CLIENT_HELD_MAX, was read already */

static struct divert_stats *ring_stats;		/* divert_sock.c's */
static struct log_ratelimit *ring_rl;		/* divert_sock.c's rl_client */
static struct client **kicks;		/* ring clients to wake at the flush */
static unsigned nkicks;
static uint8_t ring_pkt[DIVERT_WIRE_MAXPKT];	/* a write read out of a ring */

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

/* How soon a look at the tx rings is due, in ms; -1: none. */
int ring_unread_held(void)
{
	int t = -1;

	for (unsigned i = 0; i < client_count(); i++) {
		const struct client *c = client_nth(i);

		if (c->ring != NULL && c->nheld > 0 &&
		    atomic_load_explicit(&c->ring->rx.count,
					 memory_order_relaxed) > 0 &&
		    (t < 0 || (int)c->look_ms < t))
			t = (int)c->look_ms;
	}
	return t;
}

int ring_open(struct client *c)
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
int ring_adopt(struct client *c, int fd)
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

void ring_close(struct client *c)
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
bool ring_post(struct client *c, const struct sockaddr_in *addr,
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
void ring_kick_flush(void)
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
int ring_drain(struct client *c)
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
		ring_stats->bad_writes++;
		log_limited(ring_rl, 4, "client %d broke its ring: "
			    "disconnected", (int)c->pid);
		return -1;
	}
	return n;
}

/*
 * A ring client that is full: true (and it is not any more) when its ring
 * has room, else its reader is asked to kick us when it takes a packet.
 * The flag goes up before the ring is looked at: a reader that took
 * packets just now either is seen here or sees the flag.  Called again at
 * each kick and round of the loop until there is room.
 */
bool ring_wait_room(struct client *c)
{
	atomic_store(&c->ring->rx.wake, 1);
	if (!ring_room(c))
		return false;
	client_room(c);
	return true;
}

int rings_open(unsigned max_clients, struct divert_stats *stats,
	       struct log_ratelimit *rl)
{
	ring_stats = stats;
	ring_rl = rl;
	kicks = calloc(max_clients, sizeof(*kicks));
	return kicks == NULL ? -1 : 0;
}

void rings_close(void)
{
	free(kicks);
	kicks = NULL;
	nkicks = 0;
}
