/*
 * fuzz_nfq.c: libFuzzer target for the NETLINK_NETFILTER messages divertd
 * parses: src/nfq_bridge.c, included whole (its parsing is static), and
 * src/cksum.c, which completes the checksums of the packets it hands on.
 *
 * Only the kernel is faked: the libmnl socket calls, recvmmsg(),
 * setsockopt(), fcntl() and time() are renamed, for nfq_bridge.c alone, to
 * functions here.  Each queue gets a fake socket of its own, as it gets a
 * real one; the fuzzer's bytes become the kernel's datagrams, copied into
 * the bridge's own receive slots (a readable queue, queue_event()) or its
 * own stack buffer (what is read while a configuration request waits for
 * its acknowledgement, config_request()), the rest of the buffer marked
 * unreadable, so a parse reading past its datagram is caught.  The poll
 * loop's calls (loop_add(), loop_mod(), loop_del()) are this file's: it
 * runs a queue's handler when the input says the queue is readable.
 * Everything else is the real code: nfqb_open(), binding, unbinding,
 * pausing, parsing, verdicts; every batch a socket sends is walked here.
 *
 * Input: records [kind][len:2][bytes]; kind & 7:
 *   0  a datagram of the next read (kind & 8: truncated, MSG_TRUNC); one
 *      that comes without a read first is read by the first queue;
 *   1  a datagram read while a configuration request waits (its
 *      acknowledgement is made up here when these run out);
 *   2  bind the queue bytes[0] (kind & 8: the kernel refuses);
 *   3  unbind queue bytes[0] % bound;
 *   4  queue bytes[0] % bound is readable: its handler runs, reading the
 *      datagrams that follow;
 *   5  pause (kind & 8) or resume queue bytes[0] % bound, keeping
 *      bytes[1] packets;
 *   6  send the verdicts collected (nfqb_flush); kind & 8: first
 *      bytes[1] % 16 verdicts of 60000 bytes for queue bytes[0] % bound;
 *   7  no handler (kind & 8), or divert_sock.c's stand-in below.
 * Checked: the daemon never reads past a datagram; each packet's data lies
 * in the datagram it came in; a verdict goes out only on the socket bound
 * to its queue (the kernel takes it from no other); every batch sent is
 * whole netlink messages; no socket, poll registration or memory is left
 * when every queue is unbound.  Each packet is read whole, its checksums
 * completed as divert_sock.c does when the kernel says they are not ready
 * (in place, and on a copy that ends at an unreadable page), and answered
 * with a verdict, carrying it now and then.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#include "divertd.h"
#include "divert_wire.h"
#include "fuzz_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* ---- the kernel, faked, for nfq_bridge.c only ------------------------- */

static struct mnl_socket *fz_open2(int bus, int flags);
static int fz_bind(struct mnl_socket *nl, unsigned int groups, pid_t pid);
static unsigned int fz_portid(const struct mnl_socket *nl);
static int fz_mnl_setsockopt(const struct mnl_socket *nl, int type,
			     void *buf, socklen_t len);
static int fz_get_fd(const struct mnl_socket *nl);
static ssize_t fz_sendto(const struct mnl_socket *nl, const void *req,
			 size_t siz);
static ssize_t fz_recvfrom(const struct mnl_socket *nl, void *buf,
			   size_t siz);
static int fz_close(struct mnl_socket *nl);
static int fz_recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen,
		       int flags, struct timespec *tmo);
static int fz_setsockopt(int fd, int level, int opt, const void *val,
			 socklen_t len);
static int fz_fcntl(int fd, int cmd, ...);
static time_t fz_time(time_t *t);

#define mnl_socket_open2 fz_open2
#define mnl_socket_bind fz_bind
#define mnl_socket_get_portid fz_portid
#define mnl_socket_setsockopt fz_mnl_setsockopt
#define mnl_socket_get_fd fz_get_fd
#define mnl_socket_sendto fz_sendto
#define mnl_socket_recvfrom fz_recvfrom
#define mnl_socket_close fz_close
#define recvmmsg fz_recvmmsg
#define setsockopt fz_setsockopt
#define fcntl fz_fcntl
#define time fz_time
#include "../../src/nfq_bridge.c"
#undef mnl_socket_open2
#undef mnl_socket_bind
#undef mnl_socket_get_portid
#undef mnl_socket_setsockopt
#undef mnl_socket_get_fd
#undef mnl_socket_sendto
#undef mnl_socket_recvfrom
#undef mnl_socket_close
#undef recvmmsg
#undef setsockopt
#undef fcntl
#undef time

#define FZ_SOCKS	16
#define FZ_FD0		1000		/* fake descriptors: never real */
#define FZ_PORTID0	4242u

/* One fake netlink socket, as the kernel sees it. */
struct fsock {
	bool open;
	bool bound;			/* a bind request named its queue */
	uint16_t queue;
	uint32_t last_seq;		/* of the last configuration request */
	bool refuse;			/* answer it with an error */
	struct pollable *p;		/* registered with the loop */
	uint32_t events;
};
static struct fsock fsocks[FZ_SOCKS];
static bool refuse_next_bind;		/* the next socket's first request */

static struct fz in;			/* the records not read yet */
static unsigned verdicts_sent;		/* FUZZ_NFQ_TRACE */

/* Where the datagrams being parsed lie: packets must point inside one. */
static const uint8_t *win_base;
static size_t win_len;
static const uint8_t *slot_win[NFQB_BATCH];
static size_t slot_len[NFQB_BATCH];

static struct fsock *fsock_of(const struct mnl_socket *nl)
{
	struct fsock *s = (struct fsock *)(uintptr_t)nl;

	FZ_CHECK(s >= fsocks && s < fsocks + FZ_SOCKS && s->open,
		 "a socket that is not open");
	return s;
}

/* The next record, if it is of this kind (kind & 7). */
static bool next_record(unsigned kind, uint8_t *k, const uint8_t **p,
			size_t *len)
{
	size_t want;

	if (in.n == 0 || (in.p[0] & 7) != kind)
		return false;
	*k = fz_u8(&in);
	want = fz_u16(&in);
	*p = fz_bytes(&in, want, len);
	return true;
}

static struct mnl_socket *fz_open2(int bus, int flags)
{
	FZ_CHECK(bus == NETLINK_NETFILTER, "bus %d", bus);
	FZ_CHECK(flags & SOCK_CLOEXEC, "socket without CLOEXEC");
	for (int i = 0; i < FZ_SOCKS; i++)
		if (!fsocks[i].open) {
			memset(&fsocks[i], 0, sizeof(fsocks[i]));
			fsocks[i].open = true;
			fsocks[i].refuse = refuse_next_bind;
			refuse_next_bind = false;
			return (struct mnl_socket *)(void *)&fsocks[i];
		}
	errno = EMFILE;
	return NULL;
}

static int fz_bind(struct mnl_socket *nl, unsigned int groups, pid_t pid)
{
	(void)fsock_of(nl);
	(void)groups;
	(void)pid;
	return 0;
}

static unsigned int fz_portid(const struct mnl_socket *nl)
{
	return FZ_PORTID0 + (unsigned)(fsock_of(nl) - fsocks);
}

static int fz_get_fd(const struct mnl_socket *nl)
{
	return FZ_FD0 + (int)(fsock_of(nl) - fsocks);
}

static int fz_close(struct mnl_socket *nl)
{
	struct fsock *s = fsock_of(nl);

	FZ_CHECK(s->p == NULL, "socket closed while still polled");
	s->open = false;
	return 0;
}

static struct fsock *fsock_fd(int fd)
{
	FZ_CHECK(fd >= FZ_FD0 && fd < FZ_FD0 + FZ_SOCKS &&
		 fsocks[fd - FZ_FD0].open, "descriptor %d is no open socket", fd);
	return &fsocks[fd - FZ_FD0];
}

static int fz_mnl_setsockopt(const struct mnl_socket *nl, int type, void *buf,
			     socklen_t len)
{
	(void)fsock_of(nl);
	(void)type;
	fz_touch(buf, len);
	return 0;
}

static int fz_setsockopt(int fd, int level, int opt, const void *val,
			 socklen_t len)
{
	(void)fsock_fd(fd);
	(void)level;
	(void)opt;
	fz_touch(val, len);
	return 0;
}

static int fz_fcntl(int fd, int cmd, ...)
{
	(void)fsock_fd(fd);
	return cmd == F_GETFL ? O_RDWR : 0;
}

/* A fixed clock: config_request()'s sequence number is one the fuzzer can
 * find, and runs repeat exactly. */
static time_t fz_time(time_t *t)
{
	if (t != NULL)
		*t = 0x5eed0000;
	return 0x5eed0000;
}

static int attr_cb(const struct nlattr *attr, void *data)
{
	const struct nlattr **tb = data;
	int type = mnl_attr_get_type(attr);

	if (mnl_attr_type_valid(attr, NFQA_MAX) > 0)
		tb[type] = attr;
	return MNL_CB_OK;
}

/* What a socket sends: whole netlink messages; verdicts only for the queue
 * it is bound to; configuration requests (the first binds it). */
static ssize_t fz_sendto(const struct mnl_socket *nl, const void *req,
			 size_t siz)
{
	struct fsock *s = fsock_of(nl);
	const struct nlmsghdr *nlh = req;
	int len = (int)siz;

	FZ_CHECK(siz > 0 && siz <= NFQB_VBATCH + NFQB_SLOT, "send of %zu", siz);
	fz_touch(req, siz);
	for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
		const struct nlattr *tb[NFQA_MAX + 1] = { NULL };
		const struct nfgenmsg *g = mnl_nlmsg_get_payload(nlh);
		unsigned type = nlh->nlmsg_type & 0xff;
		uint16_t queue = ntohs(g->res_id);

		FZ_CHECK(nlh->nlmsg_type >> 8 == NFNL_SUBSYS_QUEUE,
			 "subsystem %u", nlh->nlmsg_type >> 8);
		FZ_CHECK(mnl_attr_parse(nlh, sizeof(*g), attr_cb, tb) >= 0,
			 "attributes of a message we built");
		if (type == NFQNL_MSG_VERDICT) {
			FZ_CHECK(tb[NFQA_VERDICT_HDR] != NULL &&
				 mnl_attr_get_payload_len(tb[NFQA_VERDICT_HDR]) ==
				 sizeof(struct nfqnl_msg_verdict_hdr),
				 "verdict without its header");
			verdicts_sent++;
			FZ_CHECK(s->bound && queue == s->queue,
				 "a verdict for queue %u on the socket of %s%u: "
				 "the kernel takes it from no socket but its "
				 "queue's", queue, s->bound ? "queue " : "no queue ",
				 s->queue);
		} else {
			FZ_CHECK(type == NFQNL_MSG_CONFIG, "message type %u",
				 type);
			FZ_CHECK(!s->bound || queue == s->queue,
				 "configuring queue %u on the socket of %u",
				 queue, s->queue);
			s->bound = true;
			s->queue = queue;
			s->last_seq = nlh->nlmsg_seq;
		}
	}
	FZ_CHECK(len == 0, "%d bytes after the last message", len);
	return (ssize_t)siz;
}

/* While a configuration request waits: the next kind-1 record, else the
 * acknowledgement it waits for. */
static ssize_t fz_recvfrom(const struct mnl_socket *nl, void *buf, size_t siz)
{
	struct fsock *s = fsock_of(nl);
	const uint8_t *p;
	uint8_t k;
	size_t len;

	fz_unpoison(buf, siz);
	if (next_record(1, &k, &p, &len)) {
		if (len > siz)
			len = siz;	/* the kernel cuts it; so do we */
		memcpy(buf, p, len);
		fz_poison_tail(buf, len, siz);
		win_base = buf;
		win_len = len;
		return (ssize_t)len;
	} else {
		char ack[MNL_SOCKET_BUFFER_SIZE];
		struct nlmsghdr *nlh = mnl_nlmsg_put_header(ack);
		struct nlmsgerr *e;

		nlh->nlmsg_type = NLMSG_ERROR;
		nlh->nlmsg_seq = s->last_seq;
		nlh->nlmsg_pid = fz_portid(nl);
		e = mnl_nlmsg_put_extra_header(nlh, sizeof(*e));
		e->error = s->refuse ? -EBUSY : 0;
		s->refuse = false;
		FZ_CHECK(nlh->nlmsg_len <= siz, "buffer too small");
		memcpy(buf, ack, nlh->nlmsg_len);
		fz_poison_tail(buf, nlh->nlmsg_len, siz);
		return nlh->nlmsg_len;
	}
}

/* A readable queue: the kind-0 records that come next, one datagram each. */
static int fz_recvmmsg(int fd, struct mmsghdr *vec, unsigned int vlen,
		       int flags, struct timespec *tmo)
{
	unsigned n = 0;
	const uint8_t *p;
	uint8_t k;
	size_t len;

	(void)fsock_fd(fd);
	(void)tmo;
	FZ_CHECK(flags & MSG_DONTWAIT, "blocking receive");
	memset(slot_win, 0, sizeof(slot_win));
	while (n < vlen && next_record(0, &k, &p, &len)) {
		struct iovec *iov = vec[n].msg_hdr.msg_iov;

		fz_unpoison(iov->iov_base, iov->iov_len);
		if (len > iov->iov_len)
			len = iov->iov_len;
		memcpy(iov->iov_base, p, len);
		fz_poison_tail(iov->iov_base, len, iov->iov_len);
		vec[n].msg_len = (unsigned)len;
		vec[n].msg_hdr.msg_flags = k & 8 ? MSG_TRUNC : 0;
		slot_win[n] = iov->iov_base;
		slot_len[n] = len;
		n++;
	}
	if (n == 0) {
		errno = EAGAIN;
		return -1;
	}
	return (int)n;
}

/* ---- the poll loop (divertd.c's, as far as nfq_bridge.c uses it) ------- */

int loop_add(struct pollable *p, uint32_t events)
{
	struct fsock *s = fsock_fd(p->fd);

	FZ_CHECK(s->p == NULL, "a socket polled twice");
	s->p = p;
	s->events = events;
	return 0;
}

int loop_mod(struct pollable *p, uint32_t events)
{
	struct fsock *s = fsock_fd(p->fd);

	FZ_CHECK(s->p == p, "modifying what is not polled");
	s->events = events;
	return 0;
}

void loop_del(struct pollable *p)
{
	struct fsock *s = fsock_fd(p->fd);

	FZ_CHECK(s->p == p, "removing what is not polled");
	s->p = NULL;
}

/* The polled queues' sockets, in socket order. */
static struct fsock *polled(uint8_t sel)
{
	unsigned n = 0, k;

	for (int i = 0; i < FZ_SOCKS; i++)
		n += fsocks[i].open && fsocks[i].p != NULL;
	if (n == 0)
		return NULL;
	k = sel % n;
	for (int i = 0; i < FZ_SOCKS; i++)
		if (fsocks[i].open && fsocks[i].p != NULL && k-- == 0)
			return &fsocks[i];
	return NULL;
}

/* ---- what divert_sock.c would do with each packet -------------------- */

static unsigned packets_seen;

static void fz_packet(struct nfqb_packet *pkt, void *arg)
{
	const uint8_t *d = pkt->data;
	bool inside = false;
	uint32_t mark = pkt->mark;

	(void)arg;
	for (unsigned i = 0; i < NFQB_BATCH && !inside; i++)
		inside = slot_win[i] != NULL && d >= slot_win[i] &&
			 d + pkt->len <= slot_win[i] + slot_len[i];
	inside = inside || (win_base != NULL && d >= win_base &&
			    d + pkt->len <= win_base + win_len);
	FZ_CHECK(inside, "packet data outside the datagram");
	fz_touch(d, pkt->len);
	if (pkt->csum_not_ready) {
		cksum_complete_l4(pkt->data, pkt->len);
		cksum_complete_l4(fz_guarded_copy(d, pkt->len), pkt->len);
	}
	(void)divert_wire_packet_key(pkt->data, pkt->len);
	packets_seen++;
	/* a verdict carries at most NFQB_MAX_VERDICT_PAYLOAD (client.c
	 * sends larger writes as new packets) */
	nfqb_verdict(pkt->queue, pkt->id, packets_seen & 1 ? NF_REPEAT : NF_DROP,
		     &mark, pkt->len <= NFQB_MAX_VERDICT_PAYLOAD && (pkt->id & 1)
		     ? pkt->data : NULL, pkt->len);
}

static void fz_flush(void)
{
}

/* ---- the rest of the daemon, as far as nfq_bridge.c calls it -------- */

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

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	/* the real setup, no queue yet */
	if (nfqb_open(NULL, 0, 16384, true) < 0) {
		fprintf(stderr, "nfqb_open failed\n");
		abort();
	}
	return 0;
}

static void readable(struct fsock *s)
{
	if (s != NULL && s->p != NULL && (s->events & EPOLLIN))
		s->p->handle(s->p, EPOLLIN);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	in.p = data;
	in.n = size;
	nfqb_set_handler(fz_packet, fz_flush, NULL);
	while (!fz_empty(&in)) {
		uint8_t k = in.p[0];
		const uint8_t *p;
		size_t len;
		uint8_t b0, b1;

		win_base = NULL;
		memset(slot_win, 0, sizeof(slot_win));
		if ((k & 7) == 0) {
			/* a datagram no read asked for: the first queue's */
			struct fsock *s = polled(0);

			if (s != NULL && (s->events & EPOLLIN))
				readable(s);
			else
				next_record(0, &k, &p, &len);
			continue;
		}
		next_record(k & 7, &k, &p, &len);
		b0 = len > 0 ? p[0] : 0;
		b1 = len > 1 ? p[1] : 0;
		switch (k & 7) {
		case 1:
			/* nobody waits: the kernel would not send it */
			break;
		case 2:
			refuse_next_bind = k & 8;
			(void)nfqb_bind_queue(b0);
			refuse_next_bind = false;
			break;
		case 3: {
			struct fsock *s = polled(b0);

			if (s != NULL)
				FZ_CHECK(nfqb_unbind_queue(s->queue) == 0,
					 "unbinding bound queue %u", s->queue);
			break;
		}
		case 4:
			readable(polled(b0));
			break;
		case 5: {
			struct fsock *s = polled(b0);

			if (s != NULL) {
				nfqb_pause(s->queue, k & 8, b1);
				FZ_CHECK(!(s->events & EPOLLIN) == !!(k & 8),
					 "queue %u %spaused but %spolled",
					 s->queue, k & 8 ? "" : "not ",
					 s->events & EPOLLIN ? "" : "not ");
			}
			break;
		}
		case 6:
			if (k & 8) {
				/* b1 verdicts of 60000 bytes each for the queue
				 * b0 names: batches fill up and are sent whole */
				static uint8_t big[60000] = { 0x45 };
				struct fsock *s = polled(b0);

				for (unsigned v = 0; s != NULL && v < b1 % 16; v++)
					nfqb_verdict(s->queue, v, NF_ACCEPT, NULL,
						     big, sizeof(big));
			}
			nfqb_flush();
			break;
		case 7:
			if (k & 8)
				nfqb_set_handler(NULL, NULL, NULL);
			else
				nfqb_set_handler(fz_packet, fz_flush, NULL);
			break;
		}
	}
	nfqb_flush();
	/* every queue unbound: nothing may be left */
	for (int i = 0; i < FZ_SOCKS; i++)
		if (fsocks[i].open && fsocks[i].p != NULL)
			FZ_CHECK(nfqb_unbind_queue(fsocks[i].queue) == 0,
				 "unbinding queue %u", fsocks[i].queue);
	for (int i = 0; i < FZ_SOCKS; i++)
		FZ_CHECK(!fsocks[i].open, "the socket of queue %u left open",
			 fsocks[i].queue);
	for (unsigned q = 0; q < 256; q++)
		FZ_CHECK(queues[q] == NULL, "queue %u still bound", q);
	FZ_CHECK(mnl_nlmsg_batch_size(vbatch) == 0, "verdicts left unsent");
	if (getenv("FUZZ_NFQ_TRACE") != NULL)
		fprintf(stderr, "trace: %u packets handed on; stats: received "
			"%llu verdicts %llu verdict errors %llu malformed %llu; "
			"verdicts sent %u\n", packets_seen,
			(unsigned long long)stats.received,
			(unsigned long long)stats.verdicts,
			(unsigned long long)stats.verdict_errors,
			(unsigned long long)stats.malformed, verdicts_sent);
	return 0;
}
