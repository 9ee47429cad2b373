/*
 * nfq_baseline.c: the thinnest NFQUEUE consumer, the benchmark's case B.
 *
 *	nfq_baseline [-n COUNT] [-q MAXLEN] [-r READYFILE] QUEUE
 *
 * Binds NFQUEUE queue QUEUE and gives every packet NF_ACCEPT, doing as
 * little as a consumer can while configured like divertd (src/nfq_bridge.c),
 * so that divertd's cost is measured against the kernel's own:
 *
 *   - the same queue setup: whole packets copied (NFQNL_COPY_PACKET, range
 *     0xffff), GSO packets taken whole (NFQA_CFG_F_GSO), the same queue
 *     length (16384), a 16 MiB receive buffer and NETLINK_NO_ENOBUFS;
 *   - the same batching: one recvmmsg() reads up to 64 packet messages,
 *     each is parsed with nfq_nlmsg_parse(), and their verdicts go out as
 *     one libmnl batch, one sendto() per recvmmsg();
 *   - what it leaves out is exactly what makes divertd divertd: no client,
 *     no copy to a program, no hash, no held-packet bookkeeping, no mark.
 *     A verdict carries no payload, so the kernel keeps its packet as it
 *     is (GSO and checksum offload included).
 *
 * It runs until SIGTERM or SIGINT, or until COUNT packets are handled, then
 * prints "packets N batches N" on stdout.  READYFILE is created once the
 * queue is bound, for scripts waiting to start traffic.
 *
 * Build: cc -O2 -o nfq_baseline nfq_baseline.c \
 *		$(pkg-config --cflags --libs libnetfilter_queue libmnl)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define BATCH		64			/* messages per recvmmsg */
#define SLOT		(65536 + 1024)		/* one packet message */
#define VBATCH		(256 * 1024)		/* verdict batch limit */
#define RCVBUF		(16 * 1024 * 1024)
#define CFG_BUFSIZE	8192

static volatile sig_atomic_t done;
static struct mnl_socket *nl;
static uint32_t portid;
static struct mnl_nlmsg_batch *vbatch;
static unsigned long long handled, batches, verdict_errors;

static void on_signal(int sig)
{
	(void)sig;
	done = 1;
}

static void die(const char *what)
{
	fprintf(stderr, "nfq_baseline: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Send one configuration message and wait for the kernel's answer. */
static void config_request(struct nlmsghdr *nlh, const char *what)
{
	char buf[CFG_BUFSIZE];
	uint32_t seq = nlh->nlmsg_seq = (uint32_t)time(NULL);
	ssize_t n;

	nlh->nlmsg_flags |= NLM_F_ACK;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
		die(what);
	n = mnl_socket_recvfrom(nl, buf, sizeof(buf));
	if (n < 0 || mnl_cb_run(buf, (size_t)n, seq, portid, NULL, NULL) < 0)
		die(what);
}

/* Bind QUEUE and configure it as divertd configures its queues. */
static void bind_queue(uint16_t queue, uint32_t maxlen)
{
	char buf[CFG_BUFSIZE];
	struct nlmsghdr *nlh;

	nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
	nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_BIND);
	config_request(nlh, "bind the queue");

	nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
	nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 0xffff);
	mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(NFQA_CFG_F_GSO));
	mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_GSO));
	nfq_nlmsg_cfg_put_qmaxlen(nlh, maxlen);
	config_request(nlh, "configure the queue");
}

/* Send the verdicts collected so far, if any. */
static void flush_verdicts(void)
{
	size_t len = mnl_nlmsg_batch_size(vbatch);

	if (len == 0)
		return;
	if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(vbatch), len) < 0)
		verdict_errors++;
	mnl_nlmsg_batch_reset(vbatch);
}

/* One packet message: append NF_ACCEPT for it to the verdict batch. */
static int packet_cb(const struct nlmsghdr *nlh, void *data)
{
	struct nlattr *attr[NFQA_MAX + 1] = { NULL };
	struct nfgenmsg *nfg = mnl_nlmsg_get_payload(nlh);
	struct nfqnl_msg_packet_hdr *ph;
	struct nlmsghdr *v;

	(void)data;
	if (nfq_nlmsg_parse(nlh, attr) < 0 || attr[NFQA_PACKET_HDR] == NULL)
		return MNL_CB_OK;
	ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
	v = nfq_nlmsg_put(mnl_nlmsg_batch_current(vbatch), NFQNL_MSG_VERDICT,
			  ntohs(nfg->res_id));
	nfq_nlmsg_verdict_put(v, (int)ntohl(ph->packet_id), NF_ACCEPT);
	if (!mnl_nlmsg_batch_next(vbatch)) {
		/* full: send what came before this message, which
		 * mnl_nlmsg_batch_reset() then moves to the front */
		if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(vbatch),
				      mnl_nlmsg_batch_size(vbatch)) < 0)
			verdict_errors++;
		mnl_nlmsg_batch_reset(vbatch);
	}
	handled++;
	return MNL_CB_OK;
}

static void usage(void)
{
	fprintf(stderr, "usage: nfq_baseline [-n COUNT] [-q MAXLEN] "
		"[-r READYFILE] QUEUE\n");
	exit(2);
}

int main(int argc, char *argv[])
{
	static struct mmsghdr msgs[BATCH];
	static struct iovec iov[BATCH];
	unsigned long long count = 0;
	const char *ready = NULL;
	uint32_t maxlen = 16384;
	struct sigaction sa;
	char *vbuf, *end;
	uint8_t *slots;
	long queue;
	int ch, one = 1, rcvbuf = RCVBUF, sndbuf = VBATCH + SLOT + 4096;

	while ((ch = getopt(argc, argv, "n:q:r:")) != -1) {
		switch (ch) {
		case 'n':
			count = strtoull(optarg, NULL, 10);
			break;
		case 'q':
			maxlen = (uint32_t)strtoul(optarg, NULL, 10);
			break;
		case 'r':
			ready = optarg;
			break;
		default:
			usage();
		}
	}
	if (optind != argc - 1)
		usage();
	queue = strtol(argv[optind], &end, 10);
	if (*end != '\0' || queue < 0 || queue > 65535)
		usage();

	/* a signal only sets the flag; without SA_RESTART it also ends a
	 * blocking recvmmsg() with EINTR */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	/* every buffer allocated once: the per-packet path allocates nothing */
	slots = malloc((size_t)BATCH * SLOT);
	vbuf = malloc(VBATCH + SLOT);
	if (slots == NULL || vbuf == NULL)
		die("malloc");
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = slots + (size_t)i * SLOT;
		iov[i].iov_len = SLOT;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	vbatch = mnl_nlmsg_batch_start(vbuf, VBATCH);

	nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
	if (nl == NULL)
		die("netlink socket");
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0)
		die("netlink bind");
	portid = mnl_socket_get_portid(nl);
	mnl_socket_setsockopt(nl, NETLINK_NO_ENOBUFS, &one, sizeof(one));
	setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVBUFFORCE,
		   &rcvbuf, sizeof(rcvbuf));
	setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_SNDBUFFORCE,
		   &sndbuf, sizeof(sndbuf));
	bind_queue((uint16_t)queue, maxlen);

	if (ready != NULL) {
		int fd = open(ready, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);

		if (fd < 0)
			die(ready);
		close(fd);
	}

	while (!done && (count == 0 || handled < count)) {
		/* block for the first message, then take what is there */
		int n = recvmmsg(mnl_socket_get_fd(nl), msgs, BATCH,
				 MSG_WAITFORONE, NULL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("recvmmsg");
		}
		for (int i = 0; i < n; i++) {
			if (!(msgs[i].msg_hdr.msg_flags & MSG_TRUNC))
				mnl_cb_run(iov[i].iov_base, msgs[i].msg_len, 0,
					   portid, packet_cb, NULL);
			msgs[i].msg_hdr.msg_flags = 0;
		}
		flush_verdicts();
		batches++;
	}
	printf("packets %llu batches %llu verdict_errors %llu\n", handled,
	       batches, verdict_errors);
	mnl_socket_close(nl);	/* the kernel unbinds the queue */
	free(slots);
	free(vbuf);
	return 0;
}
