/*
 * divert_sock.h: what the four files of the client side share, and only
 * they include (the rest of the daemon sees divertd.h's divert_sock_*()).
 *
 *   divert_sock.c  the listening socket and who may connect; the
 *                  divert_sock_*() API; packets from the kernel: held,
 *                  posted to a ring or sent in one batch per client
 *   client.c       the clients: their registry and divert ports, their
 *                  messages (writes, bind, options, attaching, divertctl),
 *                  their end
 *   held.c         the held packets: the pool, their index, expiry
 *   ring.c         the daemon's side of the shared-memory rings
 *
 * divert_sock.c owns what they all use: the configuration divertd.c
 * handed divert_sock_open(), the counters divert_sock_stats() shows and
 * the rate limit of what clients make us log; it hands them to the
 * others' _open().  Prototypes are grouped by the file that defines them.
 */
#ifndef DIVERT_SOCK_H
#define DIVERT_SOCK_H

#include <time.h>
#include <sys/socket.h>
#include <xxhash.h>

#include "divertd.h"
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

#define CLIENT_HELD_MAX	4096		/* held packets, one client */
/* How soon the loop looks at the tx rings again while a ring client
 * holds packets with others unread in its rx ring, at first and at most
 * (ring_unread_held() in ring.c says why) */
#define RING_LOOK_MS 1
#define RING_LOOK_MAX_MS 64

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
	bool direct;			/* it reads its port's queue itself
					 * (nfqb_lend): nothing of it here */
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

static inline uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- divert_sock.c ---------------------------------------------------- */

/* c is closing: what this batch collected for it is sent nowhere. */
void divert_sock_forget(const struct client *c);

/* ---- client.c --------------------------------------------------------- */

int clients_open(const struct divert_config *cfg, struct divert_stats *stats,
		 struct log_ratelimit *rl);
/* Close every client, free them and what clients_open() made. */
void clients_close(void);
/* A connection the listener let in, c made with its id: welcomed,
 * watched, counted.  0, or -1 (the caller closes fd and frees c). */
int client_start(struct client *c, int fd, const struct ucred *cred);
unsigned client_count(void);
struct client *client_nth(unsigned i);	/* i < client_count() */
struct client *client_by_id(uint64_t id);
struct client *client_by_port(uint16_t port);	/* NULL: none bound */
void clients_rules_changed(void);
void client_full(struct client *c);
void client_room(struct client *c);
int client_write(struct client *c, const struct divert_wire_hdr *m,
		 uint8_t *pkt, size_t len);
void client_close(struct client *c);
void clients_bury(void);

/* ---- held.c ----------------------------------------------------------- */

int held_open(const struct divert_config *cfg, struct divert_stats *stats);
/* Drop every held packet, and free the pool. */
void held_close(void);
struct held *held_get(struct client *c, uint64_t now);
void held_index_add(struct held *h);
void held_drop(struct held *h);
struct held *held_find(struct client *c, uint8_t dir, uint32_t key,
		       uint64_t hash, uint32_t len);
void held_reinject(struct held *h, bool out, uint16_t tag,
		   const uint8_t *pkt, uint32_t len);
/* ms until the next held packet's time is up; -1: none held. */
int held_timeout(void);
void held_expire(void);

/* ---- ring.c ----------------------------------------------------------- */

int rings_open(unsigned max_clients, struct divert_stats *stats,
	       struct log_ratelimit *rl);
void rings_close(void);
int ring_unread_held(void);
int ring_open(struct client *c);
int ring_adopt(struct client *c, int fd);
void ring_close(struct client *c);
bool ring_post(struct client *c, const struct sockaddr_in *addr,
	       const uint8_t *pkt, uint32_t len);
void ring_kick_flush(void);
int ring_drain(struct client *c);
bool ring_wait_room(struct client *c);

#endif /* DIVERT_SOCK_H */
