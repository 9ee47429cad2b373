/*
 * fuzz_rtnl.c: libFuzzer target for the rtnetlink messages divertd
 * parses: src/iftable.c, included whole (its parsing is static).
 *
 * Only the kernel is faked: the libmnl socket calls and time() are
 * renamed, for iftable.c alone, to functions here.  The fuzzer's bytes
 * become the datagrams of the link and address dumps that refill() asks
 * for (copied into dump()'s own buffer, the rest of it marked unreadable,
 * so a callback reading past its message is caught) and the
 * notifications iftable_process() reads.  Everything else runs as is:
 * dump(), link_cb(), addr_cb(), the swap of the scratch table into the
 * live one, the lookups.
 *
 * Input: records [kind][len:2][bytes]:
 *   kind & 3 == 0  the next datagram of a dump;
 *   kind & 3 == 1  the kernel ends the dump (NLMSG_DONE, made here);
 *   kind & 3 == 2  the dump's socket fails (ENOBUFS);
 *   kind & 3 == 3  a notification: iftable_process() runs (and refills).
 * A dump whose records run out ends as the kernel would (NLMSG_DONE).
 * After each refill the table must be sane: names terminated, indexes
 * unique and positive, each lookup finding what it should; a failed refill
 * must leave the table as it was.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <libmnl/libmnl.h>

#include "divertd.h"
#include "fuzz_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct mnl_socket *fz_open2(int bus, int flags);
static int fz_bind(struct mnl_socket *nl, unsigned int groups, pid_t pid);
static unsigned int fz_portid(const struct mnl_socket *nl);
static int fz_get_fd(const struct mnl_socket *nl);
static ssize_t fz_sendto(const struct mnl_socket *nl, const void *req,
			 size_t siz);
static ssize_t fz_recvfrom(const struct mnl_socket *nl, void *buf,
			   size_t siz);
static int fz_close(struct mnl_socket *nl);
static time_t fz_time(time_t *t);

#define mnl_socket_open2 fz_open2
#define mnl_socket_bind fz_bind
#define mnl_socket_get_portid fz_portid
#define mnl_socket_get_fd fz_get_fd
#define mnl_socket_sendto fz_sendto
#define mnl_socket_recvfrom fz_recvfrom
#define mnl_socket_close fz_close
#define time fz_time
#include "../../src/iftable.c"
#undef mnl_socket_open2
#undef mnl_socket_bind
#undef mnl_socket_get_portid
#undef mnl_socket_get_fd
#undef mnl_socket_sendto
#undef mnl_socket_recvfrom
#undef mnl_socket_close
#undef time

#define FZ_PORTID 4243u
#define FZ_TIME 0x5eed0000

static struct fz in;
/* two fake sockets: the notification socket, and a dump's */
static char events_sock[8], dump_sock[8];
static int dump_open;			/* dump sockets not closed */
static uint16_t dump_type;		/* what the open dump asked for */

static struct mnl_socket *fz_open2(int bus, int flags)
{
	FZ_CHECK(bus == NETLINK_ROUTE, "bus %d", bus);
	if (flags & SOCK_NONBLOCK)
		return (struct mnl_socket *)(void *)events_sock;
	FZ_CHECK(dump_open == 0, "two dumps at once");
	dump_open++;
	return (struct mnl_socket *)(void *)dump_sock;
}

static int fz_bind(struct mnl_socket *s, unsigned int groups, pid_t pid)
{
	(void)s;
	(void)groups;
	(void)pid;
	return 0;
}

static unsigned int fz_portid(const struct mnl_socket *s)
{
	(void)s;
	return FZ_PORTID;
}

static int fz_get_fd(const struct mnl_socket *s)
{
	(void)s;
	return 1000;
}

static int fz_close(struct mnl_socket *s)
{
	if ((void *)s == dump_sock) {
		FZ_CHECK(dump_open == 1, "dump socket closed twice");
		dump_open--;
	}
	return 0;
}

static time_t fz_time(time_t *t)
{
	if (t != NULL)
		*t = FZ_TIME;
	return FZ_TIME;
}

/* The dump request: one well-formed message asking for links or IPv4
 * addresses. */
static ssize_t fz_sendto(const struct mnl_socket *s, const void *req,
			 size_t siz)
{
	const struct nlmsghdr *nlh = req;
	const struct rtgenmsg *rt;

	FZ_CHECK((const void *)s == dump_sock, "request on the wrong socket");
	fz_touch(req, siz);
	FZ_CHECK(siz >= mnl_nlmsg_size(sizeof(*rt)) && nlh->nlmsg_len == siz,
		 "request of %zu bytes", siz);
	FZ_CHECK(nlh->nlmsg_type == RTM_GETLINK || nlh->nlmsg_type == RTM_GETADDR,
		 "request type %u", nlh->nlmsg_type);
	FZ_CHECK(nlh->nlmsg_flags == (NLM_F_REQUEST | NLM_F_DUMP), "flags");
	rt = mnl_nlmsg_get_payload(nlh);
	FZ_CHECK(rt->rtgen_family == (nlh->nlmsg_type == RTM_GETADDR
				      ? AF_INET : AF_UNSPEC), "family");
	dump_type = nlh->nlmsg_type;
	return (ssize_t)siz;
}

static ssize_t fz_recvfrom(const struct mnl_socket *s, void *buf, size_t siz)
{
	fz_unpoison(buf, siz);
	if ((const void *)s == events_sock) {
		/* notifications: their content is not read, only that
		 * there were some */
		if (in.n > 0 && (in.p[0] & 3) == 3) {
			size_t len;
			const uint8_t *p;

			fz_u8(&in);
			p = fz_bytes(&in, fz_u16(&in), &len);
			if (len > siz)
				len = siz;
			memcpy(buf, p, len);
			return (ssize_t)len;
		}
		errno = EAGAIN;
		return -1;
	}
	FZ_CHECK((const void *)s == dump_sock && dump_open == 1,
		 "read on no dump");
	if (in.n > 0 && (in.p[0] & 3) == 0) {
		size_t len;
		const uint8_t *p;

		fz_u8(&in);
		p = fz_bytes(&in, fz_u16(&in), &len);
		if (len > siz)
			len = siz;
		memcpy(buf, p, len);
		fz_poison_tail(buf, len, siz);
		return (ssize_t)len;
	}
	if (in.n > 0 && (in.p[0] & 3) == 2) {
		size_t len;

		fz_u8(&in);
		fz_bytes(&in, fz_u16(&in), &len);
		errno = ENOBUFS;
		return -1;
	}
	if (in.n > 0 && (in.p[0] & 3) == 1) {
		size_t len;

		fz_u8(&in);
		fz_bytes(&in, fz_u16(&in), &len);
	}
	{
		struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);

		nlh->nlmsg_type = NLMSG_DONE;
		nlh->nlmsg_flags = NLM_F_MULTI;
		nlh->nlmsg_seq = FZ_TIME;
		nlh->nlmsg_pid = FZ_PORTID;
		*(int *)mnl_nlmsg_put_extra_header(nlh, sizeof(int)) = 0;
		fz_poison_tail(buf, nlh->nlmsg_len, siz);
		return nlh->nlmsg_len;
	}
}

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

static uint64_t table_digest(void)
{
	uint64_t h = 1469598103934665603ull;
	const uint8_t *p = (const uint8_t *)table;

	for (size_t i = 0; i < ntable * sizeof(table[0]); i++)
		h = (h ^ p[i]) * 1099511628211ull;
	p = (const uint8_t *)addrs;
	for (size_t i = 0; i < naddrs * sizeof(addrs[0]); i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h ^ ntable ^ naddrs << 20;
}

static void check_table(void)
{
	FZ_CHECK(ntable <= IFTABLE_MAX && naddrs <= ADDRS_MAX, "sizes");
	for (size_t i = 0; i < ntable; i++) {
		const struct iface *ifc = &table[i];
		const struct iface *by;

		FZ_CHECK(strnlen(ifc->name, IFNAMSIZ) < IFNAMSIZ,
			 "name not terminated");
		for (size_t j = 0; j < i; j++)
			FZ_CHECK(table[j].index != ifc->index,
				 "index %d twice", ifc->index);
		by = iftable_by_index(ifc->index);
		FZ_CHECK(ifc->index <= 0 ? by == NULL : by == ifc,
			 "lookup of index %d", ifc->index);
		by = iftable_by_name(ifc->name);
		FZ_CHECK(by != NULL && strcmp(by->name, ifc->name) == 0,
			 "lookup of name '%s'", ifc->name);
		if (ifc->has_v4 && naddrs < ADDRS_MAX) {
			bool found = false;

			for (size_t k = 0; k < naddrs && !found; k++)
				found = addrs[k].index == ifc->index &&
					addrs[k].addr.s_addr == ifc->first_v4.s_addr;
			FZ_CHECK(found, "first address of %d not listed",
				 ifc->index);
		}
	}
	for (size_t k = 0; k < naddrs; k++) {
		const struct iface *by = iftable_by_v4(addrs[k].addr);

		FZ_CHECK(by != NULL, "address without interface");
	}
	FZ_CHECK(iftable_by_index(0) == NULL && iftable_by_index(-1) == NULL,
		 "index 0");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	in.n = 0;
	if (iftable_open() < 0) {
		fprintf(stderr, "iftable_open failed\n");
		abort();
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	in.p = data;
	in.n = size;
	while (!fz_empty(&in)) {
		uint64_t before = table_digest();
		int rc;

		if ((in.p[0] & 3) == 3) {
			iftable_process();
		} else {
			rc = refill();
			if (rc < 0)
				FZ_CHECK(table_digest() == before,
					 "a failed refill changed the table");
		}
		FZ_CHECK(dump_open == 0, "a dump socket left open");
		check_table();
	}
	return 0;
}
