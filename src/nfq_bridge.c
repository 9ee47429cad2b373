/*
 * nfq_bridge.c: the netlink side.  The only code that speaks
 * NETLINK_NETFILTER.
 *
 * One netlink socket binds one NFQUEUE queue per divert port in use (queue
 * number = port), copying whole packets (NFQNL_COPY_PACKET, 0xffff bytes)
 * and taking GSO packets as they are (NFQA_CFG_F_GSO: no segmentation in
 * the kernel, checksums possibly left for the NIC, which divert_sock.c has
 * completed before a client reads them).
 *
 * In:  nfqb_receive() reads a batch of packet messages with one recvmmsg()
 *      into buffers allocated once, parses them with libnetfilter_queue's
 *      nfq_nlmsg_parse(), and hands each to a callback.  The socket sets
 *      NETLINK_NO_ENOBUFS: when userspace falls behind, the kernel drops
 *      and counts (queue_dropped in /proc/net/netfilter/nfnetlink_queue)
 *      instead of breaking the socket.
 * Out: nfqb_verdict() appends a verdict to one libmnl batch; nfqb_flush()
 *      sends the whole batch with one sendto().  Verdicts carry no
 *      NLM_F_ACK; the kernel reports only failures, which are counted.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
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

static struct mnl_socket *nl;
static uint32_t portid;
static uint8_t *slots;				/* NFQB_BATCH * NFQB_SLOT */
static struct mmsghdr rmsgs[NFQB_BATCH];
static struct iovec riov[NFQB_BATCH];
static char *vbuf;				/* NFQB_VBATCH + one message */
static struct mnl_nlmsg_batch *vbatch;
static struct nfqb_stats stats;
static struct log_ratelimit rl_errors;

/* Who gets packets that arrive while a configuration request waits for
 * its answer (a reload binds queues while traffic flows). */
static nfqb_packet_fn live_fn;
static void (*live_flush)(void);
static void *live_arg;

struct parse_ctx {
	nfqb_packet_fn fn;
	void *arg;
};

static int packet_cb(const struct nlmsghdr *nlh, void *data);

/* Send one configuration message and wait for its acknowledgement.
 * Packets read meanwhile go to the live handler; before there is one (at
 * start, when no client can have them yet) they are dropped, like packets
 * for a port with no socket. */
static int config_request(struct nlmsghdr *nlh)
{
	char buf[NL_BUFSIZE + 65536];
	uint32_t seq = nlh->nlmsg_seq = (uint32_t)time(NULL) | 1;
	struct parse_ctx ctx = { live_fn, live_arg };
	int ret = 1;

	nlh->nlmsg_flags |= NLM_F_ACK;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
		return -1;
	while (ret > 0) {
		ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof(buf));
		const struct nlmsghdr *m = (const struct nlmsghdr *)buf;
		int len = (int)n;

		if (n < 0)
			return -1;
		for (; mnl_nlmsg_ok(m, len); m = mnl_nlmsg_next(m, &len)) {
			const struct nlmsgerr *e = mnl_nlmsg_get_payload(m);
			struct nlattr *attr[NFQA_MAX + 1] = { NULL };

			if (m->nlmsg_type == NLMSG_ERROR) {
				if (m->nlmsg_seq != seq)
					continue;
				ret = e->error == 0 ? 0 : -1;
				if (e->error != 0)
					errno = -e->error;
			} else if (live_fn != NULL) {
				packet_cb(m, &ctx);
			} else if (nfq_nlmsg_parse(m, attr) >= 0 &&
				   attr[NFQA_PACKET_HDR]) {
				struct nfqnl_msg_packet_hdr *ph =
					mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
				struct nfgenmsg *g = mnl_nlmsg_get_payload(m);

				nfqb_verdict(ntohs(g->res_id),
					     ntohl(ph->packet_id), NF_DROP,
					     NULL, NULL, 0);
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

static uint32_t queue_maxlen, queue_flags;
static int bind_queue(uint16_t queue, uint32_t maxlen);

int nfqb_unbind_queue(uint16_t queue)
{
	char buf[NL_BUFSIZE];
	struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);

	nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_UNBIND);
	return config_request(nlh);
}

int nfqb_bind_queue(uint16_t queue)
{
	return bind_queue(queue, queue_maxlen);
}

static int bind_queue(uint16_t queue, uint32_t maxlen)
{
	char buf[NL_BUFSIZE];
	struct nlmsghdr *nlh;

	nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
	nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_BIND);
	if (config_request(nlh) < 0) {
		log_err("cannot bind NFQUEUE queue %u: %s%s", queue,
			strerror(errno), errno == EBUSY ?
			" (another program holds this queue)" : "");
		return -1;
	}
	nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
	nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 0xffff);
	mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(queue_flags));
	mnl_attr_put_u32(nlh, NFQA_CFG_MASK,
			 htonl(NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN));
	nfq_nlmsg_cfg_put_qmaxlen(nlh, maxlen);
	if (config_request(nlh) < 0) {
		log_err("cannot configure NFQUEUE queue %u: %s", queue,
			strerror(errno));
		return -1;
	}
	return 0;
}

int nfqb_open(const uint16_t *queues, size_t nqueues, uint32_t maxlen,
	      bool fail_open)
{
	int one = 1, rcvbuf = NFQB_RCVBUF;
	int sndbuf = NFQB_VBATCH + NFQB_SLOT + 4096;

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

	nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
	if (nl == NULL) {
		log_err("cannot open a netfilter netlink socket: %s",
			strerror(errno));
		return -1;
	}
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		log_err("cannot bind the netlink socket: %s", strerror(errno));
		return -1;
	}
	portid = mnl_socket_get_portid(nl);
	mnl_socket_setsockopt(nl, NETLINK_NO_ENOBUFS, &one, sizeof(one));
	if (setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVBUFFORCE,
		       &rcvbuf, sizeof(rcvbuf)) < 0)
		log_warn("cannot enlarge the netlink receive buffer: %s",
			 strerror(errno));
	/* the kernel refuses a netlink send larger than the send buffer:
	 * make room for a whole verdict batch */
	if (setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_SNDBUFFORCE,
		       &sndbuf, sizeof(sndbuf)) < 0) {
		log_err("cannot size the netlink send buffer for verdict "
			"batches: %s", strerror(errno));
		return -1;
	}
	queue_maxlen = maxlen;
	queue_flags = NFQA_CFG_F_GSO | (fail_open ? NFQA_CFG_F_FAIL_OPEN : 0);
	for (size_t i = 0; i < nqueues; i++)
		if (bind_queue(queues[i], maxlen) < 0)
			return -1;
	return 0;
}

int nfqb_fd(void)
{
	return mnl_socket_get_fd(nl);
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
			    strerror(-err->error));
	}
	return MNL_CB_OK;
}

int nfqb_receive(nfqb_packet_fn fn, void *arg)
{
	static mnl_cb_t ctl_cb[NLMSG_MIN_TYPE] = { [NLMSG_ERROR] = error_cb };
	struct parse_ctx ctx = { fn, arg };
	int n;

	n = recvmmsg(mnl_socket_get_fd(nl), rmsgs, NFQB_BATCH, MSG_DONTWAIT,
		     NULL);
	if (n < 0)
		return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
	for (int i = 0; i < n; i++) {
		if (rmsgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
			stats.malformed++;
			continue;
		}
		mnl_cb_run2(riov[i].iov_base, rmsgs[i].msg_len, 0, portid,
			    packet_cb, &ctx, ctl_cb, NLMSG_MIN_TYPE);
		rmsgs[i].msg_hdr.msg_flags = 0;
	}
	return n;
}

void nfqb_flush(void)
{
	size_t len = mnl_nlmsg_batch_size(vbatch);

	if (len == 0)
		return;
	if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(vbatch), len) < 0)
		log_limited(&rl_errors, 3, "cannot send verdicts: %s",
			    strerror(errno));
	mnl_nlmsg_batch_reset(vbatch);
}

void nfqb_verdict(uint16_t queue, uint32_t id, uint32_t verdict,
		  const uint32_t *mark, const void *payload, uint32_t len)
{
	struct nlmsghdr *nlh;

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
		size_t prev = mnl_nlmsg_batch_size(vbatch);
		if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(vbatch), prev) < 0)
			log_limited(&rl_errors, 3, "cannot send verdicts: %s",
				    strerror(errno));
		mnl_nlmsg_batch_reset(vbatch);
	}
}

void nfqb_close(void)
{
	if (nl != NULL) {
		nfqb_flush();
		mnl_socket_close(nl);
	}
	nl = NULL;
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
		if (peer == portid)
			sum += (uint64_t)qdrop + udrop;
	fclose(f);
	stats.kernel_drops = sum;
}

const struct nfqb_stats *nfqb_stats(void)
{
	read_kernel_drops();
	return &stats;
}
