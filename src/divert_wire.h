/*
 * divert_wire.h: the protocol between divertd and its clients (the shim).
 *
 * This is the one header the shim shares with the daemon.  A client is a
 * SOCK_SEQPACKET connection to divertd's UNIX socket; the application's
 * divert fd IS that connection, so poll/select/epoll/O_NONBLOCK need no help.
 * Every message starts with struct divert_wire_hdr; SOCK_SEQPACKET keeps the
 * boundaries, so the length of a message is what recv() returns.
 *
 * Data connection (the application's fd):
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
};

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

#endif /* DIVERT_WIRE_H */
