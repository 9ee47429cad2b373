/*
 * fuzz_client.c: libFuzzer target for every message a client can send
 * divertd: the client side, src/divert_sock.c (the listener, packets from
 * the kernel), src/client.c (clients and their messages), src/held.c (held
 * packets) and src/ring.c (shared-memory rings), and src/inject.c (writes
 * that answer no held packet), all included whole, with src/control.c
 * (divertctl's commands), src/counters.c, src/config.c, src/rules.c and
 * src/cksum.c linked unchanged.
 *
 * The daemon side runs for real on a UNIX socket in a temporary
 * directory: divert_sock_open() listens, the fuzzer's clients connect with
 * socket(AF_UNIX, SOCK_SEQPACKET) and send(), and the daemon's handlers run
 * from an epoll loop here that does what divertd.c's does (loop_add(),
 * loop_mod() and loop_del() are this file's).  What must not be touched is
 * faked:
 *   - the kernel's queue (nfqb_verdict(), nfqb_flush(), nfqb_pause(),
 *     nfqb_lend(), nfqb_take_back()):
 *     each packet the fuzzer hands to divert_sock_packet() must get
 *     exactly one verdict, a written packet may answer only a packet its
 *     connection (or the connection a write channel names) was given, no
 *     new packet may be injected while verdicts given before it wait to
 *     be sent, a paused queue must be resumed once its client has
 *     room or is gone, and a queue lent to a root client (the direct
 *     path: the fd handed out is /dev/null's) is taken back once it
 *     unbinds or is gone, and never lent twice;
 *   - injection's sockets (socket(), setsockopt(), sendmsg() for inject.c
 *     alone) and tc (spawn_run()): results chosen by the fuzzer;
 *   - the interface table (iftable_*()): lo, eth0, eth1, one long name;
 *   - who connects (getsockopt() SO_PEERCRED / SO_PEERGROUPS for
 *     the client side alone): root, a member of divertd's group (primary or
 *     supplementary), or a stranger, as the fuzzer says;
 *   - the clock and the connection ids (clock_gettime(), getrandom()),
 *     so that a run repeats exactly;
 *   - divertd.c's rule swap (daemon_apply(): as divertd.c, without the
 *     kernel; only root's connections may get there) and the firewall's
 *     counters (fw_counters());
 *   - the rings' memory (memfd_create(), mmap(), munmap() for
 *     the client side alone): real memfds, each mapped between two
 *     unreadable pages, so that a read past a ring faults; failures as the
 *     fuzzer says.  The daemon's hash of a write-back (packet_hash())
 *     tells whose tx ring it read: it must lie inside that tx ring, and
 *     it may answer only that connection's packets.
 * Each message the daemon reads is in its own receive slot with the rest
 * of the slot marked unreadable, so reading past a message is caught.
 *
 * A connection may ask for a shared-memory ring (DW_RING) and then use it
 * as the shim does: drain() maps the memfd it is sent (its size, seals and
 * header checked), reads the packets out of the rx ring, takes the
 * DW_KICK that the ring's emptying owes, and kicks a daemon waiting for
 * room; its write-backs go into the tx ring.  Every packet a connection
 * reads, from its socket or its ring, must be one handed over for it, in
 * order and unchanged.  For an honest ring the DW_KICKs are counted
 * exactly (one waits on the socket while the ring holds a packet), and
 * after the loop the daemon has asked for a kick on every write and is
 * not left waiting for room that its reader has made.  A hostile ring
 * (OP_RINGPOKE) holds anything the fuzzer writes: the daemon must not
 * crash, read outside its mapping, or answer a packet twice or for
 * another connection; it may disconnect that client.
 *
 * Input: a list of operations, each an opcode byte and its arguments
 * (fuzz_client_ops.h).  After the last one every client hangs up, and the
 * daemon must be back where it started: no client, no held packet, no
 * bound port, no paused or lent queue, nothing pending, no socket or memfd left
 * open, no ring mapped, every packet answered once.
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
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <xxhash.h>

#include "divertd.h"
#include "divert_wire.h"
#include "fuzz_input.h"
#include "fuzz_client_ops.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* ---- the fakes the client side sees ------------------------------------ */

static int fz_recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen,
		       int flags, struct timespec *tmo);
static int fz_clock_gettime(clockid_t clk, struct timespec *ts);
static ssize_t fz_getrandom(void *buf, size_t len, unsigned int flags);
static int fz_getsockopt(int fd, int level, int opt, void *val,
			 socklen_t *len);
static int fz_memfd_create(const char *name, unsigned int flags);
static void *fz_mmap(void *addr, size_t len, int prot, int flags, int fd,
		     off_t off);
static int fz_munmap(void *addr, size_t len);
static XXH64_hash_t fz_xxh3(const void *p, size_t len);

#define recvmmsg(a, b, c, d, e) fz_recvmmsg(a, b, c, d, e)
#define clock_gettime(a, b) fz_clock_gettime(a, b)
#define getrandom(a, b, c) fz_getrandom(a, b, c)
#define getsockopt(a, b, c, d, e) fz_getsockopt(a, b, c, d, e)
#define memfd_create(a, b) fz_memfd_create(a, b)
#define mmap(a, b, c, d, e, f) fz_mmap(a, b, c, d, e, f)
#define munmap(a, b) fz_munmap(a, b)
#define packet_hash(a, b) fz_xxh3(a, b)
#include "../../src/divert_sock.c"
#include "../../src/client.c"
#include "../../src/held.c"
#include "../../src/ring.c"
#undef recvmmsg
#undef clock_gettime
#undef getrandom
#undef getsockopt
#undef memfd_create
#undef mmap
#undef munmap
#undef packet_hash

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
	unsigned cursor;		/* kp[] before it is read or lost: the
					 * next packet it reads is later */
	/* its shared-memory ring, used as the shim does */
	struct dw_ring_map *ring;	/* mapped, or NULL */
	bool ring_asked;		/* it sent DW_RING */
	bool bind_named;		/* a DW_BIND named it (EISCONN then) */
	bool noisy;			/* it sent what is answered on its own
					 * socket (DW_BIND, DW_WRITE, DW_CTL, a
					 * second DW_RING), or packets came there:
					 * a full socket may then lose a DW_KICK,
					 * so they are not counted */
	bool poked;			/* the fuzzer wrote into its ring: hostile,
					 * nothing in it is checked */
	unsigned kicks;			/* DW_KICKs read and not yet taken */
	int pair;			/* OP_ATTACH: the end kept, or -1 */
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
static bool memfd_fails, mmap_fails;
static uint32_t write_seq;

/* the daemon's ring mappings (fz_mmap()), each between guard pages */
#define FZ_MAPS		16
static uint8_t *dmaps[FZ_MAPS];
static unsigned ndmaps;
static unsigned nhmaps;			/* the harness's own, of hcs[].ring */
static uint64_t ring_writer;		/* whose tx ring the daemon hashed last */
static bool drain_kicked;		/* drain() sent the daemon a DW_KICK */
static unsigned trace_kicks, trace_ring_reads, trace_ring_writes;

static const int inject_errnos[] = {
	0, EMSGSIZE, ENETUNREACH, EPERM, ENOBUFS, EHOSTUNREACH, EACCES, 0,
};

/* ---- fakes: the client side ------------------------------------------- */

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

/* A ring's memfd, unless the fuzzer says the process is out of them. */
static int fz_memfd_create(const char *name, unsigned int flags)
{
	FZ_CHECK(flags & MFD_ALLOW_SEALING, "a ring memfd that cannot be sealed");
	if (memfd_fails) {
		errno = EMFILE;
		return -1;
	}
	return memfd_create(name, flags);
}

/* A ring mapped between two unreadable pages: reading or writing past it
 * faults, even where AddressSanitizer does not look (mapped memory). */
static void *fz_mmap(void *addr, size_t len, int prot, int flags, int fd,
		     off_t off)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	uint8_t *region;
	void *p;

	FZ_CHECK(addr == NULL && len == DW_RING_LEN && off == 0 &&
		 (flags & MAP_SHARED), "mmap of %zu bytes at %lld", len,
		 (long long)off);
	FZ_CHECK(ndmaps < FZ_MAPS, "%u rings mapped", ndmaps);
	if (mmap_fails) {
		errno = ENOMEM;
		return MAP_FAILED;
	}
	region = mmap(NULL, len + 2 * page, PROT_NONE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (region == MAP_FAILED)
		return MAP_FAILED;
	p = mmap(region + page, len, prot, flags | MAP_FIXED, fd, off);
	if (p == MAP_FAILED) {
		int e = errno;

		munmap(region, len + 2 * page);
		errno = e;
		return MAP_FAILED;
	}
	dmaps[ndmaps++] = p;
	return p;
}

static int fz_munmap(void *addr, size_t len)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);

	FZ_CHECK(len == DW_RING_LEN, "munmap of %zu bytes", len);
	for (unsigned i = 0; i < ndmaps; i++)
		if (dmaps[i] == addr) {
			dmaps[i] = dmaps[--ndmaps];
			return munmap((uint8_t *)addr - page, len + 2 * page);
		}
	FZ_CHECK(0, "munmap of %p: no ring is mapped there", addr);
	return -1;
}

/* The daemon hashes a packet it was handed, a write read off a socket, or
 * one in a tx ring (or copied out of one: ring_pkt).  One in a ring must
 * lie inside that ring's tx bytes; the connection it belongs to is the
 * writer nfqb_verdict() checks. */
static XXH64_hash_t fz_xxh3(const void *p, size_t len)
{
	uintptr_t a = (uintptr_t)p;

	if (p != ring_pkt)
		ring_writer = 0;
	for (unsigned i = 0; i < ndmaps; i++) {
		uintptr_t base = (uintptr_t)dmaps[i];

		if (a < base || a >= base + DW_RING_LEN)
			continue;
		FZ_CHECK(a >= base + DW_RING_HDR + DW_RING_RX &&
			 len <= base + DW_RING_LEN - a, "a write-back of %zu "
			 "bytes read at %zu of a ring, not inside its tx ring",
			 len, (size_t)(a - base));
		for (unsigned k = 0; k < nclients; k++)
			if ((uintptr_t)clients[k]->ring == base)
				ring_writer = clients[k]->id;
		FZ_CHECK(ring_writer != 0, "a ring read that no client has");
	}
	return XXH3_64bits(p, len);
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

/* Verdicts given since the last nfqb_flush(): a new packet may not be
 * injected while any waits, or it would overtake them. */
static unsigned verdicts_unsent;

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
	FZ_CHECK(verdicts_unsent == 0, "a new packet injected before %u "
		 "verdicts given earlier were sent", verdicts_unsent);
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
	verdicts_unsent++;
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
	 * channel, what the connection it names read); one read out of a
	 * tx ring is that ring's connection's, also when the loop empties
	 * the rings outside any event (divert_sock_idle()) */
	if (verdict == NF_REPEAT && !k->tee && cur != &listener) {
		uint64_t writer = ring_writer != 0 ? ring_writer
				  : cur != NULL ? ((struct client *)cur)->id : 0;

		FZ_CHECK(writer != 0, "packet %u written back by no connection",
			 id);
		FZ_CHECK(k->owner == writer || hc_named(writer, k->owner),
			 "connection %#llx answered packet %u held by %#llx",
			 (unsigned long long)writer, id,
			 (unsigned long long)k->owner);
		ring_writer = 0;
	}
}

void nfqb_flush(void)
{
	verdicts_unsent = 0;
}

/* A paused queue is one the daemon stopped reading (its client is full):
 * it must be read again once that client has room, hangs up, or moves. */
static uint8_t paused[65536 / 8];
static uint8_t lent[65536 / 8];
static int lent_fd = -1;

int nfqb_lend(uint16_t queue)
{
	FZ_CHECK(!(lent[queue / 8] & (1u << (queue % 8))),
		 "queue %u lent twice", queue);
	if (lent_fd < 0)
		lent_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	lent[queue / 8] |= (uint8_t)(1u << (queue % 8));
	return lent_fd;
}

int nfqb_take_back(uint16_t queue)
{
	lent[queue / 8] &= (uint8_t)~(1u << (queue % 8));
	return 0;
}

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
	for (size_t i = 0; i < 4; i++)
		iftab[i].up = i != 2;		/* eth1 is down */
	iftab[0].loopback = true;
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

uint64_t daemon_lost_before(void)
{
	return 7;	/* as a killed divertd's rules might have counted */
}

/* divertd.c's, without the kernel: counters saved and carried, the
 * ruleset swapped in place (the client side reads it through cfg->rs). */
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

static uint8_t rbuf[WRITE_SLOT + 4096] __attribute__((aligned(8)));
static unsigned trace_replies, trace_ctlreplies;	/* FUZZ_CLIENT_TRACE */

static bool reply_errno_ok(int e)
{
	static const int ok[] = {
		0, EINVAL, EMSGSIZE, EAFNOSUPPORT, EBADF, EADDRNOTAVAIL,
		EADDRINUSE, ENETUNREACH, EPERM, ENOBUFS, EHOSTUNREACH, EACCES,
		ENOSPC, ENOTSOCK, EISCONN, ENOMEM,
	};

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (e == ok[i])
			return true;
	return false;
}

static bool ring_errno_ok(unsigned e)
{
	/* already bound or given one; the memfd or its mapping failed */
	return e == EISCONN || e == EMFILE || e == ENFILE || e == ENOMEM;
}

static struct hc *hc_by_id(uint64_t id)
{
	for (unsigned i = 0; i < nhc; i++)
		if (hcs[i].id == id && id != 0)
			return &hcs[i];
	return NULL;
}

/* A packet h read, from its socket or its ring: one the kernel handed over
 * while h's connection held its port, later than the last one it read,
 * with the bytes it had then (packets that did not fit are skipped). */
static void hc_got_packet(struct hc *h, const struct sockaddr_in *a,
			  const uint8_t *p, size_t len)
{
	FZ_CHECK(a->sin_family == AF_INET, "family %u", a->sin_family);
	FZ_CHECK(a->sin_zero[7] == 0, "name not terminated");
	FZ_CHECK(len <= 65535, "packet of %zu", len);
	while (h->cursor < nkp) {
		const struct kpkt *k = &kp[h->cursor++];

		if (k->owner == h->id && k->len == len &&
		    (k->copy == NULL || memcmp(k->copy, p, len) == 0))
			return;
	}
	FZ_CHECK(0, "connection %#llx read a packet of %zu bytes that was "
		 "not handed over for it (or read twice, out of order, or "
		 "changed)", (unsigned long long)h->id, len);
}

/* The reply to DW_RING: arg 0 exactly when a memfd came; the memfd is
 * DW_RING_LEN bytes, sealed against resizing, with the ring's header.
 * Mapped as the shim maps it; the descriptor is closed. */
static void hc_ring_reply(struct hc *h, const struct divert_wire_hdr *m,
			  size_t n, int fd)
{
	const unsigned want = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
	struct dw_ring_map *map;
	struct stat st;
	int seals;

	FZ_CHECK(n == sizeof(*m), "a DW_RING reply of %zu bytes", n);
	FZ_CHECK(h->ring_asked, "a DW_RING reply never asked for");
	FZ_CHECK((m->arg == 0) == (fd >= 0), "DW_RING with errno %u and %s",
		 m->arg, fd >= 0 ? "a descriptor" : "no descriptor");
	if (fd < 0) {
		FZ_CHECK(ring_errno_ok(m->arg), "DW_RING errno %u", m->arg);
		FZ_CHECK(m->arg != EISCONN || h->ring != NULL || h->bind_named,
			 "DW_RING: EISCONN for a connection never bound, "
			 "without a ring");
		return;
	}
	FZ_CHECK(h->ring == NULL, "a second ring for one connection (EISCONN "
		 "is the answer)");
	FZ_CHECK(fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
		 st.st_size == DW_RING_LEN, "the ring's memfd: %lld bytes",
		 (long long)st.st_size);
	seals = fcntl(fd, F_GET_SEALS);
	FZ_CHECK(seals >= 0 && ((unsigned)seals & want) == want,
		 "the ring's memfd has seals %#x", seals);
	map = mmap(NULL, DW_RING_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	FZ_CHECK(map != MAP_FAILED, "mmap of the ring: %s", strerror(errno));
	close(fd);
	nhmaps++;
	h->ring = map;
	FZ_CHECK(map->magic == DW_RING_MAGIC &&
		 map->version == DIVERT_WIRE_VERSION &&
		 map->rx_size == DW_RING_RX && map->tx_size == DW_RING_TX,
		 "ring header %#x %u %u %u", map->magic, map->version,
		 map->rx_size, map->tx_size);
}

/* A DW_KICK from h that does not wait for room: drain() sends it, and
 * pump() then runs the loop again. */
static void hc_kick_now(struct hc *h)
{
	static const struct divert_wire_hdr kick = {
		.type = DW_KICK, .version = DIVERT_WIRE_VERSION,
	};

	if (send(h->fd, &kick, sizeof(kick), MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
		drain_kicked = true;
}

/*
 * The reader's turn at h's rx ring, as the shim's ring_recv() takes each
 * packet: the record copied out and checked as a DW_PACKET is, taken (rx
 * taken, head), counted down (the DW_KICK read off the socket when the
 * count goes from 1 to 0), and a daemon that waits for room (rx wake)
 * kicked.  An honest ring's DW_KICKs are exact: one waits exactly while
 * the ring holds a packet; its format is the daemon's to keep.
 */
static void ring_read(struct hc *h)
{
	struct dw_ring *r = &h->ring->rx;
	bool honest = !h->poked, counted = honest && !h->noisy;
	struct dw_rec rec;
	int64_t count = atomic_load(&r->count);

	if (counted)
		FZ_CHECK(h->kicks == (count > 0 ? 1u : 0u), "%u DW_KICKs "
			 "waiting on the socket with %lld packets in the ring "
			 "(one while it holds any)", h->kicks, (long long)count);
	for (;;) {
		uint64_t head = atomic_load(&r->head), was = head;
		const uint8_t *p;
		int bad;

		count = atomic_load(&r->count);
		p = dw_ring_next(dw_ring_rx(h->ring), DW_RING_RX, &head,
				 atomic_load(&r->tail), &rec, &bad);
		if (p == NULL) {
			if (head != was)	/* past a wrap mark */
				atomic_store(&r->head, head);
			FZ_CHECK(!honest || !bad, "the daemon broke the format "
				 "of its rx ring");
			FZ_CHECK(!honest || count == 0, "an empty rx ring "
				 "counts %lld packets", (long long)count);
			return;
		}
		trace_ring_reads++;
		if (honest)
			hc_got_packet(h, &rec.addr, p, rec.len);
		atomic_store(&r->taken, atomic_load(&r->taken) + rec.len +
			     sizeof(rec.addr));
		atomic_store(&r->head, head + rec.size);
		if (atomic_fetch_sub(&r->count, 1) == 1) {
			FZ_CHECK(!counted || h->kicks > 0, "the rx ring is "
				 "empty again, and no DW_KICK waits for it");
			if (h->kicks > 0)
				h->kicks--;
		}
		if (atomic_load(&r->wake) && atomic_exchange(&r->wake, 0))
			hc_kick_now(h);
	}
}

/* One message from the daemon on h into rbuf: its length, 0 at EOF, -1
 * when none waits; a descriptor it carries in *fd (else -1). */
static ssize_t hc_recv(struct hc *h, int *fd)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} ctl;
	struct iovec iov = { .iov_base = rbuf, .iov_len = sizeof(rbuf) };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
	};
	unsigned nfd = 0;
	ssize_t n;

	*fd = -1;
	n = recvmsg(h->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0)
		return errno == ECONNRESET ? 0 : -1;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm != NULL;
	     cm = CMSG_NXTHDR(&mh, cm)) {
		FZ_CHECK(cm->cmsg_level == SOL_SOCKET &&
			 cm->cmsg_type == SCM_RIGHTS, "control message %d/%d",
			 cm->cmsg_level, cm->cmsg_type);
		for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		     i++) {
			int v;

			memcpy(&v, CMSG_DATA(cm) + i * sizeof(int), sizeof(v));
			if (nfd++ == 0)
				*fd = v;
			else
				close(v);
		}
	}
	FZ_CHECK(!(mh.msg_flags & MSG_CTRUNC), "control data cut short");
	FZ_CHECK(nfd <= 1, "%u descriptors in one message", nfd);
	if (n == 0 && *fd >= 0) {
		close(*fd);
		*fd = -1;
	}
	return n;
}

/* Everything the daemon sent us, each message checked; then what waits in
 * the connection's rx ring. */
static void drain(struct hc *h)
{
	for (;;) {
		struct divert_wire_hdr m;
		ssize_t n;
		int fd;

		if (h->fd < 0 || h->eof || (h->slow && h->welcomed))
			return;
		n = hc_recv(h, &fd);
		if (n == 0) {
			h->eof = true;
			return;
		}
		if (n < 0)
			break;
		FZ_CHECK((size_t)n >= sizeof(m), "a %zd-byte message", n);
		memcpy(&m, rbuf, sizeof(m));
		FZ_CHECK(m.version == DIVERT_WIRE_VERSION, "version %u",
			 m.version);
		FZ_CHECK(fd < 0 || m.type == DW_RING || m.type == DW_REPLY,
			 "a descriptor with a message of type %u", m.type);
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
				h->cursor = nkp;	/* none given yet */
			}
			continue;
		}
		FZ_CHECK(!h->refused, "a message after a refusal");
		switch (m.type) {
		case DW_PACKET:
			FZ_CHECK((size_t)n <= sizeof(m) + 65535 + 1024,
				 "packet of %zd", n);
			/* packets on the socket of a connection that gets a
			 * ring (it was bound, hung up and lost its port, then
			 * asked) may leave no room for a DW_KICK */
			h->noisy = true;
			hc_got_packet(h, &m.addr, rbuf + sizeof(m),
				      (size_t)n - sizeof(m));
			break;
		case DW_REPLY:
			trace_replies++;
			if (getenv("FUZZ_CLIENT_TRACE") != NULL)
				fprintf(stderr, "trace: reply %u seq %u\n",
					m.arg, m.val);
			FZ_CHECK(reply_errno_ok((int)m.arg), "reply errno %u",
				 m.arg);
			if (fd >= 0) {
				/* the direct path: the queue (our fake's fd)
				 * and a view that must pass the check (val
				 * is a write's sequence number otherwise) */
				FZ_CHECK(m.val == DW_BIND_DIRECT && m.arg == 0,
					 "a queue with reply %u val %u",
					 m.arg, m.val);
				FZ_CHECK(dw_view_check(rbuf + sizeof(m),
						       (size_t)n - sizeof(m)) == 0,
					 "a view of %zd bytes refused",
					 n - (ssize_t)sizeof(m));
				close(fd);
			}
			break;
		case DW_VIEW:
			FZ_CHECK(fd < 0, "a descriptor with a view");
			FZ_CHECK(dw_view_check(rbuf + sizeof(m),
					       (size_t)n - sizeof(m)) == 0,
				 "a view of %zd bytes refused",
				 n - (ssize_t)sizeof(m));
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
		case DW_RING:
			if (getenv("FUZZ_CLIENT_TRACE") != NULL)
				fprintf(stderr, "trace: ring %u%s\n", m.arg,
					fd >= 0 ? " and its memfd" : "");
			hc_ring_reply(h, &m, (size_t)n, fd);
			break;
		case DW_KICK:
			FZ_CHECK((size_t)n == sizeof(m), "a DW_KICK of %zd "
				 "bytes", n);
			FZ_CHECK(h->ring != NULL, "a DW_KICK on a connection "
				 "without a ring");
			trace_kicks++;
			h->kicks++;
			break;
		default:
			FZ_CHECK(0, "message type %u from the daemon", m.type);
		}
	}
	if (h->ring != NULL)
		ring_read(h);
}

/* After the loop, which is about to sleep: it has asked every ring that
 * nobody poked for a DW_KICK on the next write (tx wake), and it is not
 * left waiting for room in the ring of a reader that took everything
 * (dropping its packets, its queue paused). */
static void check_rings(void)
{
	for (unsigned i = 0; i < nclients; i++) {
		const struct client *c = clients[i];
		const struct hc *h = hc_by_id(c->id);

		if (c->ring == NULL || h == NULL || h->poked)
			continue;
		FZ_CHECK(atomic_load(&c->ring->tx.wake) == 1, "the daemon "
			 "sleeps, and its ring client's writes will not wake it");
		if (h->ring == NULL || h->slow || h->eof || h->fd < 0)
			continue;
		FZ_CHECK(!c->full && !c->paused, "a ring reader took every "
			 "packet, and the daemon still waits for room in it%s",
			 c->paused ? " (its queue paused)" : "");
	}
}

/* The daemon's loop, as divertd.c runs it, until nothing is left to do:
 * no event, and no DW_KICK from a reader that made room. */
static void pump(void)
{
	for (int round = 0;; round++) {
		struct epoll_event ev[64];
		int n;

		FZ_CHECK(round < 20000, "the daemon never stops being busy");
		n = epoll_wait(epfd, ev, 64, 0);
		divert_sock_awake();
		for (int i = 0; i < n; i++) {
			cur = ev[i].data.ptr;
			cur->handle(cur, ev[i].events);
			cur = NULL;
		}
		divert_sock_expire();
		divert_sock_idle();
		nfqb_flush();
		drain_kicked = false;
		for (unsigned i = 0; i < nhc; i++)
			drain(&hcs[i]);
		if (n <= 0 && !drain_kicked)
			break;
	}
	check_rings();
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
		for (unsigned k = 0; m.type == DW_BIND && k < nhc; k++)
			if (hcs[k].id == m.conn && m.conn != 0)
				hcs[k].bind_named = true;
		if (m.type == DW_BIND || m.type == DW_WRITE ||
		    m.type == DW_CTL || (m.type == DW_RING && h->ring_asked))
			h->noisy = true;
		if (m.type == DW_RING)
			h->ring_asked = true;
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
	h->pair = -1;
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
	k->len = (uint32_t)len;
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

/* h closes its socket, and its ring goes with it (as the shim's). */
static void hc_close(struct hc *h)
{
	if (h->fd >= 0)
		close(h->fd);
	h->fd = -1;
	if (h->pair >= 0)
		close(h->pair);
	h->pair = -1;
	if (h->ring != NULL) {
		FZ_CHECK(munmap(h->ring, DW_RING_LEN) == 0, "munmap: %s",
			 strerror(errno));
		nhmaps--;
	}
	h->ring = NULL;
}

static void op_hangup(struct fz *in)
{
	struct hc *h = pick_hc(in);
	uint8_t how = fz_u8(in);

	if (h == NULL || h->fd < 0)
		return;
	if (how & 2)
		h->slow = !h->slow;	/* nor its ring: the daemon finds it full */
	else if (how & 1)
		shutdown(h->fd, SHUT_WR);
	else
		hc_close(h);
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

	m.conn = pick_id(k & 0x7f);
	m.arg = k & 0x80 ? DW_BIND_DIRECT : 0;	/* the direct path asked */
	m.val = pick_port(in);
	hc_send(ctl, &m, sizeof(m));
}

/*
 * A write-back into h's tx ring, as the shim's ring_send() puts it there:
 * reserved after the tail it published (an unaligned one, poked, is full:
 * the harness must not write past the ring either), the record filled,
 * the tail published, and a daemon that said it sleeps (tx wake) kicked.
 * False when it does not fit: it goes on the socket then.
 */
static bool hc_ring_send(struct hc *h, const struct sockaddr_in *addr,
			 const uint8_t *pkt, size_t len)
{
	static const struct divert_wire_hdr kick = {
		.type = DW_KICK, .version = DIVERT_WIRE_VERSION,
	};
	struct dw_ring *r = &h->ring->tx;
	uint64_t tail = atomic_load(&r->tail);
	struct dw_rec rec, *slot;

	if (tail % 8 != 0)
		return false;
	slot = dw_ring_reserve(dw_ring_tx(h->ring), DW_RING_TX,
			       atomic_load(&r->head), &tail, len, DW_RING_TX);
	if (slot == NULL)
		return false;
	memset(&rec, 0, sizeof(rec));
	rec.size = (uint32_t)dw_rec_size(len);
	rec.len = (uint32_t)len;
	rec.addr = *addr;
	memcpy(slot, &rec, sizeof(rec));
	memcpy(slot + 1, pkt, len);
	atomic_store(&r->tail, tail + rec.size);
	trace_ring_writes++;
	if (atomic_load(&r->wake) && atomic_exchange(&r->wake, 0))
		hc_send(h, &kick, sizeof(kick));
	return true;
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
	if (h != NULL && h->fd >= 0 && h->ring != NULL && !(mode & (1 | 0x80))) {
		/* a ring record always has an address (the shim's sendto()
		 * needs one): none is 0.0.0.0, outgoing */
		if (!(mode & 2)) {
			m.addr.sin_family = AF_INET;
			m.addr.sin_port = tag;
		}
		if (hc_ring_send(h, &m.addr, msg + sizeof(m), k->len)) {
			free(msg);
			return;
		}
		m.arg = 1;
		memcpy(msg, &m, sizeof(m));
	}
	hc_send(h, msg, sizeof(m) + k->len);
	free(msg);
}

/* Connection k asks for a ring (the reply is read by drain()). */
static void op_ring(struct fz *in)
{
	struct hc *h = pick_hc(in);
	struct divert_wire_hdr m = {
		.type = DW_RING, .version = DIVERT_WIRE_VERSION,
	};

	hc_send(h, &m, sizeof(m));
}

/*
 * DW_ATTACH with what the fuzzer picks (fuzz_client_ops.h): the daemon
 * must take a data socket and a ring only as the protocol says, close
 * every descriptor it does not keep, and never crash on what it keeps.
 * What flows on the pair afterwards is not followed: the connection is
 * treated as hostile from now on.
 */
static void op_attach(struct fz *in)
{
	struct hc *h = pick_hc(in);
	uint8_t mode = fz_u8(in);
	struct divert_wire_hdr m = {
		.type = DW_ATTACH, .version = DIVERT_WIRE_VERSION,
		.arg = mode & 0x80 ? mode >> 4u :
		       ((mode & 3) == 3 ? DW_ATTACH_RING : 0) |
		       (mode & 0x20 ? DW_ATTACH_AGAIN : 0),
		.val = mode,
	};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(2 * sizeof(int))];
	} ctl;
	struct iovec iov = { .iov_base = &m, .iov_len = sizeof(m) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	int fds[2], n = 0, sv[2], p[2];

	if (h == NULL || h->fd < 0)
		return;
	switch (mode & 3) {
	case 1:
	case 3:
		FZ_CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC |
				    SOCK_NONBLOCK, 0, sv) == 0,
			 "socketpair: %s", strerror(errno));
		if (h->pair >= 0)
			close(h->pair);
		h->pair = sv[0];
		fds[n++] = sv[1];
		break;
	case 2:
		FZ_CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
		close(p[1]);
		fds[n++] = p[0];
		break;
	}
	if ((mode & 3) == 3) {
		int mfd = memfd_create("fz-attach", MFD_CLOEXEC |
				       MFD_ALLOW_SEALING);
		struct dw_ring_map *map;
		size_t len = mode & 4 ? 4096 : DW_RING_LEN;

		FZ_CHECK(mfd >= 0 && ftruncate(mfd, (off_t)len) == 0,
			 "memfd: %s", strerror(errno));
		map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
		FZ_CHECK(map != MAP_FAILED, "mmap: %s", strerror(errno));
		map->magic = mode & 0x40 ? 0 : DW_RING_MAGIC;
		map->version = DIVERT_WIRE_VERSION;
		map->rx_size = DW_RING_RX;
		map->tx_size = DW_RING_TX;
		munmap(map, len);
		if (!(mode & 8))
			FZ_CHECK(fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK |
				       F_SEAL_GROW) == 0, "seals: %s",
				 strerror(errno));
		fds[n++] = mfd;
	}
	if (n > 0) {
		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE((size_t)n * sizeof(int));
		CMSG_FIRSTHDR(&mh)->cmsg_level = SOL_SOCKET;
		CMSG_FIRSTHDR(&mh)->cmsg_type = SCM_RIGHTS;
		CMSG_FIRSTHDR(&mh)->cmsg_len = CMSG_LEN((size_t)n * sizeof(int));
		memcpy(CMSG_DATA(CMSG_FIRSTHDR(&mh)), fds,
		       (size_t)n * sizeof(int));
	}
	h->noisy = h->poked = true;
	(void)sendmsg(h->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	while (n > 0)
		close(fds[--n]);	/* the daemon's now, or nobody's */
	pump();
}

/*
 * A hostile ring client: the fuzzer's bytes written into connection k's
 * mapped ring (its control words, unread packets, records the daemon has
 * not read yet, or a forged record published by moving tx tail), maybe a
 * DW_KICK, then (mostly) the daemon's loop.  Whatever is there, the daemon must not
 * crash or read outside the ring (its mapping lies between unreadable
 * pages), and every check of nfqb_verdict() holds; it may disconnect the
 * client (drain() sees EOF).  From now on nothing in the ring is checked.
 */
static void op_ringpoke(struct fz *in)
{
	static const struct divert_wire_hdr kick = {
		.type = DW_KICK, .version = DIVERT_WIRE_VERSION,
	};
	struct hc *h = pick_hc(in);
	uint8_t where = fz_u8(in);
	uint16_t off = fz_u16(in);
	size_t want = fz_u16(in), got;
	const uint8_t *p = fz_bytes(in, want > 4096 ? 4096 : want, &got);
	uint8_t *base;
	uint64_t at, size;

	if (h == NULL || h->ring == NULL)
		return;
	h->poked = true;
	switch (where & 3) {
	case 0:
		base = (uint8_t *)h->ring;
		size = DW_RING_HDR;
		at = off;
		break;
	case 1:
		base = dw_ring_rx(h->ring);
		size = DW_RING_RX;
		at = atomic_load(&h->ring->rx.head) + off;
		break;
	case 2:
		base = dw_ring_tx(h->ring);
		size = DW_RING_TX;
		at = atomic_load(&h->ring->tx.head) + off;
		break;
	default:
		base = dw_ring_tx(h->ring);
		size = DW_RING_TX;
		at = atomic_load(&h->ring->tx.tail);
		break;
	}
	for (size_t i = 0; i < got; i++)
		base[(at + i) % size] = p[i];
	if ((where & 3) == 3)
		atomic_store(&h->ring->tx.tail,
			     atomic_load(&h->ring->tx.tail) + off);
	if (where & 4)
		hc_send(h, &kick, sizeof(kick));
	if (!(where & 8))
		pump();
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
	memfd_fails = mmap_fails = false;
	ring_writer = 0;
	verdicts_unsent = 0;
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
			memfd_fails = v & 8;
			mmap_fails = v & 0x10;
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
		case OP_RING:
			op_ring(&in);
			break;
		case OP_RINGPOKE:
			op_ringpoke(&in);
			break;
		case OP_ATTACH:
			op_attach(&in);
			break;
		}
	}
	end_batch();
	pump();

	/* everyone hangs up: the daemon must be back where it started */
	for (unsigned i = 0; i < nhc; i++)
		hc_close(&hcs[i]);
	pump();
	FZ_CHECK(divert_sock_clients() == 0, "%u clients left",
		 divert_sock_clients());
	FZ_CHECK(ndmaps == 0 && nhmaps == 0, "%u rings left mapped by the "
		 "daemon, %u by the harness", ndmaps, nhmaps);
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
		FZ_CHECK(memcmp(lent, none, sizeof(none)) == 0,
			 "a queue left lent to a client that is gone: nobody "
			 "reads it");
	}
	for (unsigned i = 0; i < nkp; i++) {
		FZ_CHECK(kp[i].verdicts == 1, "packet %u got %u verdicts "
			 "(a stuck packet)", kp[i].id, kp[i].verdicts);
		free(kp[i].copy);
	}
	/* no socket left open but the listener, and no ring's memfd (the
	 * sanitizers' own pipes and files may come and go) */
	probe = open("/dev/null", O_RDONLY | O_CLOEXEC);
	close(probe);
	for (int fd = 0; fd < probe + 64; fd++) {
		struct stat st;

		if (fd == listener.fd || fstat(fd, &st) < 0)
			continue;
		FZ_CHECK(!S_ISSOCK(st.st_mode), "socket descriptor %d left "
			 "open", fd);
		if (S_ISREG(st.st_mode) && st.st_nlink == 0) {
			char path[64], target[64];
			ssize_t n;

			snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
			n = readlink(path, target, sizeof(target) - 1);
			target[n > 0 ? n : 0] = '\0';
			FZ_CHECK(strncmp(target, "/memfd:", 7) != 0,
				 "memfd %d (%s) left open", fd, target);
		}
	}
	if (getenv("FUZZ_CLIENT_TRACE") != NULL) {
		const struct divert_stats *st = divert_sock_stats();

		fprintf(stderr, "trace: %u connections, %u packets; stats: "
			"diverted %llu teed %llu noport %llu full %llu "
			"reinjected out %llu in %llu injected out %llu in %llu "
			"inject errors %llu expired %llu evicted %llu "
			"bad writes %llu bad cksum %llu no iface %llu "
			"channel %llu; replies %u, ctl replies %u; ring reads "
			"%u, writes %u, kicks %u\n", nhc, nkp,
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
			trace_replies, trace_ctlreplies, trace_ring_reads,
			trace_ring_writes, trace_kicks);
	}
	reset_rules();
	return 0;
}
