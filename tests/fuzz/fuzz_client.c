/*
 * fuzz_client.c: libFuzzer target for every message a client can send
 * divertd: src/divert_sock.c (the client protocol, held packets, writes)
 * and src/inject.c (writes that answer no held packet), both included
 * whole, with src/control.c (divertctl's commands), src/counters.c,
 * src/config.c, src/rules.c and src/cksum.c linked unchanged.
 *
 * The daemon side runs for real on a UNIX socket in a temporary
 * directory: divert_sock_open() listens, the fuzzer's clients connect with
 * socket(AF_UNIX, SOCK_SEQPACKET) and send(), and the daemon's handlers run
 * from an epoll loop here that does what divertd.c's does (loop_add(),
 * loop_mod() and loop_del() are this file's).  What must not be touched is
 * faked:
 *   - the kernel's queue (nfqb_verdict(), nfqb_flush(), nfqb_pause()):
 *     each packet the fuzzer hands to divert_sock_packet() must get
 *     exactly one verdict, a written packet may answer only a packet its
 *     connection (or the connection a write channel names) was given, and
 *     a paused queue must be resumed once its client has room or is gone;
 *   - injection's sockets (socket(), setsockopt(), sendmsg() for inject.c
 *     alone) and tc (spawn_run()): results chosen by the fuzzer;
 *   - the interface table (iftable_*()): lo, eth0, eth1, one long name;
 *   - who connects (getsockopt() SO_PEERCRED / SO_PEERGROUPS for
 *     divert_sock.c alone): root, a member of divertd's group (primary or
 *     supplementary), or a stranger, as the fuzzer says;
 *   - the clock and the connection ids (clock_gettime(), getrandom()),
 *     so that a run repeats exactly;
 *   - divertd.c's rule swap (daemon_apply(): as divertd.c, without the
 *     kernel; only root's connections may get there) and the firewall's
 *     counters (fw_counters()).
 * Each message the daemon reads is in its own receive slot with the rest
 * of the slot marked unreadable, so reading past a message is caught.
 *
 * Input: a list of operations, each an opcode byte and its arguments
 * (fuzz_client_ops.h).  After the last one every client hangs up, and the
 * daemon must be back where it started: no client, no held packet, no
 * bound port, no paused queue, nothing pending, no socket left open, every
 * packet answered once.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <dirent.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "divertd.h"
#include "divert_wire.h"
#include "fuzz_input.h"
#include "fuzz_client_ops.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* ---- the fakes divert_sock.c sees -------------------------------------- */

static int fz_recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen,
		       int flags, struct timespec *tmo);
static int fz_clock_gettime(clockid_t clk, struct timespec *ts);
static ssize_t fz_getrandom(void *buf, size_t len, unsigned int flags);
static int fz_getsockopt(int fd, int level, int opt, void *val,
			 socklen_t *len);

#define recvmmsg(a, b, c, d, e) fz_recvmmsg(a, b, c, d, e)
#define clock_gettime(a, b) fz_clock_gettime(a, b)
#define getrandom(a, b, c) fz_getrandom(a, b, c)
#define getsockopt(a, b, c, d, e) fz_getsockopt(a, b, c, d, e)
#include "../../src/divert_sock.c"
#undef recvmmsg
#undef clock_gettime
#undef getrandom
#undef getsockopt

/* ---- and those inject.c sees ------------------------------------------- */

static int fz_inj_socket(int domain, int type, int proto);
static int fz_inj_setsockopt(int fd, int level, int opt, const void *val,
			     socklen_t len);
static ssize_t fz_inj_sendmsg(int fd, const struct msghdr *msg, int flags);

#define socket(a, b, c) fz_inj_socket(a, b, c)
#define setsockopt(a, b, c, d, e) fz_inj_setsockopt(a, b, c, d, e)
#define sendmsg(a, b, c) fz_inj_sendmsg(a, b, c)
#include "../../src/inject.c"
#undef socket
#undef setsockopt
#undef sendmsg

/* ---- the world around the daemon ---------------------------------------- */

#define FZ_GROUP	4242
#define FZ_MAX_CLIENTS	6	/* the daemon's limit (-c) */
#define FZ_CONNS	10	/* connections a run may open */
#define FZ_PKTS		6000	/* kernel packets a run may hand over */
#define FZ_COPIES	256	/* of which the first are kept to write back */
#define FZ_BATCH	64	/* packets in one netlink batch, at most */
#define FZ_FAKE_FD	(1 << 22)	/* inject.c's sockets: never real */

static const char base_config[] =
	"100 divert 8668 ip from any to any\n"
	"150 tee 9000 tcp from any to any 80\n"
	"200 divert 8669 udp from any to any in\n"
	"200 divert 8668 icmp from any to any out\n"
	"300 skipto 500 ip from me to any\n"
	"400 divert 9001 ip6 from any to any\n"
	"500 tee 9001 ip from any to any via eth0\n";
static const uint16_t cfg_ports[] = { 8668, 9000, 8669, 9001 };

static struct ruleset running_rs;
static struct mark_layout running_ml;
static struct divert_config dcfg;
static char sock_dir[64], sock_path[96];
static int epfd = -1;
static struct pollable *cur;		/* whose event is being handled */

enum ident { ID_ROOT, ID_GROUP, ID_SUPP, ID_STRANGER, ID_NOGROUPS, ID_N };

/* one harness connection */
struct hc {
	int fd;				/* -1: closed by us */
	enum ident ident;
	bool welcomed, refused, eof;
	bool slow;			/* not reading what the daemon sends */
	uint64_t id;			/* the daemon's connection id */
	unsigned named;			/* connections its DW_WRITEs named
					 * (bit i: hcs[i]) */
};
static struct hc hcs[FZ_CONNS];
static unsigned nhc;

/* identities of connections not accepted yet, in connect order */
static enum ident pending_ident[FZ_CONNS];
static unsigned pending_first, pending_n;
static enum ident ident_by_fd[4096];

/* kernel packets of this run */
struct kpkt {
	uint32_t id;
	uint16_t queue;
	bool tee;
	uint64_t owner;			/* connection id it was given to, 0 */
	unsigned verdicts;
	uint8_t *copy;			/* for write-backs */
	uint32_t len;
	uint8_t hook;
};
static struct kpkt kp[FZ_PKTS];
static unsigned nkp;
static uint8_t *batch_data[FZ_BATCH];	/* buffers handed over, until flush */
static unsigned nbatch;

static uint64_t fake_ms = 1000000;
static uint64_t next_random = 0x1000;
static int inject_result, frag_result;
static bool tc_fails, sockets_fail, apply_fails, counters_fail;
static uint32_t write_seq;

static const int inject_errnos[] = {
	0, EMSGSIZE, ENETUNREACH, EPERM, ENOBUFS, EHOSTUNREACH, EACCES, 0,
};

/* ---- fakes: divert_sock.c --------------------------------------------- */

static int fz_recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen,
		       int flags, struct timespec *tmo)
{
	int n;

	fz_unpoison(wbuf, (size_t)WRITE_BATCH * WRITE_SLOT);
	n = recvmmsg(fd, vec, vlen, flags, tmo);
	for (int i = 0; i < n; i++)
		fz_poison_tail(vec[i].msg_hdr.msg_iov[0].iov_base,
			       vec[i].msg_len, vec[i].msg_hdr.msg_iov[0].iov_len);
	return n;
}

static int fz_clock_gettime(clockid_t clk, struct timespec *ts)
{
	FZ_CHECK(clk == CLOCK_MONOTONIC, "clock %d", (int)clk);
	ts->tv_sec = (time_t)(fake_ms / 1000);
	ts->tv_nsec = (long)(fake_ms % 1000) * 1000000;
	return 0;
}

static ssize_t fz_getrandom(void *buf, size_t len, unsigned int flags)
{
	uint64_t v = next_random;

	(void)flags;
	/* now and then one an earlier connection has: the daemon must
	 * draw again */
	next_random = next_random % 3 == 0 ? next_random : next_random + 0x10001;
	if (next_random % 3 == 0)
		next_random++;
	memset(buf, 0, len);
	memcpy(buf, &v, len < sizeof(v) ? len : sizeof(v));
	return (ssize_t)len;
}

static int fz_getsockopt(int fd, int level, int opt, void *val, socklen_t *len)
{
	if (level == SOL_SOCKET && opt == SO_PEERCRED) {
		struct ucred *cr = val;
		enum ident id = ID_ROOT;

		if (getsockopt(fd, level, opt, val, len) < 0)
			return -1;
		if (pending_n > 0) {
			id = pending_ident[pending_first];
			pending_first = (pending_first + 1) % FZ_CONNS;
			pending_n--;
		}
		if (fd >= 0 && fd < 4096)
			ident_by_fd[fd] = id;
		switch (id) {
		case ID_ROOT:
			cr->uid = 0;
			cr->gid = 0;
			break;
		case ID_GROUP:
			cr->uid = 1000;
			cr->gid = FZ_GROUP;
			break;
		default:
			cr->uid = 1001 + (uid_t)id;
			cr->gid = 100;
			break;
		}
		return 0;
	}
	if (level == SOL_SOCKET && opt == SO_PEERGROUPS) {
		enum ident id = fd >= 0 && fd < 4096 ? ident_by_fd[fd] : ID_ROOT;
		gid_t g[3] = { 100, 27, FZ_GROUP };
		size_t n = id == ID_SUPP ? 3 : 2;

		if (id == ID_NOGROUPS) {
			errno = ENOPROTOOPT;
			return -1;
		}
		if (*len < n * sizeof(gid_t)) {
			*len = (socklen_t)(n * sizeof(gid_t));
			errno = ERANGE;
			return -1;
		}
		memcpy(val, g, n * sizeof(gid_t));
		*len = (socklen_t)(n * sizeof(gid_t));
		return 0;
	}
	return getsockopt(fd, level, opt, val, len);
}

/* ---- fakes: inject.c ---------------------------------------------------- */

static int fz_inj_socket(int domain, int type, int proto)
{
	FZ_CHECK(domain == AF_INET && (type & SOCK_RAW) && proto >= 0 &&
		 proto < 256, "inject socket %d %d %d", domain, type, proto);
	if (sockets_fail) {
		errno = EPERM;
		return -1;
	}
	return FZ_FAKE_FD + proto;
}

static int fz_inj_setsockopt(int fd, int level, int opt, const void *val,
			     socklen_t len)
{
	(void)level;
	(void)opt;
	FZ_CHECK(fd >= FZ_FAKE_FD, "setsockopt on a real descriptor");
	fz_touch(val, len);
	return 0;
}

/* What inject.c sends: read whole (the kernel would), and answered as the
 * fuzzer said.  The first send of a packet gets inject_result; a fragmented
 * one (sent again on a protocol socket) frag_result. */
static ssize_t fz_inj_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	size_t total = 0;
	const struct cmsghdr *cm;
	bool mark = false;

	FZ_CHECK(flags & MSG_DONTWAIT, "blocking send");
	if (msg->msg_name != NULL)
		fz_touch(msg->msg_name, msg->msg_namelen);
	for (size_t i = 0; i < msg->msg_iovlen; i++) {
		fz_touch(msg->msg_iov[i].iov_base, msg->msg_iov[i].iov_len);
		total += msg->msg_iov[i].iov_len;
	}
	FZ_CHECK(total <= 65535 + 14, "inject of %zu bytes", total);
	fz_touch(msg->msg_control, msg->msg_controllen);
	for (cm = CMSG_FIRSTHDR(msg); cm != NULL;
	     cm = CMSG_NXTHDR((struct msghdr *)(uintptr_t)msg,
			      (struct cmsghdr *)(uintptr_t)cm))
		mark |= cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SO_MARK;
	FZ_CHECK(mark, "injected without a mark");
	if (fd >= FZ_FAKE_FD) {
		if (frag_result != 0) {
			errno = frag_result;
			return -1;
		}
		return (ssize_t)total;
	}
	if (inject_result != 0) {
		errno = inject_result;
		return -1;
	}
	return (ssize_t)total;
}

int spawn_run(char *const argv[], const char *input, char **out)
{
	for (size_t i = 0; argv[i] != NULL; i++)
		fz_touch(argv[i], strlen(argv[i]));
	(void)input;
	if (out != NULL)
		*out = NULL;
	return tc_fails ? 1 : 0;
}

/* ---- fakes: the kernel's queue -------------------------------------------- */

static struct kpkt *kpkt_by_id(uint32_t id)
{
	return id >= 1000 && id - 1000 < nkp ? &kp[id - 1000] : NULL;
}

static bool hc_named(uint64_t writer, uint64_t owner)
{
	for (unsigned i = 0; i < nhc; i++) {
		if (hcs[i].id != writer)
			continue;
		for (unsigned k = 0; k < nhc; k++)
			if ((hcs[i].named & 1u << k) && hcs[k].id == owner)
				return true;
	}
	return false;
}

void nfqb_verdict(uint16_t queue, uint32_t id, uint32_t verdict,
		  const uint32_t *mark, const void *payload, uint32_t len)
{
	struct kpkt *k = kpkt_by_id(id);

	FZ_CHECK(k != NULL, "verdict for packet %u, never queued", id);
	FZ_CHECK(k->queue == queue, "verdict for packet %u on queue %u, "
		 "not %u", id, queue, k->queue);
	FZ_CHECK(++k->verdicts == 1, "second verdict for packet %u", id);
	FZ_CHECK(verdict == NF_DROP || verdict == NF_REPEAT, "verdict %u",
		 verdict);
	if (mark != NULL)
		fz_touch(mark, sizeof(*mark));
	if (payload != NULL) {
		FZ_CHECK(len >= 20 && len <= NFQB_MAX_VERDICT_PAYLOAD,
			 "verdict payload of %u bytes", len);
		fz_touch(payload, len);
	}
	/* a write answers only what its connection read (or, on a write
	 * channel, what the connection it names read) */
	if (verdict == NF_REPEAT && !k->tee && cur != NULL && cur != &listener) {
		uint64_t writer = ((struct client *)cur)->id;

		FZ_CHECK(k->owner == writer || hc_named(writer, k->owner),
			 "connection %#llx answered packet %u held by %#llx",
			 (unsigned long long)writer, id,
			 (unsigned long long)k->owner);
	}
}

void nfqb_flush(void)
{
}

/* A paused queue is one the daemon stopped reading (its client is full):
 * it must be read again once that client has room, hangs up, or moves. */
static uint8_t paused[65536 / 8];

void nfqb_pause(uint16_t queue, bool pause, uint32_t keep)
{
	(void)keep;
	if (pause)
		paused[queue / 8] |= (uint8_t)(1u << (queue % 8));
	else
		paused[queue / 8] &= (uint8_t)~(1u << (queue % 8));
}

const struct nfqb_stats *nfqb_stats(void)
{
	static struct nfqb_stats s;

	return &s;
}

/* ---- fakes: the interface table -------------------------------------------- */

static const struct iface ifaces[] = {
	{ 1, "lo", { 0 }, true },
	{ 2, "eth0", { 0 }, true },
	{ 3, "eth1", { 0 }, false },
	{ 7, "a-long-if-name0", { 0 }, true },
};
static struct iface iftab[4];

static void iftab_init(void)
{
	memcpy(iftab, ifaces, sizeof(iftab));
	inet_pton(AF_INET, "127.0.0.1", &iftab[0].first_v4);
	inet_pton(AF_INET, "192.0.2.1", &iftab[1].first_v4);
	inet_pton(AF_INET, "198.51.100.7", &iftab[3].first_v4);
}

const struct iface *iftable_by_index(int index)
{
	for (size_t i = 0; i < 4; i++)
		if (iftab[i].index == index)
			return &iftab[i];
	return NULL;
}

const struct iface *iftable_by_name(const char *name)
{
	for (size_t i = 0; i < 4; i++)
		if (strncmp(iftab[i].name, name, IFNAMSIZ) == 0)
			return &iftab[i];
	return NULL;
}

const struct iface *iftable_by_v4(struct in_addr addr)
{
	for (size_t i = 0; i < 4; i++)
		if (iftab[i].has_v4 && iftab[i].first_v4.s_addr == addr.s_addr)
			return &iftab[i];
	return NULL;
}

/* ---- fakes: divertd.c and the firewall ----------------------------------------- */

int loop_add(struct pollable *p, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = p };

	return epoll_ctl(epfd, EPOLL_CTL_ADD, p->fd, &ev);
}

int loop_mod(struct pollable *p, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = p };

	return epoll_ctl(epfd, EPOLL_CTL_MOD, p->fd, &ev);
}

void loop_del(struct pollable *p)
{
	epoll_ctl(epfd, EPOLL_CTL_DEL, p->fd, NULL);
}

const struct ruleset *daemon_rules(void)
{
	return &running_rs;
}

const struct mark_layout *daemon_layout(void)
{
	return &running_ml;
}

bool daemon_uses_nft(void)
{
	return running_rs.n % 2 == 0;
}

/* divertd.c's, without the kernel: counters saved and carried, the
 * ruleset swapped in place (divert_sock.c reads it through cfg->rs). */
int daemon_apply(struct ruleset *nrs, const char *what, char *err,
		 size_t errlen)
{
	struct rule_count *saved;
	uint16_t ports[1024];

	FZ_CHECK(cur != NULL && cur != &listener &&
		 ((struct client *)cur)->p.fd < 4096 &&
		 ident_by_fd[((struct client *)cur)->p.fd] == ID_ROOT,
		 "a connection that is not root's changed the rules (%s)",
		 what);
	fz_touch(what, strlen(what));
	(void)rules_ports(nrs, ports, 1024);
	saved = counters_save();
	if (apply_fails) {
		snprintf(err, errlen, "the kernel did not take the new rules");
		counters_carry(&running_rs, saved, &running_rs);
		ruleset_free(nrs);
		return -1;
	}
	counters_carry(&running_rs, saved, nrs);
	ruleset_free(&running_rs);
	running_rs = *nrs;
	*nrs = (struct ruleset){ 0 };
	return 0;
}

int fw_counters(enum fw_backend b, const struct ruleset *rs,
		struct rule_count *c)
{
	(void)b;
	if (counters_fail)
		return -1;
	for (size_t i = 0; i < rs->n; i++) {
		c[i].packets = fake_ms % 1000 + i;
		c[i].bytes = (fake_ms % 1000 + i) * 60;
	}
	return 0;
}

/* ---- fakes: logging: formatted, not printed --------------------------------- */

void log_msg(int priority, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	(void)priority;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
}

void log_limited(struct log_ratelimit *rl, int priority, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	(void)rl;
	(void)priority;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
}

/* ---- the harness's side of the connections ------------------------------ */

static uint8_t rbuf[WRITE_SLOT + 4096];
static unsigned trace_replies, trace_ctlreplies;	/* FUZZ_CLIENT_TRACE */

static bool reply_errno_ok(int e)
{
	static const int ok[] = {
		0, EINVAL, EMSGSIZE, EAFNOSUPPORT, EBADF, EADDRNOTAVAIL,
		EADDRINUSE, ENETUNREACH, EPERM, ENOBUFS, EHOSTUNREACH, EACCES,
		ENOSPC,
	};

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (e == ok[i])
			return true;
	return false;
}

/* Everything the daemon sent us, each message checked. */
static void drain(struct hc *h)
{
	for (;;) {
		struct divert_wire_hdr m;
		ssize_t n;

		if (h->fd < 0 || h->eof || (h->slow && h->welcomed))
			return;
		n = recv(h->fd, rbuf, sizeof(rbuf), MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno == ECONNRESET)) {
			h->eof = true;
			return;
		}
		if (n < 0)
			return;
		FZ_CHECK((size_t)n >= sizeof(m), "a %zd-byte message", n);
		memcpy(&m, rbuf, sizeof(m));
		FZ_CHECK(m.version == DIVERT_WIRE_VERSION, "version %u",
			 m.version);
		if (!h->welcomed) {
			FZ_CHECK(m.type == DW_WELCOME, "first message type %u",
				 m.type);
			h->welcomed = true;
			if (m.arg != 0) {
				FZ_CHECK(m.arg == EPERM || m.arg == ENOBUFS,
					 "refused with %u", m.arg);
				h->refused = true;
			} else {
				FZ_CHECK(m.conn != 0, "connection id 0");
				h->id = m.conn;
			}
			continue;
		}
		FZ_CHECK(!h->refused, "a message after a refusal");
		switch (m.type) {
		case DW_PACKET:
			FZ_CHECK(m.addr.sin_family == AF_INET, "family %u",
				 m.addr.sin_family);
			FZ_CHECK(m.addr.sin_zero[7] == 0, "name not terminated");
			FZ_CHECK((size_t)n <= sizeof(m) + 65535 + 1024,
				 "packet of %zd", n);
			break;
		case DW_REPLY:
			trace_replies++;
			if (getenv("FUZZ_CLIENT_TRACE") != NULL)
				fprintf(stderr, "trace: reply %u seq %u\n",
					m.arg, m.val);
			FZ_CHECK(reply_errno_ok((int)m.arg), "reply errno %u",
				 m.arg);
			break;
		case DW_CTLREPLY:
			trace_ctlreplies++;
			if (getenv("FUZZ_CLIENT_TRACE") != NULL)
				fprintf(stderr, "trace: divertctl %u: %.*s\n",
					m.arg, (int)((size_t)n - sizeof(m)),
					(const char *)rbuf + sizeof(m));
			FZ_CHECK(m.arg <= 2, "divertctl status %u", m.arg);
			FZ_CHECK(m.val <= 1, "continuation %u", m.val);
			FZ_CHECK((size_t)n - sizeof(m) <= DW_CTL_MAXREPLY,
				 "reply text of %zu", (size_t)n - sizeof(m));
			break;
		default:
			FZ_CHECK(0, "message type %u from the daemon", m.type);
		}
	}
}

/* The daemon's loop, as divertd.c runs it, until nothing is left to do. */
static void pump(void)
{
	for (int round = 0;; round++) {
		struct epoll_event ev[64];
		int n;

		FZ_CHECK(round < 20000, "the daemon never stops being busy");
		n = epoll_wait(epfd, ev, 64, 0);
		for (int i = 0; i < n; i++) {
			cur = ev[i].data.ptr;
			cur->handle(cur, ev[i].events);
			cur = NULL;
		}
		divert_sock_expire();
		nfqb_flush();
		for (unsigned i = 0; i < nhc; i++)
			drain(&hcs[i]);
		if (n <= 0)
			break;
	}
}

/* Packets handed over in one netlink batch end with its flush, as in
 * divertd.c's nfq_event(); their buffers die with it. */
static void end_batch(void)
{
	if (nbatch == 0)
		return;
	divert_sock_flush();
	for (unsigned i = 0; i < nbatch; i++)
		free(batch_data[i]);
	nbatch = 0;
}

static uint16_t pick_port(struct fz *in)
{
	uint8_t sel = fz_u8(in);

	if (sel < 0xf0)
		return cfg_ports[sel % (sizeof(cfg_ports) / sizeof(cfg_ports[0]))];
	return fz_u16(in);
}

static struct hc *pick_hc(struct fz *in)
{
	uint8_t k = fz_u8(in);

	return nhc > 0 ? &hcs[k % nhc] : NULL;
}

static uint64_t pick_id(uint8_t k)
{
	return nhc > 0 ? hcs[k % nhc].id : 0;
}

/* One message from h; false when the socket would not take it. */
static bool hc_send(struct hc *h, const void *msg, size_t len)
{
	if (h == NULL || h->fd < 0)
		return false;
	if (len >= sizeof(struct divert_wire_hdr)) {
		struct divert_wire_hdr m;

		memcpy(&m, msg, sizeof(m));
		for (unsigned k = 0; m.type == DW_WRITE && k < nhc; k++)
			if (hcs[k].id == m.conn && m.conn != 0)
				h->named |= 1u << k;
	}
	if (send(h->fd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
		return true;
	if (errno == EAGAIN) {
		pump();
		return send(h->fd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0;
	}
	return false;
}

static void op_connect(struct fz *in)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	enum ident id = (enum ident)(fz_u8(in) % ID_N);
	unsigned before;
	struct hc *h;
	int expect;

	if (nhc == FZ_CONNS)
		return;
	pump();		/* hangups seen first: the count is then settled */
	before = divert_sock_clients();
	h = &hcs[nhc];
	memset(h, 0, sizeof(*h));
	h->ident = id;
	h->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	FZ_CHECK(h->fd >= 0, "socket: %s", strerror(errno));
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock_path);
	pending_ident[(pending_first + pending_n) % FZ_CONNS] = id;
	pending_n++;
	FZ_CHECK(connect(h->fd, (struct sockaddr *)&sun, sizeof(sun)) == 0,
		 "connect: %s (the daemon stopped listening)", strerror(errno));
	nhc++;
	pump();
	FZ_CHECK(h->welcomed, "a connection got no DW_WELCOME");
	expect = id == ID_STRANGER || id == ID_NOGROUPS ? EPERM
		 : before >= FZ_MAX_CLIENTS ? ENOBUFS : 0;
	FZ_CHECK(h->refused == (expect != 0),
		 "connection of identity %d (%u clients) %s", (int)id, before,
		 h->refused ? "refused" : "accepted");
}

static void op_raw(struct fz *in)
{
	struct hc *h = pick_hc(in);
	uint8_t fix = fz_u8(in);
	size_t want = fz_u16(in), pad = fix & 8 ? (size_t)fz_u16(in) * 2 : 0;
	size_t got, len;
	const uint8_t *p = fz_bytes(in, want, &got);
	uint8_t *msg;

	len = pad > 70000 ? 70000 : pad;
	if (len < got)
		len = got;
	msg = calloc(1, len > 0 ? len : 1);
	FZ_CHECK(msg != NULL, "out of memory");
	memcpy(msg, p, got);
	if ((fix & 1) && len >= 4) {
		uint16_t v = DIVERT_WIRE_VERSION;

		memcpy(msg + offsetof(struct divert_wire_hdr, version), &v, 2);
	}
	if ((fix & 2) && len >= 16) {
		uint64_t id = pick_id(fix >> 4);

		memcpy(msg + offsetof(struct divert_wire_hdr, conn), &id, 8);
	}
	hc_send(h, msg, len);
	free(msg);
}

/* One packet from the kernel's queue, as nfq_bridge.c hands it over. */
static void hand_over(uint16_t queue, uint8_t hook, uint32_t mark,
		      uint8_t indev, bool csum, const uint8_t *p, size_t got,
		      size_t len)
{
	struct nfqb_packet pkt;
	struct kpkt *k;
	struct client *owner;

	if (nkp == FZ_PKTS)
		return;
	if (nbatch == FZ_BATCH)
		end_batch();
	memset(&pkt, 0, sizeof(pkt));
	pkt.queue = queue;
	pkt.id = 1000 + nkp;
	pkt.hook = hook % 8 == 0 ? NF_INET_PRE_ROUTING
		   : hook % 8 == 1 ? NF_INET_LOCAL_OUT
		   : hook % 8 == 2 ? NF_INET_FORWARD : hook;
	pkt.mark = mark;
	pkt.indev = indev < 0xf0 ? (uint32_t)ifaces[indev % 4].index : indev;
	pkt.l3proto = got > 0 && p[0] >> 4 == 6 ? 0x86dd : 0x0800;
	pkt.csum_not_ready = csum;
	pkt.data = malloc(len > 0 ? len : 1);
	FZ_CHECK(pkt.data != NULL, "out of memory");
	memset(pkt.data, 0, len);
	memcpy(pkt.data, p, got);
	pkt.len = (uint32_t)len;

	k = &kp[nkp++];
	memset(k, 0, sizeof(*k));
	k->id = pkt.id;
	k->queue = pkt.queue;
	k->tee = rules_find_tee_rule(&running_rs, mark_tag(&running_ml, mark),
				     pkt.queue) != NULL;
	owner = port_owner[pkt.queue];
	k->owner = owner != NULL ? owner->id : 0;
	k->hook = pkt.hook;
	batch_data[nbatch++] = pkt.data;
	divert_sock_packet(&pkt, NULL);
	if (nkp <= FZ_COPIES) {
		/* what the client read: completed checksums and all */
		k->copy = malloc(len > 0 ? len : 1);
		FZ_CHECK(k->copy != NULL, "out of memory");
		memcpy(k->copy, pkt.data, len);
		k->len = (uint32_t)len;
	}
}

static void op_packet(struct fz *in)
{
	uint8_t hook, indev, flags;
	uint16_t queue;
	uint32_t mark;
	size_t want, pad, got, len, count = 1;
	const uint8_t *p;

	queue = pick_port(in);
	hook = fz_u8(in);
	mark = fz_u32(in);
	indev = fz_u8(in);
	flags = fz_u8(in);
	want = fz_u16(in);
	pad = flags & 8 ? (size_t)fz_u16(in) * 2 : 0;
	if (flags & 0x10)
		count = fz_u16(in);
	p = fz_bytes(in, want, &got);
	len = pad > 65535 ? 65535 : pad;
	if (len < got)
		len = got;
	if (count > 1 && len > 2048)
		len = got < 2048 ? 2048 : got;	/* many: small ones */
	/* the mark the rule that queued it set: its number, a tee's value,
	 * or whatever the fuzzer says */
	if (flags & 2) {
		for (size_t i = 0; i < running_rs.n; i++)
			if (running_rs.rules[i].action == ACT_TEE &&
			    running_rs.rules[i].arg == queue) {
				mark = mark_with_tag(&running_ml, mark,
					rules_tee_value(&running_rs,
							&running_rs.rules[i]));
				break;
			}
	} else if (flags & 4) {
		for (size_t i = 0; i < running_rs.n; i++)
			if (running_rs.rules[i].action == ACT_DIVERT &&
			    running_rs.rules[i].arg == queue) {
				mark = mark_with_tag(&running_ml, mark,
						     running_rs.rules[i].num);
				break;
			}
	}
	for (size_t i = 0; i < count && nkp < FZ_PKTS; i++) {
		hand_over(queue, hook, mark, indev, flags & 1, p, got, len);
		/* a long stream: batches end, and (flags & 0x20) the
		 * program reads between them */
		if (count > 1 && nbatch == FZ_BATCH) {
			end_batch();
			if (flags & 0x20)
				pump();
		}
	}
}

static void op_hangup(struct fz *in)
{
	struct hc *h = pick_hc(in);
	uint8_t how = fz_u8(in);

	if (h == NULL || h->fd < 0)
		return;
	if (how & 2) {
		h->slow = !h->slow;
	} else if (how & 1) {
		shutdown(h->fd, SHUT_WR);
	} else {
		close(h->fd);
		h->fd = -1;
	}
}

static void op_info(void)
{
	struct divert_sock_info info[64];
	size_t n = divert_sock_ports(info, 64);
	int t = divert_sock_timeout();

	for (size_t i = 0; i < n; i++) {
		FZ_CHECK(i == 0 || info[i - 1].port < info[i].port,
			 "ports not ascending");
		FZ_CHECK(port_owner[info[i].port] != NULL, "port without owner");
	}
	FZ_CHECK(divert_sock_clients() <= FZ_MAX_CLIENTS, "%u clients",
		 divert_sock_clients());
	FZ_CHECK(divert_sock_held() <= HELD_POOL, "held");
	FZ_CHECK((t == -1) == (divert_sock_held() == 0), "timeout %d with "
		 "%u held", t, divert_sock_held());
	FZ_CHECK(t <= (int)dcfg.hold_ms, "timeout %d", t);
	FZ_CHECK(divert_sock_stats() != NULL, "stats");
}

static void op_ctl(struct fz *in)
{
	struct hc *h = pick_hc(in);
	uint8_t flags = fz_u8(in);
	size_t want = fz_u8(in), got;
	const uint8_t *p = fz_bytes(in, want, &got);
	uint8_t msg[sizeof(struct divert_wire_hdr) + 256 + 1];
	struct divert_wire_hdr m = {
		.type = DW_CTL, .version = DIVERT_WIRE_VERSION,
		.arg = flags & 1 ? DW_CTL_JSON : 0,
	};

	memcpy(msg, &m, sizeof(m));
	for (size_t i = 0; i < got; i++)
		msg[sizeof(m) + i] = p[i] == ' ' ? '\0' : p[i];
	msg[sizeof(m) + got] = '\0';
	hc_send(h, msg, sizeof(m) + got + (flags & 2 ? 0 : 1));
}

static void op_bind(struct fz *in)
{
	struct hc *ctl = pick_hc(in);
	uint8_t k = fz_u8(in);
	struct divert_wire_hdr m = {
		.type = DW_BIND, .version = DIVERT_WIRE_VERSION,
	};

	m.conn = pick_id(k);
	m.val = pick_port(in);
	hc_send(ctl, &m, sizeof(m));
}

static void op_writeback(struct fz *in)
{
	struct hc *h = pick_hc(in);
	uint8_t j = fz_u8(in), mode = fz_u8(in);
	uint16_t tag = fz_u16(in), off = fz_u16(in);
	uint8_t x = fz_u8(in);
	static const char *const addrs[] = {
		"0.0.0.0", "192.0.2.1", "127.0.0.1", "203.0.113.9",
	};
	struct divert_wire_hdr m = { .version = DIVERT_WIRE_VERSION };
	const struct kpkt *k;
	uint8_t *msg;

	if (nkp == 0)
		return;
	k = &kp[j % (nkp < FZ_COPIES ? nkp : FZ_COPIES)];
	m.type = mode & 1 ? DW_WRITE : DW_PACKET;
	if (mode & 1) {
		m.conn = pick_id(mode >> 4);
		m.val = ++write_seq;
	}
	if (mode & 2) {
		m.arg = 1;
		m.addr.sin_family = AF_INET;
		m.addr.sin_port = tag;
		inet_pton(AF_INET, addrs[(mode >> 2) & 3], &m.addr.sin_addr);
		if (mode & 0x40)
			memcpy(m.addr.sin_zero, "eth0", 5);
	}
	msg = malloc(sizeof(m) + k->len);
	FZ_CHECK(msg != NULL, "out of memory");
	memcpy(msg, &m, sizeof(m));
	memcpy(msg + sizeof(m), k->copy, k->len);
	if (x != 0 && k->len > 0)
		msg[sizeof(m) + off % k->len] ^= x;
	hc_send(h, msg, sizeof(m) + k->len);
	free(msg);
}

/* ---- one run ------------------------------------------------------------------ */

static void reset_rules(void)
{
	char err[256];

	ruleset_free(&running_rs);
	FZ_CHECK(config_parse_string(base_config, "base", &running_rs, err,
				     sizeof(err)) == 0, "base config: %s", err);
	counters_free();
}

/* The directories of earlier runs that crashed (an abort skips atexit):
 * /tmp/fuzz_client.PID whose process is gone. */
static void remove_stale_dirs(void)
{
	DIR *d = opendir("/tmp");
	struct dirent *e;

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		char path[300];
		int pid;

		if (sscanf(e->d_name, "fuzz_client.%d", &pid) != 1 || pid <= 0 ||
		    kill(pid, 0) == 0 || errno != ESRCH)
			continue;
		snprintf(path, sizeof(path), "/tmp/%s/d.sock", e->d_name);
		unlink(path);
		snprintf(path, sizeof(path), "/tmp/%s", e->d_name);
		rmdir(path);
	}
	closedir(d);
}

static void cleanup(void)
{
	if (sock_path[0] != '\0') {
		divert_sock_close();
		unlink(sock_path);
		rmdir(sock_dir);
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if (geteuid() != 0) {
		fprintf(stderr, "fuzz_client: needs root (SO_SNDBUFFORCE, the "
			"socket's owner)\n");
		exit(77);
	}
	iftab_init();
	for (size_t i = 0; i < 256; i++)
		proto_fd[i] = -1;
	epfd = epoll_create1(EPOLL_CLOEXEC);
	FZ_CHECK(epfd >= 0, "epoll: %s", strerror(errno));
	remove_stale_dirs();
	snprintf(sock_dir, sizeof(sock_dir), "/tmp/fuzz_client.%d", (int)getpid());
	FZ_CHECK(mkdir(sock_dir, 0700) == 0 || errno == EEXIST, "mkdir %s: %s",
		 sock_dir, strerror(errno));
	snprintf(sock_path, sizeof(sock_path), "%s/d.sock", sock_dir);
	unlink(sock_path);		/* a pid reused */
	reset_rules();
	FZ_CHECK(mark_layout_init(&running_ml, 0xffff0000u) == 0, "layout");
	dcfg.socket_path = sock_path;
	dcfg.rs = &running_rs;
	dcfg.ml = &running_ml;
	dcfg.hold_ms = 1000;
	dcfg.group = FZ_GROUP;
	dcfg.max_clients = FZ_MAX_CLIENTS;
	FZ_CHECK(divert_sock_open(&dcfg) == 0, "divert_sock_open");
	atexit(cleanup);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz in = { data, size };
	unsigned nfree = 0;
	bool info_done = false;
	int probe;

	nhc = 0;
	nkp = 0;
	write_seq = 0;
	pending_first = pending_n = 0;
	inject_result = frag_result = 0;
	tc_fails = sockets_fail = apply_fails = counters_fail = false;
	nredirects = 0;		/* inject.c's tc filters: none yet */
	while (!fz_empty(&in)) {
		uint8_t op = fz_u8(&in) % OP_N;

		if (op != OP_PACKET)
			end_batch();
		switch (op) {
		case OP_CONNECT:
			op_connect(&in);
			break;
		case OP_RAW:
			op_raw(&in);
			break;
		case OP_PUMP:
			pump();
			break;
		case OP_PACKET:
			op_packet(&in);
			break;
		case OP_FLUSH:
			break;
		case OP_HANGUP:
			op_hangup(&in);
			break;
		case OP_TIME:
			fake_ms += fz_u16(&in);
			break;
		case OP_RESULTS: {
			uint8_t v = fz_u8(&in);

			inject_result = inject_errnos[v & 7];
			frag_result = v & 0x40 ? ENOBUFS : 0;
			tc_fails = v & 0x80;
			sockets_fail = v & 0x20;
			break;
		}
		case OP_INFO:
			/* divert_sock_ports() walks all 65536 ports: once a
			 * run is enough, and keeps the fuzzer fast */
			if (!info_done)
				op_info();
			info_done = true;
			break;
		case OP_CTL:
			op_ctl(&in);
			break;
		case OP_TOGGLE: {
			uint8_t v = fz_u8(&in);

			apply_fails = v & 1;
			counters_fail = v & 2;
			break;
		}
		case OP_BIND:
			op_bind(&in);
			break;
		case OP_WRITEBACK:
			op_writeback(&in);
			break;
		}
	}
	end_batch();
	pump();

	/* everyone hangs up: the daemon must be back where it started */
	for (unsigned i = 0; i < nhc; i++)
		if (hcs[i].fd >= 0) {
			close(hcs[i].fd);
			hcs[i].fd = -1;
		}
	pump();
	FZ_CHECK(divert_sock_clients() == 0, "%u clients left",
		 divert_sock_clients());
	divert_sock_flush();
	FZ_CHECK(npending == 0, "sends pending");
	FZ_CHECK(gfirst == NULL && glast == NULL, "packets still held");
	for (struct held *h = held_free; h != NULL; h = h->gnext)
		nfree++;
	FZ_CHECK(nfree == HELD_POOL, "%u of %d held slots free", nfree,
		 HELD_POOL);
	{
		/* (memcmp, not a loop: the fuzzer's comparison tracing made
		 * 65536 compares a run the slowest thing here) */
		static struct client *const unbound[65536];

		FZ_CHECK(memcmp(port_owner, unbound, sizeof(unbound)) == 0,
			 "a port still bound");
	}
	{
		static const uint8_t none[sizeof(paused)];

		FZ_CHECK(memcmp(paused, none, sizeof(none)) == 0,
			 "a queue left paused: its packets wait in the kernel "
			 "for good");
	}
	for (unsigned i = 0; i < nkp; i++) {
		FZ_CHECK(kp[i].verdicts == 1, "packet %u got %u verdicts "
			 "(a stuck packet)", kp[i].id, kp[i].verdicts);
		free(kp[i].copy);
	}
	/* no socket left open but the listener (the sanitizers' own pipes
	 * and files may come and go) */
	probe = open("/dev/null", O_RDONLY | O_CLOEXEC);
	close(probe);
	for (int fd = 0; fd < probe + 64; fd++) {
		struct stat st;

		if (fd == listener.fd || fstat(fd, &st) < 0 ||
		    !S_ISSOCK(st.st_mode))
			continue;
		FZ_CHECK(0, "socket descriptor %d left open", fd);
	}
	if (getenv("FUZZ_CLIENT_TRACE") != NULL) {
		const struct divert_stats *st = divert_sock_stats();

		fprintf(stderr, "trace: %u connections, %u packets; stats: "
			"diverted %llu teed %llu noport %llu full %llu "
			"reinjected out %llu in %llu injected out %llu in %llu "
			"inject errors %llu expired %llu evicted %llu "
			"bad writes %llu bad cksum %llu no iface %llu "
			"channel %llu; replies %u, ctl replies %u\n", nhc, nkp,
			(unsigned long long)st->diverted,
			(unsigned long long)st->teed,
			(unsigned long long)st->noport,
			(unsigned long long)st->full,
			(unsigned long long)st->reinjected_out,
			(unsigned long long)st->reinjected_in,
			(unsigned long long)st->injected_out,
			(unsigned long long)st->injected_in,
			(unsigned long long)st->inject_errors,
			(unsigned long long)st->expired,
			(unsigned long long)st->evicted,
			(unsigned long long)st->bad_writes,
			(unsigned long long)st->bad_cksum_in,
			(unsigned long long)st->no_iface,
			(unsigned long long)st->channel_writes,
			trace_replies, trace_ctlreplies);
	}
	reset_rules();
	return 0;
}
