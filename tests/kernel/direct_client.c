/*
 * direct_client.c: a client of divertd's direct path (docs/DIRECT.md),
 * speaking the wire protocol (src/divert_wire.h) as the shim will: it
 * asks to read its port's queue itself and, when divertd lends it, reads
 * the packets there and gives each its verdict, re-entering after the
 * rule that diverted it, as a program writing every packet back would.
 *
 *	direct_client [-n COUNT] [-k] [-v] [-r READYFILE] SOCKET PORT
 *
 * Prints "granted direct" or "granted relay" after the bind, "view N
 * numbers M tees" for each view of the rules it gets (at bind, and with
 * -v after each rule change until the next packet), and "pkt ID tag T
 * resume R" for each packet.  It gives COUNT packets their verdicts
 * (default 1), then with -k reads one more, gives it none and exits at
 * once (what it held is for divertd to drop).  READYFILE is created once
 * the bind is answered.  Exit 0, or 1 with a message.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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

int main(int argc, char **argv)
{
	long count = 1;
	bool keep = false, watch = false;
	const char *ready = NULL;
	struct divert_wire_hdr hdr = { .version = DIVERT_WIRE_VERSION };
	int conn, ctl, nfd = -1, opt;
	uint64_t id;
	size_t len;

	while ((opt = getopt(argc, argv, "n:kvr:")) != -1) {
		switch (opt) {
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
