/*
 * direct_client.c: a client of divertd's direct path (docs/DIRECT.md),
 * speaking the wire protocol (src/divert_wire.h) as the shim will: it
 * asks to read its port's queue itself and, when divertd lends it, reads
 * the packets there and gives each its verdict, re-entering after the
 * rule that diverted it, as a program writing every packet back would.
 *
 *	direct_client [-n COUNT] [-k] [-v] [-r READYFILE] SOCKET PORT
 *	direct_client -b [-A] [-r READYFILE] SOCKET PORT
 *
 * Prints "granted direct" or "granted relay" after the bind, "view N
 * numbers M tees" for each view of the rules it gets (at bind, and with
 * -v after each rule change until the next packet), and "pkt ID tag T
 * resume R" for each packet.  It gives COUNT packets their verdicts
 * (default 1), then with -k reads one more, gives it none and exits at
 * once (what it held is for divertd to drop).  READYFILE is created once
 * the bind is answered.  Exit 0, or 1 with a message.
 *
 * -b is the benchmark's case E (bench/run.sh): the floor of the direct
 * path.  It reads the lent queue as the thinnest consumer does (recvmmsg
 * of up to 64 messages, one libmnl batch of verdicts per read) and gives
 * every packet what a program writing it back unchanged gets on the
 * direct path, NF_REPEAT with the re-entry mark, but copies nothing to a
 * program; until SIGTERM, then "packets N batches N".  With -A a packet
 * that resumes after the last rule gets NF_ACCEPT with our mark bits
 * cleared instead (what the end of our chain would do): an experiment on
 * what re-entry costs, exact only where nothing else sits in the hook's
 * chain after ours (the nftables backend's own table).  The socket's
 * O_NONBLOCK is divertd's too (one open file): it waits in poll().
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#include "divert_wire.h"

static uint64_t view_buf[(sizeof(struct dw_view) + 65536 * 6) / 8 + 1];
static const struct dw_view *view = (const struct dw_view *)(void *)view_buf;
static uint16_t queue;
static volatile sig_atomic_t done;

static void on_signal(int sig)
{
	(void)sig;
	done = 1;
}

static void die(const char *what)
{
	fprintf(stderr, "direct_client: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int dial(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
		die("connect");
	return fd;
}

/* The next message on fd, its header in *hdr and what follows into
 * view_buf; with fd passed along, *nfd.  Its payload length. */
static size_t receive(int fd, struct divert_wire_hdr *hdr, int *nfd)
{
	struct iovec iov[2] = { { hdr, sizeof(*hdr) },
				{ view_buf, sizeof(view_buf) } };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr m = {
		.msg_iov = iov, .msg_iovlen = 2,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *cm;
	ssize_t n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);

	if (n < (ssize_t)sizeof(*hdr))
		die("a message from divertd");
	cm = CMSG_FIRSTHDR(&m);
	if (nfd != NULL && cm != NULL && cm->cmsg_type == SCM_RIGHTS)
		memcpy(nfd, CMSG_DATA(cm), sizeof(int));
	return (size_t)n - sizeof(*hdr);
}

static void got_view(size_t len)
{
	if (dw_view_check(view_buf, len) != 0) {
		fprintf(stderr, "direct_client: a view of %zu bytes refused\n", len);
		exit(1);
	}
	printf("view %u numbers %u tees\n", view->nnums, view->ntees);
	fflush(stdout);
}

struct pkt {
	uint32_t id, mark;
	bool ok;
};

static int packet_cb(const struct nlmsghdr *nlh, void *data)
{
	struct nlattr *attr[NFQA_MAX + 1] = { 0 };
	struct pkt *p = data;

	if (nfq_nlmsg_parse(nlh, attr) < 0 || attr[NFQA_PACKET_HDR] == NULL)
		return MNL_CB_OK;
	p->id = ntohl(((struct nfqnl_msg_packet_hdr *)
		       mnl_attr_get_payload(attr[NFQA_PACKET_HDR]))->packet_id);
	p->mark = attr[NFQA_MARK] ? ntohl(mnl_attr_get_u32(attr[NFQA_MARK])) : 0;
	p->ok = true;
	return MNL_CB_OK;
}

/* The next packet of the queue (waiting up to 10 s); with watch, a view
 * coming on conn meanwhile is taken. */
static struct pkt next_packet(int nfd, int conn, bool watch)
{
	static char buf[65536 + 4096];
	struct pollfd pfd[2] = { { nfd, POLLIN, 0 }, { conn, POLLIN, 0 } };
	struct divert_wire_hdr hdr;
	struct pkt p = { 0, 0, false };

	while (!p.ok) {
		ssize_t n;

		if (poll(pfd, watch ? 2 : 1, 10000) <= 0)
			die("no packet within 10 s");
		if (watch && (pfd[1].revents & POLLIN)) {
			size_t len = receive(conn, &hdr, NULL);

			if (hdr.type == DW_VIEW)
				got_view(len);
		}
		if (!(pfd[0].revents & POLLIN))
			continue;
		n = recv(nfd, buf, sizeof(buf), 0);
		if (n < 0)
			die("recv from the queue");
		mnl_cb_run(buf, (size_t)n, 0, 0, packet_cb, &p);
	}
	return p;
}

static void verdict(int nfd, uint32_t id, uint32_t mark)
{
	char buf[8192];
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_VERDICT, queue);

	nfq_nlmsg_verdict_put(nlh, (int)id, NF_REPEAT);
	nfq_nlmsg_verdict_put_mark(nlh, mark);
	if (sendto(nfd, nlh, nlh->nlmsg_len, 0, (struct sockaddr *)&kernel,
		   sizeof(kernel)) < 0)
		die("verdict");
}

/* -b: the verdicts of a batch, and where they go */
static struct mnl_nlmsg_batch *vb;
static int bench_fd;
static unsigned long long bench_packets, bench_batches, bench_errors;
static bool bench_accept;	/* -A: NF_ACCEPT past the last rule */

static void bench_flush(void)
{
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	size_t len = mnl_nlmsg_batch_size(vb);

	if (len > 0 && sendto(bench_fd, mnl_nlmsg_batch_head(vb), len, 0,
			      (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		bench_errors++;
	mnl_nlmsg_batch_reset(vb);
}

/* -b: one message of a batch; its verdict appended to vb */
static int bench_cb(const struct nlmsghdr *nlh, void *data)
{
	struct nlattr *attr[NFQA_MAX + 1] = { 0 };
	struct nlmsghdr *v;
	uint32_t id, mark;
	uint16_t tag;

	if (nfq_nlmsg_parse(nlh, attr) < 0 || attr[NFQA_PACKET_HDR] == NULL)
		return MNL_CB_OK;
	id = ntohl(((struct nfqnl_msg_packet_hdr *)
		    mnl_attr_get_payload(attr[NFQA_PACKET_HDR]))->packet_id);
	mark = attr[NFQA_MARK] ? ntohl(mnl_attr_get_u32(attr[NFQA_MARK])) : 0;
	tag = dw_view_resume(view, (uint16_t)((mark & view->mask) >> view->shift));
	(void)data;
	v = nfq_nlmsg_put(mnl_nlmsg_batch_current(vb), NFQNL_MSG_VERDICT, queue);
	if (bench_accept && view->nnums > 0 &&
	    tag == dw_view_nums(view)[view->nnums - 1]) {
		/* nothing after: on past our chain, our bits cleared, as
		 * its end would leave the packet */
		mark &= ~view->mask;
		nfq_nlmsg_verdict_put(v, (int)id, NF_ACCEPT);
	} else {
		mark = (mark & ~view->mask) |
		       (((uint32_t)tag << view->shift) & view->mask);
		nfq_nlmsg_verdict_put(v, (int)id, NF_REPEAT);
	}
	nfq_nlmsg_verdict_put_mark(v, mark);
	if (!mnl_nlmsg_batch_next(vb)) {
		/* full: what came before this one goes, it moves to the front */
		struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };

		if (sendto(bench_fd, mnl_nlmsg_batch_head(vb),
			   mnl_nlmsg_batch_size(vb), 0,
			   (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
			bench_errors++;
		mnl_nlmsg_batch_reset(vb);
	}
	bench_packets++;
	return MNL_CB_OK;
}

/* -b: read and verdict the queue in batches until SIGTERM */
static void bench(int nfd)
{
	enum { BATCH = 64, SLOT = 65536 + 1024, VBATCH = 256 * 1024 };
	static struct mmsghdr msgs[BATCH];
	static struct iovec iov[BATCH];
	uint8_t *slots = malloc((size_t)BATCH * SLOT);
	char *vbuf = malloc(VBATCH + SLOT);
	struct pollfd pfd = { nfd, POLLIN, 0 };
	struct sigaction sa;

	if (slots == NULL || vbuf == NULL)
		die("malloc");
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = slots + (size_t)i * SLOT;
		iov[i].iov_len = SLOT;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	vb = mnl_nlmsg_batch_start(vbuf, VBATCH);
	bench_fd = nfd;
	while (!done) {
		int n = recvmmsg(nfd, msgs, BATCH, MSG_DONTWAIT, NULL);

		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR) {
				poll(&pfd, 1, 200);
				continue;
			}
			die("recvmmsg");
		}
		for (int i = 0; i < n; i++)
			mnl_cb_run(iov[i].iov_base, msgs[i].msg_len, 0, 0,
				   bench_cb, NULL);
		bench_flush();
		bench_batches++;
	}
	printf("packets %llu batches %llu verdict_errors %llu\n",
	       bench_packets, bench_batches, bench_errors);
	free(slots);
	free(vbuf);
}

int main(int argc, char **argv)
{
	long count = 1;
	bool keep = false, watch = false;
	const char *ready = NULL;
	struct divert_wire_hdr hdr = { .version = DIVERT_WIRE_VERSION };
	int conn, ctl, nfd = -1, opt;
	uint64_t id;
	size_t len;

	bool bench_mode = false;

	while ((opt = getopt(argc, argv, "Abn:kvr:")) != -1) {
		switch (opt) {
		case 'A': bench_accept = true; break;
		case 'b': bench_mode = true; break;
		case 'n': count = atol(optarg); break;
		case 'k': keep = true; break;
		case 'v': watch = true; break;
		case 'r': ready = optarg; break;
		default: return 2;
		}
	}
	if (argc - optind != 2) {
		fprintf(stderr, "usage: direct_client [-n COUNT] [-k] [-v] [-r READYFILE] SOCKET PORT\n");
		return 2;
	}
	queue = (uint16_t)atoi(argv[optind + 1]);
	conn = dial(argv[optind]);
	receive(conn, &hdr, NULL);
	if (hdr.type != DW_WELCOME || hdr.arg != 0) {
		fprintf(stderr, "direct_client: refused (%u)\n", hdr.arg);
		return 1;
	}
	id = hdr.conn;
	ctl = dial(argv[optind]);
	memset(&hdr, 0, sizeof(hdr));
	hdr.type = DW_BIND;
	hdr.version = DIVERT_WIRE_VERSION;
	hdr.arg = DW_BIND_DIRECT;
	hdr.conn = id;
	hdr.val = queue;
	if (send(ctl, &hdr, sizeof(hdr), 0) != sizeof(hdr))
		die("bind");
	do
		len = receive(ctl, &hdr, &nfd);
	while (hdr.type == DW_WELCOME);
	close(ctl);
	if (hdr.type != DW_REPLY || hdr.arg != 0) {
		fprintf(stderr, "direct_client: bind: %s\n", strerror((int)hdr.arg));
		return 1;
	}
	if (hdr.val != DW_BIND_DIRECT || nfd < 0) {
		printf("granted relay\n");
		return 0;
	}
	printf("granted direct\n");
	got_view(len);
	if (ready != NULL)
		close(open(ready, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
	if (bench_mode) {
		bench(nfd);
		return 0;
	}
	for (long i = 0; i < count; i++) {
		struct pkt p = next_packet(nfd, conn, watch);
		uint16_t tag = (uint16_t)((p.mark & view->mask) >> view->shift);
		uint16_t rule = tag, resume;

		if (dw_view_tee(view, tag, &rule)) {
			/* a tee's copy: the original goes on at the very
			 * next rule, with the mark it came with */
			printf("pkt %u tag %u tee\n", p.id, rule);
			fflush(stdout);
			verdict(nfd, p.id, p.mark);
			continue;
		}
		resume = dw_view_resume(view, tag);
		printf("pkt %u tag %u resume %u\n", p.id, tag, resume);
		fflush(stdout);
		verdict(nfd, p.id, (p.mark & ~view->mask) |
			(((uint32_t)resume << view->shift) & view->mask));
	}
	if (keep) {
		struct pkt p = next_packet(nfd, conn, watch);

		printf("held %u\n", p.id);
		fflush(stdout);
	}
	return 0;
}
