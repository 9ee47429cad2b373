/*
 * nfq_handover.c: what the kernel must do for the direct path
 * (docs/DIRECT.md), checked on the kernel it runs on.
 *
 *	nfq_handover QUEUE ADDR PORT
 *
 * Run in a network namespace where UDP sent to ADDR:PORT from this host
 * is queued to NFQUEUE QUEUE (tests/netns/kernel.sh sets that up), with
 * ADDR local.  It binds the queue on a netlink socket N, then:
 *
 *   1. hands N to a child over a UNIX socket (SCM_RIGHTS), keeping its
 *      own descriptor, as divertd will hand a root program its queue;
 *   2. the child puts N and an eventfd into an epoll instance and checks
 *      that poll() on the epoll fd says readable when a packet is queued
 *      (the program's fd on the direct path is such an epoll fd), and not
 *      before;
 *   3. the child reads the packet from N and gives NF_ACCEPT itself: the
 *      kernel takes a verdict from any holder of the bound socket, and the
 *      datagram arrives;
 *   4. the eventfd alone makes the epoll fd readable, and reading it
 *      makes it quiet again;
 *   5. the child reads one more packet, gives no verdict and exits: the
 *      packet stays queued (the parent's descriptor keeps the queue);
 *   6. a second socket cannot bind the queue meanwhile (EPERM: a new
 *      divertd finds a queue a program holds taken);
 *   7. the parent unbinds and binds the queue again on N: the kernel drops
 *      what the dead child held (it never arrives), and the queue works for
 *      the parent (a next packet read and accepted arrives).
 *
 * Prints "ok - ..." or "not ok - ..." for each, then
 * "N passed, N failed, 0 skipped"; exits 1 if any failed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define BUFSZ (65536 + 4096)

static int npass, nfail;
static uint16_t queue;
static struct sockaddr_in dst;

static void result(bool good, const char *what, ...)
	__attribute__((format(printf, 2, 3)));

static void result(bool good, const char *what, ...)
{
	va_list ap;

	printf("%s - ", good ? "ok" : "not ok");
	va_start(ap, what);
	vprintf(what, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	if (good)
		npass++;
	else
		nfail++;
}

/* Send one configuration command for the queue on fd; 0 or -errno. */
static int queue_cmd(int fd, uint8_t cmd)
{
	char buf[8192];
	struct nlmsghdr *nlh;
	struct nlmsgerr *e;
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	ssize_t n;

	nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
	nlh->nlmsg_flags |= NLM_F_ACK;
	nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, cmd);
	if (cmd == NFQNL_CFG_CMD_BIND)	/* whole packets, as divertd */
		nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 0xffff);
	if (sendto(fd, nlh, nlh->nlmsg_len, 0, (struct sockaddr *)&kernel,
		   sizeof(kernel)) < 0)
		return -errno;
	for (;;) {
		n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0)
			return -errno;
		nlh = (struct nlmsghdr *)buf;
		if (nlh->nlmsg_type != NLMSG_ERROR)
			continue;	/* a packet: stays queued, unanswered */
		e = mnl_nlmsg_get_payload(nlh);
		return e->error;
	}
}

static int queue_socket(void)
{
	struct sockaddr_nl me = { .nl_family = AF_NETLINK };
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);

	if (fd < 0 || bind(fd, (struct sockaddr *)&me, sizeof(me)) < 0) {
		perror("nfq_handover: netlink socket");
		exit(2);
	}
	return fd;
}

struct pkt {
	uint32_t id;
	bool ok;
};

static int packet_cb(const struct nlmsghdr *nlh, void *data)
{
	struct nlattr *attr[NFQA_MAX + 1] = { 0 };
	struct pkt *p = data;
	struct nfqnl_msg_packet_hdr *ph;

	if (nfq_nlmsg_parse(nlh, attr) < 0 || attr[NFQA_PACKET_HDR] == NULL)
		return MNL_CB_ERROR;
	ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
	p->id = ntohl(ph->packet_id);
	p->ok = true;
	return MNL_CB_OK;
}

/* Wait up to ms for one packet message on fd; its id, or -1. */
static long read_packet(int fd, int ms)
{
	static char buf[BUFSZ];
	struct pollfd pfd = { fd, POLLIN, 0 };
	struct pkt p = { 0, false };
	ssize_t n;

	if (poll(&pfd, 1, ms) != 1)
		return -1;
	n = recv(fd, buf, sizeof(buf), 0);
	if (n <= 0 || mnl_cb_run(buf, (size_t)n, 0, 0, packet_cb, &p) < 0 ||
	    !p.ok)
		return -1;
	return p.id;
}

static int verdict(int fd, uint32_t id, uint32_t v)
{
	char buf[8192];
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_VERDICT, queue);

	nfq_nlmsg_verdict_put(nlh, (int)id, (int)v);
	return sendto(fd, nlh, nlh->nlmsg_len, 0, (struct sockaddr *)&kernel,
		      sizeof(kernel)) < 0 ? -errno : 0;
}

static void send_udp(const char *what)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (s < 0 || sendto(s, what, strlen(what), 0, (struct sockaddr *)&dst,
			    sizeof(dst)) < 0)
		perror("nfq_handover: send");
	if (s >= 0)
		close(s);
}

/* What the receiver got within ms: its text, or "" */
static const char *received(int rx, int ms)
{
	static char buf[256];
	struct pollfd pfd = { rx, POLLIN, 0 };
	ssize_t n;

	buf[0] = '\0';
	if (poll(&pfd, 1, ms) == 1 && (n = recv(rx, buf, sizeof(buf) - 1, 0)) >= 0)
		buf[n] = '\0';
	return buf;
}

/* The number of packets waiting in the queue (nfnetlink_queue's third
 * field), or -1 when the queue is not listed. */
static long queued(void)
{
	FILE *f = fopen("/proc/net/netfilter/nfnetlink_queue", "r");
	unsigned q, portid, total;
	long n = -1;
	char line[256];

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%u %u %u", &q, &portid, &total) == 3 &&
		    q == queue)
			n = total;
	fclose(f);
	return n;
}

static int send_fd(int sock, int fd)
{
	char c = 'N';
	struct iovec iov = { &c, 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr m = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(sock, &m, 0) == 1 ? 0 : -1;
}

static int recv_fd(int sock)
{
	char c;
	struct iovec iov = { &c, 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr m = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *cm;
	int fd = -1;

	if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) != 1)
		return -1;
	cm = CMSG_FIRSTHDR(&m);
	if (cm != NULL && cm->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	return fd;
}

static bool readable(int fd, int ms)
{
	struct pollfd pfd = { fd, POLLIN, 0 };

	return poll(&pfd, 1, ms) == 1 && (pfd.revents & POLLIN);
}

/* Steps 2 to 5, in the process the queue was handed to. */
static void child(int sock, int rx) __attribute__((noreturn));
static void child(int sock, int rx)
{
	struct epoll_event ev = { .events = EPOLLIN };
	uint64_t one = 1;
	long id;
	int n = recv_fd(sock), ep, efd;

	result(n >= 0, "the queue's netlink socket came over SCM_RIGHTS");
	if (n < 0) {
		int counts[2] = { npass, nfail };
		(void)!write(sock, counts, sizeof(counts));
		_exit(1);
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	ev.data.fd = n;
	epoll_ctl(ep, EPOLL_CTL_ADD, n, &ev);
	ev.data.fd = efd;
	epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);

	result(!readable(ep, 100), "an epoll fd of the queue's socket and an eventfd: quiet while nothing is queued");
	send_udp("first");
	result(readable(ep, 2000), "... poll() on it says readable once a packet is queued");
	id = read_packet(n, 2000);
	result(id >= 0, "the process the socket was handed to reads the packet (id %ld)", id);
	result(id >= 0 && verdict(n, (uint32_t)id, NF_ACCEPT) == 0 &&
	       strcmp(received(rx, 2000), "first") == 0,
	       "... and its NF_ACCEPT lets the datagram through");
	result(!readable(ep, 100), "... after which the epoll fd is quiet again");
	result(write(efd, &one, sizeof(one)) == sizeof(one) && readable(ep, 100),
	       "the eventfd alone makes the epoll fd readable");
	result(read(efd, &one, sizeof(one)) == sizeof(one) && !readable(ep, 100),
	       "... and reading it makes it quiet");

	send_udp("held");
	id = read_packet(n, 2000);
	result(id >= 0, "a second packet read and held without a verdict (id %ld)", id);
	fflush(stdout);
	/* our counts, for the parent's summary */
	int counts[2] = { npass, nfail };
	(void)!write(sock, counts, sizeof(counts));
	_exit(0);
}

int main(int argc, char **argv)
{
	int sv[2], n, other, rx, status, err;
	struct timespec ts = { 0, 100 * 1000 * 1000 };
	long id;
	pid_t pid;

	if (argc != 4) {
		fprintf(stderr, "usage: nfq_handover QUEUE ADDR PORT\n");
		return 2;
	}
	queue = (uint16_t)atoi(argv[1]);
	dst.sin_family = AF_INET;
	dst.sin_port = htons((uint16_t)atoi(argv[3]));
	if (inet_pton(AF_INET, argv[2], &dst.sin_addr) != 1) {
		fprintf(stderr, "nfq_handover: bad address %s\n", argv[2]);
		return 2;
	}
	rx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (rx < 0 || bind(rx, (struct sockaddr *)&dst, sizeof(dst)) < 0) {
		perror("nfq_handover: receiver");
		return 2;
	}
	n = queue_socket();
	err = queue_cmd(n, NFQNL_CFG_CMD_BIND);
	if (err != 0) {
		fprintf(stderr, "nfq_handover: bind queue %u: %s\n", queue, strerror(-err));
		return 2;
	}
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return 2;
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return 2;
	if (pid == 0) {
		close(sv[0]);
		child(sv[1], rx);
	}
	close(sv[1]);
	if (send_fd(sv[0], n) < 0)
		perror("nfq_handover: SCM_RIGHTS");
	int counts[2];
	if (read(sv[0], counts, sizeof(counts)) == sizeof(counts)) {
		npass += counts[0];
		nfail += counts[1];
	} else {
		result(false, "the child reported its checks");
	}
	waitpid(pid, &status, 0);

	/* step 5: the dead child's packet is still queued */
	result(queued() == 1, "the child exited: what it held stays queued while we keep the socket (%ld queued)", queued());
	other = queue_socket();
	err = queue_cmd(other, NFQNL_CFG_CMD_BIND);
	result(err == -EPERM, "another socket cannot bind the queue meanwhile: EPERM (%s)", err == 0 ? "bound" : strerror(-err));
	close(other);

	/* step 7: unbind and bind again drops what it held */
	err = queue_cmd(n, NFQNL_CFG_CMD_UNBIND);
	if (err == 0)
		err = queue_cmd(n, NFQNL_CFG_CMD_BIND);
	nanosleep(&ts, NULL);
	result(err == 0 && queued() == 0, "unbind and bind on our socket: nothing queued any more (%ld, %s)", queued(), strerror(-err));
	result(received(rx, 300)[0] == '\0', "... the held packet was dropped, never delivered");
	send_udp("after");
	id = read_packet(n, 2000);
	result(id >= 0 && verdict(n, (uint32_t)id, NF_ACCEPT) == 0 &&
	       strcmp(received(rx, 2000), "after") == 0,
	       "... and the queue works for us again (a packet read and accepted arrives)");
	printf("%d passed, %d failed, 0 skipped\n", npass, nfail);
	return nfail > 0;
}
