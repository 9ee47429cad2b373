/*
 * divert_nat: network address translation for a gateway with one public
 * address, in the manner of natd(8).
 *
 *	divert_nat [-v] -a address [-p lo-hi] [-t secs] [-c secs] [-u secs]
 *	    [-i secs] port
 *
 * Reads the packets that a divert rule on the gateway's public interface
 * sends to divert port PORT, in both directions.  recvfrom() says which:
 * sin_addr is INADDR_ANY for an outgoing packet.
 *
 * Outgoing TCP segments, UDP datagrams and ICMP echo requests from any
 * source other than ADDRESS (-a) leave with ADDRESS as their source and a
 * public port (for ICMP, echo id) from LO-HI (-p, default 61000-65535).
 * The table entry made for them stands for the private address and port,
 * the remote address and port, and that public port, which no other entry
 * of the protocol gets until this one expires.  Incoming packets to ADDRESS from the
 * entry's remote address and port to its public port (ICMP: echo replies
 * with its id, from its remote address) get the private address and port
 * back.  ICMP errors (unreachable, source quench, time exceeded, parameter
 * problem) about a translated packet are translated both ways, the packet
 * they quote included.  Every checksum covering a changed field is updated
 * for the change (RFC 1624): the IPv4 header's, TCP's and UDP's (whose
 * pseudo-header holds the addresses), ICMP's.  Each packet is written back
 * to the address recvfrom() gave, so it goes on after the diverting rule.
 *
 * Passed unchanged: incoming packets that match no entry (traffic to the
 * gateway itself), outgoing ones from ADDRESS (the gateway's own: keep
 * LO-HI out of its ephemeral port range, on Linux 32768-60999), IPv6, and
 * IPv4 fragments, which have no ports to look up (divertd diverts packets
 * whole, so on Linux there are hardly any; on FreeBSD the outgoing
 * fragments of a forwarded packet leave untranslated).  Dropped, so that no
 * private address leaves: outgoing IPv4 this program cannot translate
 * (other protocols, other ICMP types, truncated headers) and outgoing
 * packets of a new flow when every public port is in use.
 *
 * Entries expire when idle: TCP after -t seconds (default 7440, RFC 5382),
 * or -c (default 240) before the first answer and after a FIN or RST; UDP
 * after -u (300, RFC 4787); ICMP after -i (60, RFC 5508).  The time select()
 * waits is the time until the next entry is due.
 *
 * SIGUSR1 prints the table; SIGHUP flushes it (every translation is
 * forgotten: connections through it break, as if natd were restarted);
 * SIGINT or SIGTERM prints the table and the totals and exits 0.  -v
 * prints each entry as it is made, expires or is flushed.  The table:
 *
 *	divert_nat: 2 entries
 *	proto private               public remote                state           out      in     age    idle
 *	tcp   192.0.2.2:36176        63791 198.51.100.2:5001     established      51      50      9s      0s
 *	icmp  192.0.2.2:20653        64237 198.51.100.2          two-way           3       3     12s     10s
 *
 * (for ICMP the "port" is the echo id), and at exit, after the table:
 *
 *	divert_nat: translated 55 out, 54 in (0 ICMP errors); passed 2
 *	unchanged (2 IPv6, 0 fragments); dropped 0 for want of a port, 0
 *	untranslatable; entries 3 made, 0 expired, 0 flushed
 *
 * (one line).  IPv4 only; no port forwarding and no hairpinning.
 *
 * On FreeBSD, NAT em0's clients to 203.0.113.1 (without ipfw's own NAT):
 *	sysctl net.inet.ip.forwarding=1
 *	ipfw add 100 divert 8668 ip from any to any via em0
 *	./divert_nat -a 203.0.113.1 8668
 *
 * On Linux with divertd installed under /usr/local, as root, eth1 public:
 *	sysctl -w net.ipv4.ip_forward=1
 *	echo '100 divert 8668 ip from any to any via eth1' >nat.conf
 *	divertd -f nat.conf
 *	cc -o divert_nat divert_nat.c $(pkg-config --cflags divert_shim)
 *	LD_PRELOAD=/usr/local/lib/libdivert_shim.so \
 *	    ./divert_nat -a 203.0.113.1 8668
 */
#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/in_systm.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include <divert.h>
#include <err.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Offsets of the fields rewritten, from the start of their header. */
#define OFF_IP_SUM	10
#define OFF_IP_SRC	12
#define OFF_IP_DST	16
#define OFF_TCP_FLAGS	13
#define OFF_TCP_SUM	16
#define OFF_UDP_SUM	6
#define OFF_ICMP_SUM	2
#define OFF_ICMP_ID	4	/* echo request and reply */
#define ICMP_HDR	8	/* an error's header; the quoted packet follows */

#define NBUCKETS	4096	/* outgoing lookups: a power of two */
#define NEVER		UINT64_MAX

enum { SRC, DST };			/* a flow's two ends */
enum { PI_TCP, PI_UDP, PI_ICMP, NPROTO };	/* the table's protocols */
/* what becomes of a packet: written back as it is or translated, or dropped */
enum verdict { PASS, XLATE, UNTRANSLATABLE, NOPORT };

/* A translation: what the table holds per flow. */
struct entry {
	struct entry	*next;		/* in its hash chain */
	struct in_addr	 priv;		/* the client */
	struct in_addr	 remote;	/* whom it talks to */
	uint16_t	 priv_port;	/* host order; ICMP: the echo id */
	uint16_t	 remote_port;	/* 0 for ICMP */
	uint16_t	 pub_port;	/* what the remote side sees */
	uint8_t		 proto;
	uint8_t		 state;		/* ANSWERED, CLOSING */
	uint64_t	 made, last;	/* ms of CLOCK_MONOTONIC */
	unsigned long long out, in;	/* packets translated */
};
#define ANSWERED	0x01		/* an incoming packet was seen */
#define CLOSING		0x02		/* TCP: a FIN or an RST was seen */

struct totals {
	unsigned long long out, in, errors;	/* translated */
	unsigned long long passed, ip6, frags;	/* written back unchanged */
	unsigned long long noport, untranslatable;	/* dropped */
	unsigned long long made, expired, flushed;	/* entries */
};

struct nat {
	struct in_addr	 public;
	uint16_t	 lo, hi;
	uint64_t	 tcp_ms, transitory_ms, udp_ms, icmp_ms;
	int		 verbose;
	struct entry	*hash[NBUCKETS];	/* by private and remote end */
	struct entry	**by_port[NPROTO];	/* by public port - lo */
	size_t		 cursor[NPROTO];	/* the last public port given */
	uint32_t	 seed;
	size_t		 count;
	uint64_t	 next_expiry;	/* no entry is due before: ms or NEVER */
	struct totals	 t;
};

/*
 * The translatable part of a packet: an IPv4 header and the TCP, UDP or
 * ICMP echo header behind it.  The packet an ICMP error quotes is one
 * too, of which only 8 bytes after the IP header are sure to be there.
 */
struct flow {
	u_char		*ip;
	size_t		 l4;		/* offset of the transport header */
	int		 proto;
	u_char		*sum;		/* its checksum; NULL: none to update */
	int		 pseudo;	/* that checksum covers the addresses */
	struct in_addr	 addr[2];	/* [SRC], [DST] */
	uint16_t	 port[2];	/* ports; ICMP: the echo id in both */
};

static volatile sig_atomic_t got_term, got_hup, got_usr1;

static void
on_signal(int sig)
{
	if (sig == SIGHUP)
		got_hup = 1;
	else if (sig == SIGUSR1)
		got_usr1 = 1;
	else
		got_term = 1;
}

static void
usage(void)
{
	fprintf(stderr, "usage: divert_nat [-v] -a address [-p lo-hi] "
	    "[-t secs] [-c secs] [-u secs] [-i secs] port\n");
	exit(2);
}

static long
number(const char *s, const char *what, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || errno != 0 || v < min || v > max)
		errx(2, "bad %s: %s (%ld-%ld)", what, s, min, max);
	return (v);
}

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
}

/* --- checksums ------------------------------------------------------ */

/* 16-bit words of the packet, in host byte order. */
static uint16_t
get16(const u_char *p)
{
	return ((uint16_t)(p[0] << 8 | p[1]));
}

static void
put16(u_char *p, uint16_t v)
{
	p[0] = (u_char)(v >> 8);
	p[1] = (u_char)v;
}

/*
 * RFC 1624, eqn. 3: the checksum field at sum after one 16-bit word of
 * the data it covers changed from old to new, HC' = ~(~HC + ~m + m').
 */
static void
sum_fix(u_char *sum, uint16_t old, uint16_t new)
{
	uint32_t s;

	s = (uint32_t)(uint16_t)~get16(sum) + (uint16_t)~old + new;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	put16(sum, (uint16_t)~s);
}

/* Set the word at p to v and update the checksums covering it (or NULL). */
static void
set16(u_char *p, uint16_t v, u_char *sum1, u_char *sum2)
{
	uint16_t old = get16(p);

	put16(p, v);
	if (sum1 != NULL)
		sum_fix(sum1, old, v);
	if (sum2 != NULL)
		sum_fix(sum2, old, v);
}

/* The same for an IPv4 address: two words. */
static void
set_addr(u_char *p, struct in_addr a, u_char *sum1, u_char *sum2)
{
	u_char b[4];

	memcpy(b, &a.s_addr, sizeof(b));	/* network order */
	set16(p, get16(b), sum1, sum2);
	set16(p + 2, get16(b + 2), sum1, sum2);
}

/* --- packets -------------------------------------------------------- */

static int
is_icmp_error(int type)
{
	return (type == ICMP_UNREACH || type == ICMP_SOURCEQUENCH ||
	    type == ICMP_TIMXCEED || type == ICMP_PARAMPROB);
}

/*
 * Fill in f for the IPv4 packet of len bytes at p, if it is a TCP segment,
 * UDP datagram or ICMP echo request or reply and no fragment: 0, else -1.
 * quoted: p is what an ICMP error quotes (the transport header may be cut
 * short after 8 bytes, and so lose TCP's checksum).
 */
static int
flow_parse(u_char *p, size_t len, int quoted, struct flow *f)
{
	size_t hl, need, sumoff;
	int type;

	if (len < 20 || p[0] >> 4 != 4)
		return (-1);
	hl = (size_t)(p[0] & 0x0f) << 2;
	if (hl < 20 || hl > len ||
	    (get16(p + 6) & (IP_MF | IP_OFFMASK)) != 0)
		return (-1);
	f->ip = p;
	f->l4 = hl;
	f->proto = p[9];
	switch (f->proto) {
	case IPPROTO_TCP:
		need = quoted ? 8 : 20;
		sumoff = OFF_TCP_SUM;
		f->pseudo = 1;
		break;
	case IPPROTO_UDP:
		need = 8;
		sumoff = OFF_UDP_SUM;
		f->pseudo = 1;
		break;
	case IPPROTO_ICMP:
		need = 8;
		sumoff = OFF_ICMP_SUM;
		f->pseudo = 0;
		break;
	default:
		return (-1);
	}
	if (len - hl < need)
		return (-1);
	if (f->proto == IPPROTO_ICMP) {
		type = p[hl];
		if (type != ICMP_ECHO && type != ICMP_ECHOREPLY)
			return (-1);
		f->port[SRC] = f->port[DST] = get16(p + hl + OFF_ICMP_ID);
	} else {
		f->port[SRC] = get16(p + hl);
		f->port[DST] = get16(p + hl + 2);
	}
	memcpy(&f->addr[SRC], p + OFF_IP_SRC, 4);
	memcpy(&f->addr[DST], p + OFF_IP_DST, 4);
	f->sum = len - hl >= sumoff + 2 ? p + hl + sumoff : NULL;
	if (f->proto == IPPROTO_UDP && get16(f->sum) == 0)
		f->sum = NULL;		/* sent without a checksum: keep it so */
	return (0);
}

/*
 * Replace one end of the flow, address and port (or echo id), and update
 * the IPv4 header's checksum and the transport checksum.
 */
static void
flow_rewrite(struct flow *f, int end, struct in_addr addr, uint16_t port)
{
	size_t portoff;

	set_addr(f->ip + (end == SRC ? OFF_IP_SRC : OFF_IP_DST), addr,
	    f->ip + OFF_IP_SUM, f->pseudo ? f->sum : NULL);
	if (f->proto == IPPROTO_ICMP)
		portoff = OFF_ICMP_ID;
	else
		portoff = end == SRC ? 0 : 2;
	set16(f->ip + f->l4 + portoff, port, f->sum, NULL);
	if (f->proto == IPPROTO_UDP && f->sum != NULL && get16(f->sum) == 0)
		put16(f->sum, 0xffff);	/* 0 would mean "no checksum" */
	f->addr[end] = addr;
	if (f->proto == IPPROTO_ICMP)
		f->port[SRC] = f->port[DST] = port;
	else
		f->port[end] = port;
}

/* --- the table ------------------------------------------------------ */

static int
proto_index(int proto)
{
	return (proto == IPPROTO_TCP ? PI_TCP :
	    proto == IPPROTO_UDP ? PI_UDP : PI_ICMP);
}

static const char *
proto_name(int proto)
{
	return (proto == IPPROTO_TCP ? "tcp" :
	    proto == IPPROTO_UDP ? "udp" : "icmp");
}

/* The remote port an entry keeps: none for ICMP, whose "port" is the id. */
static uint16_t
remote_port(int proto, uint16_t port)
{
	return (proto == IPPROTO_ICMP ? 0 : port);
}

static uint32_t
mix(uint32_t h, uint32_t v)
{
	h ^= v;
	h *= 0x9e3779b1;
	return (h ^ h >> 15);
}

/*
 * The bucket of an outgoing flow.  The seed, random at start, keeps
 * clients from easily choosing flows that all land in one bucket.
 */
static struct entry **
bucket(struct nat *nat, int proto, struct in_addr priv, uint16_t pport,
    struct in_addr remote, uint16_t rport)
{
	uint32_t h;

	h = mix(nat->seed, priv.s_addr);
	h = mix(h, remote.s_addr);
	h = mix(h, (uint32_t)pport << 16 | rport);
	h = mix(h, (uint32_t)proto);
	return (&nat->hash[h & (NBUCKETS - 1)]);
}

static struct entry *
lookup_out(struct nat *nat, int proto, struct in_addr priv, uint16_t pport,
    struct in_addr remote, uint16_t rport)
{
	struct entry *e;

	rport = remote_port(proto, rport);
	for (e = *bucket(nat, proto, priv, pport, remote, rport); e != NULL;
	    e = e->next)
		if (e->proto == proto && e->priv.s_addr == priv.s_addr &&
		    e->priv_port == pport && e->remote.s_addr == remote.s_addr &&
		    e->remote_port == rport)
			return (e);
	return (NULL);
}

/* The entry owning a public port, if the remote end is its own. */
static struct entry *
lookup_in(struct nat *nat, int proto, uint16_t pub, struct in_addr remote,
    uint16_t rport)
{
	struct entry *e;

	if (pub < nat->lo || pub > nat->hi)
		return (NULL);
	e = nat->by_port[proto_index(proto)][pub - nat->lo];
	if (e == NULL || e->remote.s_addr != remote.s_addr ||
	    e->remote_port != remote_port(proto, rport))
		return (NULL);
	return (e);
}

static uint64_t
entry_timeout(const struct nat *nat, const struct entry *e)
{
	switch (e->proto) {
	case IPPROTO_TCP:
		if ((e->state & CLOSING) || !(e->state & ANSWERED))
			return (nat->transitory_ms);
		return (nat->tcp_ms);
	case IPPROTO_UDP:
		return (nat->udp_ms);
	default:
		return (nat->icmp_ms);
	}
}

static void
addr_port(char *buf, size_t size, struct in_addr a, int port)
{
	char s[INET_ADDRSTRLEN];

	inet_ntop(AF_INET, &a, s, sizeof(s));
	if (port < 0)
		snprintf(buf, size, "%s", s);
	else
		snprintf(buf, size, "%s:%d", s, port);
}

/* "udp 192.0.2.2:40001 as 198.51.100.1:61001 to 198.51.100.2:5353" */
static void
entry_event(const struct nat *nat, const struct entry *e, const char *what,
    uint64_t now)
{
	char priv[32], pub[32], remote[32];

	addr_port(priv, sizeof(priv), e->priv, e->priv_port);
	addr_port(pub, sizeof(pub), nat->public, e->pub_port);
	addr_port(remote, sizeof(remote), e->remote,
	    e->proto == IPPROTO_ICMP ? -1 : e->remote_port);
	printf("divert_nat: %s %s %s as %s to %s", what, proto_name(e->proto),
	    priv, pub, remote);
	if (strcmp(what, "new") != 0)
		printf(" (idle %llus)", (unsigned long long)(now - e->last) / 1000);
	printf("\n");
}

/*
 * A new entry for an outgoing flow, with the next free public port after
 * the last one given (ports are not reused at once): NULL when none is free.
 */
static struct entry *
entry_new(struct nat *nat, const struct flow *f, uint64_t now)
{
	int pi = proto_index(f->proto);
	size_t range = (size_t)nat->hi - nat->lo + 1, i, slot;
	struct entry *e, **b;

	for (i = 1; i <= range; i++) {
		slot = (nat->cursor[pi] + i) % range;
		if (nat->by_port[pi][slot] == NULL)
			break;
	}
	if (i > range)
		return (NULL);
	if ((e = calloc(1, sizeof(*e))) == NULL) {
		warn("calloc");
		return (NULL);
	}
	e->proto = (uint8_t)f->proto;
	e->priv = f->addr[SRC];
	e->priv_port = f->port[SRC];
	e->remote = f->addr[DST];
	e->remote_port = remote_port(f->proto, f->port[DST]);
	e->pub_port = (uint16_t)(nat->lo + slot);
	e->made = e->last = now;
	nat->cursor[pi] = slot;
	nat->by_port[pi][slot] = e;
	b = bucket(nat, e->proto, e->priv, e->priv_port, e->remote,
	    e->remote_port);
	e->next = *b;
	*b = e;
	nat->count++;
	nat->t.made++;
	if (nat->verbose)
		entry_event(nat, e, "new", now);
	return (e);
}

/* A packet of the entry's flow went through: its state and idle time. */
static void
entry_seen(struct nat *nat, struct entry *e, const struct flow *f, int in,
    uint64_t now)
{
	uint64_t due;
	int flags;

	if (in) {
		e->state |= ANSWERED;
		e->in++;
	} else
		e->out++;
	if (e->proto == IPPROTO_TCP) {
		flags = f->ip[f->l4 + OFF_TCP_FLAGS];
		if (flags & (TH_FIN | TH_RST))
			e->state |= CLOSING;
	}
	e->last = now;
	due = now + entry_timeout(nat, e);
	if (due < nat->next_expiry)
		nat->next_expiry = due;
}

/*
 * Remove the entries that are due (all of them with flush) and find when
 * the next one will be.
 */
static void
table_expire(struct nat *nat, uint64_t now, int flush)
{
	struct entry *e, **pp;
	uint64_t due, next = NEVER;
	size_t b;

	for (b = 0; b < NBUCKETS; b++) {
		pp = &nat->hash[b];
		while ((e = *pp) != NULL) {
			due = e->last + entry_timeout(nat, e);
			if (!flush && due > now) {
				if (due < next)
					next = due;
				pp = &e->next;
				continue;
			}
			if (nat->verbose)
				entry_event(nat, e, flush ? "flushed" :
				    "expired", now);
			*pp = e->next;
			nat->by_port[proto_index(e->proto)]
			    [e->pub_port - nat->lo] = NULL;
			nat->count--;
			if (flush)
				nat->t.flushed++;
			else
				nat->t.expired++;
			free(e);
		}
	}
	nat->next_expiry = next;
}

static const char *
entry_state(const struct entry *e)
{
	if (e->proto == IPPROTO_TCP)
		return (e->state & CLOSING ? "closing" :
		    e->state & ANSWERED ? "established" : "syn-sent");
	return (e->state & ANSWERED ? "two-way" : "one-way");
}

/* One line per entry, by protocol and public port. */
static void
table_print(const struct nat *nat, uint64_t now)
{
	char priv[32], remote[32];
	const struct entry *e;
	size_t pi, slot, range = (size_t)nat->hi - nat->lo + 1;

	printf("divert_nat: %zu entries\n", nat->count);
	printf("%-5s %-21s %6s %-21s %-11s %7s %7s %7s %7s\n", "proto",
	    "private", "public", "remote", "state", "out", "in", "age", "idle");
	for (pi = 0; pi < NPROTO; pi++)
		for (slot = 0; slot < range; slot++) {
			if ((e = nat->by_port[pi][slot]) == NULL)
				continue;
			addr_port(priv, sizeof(priv), e->priv, e->priv_port);
			addr_port(remote, sizeof(remote), e->remote,
			    e->proto == IPPROTO_ICMP ? -1 : e->remote_port);
			printf("%-5s %-21s %6u %-21s %-11s %7llu %7llu "
			    "%6llus %6llus\n", proto_name(e->proto), priv,
			    (unsigned)e->pub_port, remote, entry_state(e),
			    e->out, e->in,
			    (unsigned long long)(now - e->made) / 1000,
			    (unsigned long long)(now - e->last) / 1000);
		}
}

static void
totals_print(const struct nat *nat)
{
	const struct totals *t = &nat->t;

	printf("divert_nat: translated %llu out, %llu in (%llu ICMP errors); "
	    "passed %llu unchanged (%llu IPv6, %llu fragments); "
	    "dropped %llu for want of a port, %llu untranslatable; "
	    "entries %llu made, %llu expired, %llu flushed\n",
	    t->out, t->in, t->errors, t->passed, t->ip6, t->frags, t->noport,
	    t->untranslatable, t->made, t->expired, t->flushed);
}

/* --- translation ---------------------------------------------------- */

/*
 * An ICMP error about a packet of one of our flows.  Going out (a client
 * answers an incoming packet), it quotes that packet, remote to private
 * end; coming in, it quotes an outgoing one as translated, public to
 * remote end.  Both the quoted packet and the outer header are rewritten;
 * the ICMP checksum covers the quoted packet, so it follows each word of
 * it that changed (its own checksums included).
 */
static enum verdict
nat_icmp_error(struct nat *nat, u_char *p, size_t len, int in)
{
	u_char before[60 + 20], *icmp, *q;
	size_t hl = (size_t)(p[0] & 0x0f) << 2, qlen, n, i;
	struct flow qf;
	struct entry *e;

	if (len - hl < ICMP_HDR + 20)
		return (in ? PASS : UNTRANSLATABLE);
	icmp = p + hl;
	q = icmp + ICMP_HDR;
	qlen = len - hl - ICMP_HDR;
	if (flow_parse(q, qlen, 1, &qf) == -1)
		return (in ? PASS : UNTRANSLATABLE);
	if (in) {
		if (qf.addr[SRC].s_addr != nat->public.s_addr)
			return (PASS);
		e = lookup_in(nat, qf.proto, qf.port[SRC], qf.addr[DST],
		    qf.port[DST]);
	} else
		e = lookup_out(nat, qf.proto, qf.addr[DST], qf.port[DST],
		    qf.addr[SRC], qf.port[SRC]);
	if (e == NULL)
		return (in ? PASS : UNTRANSLATABLE);

	n = qlen < qf.l4 + 20 ? qlen : qf.l4 + 20;	/* all we may change */
	n &= ~(size_t)1;
	memcpy(before, q, n);
	if (in) {
		flow_rewrite(&qf, SRC, e->priv, e->priv_port);
		set_addr(p + OFF_IP_DST, e->priv, p + OFF_IP_SUM, NULL);
	} else {
		flow_rewrite(&qf, DST, nat->public, e->pub_port);
		set_addr(p + OFF_IP_SRC, nat->public, p + OFF_IP_SUM, NULL);
	}
	for (i = 0; i < n; i += 2)
		if (get16(before + i) != get16(q + i))
			sum_fix(icmp + OFF_ICMP_SUM, get16(before + i),
			    get16(q + i));
	nat->t.errors++;
	return (XLATE);
}

/* An outgoing IPv4 packet, whole (not a fragment). */
static enum verdict
nat_out(struct nat *nat, u_char *p, size_t len, uint64_t now)
{
	struct flow f;
	struct entry *e;
	size_t hl = (size_t)(p[0] & 0x0f) << 2;

	if (memcmp(p + OFF_IP_SRC, &nat->public.s_addr, 4) == 0)
		return (PASS);			/* the gateway's own */
	if (p[9] == IPPROTO_ICMP && len >= hl + ICMP_HDR &&
	    is_icmp_error(p[hl]))
		return (nat_icmp_error(nat, p, len, 0));
	if (flow_parse(p, len, 0, &f) == -1 ||
	    (f.proto == IPPROTO_ICMP && p[hl] != ICMP_ECHO))
		return (UNTRANSLATABLE);
	e = lookup_out(nat, f.proto, f.addr[SRC], f.port[SRC], f.addr[DST],
	    f.port[DST]);
	if (e == NULL && (e = entry_new(nat, &f, now)) == NULL)
		return (NOPORT);
	flow_rewrite(&f, SRC, nat->public, e->pub_port);
	entry_seen(nat, e, &f, 0, now);
	nat->t.out++;
	return (XLATE);
}

/* An incoming IPv4 packet, whole. */
static enum verdict
nat_in(struct nat *nat, u_char *p, size_t len, uint64_t now)
{
	struct flow f;
	struct entry *e;
	size_t hl = (size_t)(p[0] & 0x0f) << 2;

	if (memcmp(p + OFF_IP_DST, &nat->public.s_addr, 4) != 0)
		return (PASS);
	if (p[9] == IPPROTO_ICMP && len >= hl + ICMP_HDR &&
	    is_icmp_error(p[hl]))
		return (nat_icmp_error(nat, p, len, 1));
	if (flow_parse(p, len, 0, &f) == -1 ||
	    (f.proto == IPPROTO_ICMP && p[hl] != ICMP_ECHOREPLY))
		return (PASS);
	e = lookup_in(nat, f.proto, f.port[DST], f.addr[SRC], f.port[SRC]);
	if (e == NULL)
		return (PASS);			/* for the gateway itself */
	flow_rewrite(&f, DST, e->priv, e->priv_port);
	entry_seen(nat, e, &f, 1, now);
	nat->t.in++;
	return (XLATE);
}

/*
 * What to do with a packet read: translate it in place, or say why not.
 * len is what was read; the IPv4 total length must fit in it.
 */
static enum verdict
nat_packet(struct nat *nat, u_char *p, size_t len, int out, uint64_t now)
{
	enum verdict v;
	size_t hl, iplen;

	if (len < 1 || p[0] >> 4 != 4) {
		if (len >= 1 && p[0] >> 4 == 6)
			nat->t.ip6++;
		v = PASS;
	} else if (len < 20 || (hl = (size_t)(p[0] & 0x0f) << 2) < 20 ||
	    (iplen = get16(p + 2)) < hl || iplen > len)
		v = out ? UNTRANSLATABLE : PASS;	/* malformed */
	else if ((get16(p + 6) & (IP_MF | IP_OFFMASK)) != 0) {
		nat->t.frags++;
		v = PASS;
	} else if (out)
		v = nat_out(nat, p, iplen, now);
	else
		v = nat_in(nat, p, iplen, now);
	if (v == PASS)
		nat->t.passed++;
	else if (v == UNTRANSLATABLE)
		nat->t.untranslatable++;
	else if (v == NOPORT)
		nat->t.noport++;
	return (v);
}

/* --- setup and the loop --------------------------------------------- */

static void
nat_init(struct nat *nat)
{
	size_t range = (size_t)nat->hi - nat->lo + 1;
	uint32_t r[1 + NPROTO];
	int pi;

	/* the hash seed and where port allocation starts */
	if (getentropy(r, sizeof(r)) == -1) {
		r[0] = (uint32_t)time(NULL) ^ (uint32_t)getpid();
		for (pi = 0; pi < NPROTO; pi++)
			r[1 + pi] = r[0] >> pi;
	}
	nat->seed = r[0];
	for (pi = 0; pi < NPROTO; pi++) {
		nat->by_port[pi] = calloc(range, sizeof(struct entry *));
		if (nat->by_port[pi] == NULL)
			err(1, "calloc");
		nat->cursor[pi] = r[1 + pi] % range;
	}
	nat->next_expiry = NEVER;
}

static void
nat_free(struct nat *nat)
{
	struct entry *e;
	size_t b;
	int pi;

	for (b = 0; b < NBUCKETS; b++)
		while ((e = nat->hash[b]) != NULL) {
			nat->hash[b] = e->next;
			free(e);
		}
	for (pi = 0; pi < NPROTO; pi++)
		free(nat->by_port[pi]);
}

int
main(int argc, char *argv[])
{
	static u_char pkt[IP_MAXPACKET];	/* read with byte offsets */
	static struct nat nat;
	struct sockaddr_in sin;
	struct sigaction sa;
	struct timespec ts, *tsp;
	sigset_t block, oldmask;
	fd_set rfds;
	socklen_t sinlen;
	ssize_t n;
	uint64_t now;
	enum verdict v;
	long port, lo = 61000, hi = 65535;
	int ch, fd, out, have_addr = 0, rcvbuf = 1 << 20;
	char *dash;

	nat.tcp_ms = 7440 * 1000ULL;
	nat.transitory_ms = 240 * 1000ULL;
	nat.udp_ms = 300 * 1000ULL;
	nat.icmp_ms = 60 * 1000ULL;
	while ((ch = getopt(argc, argv, "a:c:i:p:t:u:v")) != -1) {
		switch (ch) {
		case 'a':
			if (inet_pton(AF_INET, optarg, &nat.public) != 1)
				errx(2, "bad address: %s", optarg);
			have_addr = 1;
			break;
		case 'c':
			nat.transitory_ms = 1000ULL *
			    (uint64_t)number(optarg, "seconds", 1, 10000000);
			break;
		case 'i':
			nat.icmp_ms = 1000ULL *
			    (uint64_t)number(optarg, "seconds", 1, 10000000);
			break;
		case 'p':
			if ((dash = strchr(optarg, '-')) == NULL)
				errx(2, "bad port range: %s (lo-hi)", optarg);
			*dash = '\0';
			lo = number(optarg, "port", 1, 65535);
			hi = number(dash + 1, "port", lo, 65535);
			break;
		case 't':
			nat.tcp_ms = 1000ULL *
			    (uint64_t)number(optarg, "seconds", 1, 10000000);
			break;
		case 'u':
			nat.udp_ms = 1000ULL *
			    (uint64_t)number(optarg, "seconds", 1, 10000000);
			break;
		case 'v':
			nat.verbose = 1;
			break;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc != 1 || !have_addr)
		usage();
	port = number(argv[0], "divert port", 1, 65535);
	nat.lo = (uint16_t)lo;
	nat.hi = (uint16_t)hi;
	nat_init(&nat);
	setvbuf(stdout, NULL, _IOLBF, 0);

	/*
	 * The signals only set flags.  They stay blocked except inside
	 * pselect(), so one arriving while a packet is handled is not lost:
	 * the next pselect() returns EINTR at once.
	 */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIGUSR1);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigprocmask(SIG_BLOCK, &block, &oldmask);

	if ((fd = socket(PF_DIVERT, SOCK_RAW, 0)) == -1)
		err(1, "socket");
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((in_port_t)port);
	sin.sin_addr.s_addr = INADDR_ANY;
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == -1)
		err(1, "bind %ld", port);
	/*
	 * A gateway's TCP comes in bursts, and on Linux in GSO packets of up
	 * to 64 KiB: the default buffer (65636 bytes, as on FreeBSD) holds
	 * one.  What does not fit while we work is dropped and retransmitted.
	 */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) == -1)
		warn("SO_RCVBUF %d", rcvbuf);
	fprintf(stderr, "divert_nat: reading divert port %ld, public address "
	    "%s, ports %ld-%ld\n", port, inet_ntoa(nat.public), lo, hi);

	while (!got_term) {
		now = now_ms();
		if (nat.next_expiry <= now)
			table_expire(&nat, now, 0);
		if (got_hup) {
			got_hup = 0;
			printf("divert_nat: SIGHUP: flushing %zu entries\n",
			    nat.count);
			table_expire(&nat, now, 1);
		}
		if (got_usr1) {
			got_usr1 = 0;
			table_print(&nat, now);
		}
		tsp = NULL;
		if (nat.next_expiry != NEVER) {
			ts.tv_sec = (time_t)((nat.next_expiry - now) / 1000);
			ts.tv_nsec = (long)((nat.next_expiry - now) % 1000) *
			    1000000;
			tsp = &ts;
		}
		FD_ZERO(&rfds);
		FD_SET(fd, &rfds);
		switch (pselect(fd + 1, &rfds, NULL, NULL, tsp, &oldmask)) {
		case -1:
			if (errno == EINTR)
				continue;
			err(1, "pselect");
		case 0:
			continue;		/* an entry is due */
		}
		sinlen = sizeof(sin);
		n = recvfrom(fd, pkt, sizeof(pkt), 0,
		    (struct sockaddr *)&sin, &sinlen);
		if (n == -1)
			err(1, "recvfrom");
		if (n == 0) {
			warnx("the divert socket was closed");
			break;
		}
		out = sin.sin_addr.s_addr == INADDR_ANY;
		v = nat_packet(&nat, pkt, (size_t)n, out, now_ms());
		if (v == UNTRANSLATABLE || v == NOPORT)
			continue;	/* dropped: not written back */
		if (sendto(fd, pkt, (size_t)n, 0,
		    (struct sockaddr *)&sin, sinlen) == -1)
			warn("sendto");
	}
	table_print(&nat, now_ms());
	totals_print(&nat);
	nat_free(&nat);
	close(fd);
	return (0);
}
