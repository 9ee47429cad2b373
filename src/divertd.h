/*
 * divertd.h: the daemon's private header, a map of the program.
 *
 * Prototypes are grouped by the file that defines them; each file says at
 * its top what it owns.  In short:
 *   config.c       ipfw-style config text -> struct ruleset
 *   rules.c        struct ruleset -> nftables / iptables-restore text; tags
 *   firewall.c     installs and removes that text (libnftables, iptables-restore)
 *   nfq_bridge.c   the only code that speaks NETLINK_NETFILTER (NFQUEUE)
 *   divert_sock.c  the only code that speaks the client protocol, with
 *                  client.c, held.c and ring.c (their private map:
 *                  divert_sock.h)
 *   control.c      the only code that runs divertctl's commands
 *   counters.c     each rule's counts across zero and rule changes
 *   inject.c       packets written that answer no held packet
 *   cksum.c        checksum completion before a client sees a packet
 *   log.c          logging to stderr, journald-style priority prefixes
 *   divertd.c      options, setup, the poll loop, signals, teardown
 */
#ifndef DIVERTD_H
#define DIVERTD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <net/if.h>
#include <sys/types.h>
#include <netinet/in.h>

/* Netlink messages we build or read outside the packet path. */
#define NL_BUFSIZE 32768

/* True when the netlink messages in buf[0..len) all have lengths that fit.
 * libmnl's mnl_nlmsg_ok() compares a length of 2 GiB or more as a negative
 * int and walks off the buffer; every buffer read from a netlink socket is
 * checked with this first (found by tests/fuzz). */
static inline bool nl_lengths_ok(const void *buf, size_t len)
{
	const unsigned char *p = (const unsigned char *)buf;

	while (len > 0) {
		uint32_t mlen;

		if (len < 16)		/* sizeof(struct nlmsghdr) */
			return false;
		memcpy(&mlen, p, sizeof(mlen));
		if (mlen < 16 || mlen > len)
			return false;
		mlen = (mlen + 3u) & ~3u;	/* NLMSG_ALIGN */
		if (mlen >= len)
			return true;
		p += mlen;
		len -= mlen;
	}
	return true;
}

/* ---- config.c -------------------------------------------------------- */

enum rule_action {
	ACT_DIVERT,	/* arg = divert port */
	ACT_TEE,	/* arg = divert port */
	ACT_ALLOW,
	ACT_DENY,
	ACT_COUNT,
	ACT_SKIPTO,	/* arg = rule number to skip to */
};

#define FAM_V4 0x1u
#define FAM_V6 0x2u

#define DIR_IN  0x1u	/* the incoming pass (PREROUTING) */
#define DIR_OUT 0x2u	/* the outgoing pass (OUTPUT, FORWARD) */

enum addr_kind { ADDR_ANY, ADDR_ME, ADDR_ME6, ADDR_PREFIX };

#define RULE_MAX_PORTS 32
/* Divert and tee ports in one rule list: each is an NFQUEUE queue that
 * divertd binds, with a netlink socket of its own. */
#define RULES_MAX_DIVERT_PORTS 1024
/* The comment of the rules that count packets which found no divertd */
#define RULES_LOST_LABEL "no divertd"
#define RULE_MAX_ICMPTYPES 32
#define RULE_MAX_IFACES 4

struct port_range {
	uint16_t lo, hi;		/* lo == hi for a single port */
};

struct rule_addr {
	enum addr_kind kind;
	bool neg;			/* "not" before the address */
	int family;			/* AF_INET / AF_INET6 for ADDR_PREFIX */
	union {
		struct in_addr v4;
		struct in6_addr v6;
	} addr;				/* host bits already cleared */
	int plen;			/* prefix length */
	struct port_range ports[RULE_MAX_PORTS];
	int nports;			/* 0: any port */
};

enum iface_kind { IFACE_VIA, IFACE_RECV, IFACE_XMIT };

struct rule_iface {
	enum iface_kind kind;
	bool neg;
	char name[IFNAMSIZ];
};

#define PROTO_ANY (-1)		/* ip, ip4, ip6, all */

struct rule {
	uint16_t num;			/* 1..65534 */
	enum rule_action action;
	uint16_t arg;			/* port or skipto target */
	int proto;			/* IPPROTO_* number or PROTO_ANY */
	unsigned families;		/* FAM_V4|FAM_V6 the rule can match */
	unsigned dirs;			/* DIR_IN|DIR_OUT passes it runs in */
	struct rule_addr src, dst;
	struct rule_iface ifaces[RULE_MAX_IFACES];
	int nifaces;
	uint8_t icmptypes[RULE_MAX_ICMPTYPES];
	int nicmptypes;			/* 0: no icmptypes option */
	bool icmptypes_neg;
	int line;			/* line in the config file */
};

struct ruleset {
	struct rule *rules;		/* sorted by num; equal nums keep file order */
	size_t n;
};

/* Parse a whole config.  On error returns -1 and writes "NAME:LINE: what is
 * wrong" into err; rs is then untouched.  name is used in messages only. */
int config_parse_string(const char *text, const char *name,
			struct ruleset *rs, char *err, size_t errlen);
int config_parse_file(const char *path, struct ruleset *rs,
		      char *err, size_t errlen);
void ruleset_free(struct ruleset *rs);

/* ---- rules.c ---------------------------------------------------------- */

/* How the generated rules carry a tag in the packet mark, and what their
 * queue rules do with a packet when no divertd reads the queue. */
struct mark_layout {
	uint32_t mask;			/* contiguous, >= 16 bits */
	unsigned shift;			/* ctz(mask) */
	bool fail_open;			/* pass it on (bypass), not drop it */
	bool lost;			/* the chains that count what finds no
					 * divertd are in place (default): the
					 * queue rules bypass into them */
};

int mark_layout_init(struct mark_layout *ml, uint32_t mask);
static inline uint32_t mark_with_tag(const struct mark_layout *ml,
				     uint32_t mark, uint16_t tag)
{
	return (mark & ~ml->mask) | (((uint32_t)tag << ml->shift) & ml->mask);
}
static inline uint16_t mark_tag(const struct mark_layout *ml, uint32_t mark)
{
	return (uint16_t)((mark & ml->mask) >> ml->shift);
}

/* The tag a written packet resumes after: the largest rule number <= tag,
 * or 0 (start of the list) when no rule is numbered <= tag. */
uint16_t rules_resume_tag(const struct ruleset *rs, uint16_t tag);

/* The divert or tee rule numbered num that sends to port, or NULL. */
const struct rule *rules_find_queue_rule(const struct ruleset *rs,
					 uint16_t num, uint16_t port);

/* The mark value a tee rule puts on its packets (no rule number: the
 * dispatch resumes the original at the rule right after the tee), and the
 * tee rule sending to port that a queued packet's value names, or NULL. */
uint16_t rules_tee_value(const struct ruleset *rs, const struct rule *r);
size_t rules_view(const struct ruleset *rs, const struct mark_layout *ml,
		  uint16_t port, uint32_t hold_ms, void *buf, size_t cap);
const struct rule *rules_find_tee_rule(const struct ruleset *rs,
				       uint16_t value, uint16_t port);

/* The comment on the firewall rules r becomes ("rule 300 #1": the first
 * rule numbered 300), and back from such a comment to the index of its
 * rule in rs (-1: none). */
void rules_label(const struct ruleset *rs, const struct rule *r, char *buf,
		 size_t len);
long rules_label_index(const struct ruleset *rs, const char *label);

/* Distinct divert/tee ports, ascending; returns how many (<= max). */
size_t rules_ports(const struct ruleset *rs, uint16_t *ports, size_t max);

/* Generated text, malloc'd, NUL-terminated; NULL on allocation failure.
 * nft: the "table inet divertd { ... }" block.
 * ipt: input for iptables-restore --noflush (family 4) or
 *      ip6tables-restore --noflush (family 6). */
char *rules_nft_text(const struct ruleset *rs, const struct mark_layout *ml);
/* With the iptables backend: the nftables table that holds only the
 * chains counting what finds no divertd (the nft text has them too). */
char *rules_nft_lost_text(const struct mark_layout *ml);
char *rules_ipt_text(const struct ruleset *rs, const struct mark_layout *ml,
		     int family);
/* One rule as an ipfw line ("00100 divert 8668 icmp from any to any in
 * icmptypes 8") that config.c parses back into the same rule; malloc'd,
 * NULL on allocation failure. */
char *rules_format(const struct rule *r);


/* ---- divertd.c -------------------------------------------------------- */

/* Everything the poll loop watches embeds one of these; data.ptr of its
 * epoll event points to it. */
struct pollable {
	int fd;
	void (*handle)(struct pollable *self, uint32_t events);
};
int loop_add(struct pollable *p, uint32_t events);
int loop_mod(struct pollable *p, uint32_t events);
void loop_del(struct pollable *p);

/* ---- log.c ------------------------------------------------------------ */

/* Priorities as syslog(3); with $JOURNAL_STREAM set, lines carry the
 * "<N>" prefix journald reads, otherwise a word ("error: "). */
void log_init(const char *progname, int max_priority);
void log_msg(int priority, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* At most `burst` messages per 5 seconds per call site (per-packet path). */
struct log_ratelimit {
	uint64_t window_start;
	unsigned count, suppressed;
};
void log_limited(struct log_ratelimit *rl, int priority, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
#define log_err(...)   log_msg(3, __VA_ARGS__)
#define log_warn(...)  log_msg(4, __VA_ARGS__)
#define log_info(...)  log_msg(6, __VA_ARGS__)
#define log_debug(...) log_msg(7, __VA_ARGS__)

/* ---- cksum.c ---------------------------------------------------------- */

/* Fill in the TCP or UDP checksum of an IPv4 or IPv6 packet whose checksum
 * the kernel left for the NIC.  Returns 0, or -1 if the packet is too
 * malformed to find its transport header (it is then left as is). */
int cksum_complete_l4(uint8_t *pkt, size_t len);
/* Recompute the IPv4 header checksum in place (nothing when the header
 * length does not fit in len). */
void cksum_set_ipv4_header(uint8_t *pkt, size_t len);
/* True when the IPv4 header checksum is valid. */
bool cksum_ipv4_header_ok(const uint8_t *pkt, size_t len);

/* ---- iftable.c -------------------------------------------------------- */

/* The host's interfaces as rtnetlink reports them, kept current from its
 * notifications, so the per-packet path needs no syscall to name one. */
struct iface {
	int index;
	char name[IFNAMSIZ];
	struct in_addr first_v4;	/* INADDR_ANY when it has none */
	bool has_v4;
	bool up, loopback;		/* IFF_UP, IFF_LOOPBACK */
};
int iftable_open(void);			/* -1 on failure, errno set */
int iftable_fd(void);
void iftable_process(void);		/* after the fd polls readable */
const struct iface *iftable_by_index(int index);
const struct iface *iftable_by_name(const char *name);
const struct iface *iftable_by_v4(struct in_addr addr);
void iftable_close(void);

/* ---- inject.c --------------------------------------------------------- */

/* Fresh injection of packets that answer no held packet.
 * Outgoing: a raw IP socket, the mark carrying the tag, so the packet runs
 * the outgoing pass after the tag.  Incoming: a veth pair of our own
 * (INJECT_IFNAME receives what we write on its peer through AF_PACKET)
 * whose tc ingress redirects it to the named interface, marked likewise,
 * so the stack receives it there and the incoming pass resumes after the
 * tag. */
#define INJECT_IFNAME "divertd0"
#define INJECT_PEER   "divertd1"
int inject_open(void);
void inject_close(void);
/* 0 or -errno (routing errors and the like). */
int inject_out(const uint8_t *pkt, size_t len, uint32_t mark);
/* As received on ifc. */
int inject_in(const uint8_t *pkt, size_t len, uint32_t mark,
	      const struct iface *ifc);

/* ---- spawn.c ---------------------------------------------------------- */

/* Run argv (looked up in PATH) with input on its stdin; collect its stdout
 * into *out (malloc'd) when out is not NULL.  Returns the exit status, or
 * -1 when it could not run. */
int spawn_run(char *const argv[], const char *input, char **out);

/* ---- firewall.c ------------------------------------------------------- */

enum fw_backend { FW_AUTO, FW_NFT, FW_IPT };
const char *fw_backend_name(enum fw_backend b);
/* libnftables' context, made before the daemon opens its many descriptors
 * (firewall.c says why); fw_close() at exit. */
int fw_open(void);
void fw_close(void);
/* FW_NFT when this kernel takes nft `queue`, else FW_IPT. */
enum fw_backend fw_probe(void);
/* Remove whatever an earlier divertd left, then install the rules. */
int fw_install(enum fw_backend b, const struct ruleset *rs,
	       struct mark_layout *ml);
/* Replace the installed rules with rs while traffic flows: one nft
 * transaction, or one iptables-restore per family. */
int fw_replace(enum fw_backend b, const struct ruleset *rs,
	       const struct mark_layout *ml);
/* Remove our rules from both backends; quiet when there are none. */
void fw_remove(void);
/* What the kernel counted for each rule of rs, summed over the firewall
 * rules it became (rules_label()): c[i] for rs->rules[i].  0, or -1 when
 * the counters could not be read (c is then partly filled). */
struct rule_count {
	uint64_t packets, bytes;
};
int fw_counters(enum fw_backend b, const struct ruleset *rs,
		struct rule_count *c);
/* Packets that found no divertd, as the installed rules (ours, or those a
 * killed divertd left, of either backend) counted them. */
uint64_t fw_lost(void);

/* ---- nfq_bridge.c ----------------------------------------------------- */

/* One packet handed to userspace by NFQUEUE; data points into the receive
 * buffer and stays valid until the handler's flush. */
struct nfqb_packet {
	uint16_t queue;
	uint32_t id;
	uint8_t hook;			/* NF_INET_PRE_ROUTING, ... */
	uint16_t l3proto;		/* ETH_P_IP / ETH_P_IPV6 */
	uint32_t mark;
	uint32_t indev, outdev;		/* ifindex, 0 when none */
	bool csum_not_ready;
	bool gso;
	uint8_t *data;
	uint32_t len;
};
typedef void (*nfqb_packet_fn)(struct nfqb_packet *pkt, void *arg);

/* The most a verdict can carry: a netlink attribute's length is 16 bits. */
#define NFQB_MAX_VERDICT_PAYLOAD (65535 - 4)

/* Bind the queues, each on a netlink socket of its own that nfq_bridge.c
 * puts in the poll loop; fail_open: a full queue passes packets on instead
 * of dropping them. */
int nfqb_open(const uint16_t *queues, size_t nqueues, uint32_t maxlen,
	      bool fail_open);
/* Bind or unbind one more queue while running (a reload); unbinding drops
 * what the kernel holds for it. */
int nfqb_bind_queue(uint16_t queue);
int nfqb_unbind_queue(uint16_t queue);
/* The direct path: a queue's socket lent to a program that reads it
 * itself, and taken back (what it held dropped) when the program is gone. */
int nfqb_lend(uint16_t queue);
int nfqb_take_back(uint16_t queue);
/* Where packets go (fn, per packet; flush, after each batch); before it
 * is set, packets are dropped. */
void nfqb_set_handler(nfqb_packet_fn fn, void (*flush)(void), void *arg);
/* Stop reading a queue, and shorten it to the keep packets it holds
 * (those read and held by a program), so that the kernel drops what comes
 * next instead of queueing it; or read it again, at its full length. */
void nfqb_pause(uint16_t queue, bool pause, uint32_t keep);
/* True once a queue's socket failed for good: the daemon must stop. */
bool nfqb_broken(void);
/* Queue a verdict; sent by nfqb_flush() (or when the batch fills up).
 * payload NULL keeps the packet as the kernel holds it. */
void nfqb_verdict(uint16_t queue, uint32_t id, uint32_t verdict,
		  const uint32_t *mark, const void *payload, uint32_t len);
void nfqb_flush(void);
void nfqb_close(void);
struct nfqb_stats {
	uint64_t received, verdicts, verdict_errors, malformed;
	uint64_t kernel_drops;		/* queue_dropped + user_dropped */
};
/* Counters; kernel_drops is read from /proc each call (not per packet). */
const struct nfqb_stats *nfqb_stats(void);

/* ---- divert_sock.c ---------------------------------------------------- */

struct divert_config {
	const char *socket_path;
	const struct ruleset *rs;
	const struct mark_layout *ml;
	unsigned hold_ms;		/* how long an unanswered packet is held */
	gid_t group;			/* may divert besides root; -1: none */
	unsigned max_clients;		/* connections at once */
};
struct divert_stats {
	uint64_t diverted;		/* delivered to a client */
	uint64_t teed;			/* tee copies delivered */
	uint64_t noport;		/* diverted to a port with no socket */
	uint64_t full;			/* dropped: client's buffer full */
	uint64_t reinjected_out, reinjected_in;
	uint64_t injected_out, injected_in;	/* fresh, answering nothing */
	uint64_t inject_errors;
	uint64_t expired;		/* held too long, dropped */
	uint64_t evicted;		/* held on a closed or overfull client */
	uint64_t bad_writes;		/* client messages refused */
	uint64_t bad_cksum_in;		/* incoming writes with a bad header */
	uint64_t no_iface;		/* incoming writes naming no interface */
	uint64_t channel_writes;	/* writes on a write channel (new) */
	uint64_t reattached;		/* divert sockets attached again after
					 * a restart of divertd */
	uint64_t away_refused;		/* writes their shims refused (ENOBUFS)
					 * while no divertd ran */
};
/* Listen on cfg->socket_path (created atomically: owner root, group
 * cfg->group, mode 0660). */
int divert_sock_open(const struct divert_config *cfg);
/* The NFQUEUE side hands each packet here (nfqb_packet_fn). */
void divert_sock_packet(struct nfqb_packet *pkt, void *arg);
/* The rules in force changed (cfg->rs): a queue paused for a program
 * that fell behind is read again if a tee rule now sends to it. */
void divert_sock_rules_changed(void);
/* End of a netlink batch: flush sends to clients, wake ring readers. */
void divert_sock_flush(void);
/* The loop is about to wait: handle what ring clients wrote back, and
 * have their next write wake us. */
void divert_sock_idle(void);
/* The loop woke up: ring clients' writes need not wake it. */
void divert_sock_awake(void);
/* How long the loop may sleep: until the next held packet expires, at most
 * 1 ms while a ring client may have written back unwoken; -1: no limit. */
int divert_sock_timeout(void);
/* Drop held packets whose time is up. */
void divert_sock_expire(void);
void divert_sock_close(void);
const struct divert_stats *divert_sock_stats(void);
/* What divertctl's "sockets" shows: one entry per bound port, ascending. */
struct divert_sock_info {
	uint16_t port;
	pid_t pid;			/* the process that connected */
	unsigned held;			/* packets read, not yet written back */
};
size_t divert_sock_ports(struct divert_sock_info *out, size_t max);
/* Clients connected (divert sockets, write channels, requests). */
unsigned divert_sock_clients(void);
/* Packets held, all clients. */
unsigned divert_sock_held(void);

/* ---- divertd.c: the rules in force (reload, divertctl) ----------------- */

const struct ruleset *daemon_rules(void);
const struct mark_layout *daemon_layout(void);
bool daemon_uses_nft(void);
/* Packets the rules of the divertd before this one dropped (or passed,
 * with -F) while no divertd read their queue: counted at start. */
uint64_t daemon_lost_before(void);
/* Put nrs in place of the running rules while traffic flows, as SIGHUP
 * does: new queues bound first, one transaction per backend table, the
 * ruleset swapped, unused queues unbound.  0, or -1 with the reason in err
 * and nothing changed.  nrs is consumed either way; what names the change
 * in the log. */
int daemon_apply(struct ruleset *nrs, const char *what, char *err,
		 size_t errlen);

/* ---- counters.c ------------------------------------------------------- */

/* Each running rule's counts as divertctl show prints them: c[i] for
 * daemon_rules()->rules[i].  The kernel's counters are read now, or, when
 * the last reading is younger than max_age_ms, taken from it (0: always
 * read).  0, or -1 when the kernel's could not be read. */
int counters_get(struct rule_count *c, unsigned max_age_ms);
/* How old the counts a group member's show gets may be: a flood of show
 * reads the kernel once in this many milliseconds at most. */
#define COUNTERS_SHARED_MS 1000u
/* Zero the rules marked in which (one flag per running rule; NULL: all). */
int counters_zero(const bool *which);
/* Around a rule change (daemon_apply()): the counts before it (malloc'd,
 * NULL when they could not be read), then, once nrs is in the kernel with
 * fresh counters, give each rule of nrs that old had the counts it had.
 * counters_carry() frees saved. */
struct rule_count *counters_save(void);
void counters_carry(const struct ruleset *old, struct rule_count *saved,
		    const struct ruleset *nrs);
void counters_free(void);

/* ---- control.c -------------------------------------------------------- */

/* Run one divertctl command.  argv: the request's strings; flags:
 * DW_CTL_* from divert_wire.h, and CTL_ROOT when the peer is root (only
 * root may change the rules or zero the counters).  Returns the exit status for divertctl and
 * its output in *out (malloc'd, NUL-terminated; NULL when memory ran out,
 * the status is then 1). */
#define CTL_ROOT 0x100u
int control_run(int argc, char **argv, unsigned flags, char **out);

#endif /* DIVERTD_H */
