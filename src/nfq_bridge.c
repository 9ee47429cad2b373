/*
 * nfq_bridge.c: the netlink side.  The only code that speaks
 * NETLINK_NETFILTER.
 *
 * One NFQUEUE queue per divert port in use (queue number = port), each on
 * a netlink socket of its own in the daemon's poll loop, copying whole
 * packets (NFQNL_COPY_PACKET, 0xffff bytes) and taking GSO packets as they
 * are (NFQA_CFG_F_GSO: no segmentation in the kernel, checksums possibly
 * left for the NIC, which divert_sock.c has completed before a client
 * reads them).  A socket per queue lets one queue be paused on its own
 * (nfqb_pause()): while the program on a port cannot keep up, its packets
 * wait in the kernel's queue, and beyond its length the kernel drops them
 * where that is cheapest, instead of the daemon reading each one only to
 * drop it; the other ports never notice.
 *
 * In:  a readable queue reads batches of packet messages with recvmmsg()
 *      into buffers allocated once, parses them with libnetfilter_queue's
 *      nfq_nlmsg_parse(), and hands each to the handler (divert_sock.c),
 *      whose flush ends each batch.  The sockets set NETLINK_NO_ENOBUFS:
 *      when userspace falls behind, the kernel drops and counts
 *      (/proc/net/netfilter/nfnetlink_queue) instead of breaking a socket.
 * Out: nfqb_verdict() appends a verdict to one libmnl batch; nfqb_flush()
 *      sends it with one sendto() on its queue's socket (the kernel takes
 *      a verdict only from the socket bound to the queue, so a verdict for
 *      another queue sends the batch first).  Verdicts carry no
 *      NLM_F_ACK; the kernel reports only failures, which are counted.
 * Lent: on the direct path a queue's socket is lent to the program that
 *      reads it itself (nfqb_lend(): we stop reading it) and taken back
 *      when that program is gone (nfqb_take_back(): unbind and bind, so
 *      the kernel drops what it held).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#include "divertd.h"

#define NFQB_BATCH	64			/* messages per recvmmsg */
#define NFQB_SLOT	(65536 + 1024)		/* one packet message */
#define NFQB_VBATCH	(256 * 1024)		/* verdict batch limit */
#define NFQB_RCVBUF	(16 * 1024 * 1024)
#define NFQB_ROUNDS	8			/* batches per wakeup */

/* One queue: its own netlink socket, so that each can be read, paused
 * and polled on its own. */
struct nfqb_queue {
	struct pollable p;			/* first: the loop's handle */
	struct mnl_socket *nl;
	uint32_t portid;
	uint16_t num;
	bool paused;
	bool lent;				/* a program reads it (nfqb_lend) */
};

static struct nfqb_queue *queues[65536];
static uint8_t *slots;				/* NFQB_BATCH * NFQB_SLOT */
static struct mmsghdr rmsgs[NFQB_BATCH];
static struct iovec riov[NFQB_BATCH];
static char *vbuf;				/* NFQB_VBATCH + one message */
static struct mnl_nlmsg_batch *vbatch;
static uint16_t vqueue;				/* the batch's queue */
static uint32_t queue_maxlen, queue_flags;
static bool broken;
static struct nfqb_stats stats;
static struct log_ratelimit rl_errors;

/* Who gets the packets (the client side), and what ends a batch of them;
 * before there is one, packets are dropped like packets for a port with
 * no socket. */
static nfqb_packet_fn live_fn;
static void (*live_flush)(void);
static void *live_arg;

struct parse_ctx {
	nfqb_packet_fn fn;
	void *arg;
};

static int packet_cb(const struct nlmsghdr *nlh, void *data);

/* A packet nobody can take yet: dropped. */
static void drop_cb(struct nfqb_packet *pkt, void *arg)
{
	(void)arg;
	nfqb_verdict(pkt->queue, pkt->id, NF_DROP, NULL, NULL, 0);
}

/* Send one configuration message on q's socket and wait for its
 * acknowledgement; packets read meanwhile go to the handler. */
static int config_request(struct nfqb_queue *q, struct nlmsghdr *nlh)
{
	char buf[NL_BUFSIZE + 65536];
	uint32_t seq = nlh->nlmsg_seq = (uint32_t)time(NULL) | 1;
	struct parse_ctx ctx = { live_fn ? live_fn : drop_cb, live_arg };
	int ret = 1;

	nlh->nlmsg_flags |= NLM_F_ACK;
	if (mnl_socket_sendto(q->nl, nlh, nlh->nlmsg_len) < 0)
		return -1;
	while (ret > 0) {
		ssize_t n = mnl_socket_recvfrom(q->nl, buf, sizeof(buf));
		const struct nlmsghdr *m = (const struct nlmsghdr *)buf;
		int len = (int)n;

		if (n < 0)
			return -1;
		if (!nl_lengths_ok(buf, (size_t)n)) {
			stats.malformed++;
			continue;
		}
		for (; mnl_nlmsg_ok(m, len); m = mnl_nlmsg_next(m, &len)) {
			const struct nlmsgerr *e = mnl_nlmsg_get_payload(m);

			if (m->nlmsg_type == NLMSG_ERROR) {
				if (m->nlmsg_seq != seq ||
				    m->nlmsg_len < mnl_nlmsg_size(sizeof(*e)))
					continue;
				ret = e->error == 0 ? 0 : -1;
				if (e->error != 0)
					errno = e->error < 0 && e->error > -4096
						? -e->error : EPROTO;
			} else {
				packet_cb(m, &ctx);
			}
		}
		if (live_flush != NULL)
			live_flush();	/* before buf is reused */
		nfqb_flush();
	}
	return ret;
}

void nfqb_set_handler(nfqb_packet_fn fn, void (*flush)(void), void *arg)
{
	live_fn = fn;
	live_flush = flush;
	live_arg = arg;
}

static void queue_event(struct pollable *p, uint32_t events);

static void queue_free(struct nfqb_queue *q)
{
	if (q->nl != NULL)
		mnl_socket_close(q->nl);	/* the kernel unbinds */
	free(q);
}

/* Bind q's socket to its queue and configure the kernel's instance: whole
 * packets, GSO, fail-open as asked, the queue's length.  0, or -1 logged. */
static int queue_configure(struct nfqb_queue *q)
{
	char buf[NL_BUFSIZE];
	struct nlmsghdr *nlh;
	int ret = -1;

	/* the config requests wait for their answers: blocking meanwhile */
	fcntl(q->p.fd, F_SETFL, fcntl(q->p.fd, F_GETFL) & ~O_NONBLOCK);
	nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, q->num);
	nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_BIND);
	if (config_request(q, nlh) < 0) {
		log_err("cannot bind NFQUEUE queue %u: %s%s", q->num,
			strerror(errno), errno == EPERM ?
			" (another program holds this queue)" : "");
		goto out;
	}
	nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, q->num);
	nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 0xffff);
	mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(queue_flags));
	mnl_attr_put_u32(nlh, NFQA_CFG_MASK,
			 htonl(NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN));
	nfq_nlmsg_cfg_put_qmaxlen(nlh, queue_maxlen);
	if (config_request(q, nlh) < 0) {
		log_err("cannot configure NFQUEUE queue %u: %s", q->num,
			strerror(errno));
		goto out;
	}
	ret = 0;
out:
	fcntl(q->p.fd, F_SETFL, fcntl(q->p.fd, F_GETFL) | O_NONBLOCK);
	return ret;
}

int nfqb_bind_queue(uint16_t num)
{
	struct nfqb_queue *q = calloc(1, sizeof(*q));
	int one = 1, rcvbuf = NFQB_RCVBUF;
	int sndbuf = NFQB_VBATCH + NFQB_SLOT + 4096;

	if (q == NULL || queues[num] != NULL) {
		free(q);
		errno = q == NULL ? ENOMEM : EEXIST;
		return -1;
	}
	q->num = num;
	q->nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (q->nl == NULL || mnl_socket_bind(q->nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		log_err("cannot open a netfilter netlink socket for queue %u: %s",
			num, strerror(errno));
		goto fail;
	}
	q->portid = mnl_socket_get_portid(q->nl);
	q->p.fd = mnl_socket_get_fd(q->nl);
	q->p.handle = queue_event;
	mnl_socket_setsockopt(q->nl, NETLINK_NO_ENOBUFS, &one, sizeof(one));
	if (setsockopt(q->p.fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf,
		       sizeof(rcvbuf)) < 0)
		log_warn("cannot enlarge the netlink receive buffer: %s",
			 strerror(errno));
	/* the kernel refuses a netlink send larger than the send buffer:
	 * make room for a whole verdict batch */
	if (setsockopt(q->p.fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf,
		       sizeof(sndbuf)) < 0) {
		log_err("cannot size the netlink send buffer for verdict "
			"batches: %s", strerror(errno));
		goto fail;
	}
	queues[num] = q;		/* verdicts for packets read from now */
	if (queue_configure(q) < 0)
		goto fail;
	if (loop_add(&q->p, EPOLLIN) < 0) {
		log_err("cannot poll queue %u: %s", num, strerror(errno));
		goto fail;
	}
	return 0;
fail:
	if (queues[num] == q) {
		nfqb_flush();
		queues[num] = NULL;
	}
	queue_free(q);
	return -1;
}

int nfqb_unbind_queue(uint16_t num)
{
	struct nfqb_queue *q = queues[num];

	if (q == NULL)
		return -1;
	if (vqueue == num)
		nfqb_flush();		/* its verdicts go first */
	loop_del(&q->p);
	queues[num] = NULL;
	queue_free(q);		/* what it held is dropped */
	return 0;
}

/*
 * The direct path (docs/DIRECT.md): a program reads queue num itself.  We
 * stop reading it and hand out its socket (the fd stays ours too: the
 * kernel takes a verdict from any holder of the bound socket), verdicts
 * pending for it sent first.  The fd, or -1 (ENOENT: no such queue;
 * EBUSY: lent already).
 */
int nfqb_lend(uint16_t num)
{
	struct nfqb_queue *q = queues[num];

	if (q == NULL || q->lent) {
		errno = q == NULL ? ENOENT : EBUSY;
		return -1;
	}
	if (vqueue == num)
		nfqb_flush();
	if (q->paused)	/* a full client's before: its length and -F back */
		nfqb_pause(num, false, 0);
	if (loop_mod(&q->p, 0) < 0)
		return -1;
	q->lent = true;
	return q->p.fd;
}

/*
 * The program a queue was lent to is gone: unbind and bind the queue again
 * on our socket, which makes the kernel drop every packet still queued
 * there (read and held by the program, or unread), then read it ourselves
 * again.  0, or -1 (logged).
 */
int nfqb_take_back(uint16_t num)
{
	struct nfqb_queue *q = queues[num];
	char buf[NL_BUFSIZE];
	struct nlmsghdr *nlh;

	if (q == NULL || !q->lent)
		return 0;
	q->lent = false;
	fcntl(q->p.fd, F_SETFL, fcntl(q->p.fd, F_GETFL) & ~O_NONBLOCK);
	nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, num);
	nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_UNBIND);
	if (config_request(q, nlh) < 0)
		log_warn("cannot unbind NFQUEUE queue %u to drop what its "
			 "program held: %s", num, strerror(errno));
	if (queue_configure(q) < 0 || loop_mod(&q->p, EPOLLIN) < 0) {
		broken = true;	/* the queue would stay unread */
		return -1;
	}
	return 0;
}

void nfqb_pause(uint16_t num, bool pause, uint32_t keep)
{
	struct nfqb_queue *q = queues[num];
	char buf[NL_BUFSIZE];
	struct nlmsghdr *nlh;

	if (q == NULL || q->lent || q->paused == pause)
		return;
	if (loop_mod(&q->p, pause ? 0 : EPOLLIN) < 0)
		return;
	q->paused = pause;
	/* the queue's length: what it holds now, and no more, while paused
	 * (the kernel drops the rest and counts it), the full length again
	 * after.  No acknowledgement is waited for (a refusal comes back
	 * like a refused verdict, and is counted): the kernel applies the
	 * message before sendto() returns, and waiting would mean handling
	 * packets in the middle of the client side's own work. */
	nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, num);
	nfq_nlmsg_cfg_put_qmaxlen(nlh, pause ? (keep > 0 ? keep : 1)
					     : queue_maxlen);
	/* and no fail-open while paused (-F): what a slow program cannot
	 * take is dropped and counted, as FreeBSD drops what does not fit a
	 * socket buffer; failing open would pass it past every later rule */
	if (queue_flags & NFQA_CFG_F_FAIL_OPEN) {
		mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(pause ?
				 queue_flags & ~NFQA_CFG_F_FAIL_OPEN : queue_flags));
		mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_FAIL_OPEN));
	}
	if (mnl_socket_sendto(q->nl, nlh, nlh->nlmsg_len) < 0)
		log_limited(&rl_errors, 4, "cannot set the length of queue "
			    "%u: %s", num, strerror(errno));
}

bool nfqb_broken(void)
{
	return broken;
}

int nfqb_open(const uint16_t *nums, size_t n, uint32_t maxlen, bool fail_open)
{
	slots = malloc((size_t)NFQB_BATCH * NFQB_SLOT);
	vbuf = malloc(NFQB_VBATCH + NFQB_SLOT);
	if (slots == NULL || vbuf == NULL)
		return -1;
	for (int i = 0; i < NFQB_BATCH; i++) {
		riov[i].iov_base = slots + (size_t)i * NFQB_SLOT;
		riov[i].iov_len = NFQB_SLOT;
		rmsgs[i].msg_hdr.msg_iov = &riov[i];
		rmsgs[i].msg_hdr.msg_iovlen = 1;
	}
	vbatch = mnl_nlmsg_batch_start(vbuf, NFQB_VBATCH);
	if (vbatch == NULL)
		return -1;
	queue_maxlen = maxlen;
	queue_flags = NFQA_CFG_F_GSO | (fail_open ? NFQA_CFG_F_FAIL_OPEN : 0);
	for (size_t i = 0; i < n; i++)
		if (nfqb_bind_queue(nums[i]) < 0)
			return -1;
	return 0;
}

static int packet_cb(const struct nlmsghdr *nlh, void *data)
{
	struct parse_ctx *ctx = data;
	struct nlattr *attr[NFQA_MAX + 1] = { NULL };
	struct nfgenmsg *nfg = mnl_nlmsg_get_payload(nlh);
	struct nfqnl_msg_packet_hdr *ph;
	struct nfqb_packet pkt;
	uint32_t skbinfo = 0;

	if (nfq_nlmsg_parse(nlh, attr) < 0 || attr[NFQA_PACKET_HDR] == NULL) {
		stats.malformed++;
		return MNL_CB_OK;
	}
	ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
	memset(&pkt, 0, sizeof(pkt));
	pkt.queue = ntohs(nfg->res_id);
	pkt.id = ntohl(ph->packet_id);
	pkt.hook = ph->hook;
	pkt.l3proto = ntohs(ph->hw_protocol);
	if (attr[NFQA_MARK])
		pkt.mark = ntohl(mnl_attr_get_u32(attr[NFQA_MARK]));
	if (attr[NFQA_IFINDEX_INDEV])
		pkt.indev = ntohl(mnl_attr_get_u32(attr[NFQA_IFINDEX_INDEV]));
	if (attr[NFQA_IFINDEX_OUTDEV])
		pkt.outdev = ntohl(mnl_attr_get_u32(attr[NFQA_IFINDEX_OUTDEV]));
	if (attr[NFQA_SKB_INFO])
		skbinfo = ntohl(mnl_attr_get_u32(attr[NFQA_SKB_INFO]));
	pkt.csum_not_ready = (skbinfo & NFQA_SKB_CSUMNOTREADY) != 0;
	pkt.gso = (skbinfo & NFQA_SKB_GSO) != 0;
	stats.received++;
	if (attr[NFQA_PAYLOAD] == NULL ||
	    (attr[NFQA_CAP_LEN] &&
	     ntohl(mnl_attr_get_u32(attr[NFQA_CAP_LEN])) >
		     mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]))) {
		/* no payload, or cut short (a GSO packet over 64 KiB): no
		 * client can have it whole, so it cannot be diverted */
		stats.malformed++;
		nfqb_verdict(pkt.queue, pkt.id, NF_DROP, NULL, NULL, 0);
		return MNL_CB_OK;
	}
	pkt.data = mnl_attr_get_payload(attr[NFQA_PAYLOAD]);
	pkt.len = mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]);
	ctx->fn(&pkt, ctx->arg);
	return MNL_CB_OK;
}

static int error_cb(const struct nlmsghdr *nlh, void *data)
{
	const struct nlmsgerr *err = mnl_nlmsg_get_payload(nlh);

	(void)data;
	if (nlh->nlmsg_len >= mnl_nlmsg_size(sizeof(*err)) && err->error != 0) {
		stats.verdict_errors++;
		log_limited(&rl_errors, 4, "the kernel refused a verdict: %s",
			    strerror(err->error < 0 && err->error > -4096 ?
				     -err->error : EPROTO));
	}
	return MNL_CB_OK;
}

/* Read one batch from q and hand each packet on; the number read, 0 when
 * none were waiting, -1 on a socket error. */
static int queue_receive(struct nfqb_queue *q)
{
	static mnl_cb_t ctl_cb[NLMSG_MIN_TYPE] = { [NLMSG_ERROR] = error_cb };
	struct parse_ctx ctx = { live_fn ? live_fn : drop_cb, live_arg };
	int n;

	n = recvmmsg(q->p.fd, rmsgs, NFQB_BATCH, MSG_DONTWAIT, NULL);
	if (n < 0)
		return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
	for (int i = 0; i < n; i++) {
		if ((rmsgs[i].msg_hdr.msg_flags & MSG_TRUNC) ||
		    !nl_lengths_ok(riov[i].iov_base, rmsgs[i].msg_len)) {
			stats.malformed++;
			rmsgs[i].msg_hdr.msg_flags = 0;
			continue;
		}
		mnl_cb_run2(riov[i].iov_base, rmsgs[i].msg_len, 0, q->portid,
			    packet_cb, &ctx, ctl_cb, NLMSG_MIN_TYPE);
		rmsgs[i].msg_hdr.msg_flags = 0;
	}
	return n;
}

/* A queue's socket is readable: a few batches, each relayed (the handler's
 * flush) before the next overwrites the receive buffers, then the other
 * queues' turn. */
static void queue_event(struct pollable *p, uint32_t events)
{
	struct nfqb_queue *q = (struct nfqb_queue *)p;

	(void)events;
	for (int round = 0; round < NFQB_ROUNDS && !q->paused; round++) {
		int n = queue_receive(q);

		if (live_flush != NULL)
			live_flush();
		if (n < 0) {
			log_err("netlink receive failed on queue %u: %s",
				q->num, strerror(errno));
			broken = true;
			return;
		}
		if (n < NFQB_BATCH)
			break;
	}
}

/* Send the verdict batch on its queue's socket. */
static void batch_send(size_t len)
{
	struct nfqb_queue *q = queues[vqueue];

	if (q != NULL &&
	    mnl_socket_sendto(q->nl, mnl_nlmsg_batch_head(vbatch), len) < 0)
		log_limited(&rl_errors, 3, "cannot send verdicts: %s",
			    strerror(errno));
}

void nfqb_flush(void)
{
	size_t len = mnl_nlmsg_batch_size(vbatch);

	if (len == 0)
		return;
	batch_send(len);
	mnl_nlmsg_batch_reset(vbatch);
}

void nfqb_verdict(uint16_t queue, uint32_t id, uint32_t verdict,
		  const uint32_t *mark, const void *payload, uint32_t len)
{
	struct nlmsghdr *nlh;

	/* a verdict must come from the socket its queue is bound to: one
	 * batch per queue at a time */
	if (queue != vqueue)
		nfqb_flush();
	vqueue = queue;
	nlh = nfq_nlmsg_put(mnl_nlmsg_batch_current(vbatch),
			    NFQNL_MSG_VERDICT, queue);
	nfq_nlmsg_verdict_put(nlh, (int)id, (int)verdict);
	if (mark != NULL)
		nfq_nlmsg_verdict_put_mark(nlh, *mark);
	if (payload != NULL)
		nfq_nlmsg_verdict_put_pkt(nlh, payload, len);
	stats.verdicts++;
	if (!mnl_nlmsg_batch_next(vbatch)) {
		/* the batch is full: send what came before this message,
		 * which mnl_nlmsg_batch_reset() then moves to the front */
		batch_send(mnl_nlmsg_batch_size(vbatch));
		mnl_nlmsg_batch_reset(vbatch);
	}
}

void nfqb_close(void)
{
	if (vbatch != NULL)
		nfqb_flush();
	for (unsigned num = 0; num < 65536; num++)
		if (queues[num] != NULL)
			nfqb_unbind_queue((uint16_t)num);
	free(slots);
	free(vbuf);
	if (vbatch != NULL)
		mnl_nlmsg_batch_stop(vbatch);
	slots = NULL;
	vbuf = NULL;
	vbatch = NULL;
}

/* The kernel's own drop counters for our queues (queue full, or our
 * socket's buffer full with NETLINK_NO_ENOBUFS), read when asked for. */
static void read_kernel_drops(void)
{
	FILE *f = fopen("/proc/net/netfilter/nfnetlink_queue", "re");
	unsigned q, peer, total, mode, range, qdrop, udrop;
	uint64_t sum = 0;

	if (f == NULL)
		return;
	while (fscanf(f, "%u %u %u %u %u %u %u %*u %*u", &q, &peer, &total,
		      &mode, &range, &qdrop, &udrop) == 7)
		if (q < 65536 && queues[q] != NULL && peer == queues[q]->portid)
			sum += (uint64_t)qdrop + udrop;
	fclose(f);
	stats.kernel_drops = sum;
}

const struct nfqb_stats *nfqb_stats(void)
{
	read_kernel_drops();
	return &stats;
}
