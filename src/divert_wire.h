/*
 * divert_wire.h: the protocol between divertd and its clients (the shim).
 *
 * This is the one header the shim shares with the daemon.  A client is a
 * SOCK_SEQPACKET connection to divertd's UNIX socket; the application's
 * divert fd is a real socket too (one end of a socketpair, below), so
 * poll/select/epoll/O_NONBLOCK need no help.  Every message starts with struct divert_wire_hdr; SOCK_SEQPACKET keeps the
 * boundaries, so the length of a message is what recv() returns.
 *
 * A divert socket (the application's fd) is one end of a socketpair the
 * shim makes; the other end goes to the daemon on the shim's connection:
 *   client -> daemon  DW_ATTACH    with SCM_RIGHTS: the pair's other end,
 *                                  then (arg DW_ATTACH_RING) the ring's
 *                                  memfd that an earlier divertd made;
 *                                  arg DW_ATTACH_AGAIN after a restart of
 *                                  divertd, val = writes the shim refused
 *                                  while none ran (counted).  Reply
 *                                  DW_REPLY on the connection, arg = 0 or
 *                                  errno; from then on the messages below
 *                                  marked "data" flow on the pair, and the
 *                                  connection carries nothing: its end is
 *                                  the client's end.  The shim holds the
 *                                  pair's other end too, so the
 *                                  application's fd outlives divertd: it
 *                                  goes quiet until the shim attaches it
 *                                  to the next one (docs/SHIM.md).
 * Connection (before DW_ATTACH, the data messages too):
 *   daemon -> client  DW_WELCOME   first message after accept; conn = the
 *                                  connection id that DW_BIND names, a
 *                                  64-bit random secret only this
 *                                  connection is told.  arg = 0, or the
 *                                  errno of a refusal (EPERM: the peer may
 *                                  not divert; ENOBUFS: the client limit is
 *                                  reached), after which the daemon closes.
 *   daemon -> client  DW_PACKET    hdr.addr = the FreeBSD divert address
 *                                  (tag in sin_port, host order; sin_addr;
 *                                  interface name in sin_zero); the packet
 *                                  follows the header.
 *   client -> daemon  DW_PACKET    a written packet; hdr.addr = the sendto()
 *                                  address as given (INADDR_ANY = outgoing),
 *                                  arg = 1 when an address was given.
 *   client -> daemon  DW_SETOPT    arg = SO_RCVBUF or SO_SNDBUF, val = bytes
 *                                  (at most DIVERT_WIRE_SOCKBUF_MAX).
 * Control connection (short-lived, one request, one reply; the shim skips
 * a DW_WELCOME that may come first on it too):
 *   client -> daemon  DW_BIND      conn = connection id, val = port (host
 *                                  order); reply DW_REPLY, arg = 0 or errno.
 *                                  arg DW_BIND_DIRECT: the client would
 *                                  read the port's queue itself (the
 *                                  direct path, docs/DIRECT.md).  Granted
 *                                  to root only: the reply then has val =
 *                                  DW_BIND_DIRECT, the queue's netlink
 *                                  socket in an SCM_RIGHTS message and a
 *                                  struct dw_view (below) after the
 *                                  header; otherwise val = 0 and packets
 *                                  come through divertd as before.
 *   daemon -> client  DW_VIEW      after a rule change, to a client given
 *                                  its queue: a struct dw_view after the
 *                                  header, on its connection (or, once
 *                                  attached, on the connection it came on).
 * Write channel (one per process, kept open; the shim skips its welcome):
 *   client -> daemon  DW_WRITE     a written packet that answers no packet
 *                                  the socket read (so the daemon injects a
 *                                  new one, and its errors must reach
 *                                  sendto()): conn = the divert socket's
 *                                  connection id, val = a sequence number,
 *                                  arg and addr as for DW_PACKET; reply
 *                                  DW_REPLY, arg = 0 or errno, val = the
 *                                  same sequence number.
 * divertctl connection (one request, then the replies; divertctl skips the
 * DW_WELCOME that comes first):
 *   client -> daemon  DW_CTL       the command's argv ("list", "add", "100",
 *                                  ...) as NUL-terminated strings after the
 *                                  header; arg = DW_CTL_JSON or 0.
 *   daemon -> client  DW_CTLREPLY  arg = the exit status for divertctl,
 *                                  the payload = output text (not
 *                                  NUL-terminated); text longer than one
 *                                  message comes in several, val = 1 on all
 *                                  but the last (val = 0).
 * The ring (optional; see "the shared-memory ring" below):
 *   client -> daemon  DW_RING      on the connection, before DW_ATTACH
 *                                  and bind: deliver through a ring.
 *   daemon -> client  DW_RING      arg = 0 and the ring's memfd in an
 *                                  SCM_RIGHTS message, or arg = the errno
 *                                  (the socket carries packets as before).
 *   either way        DW_KICK      a wakeup, nothing else (below).
 * Who may do what.  The socket file is owner root, mode 0660, in the group
 * divertd is given (-g; root's otherwise).  The daemon checks every peer
 * with SO_PEERCRED: root, or a member of that group, may divert (bind a
 * port, read, write, inject); anyone else gets a DW_WELCOME with EPERM.
 * Changing the rules with divertctl takes root.  A connection id is a
 * secret: DW_BIND and DW_WRITE act on the connection they name only
 * because a process that never held that connection cannot know its id,
 * and a write on a data connection answers only packets that connection
 * read.
 */
#ifndef DIVERT_WIRE_H
#define DIVERT_WIRE_H

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

#define DIVERT_WIRE_VERSION 1

enum divert_wire_type {
	DW_WELCOME = 1,
	DW_PACKET  = 2,
	DW_SETOPT  = 3,
	DW_BIND    = 4,
	DW_REPLY   = 5,
	DW_WRITE   = 6,
	DW_CTL     = 7,
	DW_CTLREPLY = 8,
	DW_RING    = 9,
	DW_KICK    = 10,
	DW_ATTACH  = 11,
	DW_VIEW    = 12,
};

#define DW_BIND_DIRECT	0x1u	/* DW_BIND arg, and its reply's val */

/* DW_ATTACH arg bits, and the descriptors it carries at most */
#define DW_ATTACH_RING	0x1u	/* the ring's memfd comes second: keep it */
#define DW_ATTACH_AGAIN	0x2u	/* after a restart of divertd */
#define DW_ATTACH_MAXFDS 2

#define DW_CTL_JSON 0x1u	/* DW_CTL arg: JSON output (list, stats, sockets) */
#define DW_CTL_MAXREPLY 16384	/* text bytes in one DW_CTLREPLY */

struct divert_wire_hdr {
	uint16_t type;		/* enum divert_wire_type */
	uint16_t version;	/* DIVERT_WIRE_VERSION */
	uint32_t arg;		/* see above */
	uint64_t conn;		/* DW_WELCOME, DW_BIND: connection id */
	uint32_t val;		/* DW_SETOPT, DW_BIND: value */
	uint32_t pad;
	struct sockaddr_in addr;	/* DW_PACKET */
};

_Static_assert(sizeof(struct divert_wire_hdr) == 40, "wire header size");

/* The largest SO_RCVBUF / SO_SNDBUF a divert socket takes: FreeBSD's
 * default kern.ipc.maxsockbuf (2 MiB) less its overhead factor, as there;
 * a larger one is ENOBUFS in the shim and refused by the daemon. */
#define DIVERT_WIRE_SOCKBUF_MAX 1864135

/* Largest packet either side carries (an IPv4 total length / IPv6 GSO). */
#define DIVERT_WIRE_MAXPKT 65535

/*
 * The checks FreeBSD 14 makes on a written packet, in its order, shared so
 * that the shim gives the errno at sendto() and the daemon never trusts a
 * client to have checked.  The order is the kernel's: sendit() rejects an
 * address shorter than a family (EINVAL), sosend_generic() a packet larger
 * than the send buffer (EMSGSIZE), and only then does div_send() look at the
 * packet (< 20 bytes), the address (family, length), the IP version and,
 * for an outgoing packet, the length field.  addr may be NULL (sendmsg
 * without a name: outgoing).  Only the first 20 bytes of pkt are read, so a
 * caller holding a scattered packet may pass a copy of just those with the
 * full len.  Returns 0 or the errno FreeBSD 14 gives.
 */
static inline int divert_wire_check_write(const void *pkt, size_t len,
					  const struct sockaddr *addr,
					  size_t addrlen, size_t sndbuf)
{
	const uint8_t *p = (const uint8_t *)pkt;
	unsigned version;

	if (addr != NULL && addrlen < sizeof(sa_family_t))
		return EINVAL;
	if (len > sndbuf || len > DIVERT_WIRE_MAXPKT)
		return EMSGSIZE;
	if (len < 20)
		return EINVAL;
	if (addr != NULL) {
		if (addr->sa_family != AF_INET)
			return EAFNOSUPPORT;
		if (addrlen != sizeof(struct sockaddr_in))
			return EINVAL;
	}
	version = p[0] >> 4;
	if (version != 4 && version != 6)
		return EAFNOSUPPORT;
	if (addr == NULL ||
	    ((const struct sockaddr_in *)(const void *)addr)->sin_addr.s_addr == INADDR_ANY) {
		/* outgoing: the length field must not claim more than was
		 * written (IPv4 total length; IPv6 payload length, compared
		 * with the whole packet as FreeBSD does); an IPv4 header
		 * shorter than 20 bytes, or longer than the write, is refused
		 * too (FreeBSD's ip_output() would refuse the latter later;
		 * the daemon must set its checksum) */
		size_t field = version == 4 ? ((size_t)p[2] << 8) | p[3]
					    : ((size_t)p[4] << 8) | p[5];
		if (field > len)
			return EINVAL;
		if (version == 4 && ((size_t)(p[0] & 0x0f) * 4 < 20 ||
				     (size_t)(p[0] & 0x0f) * 4 > len))
			return EINVAL;
	}
	return 0;
}

/*
 * What stays the same when a program rewrites addresses, ports, TTL or
 * DSCP (natd, rewriters): IPv4 identification and protocol, or IPv6 next
 * header and payload length.  The daemon matches a write to the packet it
 * answers by this key; the shim uses it to tell a write-back (answered at
 * once) from a new packet (whose errors sendto() must return).
 */
static inline uint32_t divert_wire_packet_key(const void *pkt, size_t len)
{
	const uint8_t *p = (const uint8_t *)pkt;

	if (len >= 20 && (p[0] >> 4) == 4)
		return 0x40000000u | ((uint32_t)p[4] << 16) |
		       ((uint32_t)p[5] << 8) | p[9];
	if (len >= 40 && (p[0] >> 4) == 6)
		return 0x60000000u | ((uint32_t)p[6] << 16) |
		       ((uint32_t)p[4] << 8) | p[5];
	return 0;
}

/* True when a written packet goes out (sin_addr INADDR_ANY or no address). */
static inline int divert_wire_is_outgoing(const struct sockaddr_in *sin)
{
	return sin == NULL || sin->sin_addr.s_addr == INADDR_ANY;
}

/*
 * The address a reader gets for a diverted packet (FreeBSD div_input):
 * sin_port = the tag as a raw host-order number (not htons), sin_addr = the
 * first IPv4 address of the receiving interface (INADDR_ANY for outgoing
 * packets or an interface without one), sin_zero = the receiving interface
 * name, at most 7 characters and a NUL, zero when there is none.
 */
static inline void divert_wire_make_addr(struct sockaddr_in *sin,
					 uint16_t tag, int incoming,
					 struct in_addr ifaddr,
					 const char *ifname)
{
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_port = tag;
	if (incoming)
		sin->sin_addr = ifaddr;
	if (ifname != NULL)
		memcpy(sin->sin_zero, ifname,
		       strnlen(ifname, sizeof(sin->sin_zero) - 1));
}

/*
 * The shared-memory ring.  A client that asks (DW_RING) gets a memfd,
 * sealed against resizing, that both sides map: a header page, then two
 * byte rings of records, rx (daemon -> program: the packets it reads) and
 * tx (program -> daemon: the packets it writes back).  A record is struct
 * dw_rec and the packet, padded to 8 bytes; one that would not fit before
 * the end of the ring is preceded by a wrap mark (size DW_REC_WRAP) and
 * goes at the start.  head and tail count bytes since the start, never
 * wrapping; each side keeps its own position privately and publishes it,
 * and trusts nothing of the other's but what it checks: the daemon reads
 * every record out of the ring before it looks at it, as it reads a
 * socket message, and a client that breaks the format is disconnected.
 *
 * The data connection stays the readiness signal, so poll, select, epoll,
 * O_NONBLOCK and SO_RCVTIMEO keep their meaning:
 *   rx   count is records posted less records taken, changed only by
 *        atomic add (daemon) and subtract (client).  The daemon sends one
 *        DW_KICK when its add takes count from 0 to 1; the client takes
 *        one DW_KICK off the socket when its subtract takes count from 1
 *        to 0.  So the socket holds a message exactly while the ring holds
 *        a packet (give or take the instant between a post and its add),
 *        and a reader that finds the ring empty waits on the socket.
 *        wake = 1: the daemon found the ring full and waits for room; the
 *        client that takes wake back to 0 sends a DW_KICK.  What fits is
 *        FreeBSD's rule: the packets waiting and their addresses (16
 *        bytes each) within SO_RCVBUF; taken tells the daemon how much
 *        the reader has taken.
 *   tx   wake = 1: the daemon is going to sleep; a client that posts a
 *        record and takes wake back to 0 sends a DW_KICK.  An awake
 *        daemon looks at every tx ring once per round of its loop, so a
 *        busy one is written to without a system call.  A write that does
 *        not fit goes on the socket as a DW_PACKET, as without a ring.
 */
#define DW_RING_MAGIC	0x52575744u	/* "DWWR" */
#define DW_RING_HDR	4096u		/* the header page */
#define DW_RING_RX	(1u << 20)	/* bytes of the rx ring */
#define DW_RING_TX	(512u << 10)	/* bytes of the tx ring */
#define DW_RING_SHIM	1024u		/* the client's own bytes in the header
					 * (its locks); the daemon never reads
					 * them */
#define DW_REC_WRAP	0xffffffffu

struct dw_ring {
	_Atomic uint64_t head;		/* bytes the consumer took */
	uint8_t pad0[56];		/* its own cache line */
	_Atomic uint64_t tail;		/* bytes the producer posted */
	_Atomic int64_t count;		/* rx: records posted - taken */
	_Atomic uint32_t wake;		/* see above */
	uint32_t pad1;
	_Atomic uint64_t taken;		/* rx: bytes the reader took, each
					 * packet's and its 16-byte address's
					 * (FreeBSD's socket buffer count) */
	uint8_t pad2[32];
};

_Static_assert(sizeof(struct dw_ring) == 128, "ring control size");

struct dw_ring_map {
	uint32_t magic, version;	/* DW_RING_MAGIC, DIVERT_WIRE_VERSION */
	uint32_t rx_size, tx_size;	/* DW_RING_RX, DW_RING_TX */
	uint8_t pad[48];
	struct dw_ring rx, tx;
	uint8_t shim[DW_RING_SHIM];
	/* the rings' bytes start at DW_RING_HDR: rx, then tx */
};

_Static_assert(sizeof(struct dw_ring_map) <= DW_RING_HDR, "ring header");

#define DW_RING_LEN	(DW_RING_HDR + DW_RING_RX + DW_RING_TX)	/* the memfd */

/* The bytes of a mapped ring's rx ring, and of its tx ring. */
static inline uint8_t *dw_ring_rx(struct dw_ring_map *map)
{
	return (uint8_t *)map + DW_RING_HDR;
}

static inline uint8_t *dw_ring_tx(struct dw_ring_map *map)
{
	return (uint8_t *)map + DW_RING_HDR + DW_RING_RX;
}

struct dw_rec {
	uint32_t size;			/* the record, 8-aligned; DW_REC_WRAP */
	uint32_t len;			/* the packet's bytes */
	struct sockaddr_in addr;	/* as hdr.addr of DW_PACKET */
	uint64_t pad;
};

_Static_assert(sizeof(struct dw_rec) == 32, "ring record size");

static inline uint64_t dw_rec_size(size_t len)
{
	return (sizeof(struct dw_rec) + len + 7) & ~(uint64_t)7;
}

/*
 * Producer: where a record of a len-byte packet goes, the ring being
 * data[size] (size a multiple of 8, as both rings' are), the consumer at
 * head (as read: anything) and the producer at *tail, with at most limit
 * bytes in use; NULL when it does not fit, or len is over the largest
 * packet.
 * A wrap mark is written and *tail moved past it when the record goes at
 * the start; the caller fills the record, then publishes *tail + its size.
 */
static inline struct dw_rec *dw_ring_reserve(uint8_t *data, uint32_t size,
					     uint64_t head, uint64_t *tail,
					     size_t len, uint64_t limit)
{
	uint64_t need = dw_rec_size(len), used = *tail - head;
	uint64_t off = *tail % size, end = size - off;

	if (used > size || limit > size || len > DIVERT_WIRE_MAXPKT)
		return NULL;		/* a consumer that lies is full */
	if (need > end) {
		if (used + end + need > limit)
			return NULL;
		memcpy(data + off, &(uint32_t){ DW_REC_WRAP }, sizeof(uint32_t));
		*tail += end;
		off = 0;
	} else if (used + need > limit) {
		return NULL;
	}
	return (struct dw_rec *)(void *)(data + off);
}

/*
 * Consumer: the next record at *head below tail, its header copied to
 * *rec (the producer may go on writing the ring); NULL when there is none.
 * Wrap marks are passed (*head moves).  *bad is set when the producer
 * broke the format: the record cannot be trusted, nor anything after it.
 */
static inline const uint8_t *dw_ring_next(const uint8_t *data, uint32_t size,
					  uint64_t *head, uint64_t tail,
					  struct dw_rec *rec, int *bad)
{
	for (;;) {
		uint64_t avail = tail - *head, off = *head % size;
		uint64_t end = size - off;

		*bad = 0;
		if (avail == 0)
			return NULL;
		if (avail > size || avail % 8 != 0 || off % 8 != 0)
			break;
		memcpy(&rec->size, data + off, sizeof(rec->size));
		if (rec->size == DW_REC_WRAP) {
			if (end > avail || off == 0)
				break;
			*head += end;
			continue;
		}
		if (end < sizeof(*rec))
			break;
		memcpy(rec, data + off, sizeof(*rec));
		if (rec->size < sizeof(*rec) || rec->size % 8 != 0 ||
		    rec->size > end || rec->size > avail ||
		    rec->len > DIVERT_WIRE_MAXPKT ||
		    dw_rec_size(rec->len) != rec->size)
			break;
		return data + off + sizeof(*rec);
	}
	*bad = 1;
	return NULL;
}

/* ---- the rules as a program reading its own queue needs them -------------
 *
 * On the direct path (docs/DIRECT.md, not built yet) a root program reads
 * its port's queue itself and gives the verdicts; divertd sends it this
 * view of the rules at bind and after every change.  It holds:
 *   - the mark layout: our bits of the packet mark (mask, shift), which
 *     carry the tag a queued packet came with and the one a verdict sets;
 *   - the hold time (-t), after which a packet read and never written back
 *     is dropped;
 *   - every distinct rule number, ascending: a written packet resumes
 *     after the largest one <= its tag (0: the start of the list), as
 *     rules_resume_tag() computes in the daemon;
 *   - this port's tees, ascending by value: a queued packet whose tag is a
 *     tee's value (no rule number; rules.c counts them down from 65534) is
 *     the tee's copy: the program sees the tee's rule number, and the
 *     original goes on at once.
 * Layout: struct dw_view, then uint16_t nums[nnums], then struct dw_tee
 * tees[ntees], nothing after.  dw_view_check() is what a receiver runs
 * before it trusts one.
 */
struct dw_view {
	uint32_t mask;			/* contiguous, at least 16 bits */
	uint32_t shift;			/* the mask's lowest bit */
	uint32_t hold_ms;
	uint32_t nnums, ntees;
};

struct dw_tee {
	uint16_t value;			/* the tag its copies are queued with */
	uint16_t rule;			/* the tee's rule number */
};

_Static_assert(sizeof(struct dw_view) == 20, "view header size");

#define DW_VIEW_MAXNUMS 65535u
#define DW_VIEW_MAXTEES 65535u

static inline size_t dw_view_len(uint32_t nnums, uint32_t ntees)
{
	return sizeof(struct dw_view) + (size_t)nnums * sizeof(uint16_t) +
	       (size_t)ntees * sizeof(struct dw_tee);
}

static inline const uint16_t *dw_view_nums(const struct dw_view *v)
{
	return (const uint16_t *)(const void *)(v + 1);
}

static inline const struct dw_tee *dw_view_tees(const struct dw_view *v)
{
	return (const struct dw_tee *)(const void *)(dw_view_nums(v) + v->nnums);
}

/* 0 when the len bytes at buf (2-aligned) are a whole, consistent view;
 * EINVAL otherwise. */
static inline int dw_view_check(const void *buf, size_t len)
{
	const struct dw_view *v = (const struct dw_view *)buf;
	const uint16_t *nums;
	const struct dw_tee *tees;

	if (len < sizeof(*v) || v->nnums > DW_VIEW_MAXNUMS ||
	    v->ntees > DW_VIEW_MAXTEES || dw_view_len(v->nnums, v->ntees) != len)
		return EINVAL;
	/* a contiguous mask of at least 16 bits, shift its lowest bit */
	if (v->shift > 16 || (v->mask >> v->shift) < 0xffffu ||
	    (((v->mask >> v->shift) + 1) & (v->mask >> v->shift)) != 0 ||
	    ((v->mask >> v->shift) << v->shift) != v->mask)
		return EINVAL;
	nums = dw_view_nums(v);
	for (uint32_t i = 1; i < v->nnums; i++)
		if (nums[i] <= nums[i - 1])
			return EINVAL;
	tees = dw_view_tees(v);
	for (uint32_t i = 0; i < v->ntees; i++)
		if (i > 0 && tees[i].value <= tees[i - 1].value)
			return EINVAL;
	return 0;
}

/* The tag a packet written with tag resumes after: the largest rule number
 * <= tag, or 0 when there is none. */
static inline uint16_t dw_view_resume(const struct dw_view *v, uint16_t tag)
{
	const uint16_t *nums = dw_view_nums(v);
	uint32_t lo = 0, hi = v->nnums;

	while (lo < hi) {		/* the first number > tag */
		uint32_t mid = lo + (hi - lo) / 2;

		if (nums[mid] <= tag)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo == 0 ? 0 : nums[lo - 1];
}

/* Whether a packet queued with tag is a tee's copy; if so *rule = the
 * tee's rule number, the tag the program sees. */
static inline int dw_view_tee(const struct dw_view *v, uint16_t tag,
			      uint16_t *rule)
{
	const struct dw_tee *tees = dw_view_tees(v);
	uint32_t lo = 0, hi = v->ntees;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (tees[mid].value < tag)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == v->ntees || tees[lo].value != tag)
		return 0;
	*rule = tees[lo].rule;
	return 1;
}

#endif /* DIVERT_WIRE_H */
