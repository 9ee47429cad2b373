/*
 * iftable.c: the host's interfaces, without a syscall per packet.
 *
 * A diverted packet's address names its receiving interface and carries
 * that interface's first IPv4 address (FreeBSD div_input); an incoming
 * write names an interface or one of its addresses.  Both are answered from
 * this table.  It is filled by an rtnetlink dump of links and IPv4
 * addresses and refilled whenever rtnetlink reports a change (those are
 * rare; a full refill keeps "first address" exactly the kernel's order).
 */
#include <errno.h>
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

#define IFTABLE_MAX 4096

static struct mnl_socket *nl_events;	/* notifications */
#define ADDRS_MAX 8192

struct v4addr {
	struct in_addr addr;
	int index;
};

static struct iface table[IFTABLE_MAX], scratch[IFTABLE_MAX];
static size_t ntable, nscratch;
static struct v4addr addrs[ADDRS_MAX], scratch_addrs[ADDRS_MAX];
static size_t naddrs, nscratch_addrs;

static struct iface *slot_for(int index)
{
	for (size_t i = 0; i < ntable; i++)
		if (table[i].index == index)
			return &table[i];
	return NULL;
}

/* A refill fills the scratch table; it replaces the live one only when
 * both dumps succeeded. */
static struct iface *scratch_slot(int index, bool create)
{
	for (size_t i = 0; i < nscratch; i++)
		if (scratch[i].index == index)
			return &scratch[i];
	if (!create || nscratch == IFTABLE_MAX)
		return NULL;
	memset(&scratch[nscratch], 0, sizeof(scratch[nscratch]));
	scratch[nscratch].index = index;
	return &scratch[nscratch++];
}

static int attr_cb(const struct nlattr *attr, void *data)
{
	const struct nlattr **tb = data;
	int type = mnl_attr_get_type(attr);

	if (mnl_attr_type_valid(attr, IFLA_MAX) > 0)
		tb[type] = attr;
	return MNL_CB_OK;
}

static int link_cb(const struct nlmsghdr *nlh, void *data)
{
	const struct ifinfomsg *ifm = mnl_nlmsg_get_payload(nlh);
	const struct nlattr *tb[IFLA_MAX + 1] = { NULL };
	struct iface *ifc;

	(void)data;
	if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof(*ifm)))
		return MNL_CB_OK;
	mnl_attr_parse(nlh, sizeof(*ifm), attr_cb, tb);
	if (tb[IFLA_IFNAME] == NULL ||
	    mnl_attr_validate(tb[IFLA_IFNAME], MNL_TYPE_NUL_STRING) < 0)
		return MNL_CB_OK;
	ifc = scratch_slot(ifm->ifi_index, true);
	if (ifc != NULL) {
		snprintf(ifc->name, sizeof(ifc->name), "%s",
			 mnl_attr_get_str(tb[IFLA_IFNAME]));
		ifc->up = ifm->ifi_flags & IFF_UP;
		ifc->loopback = ifm->ifi_flags & IFF_LOOPBACK;
	}
	return MNL_CB_OK;
}

static int addr_attr_cb(const struct nlattr *attr, void *data)
{
	const struct nlattr **tb = data;
	int type = mnl_attr_get_type(attr);

	if (mnl_attr_type_valid(attr, IFA_MAX) > 0)
		tb[type] = attr;
	return MNL_CB_OK;
}

static int addr_cb(const struct nlmsghdr *nlh, void *data)
{
	const struct ifaddrmsg *ifa = mnl_nlmsg_get_payload(nlh);
	const struct nlattr *tb[IFA_MAX + 1] = { NULL };
	const struct nlattr *a;
	struct iface *ifc;

	(void)data;
	if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof(*ifa)) ||
	    ifa->ifa_family != AF_INET)
		return MNL_CB_OK;
	mnl_attr_parse(nlh, sizeof(*ifa), addr_attr_cb, tb);
	a = tb[IFA_LOCAL] ? tb[IFA_LOCAL] : tb[IFA_ADDRESS];
	if (a == NULL || mnl_attr_get_payload_len(a) != 4)
		return MNL_CB_OK;
	ifc = scratch_slot((int)ifa->ifa_index, false);
	if (ifc == NULL)
		return MNL_CB_OK;
	if (!ifc->has_v4) {
		memcpy(&ifc->first_v4, mnl_attr_get_payload(a), 4);
		ifc->has_v4 = true;
	}
	if (nscratch_addrs < ADDRS_MAX) {
		memcpy(&scratch_addrs[nscratch_addrs].addr,
		       mnl_attr_get_payload(a), 4);
		scratch_addrs[nscratch_addrs++].index = ifc->index;
	}
	return MNL_CB_OK;
}

/* One rtnetlink dump on a socket of its own, so it never mixes with the
 * notifications queued on nl_events. */
static int dump(uint16_t type, mnl_cb_t cb)
{
	char buf[NL_BUFSIZE];
	struct mnl_socket *nl;
	struct nlmsghdr *nlh;
	struct rtgenmsg *rt;
	uint32_t seq = (uint32_t)time(NULL), portid;
	ssize_t n;
	int ret = -1;

	nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	if (nl == NULL)
		return -1;
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0)
		goto out;
	portid = mnl_socket_get_portid(nl);
	nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	nlh->nlmsg_seq = seq;
	rt = mnl_nlmsg_put_extra_header(nlh, sizeof(*rt));
	rt->rtgen_family = type == RTM_GETADDR ? AF_INET : AF_UNSPEC;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
		goto out;
	while ((n = mnl_socket_recvfrom(nl, buf, sizeof(buf))) > 0) {
		int r = nl_lengths_ok(buf, (size_t)n)
			? mnl_cb_run(buf, (size_t)n, seq, portid, cb, NULL) : -1;
		if (r == MNL_CB_STOP) {
			ret = 0;
			break;
		}
		if (r < 0)
			break;
	}
out:
	mnl_socket_close(nl);
	return ret;
}

static int refill(void)
{
	nscratch = nscratch_addrs = 0;
	if (dump(RTM_GETLINK, link_cb) < 0 || dump(RTM_GETADDR, addr_cb) < 0) {
		log_err("cannot read the interface list: %s", strerror(errno));
		return -1;
	}
	memcpy(table, scratch, nscratch * sizeof(table[0]));
	ntable = nscratch;
	memcpy(addrs, scratch_addrs, nscratch_addrs * sizeof(addrs[0]));
	naddrs = nscratch_addrs;
	return 0;
}

int iftable_open(void)
{
	nl_events = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (nl_events == NULL)
		return -1;
	if (mnl_socket_bind(nl_events, RTMGRP_LINK | RTMGRP_IPV4_IFADDR,
			    MNL_SOCKET_AUTOPID) < 0)
		return -1;
	return refill();
}

int iftable_fd(void)
{
	return mnl_socket_get_fd(nl_events);
}

void iftable_process(void)
{
	char buf[NL_BUFSIZE];
	bool changed = false;

	/* the content does not matter: any change means a refill; an
	 * overrun (ENOBUFS) means we missed changes, so refill as well */
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(nl_events, buf, sizeof(buf));
		if (n > 0 || (n < 0 && errno == ENOBUFS)) {
			changed = true;
			continue;
		}
		break;
	}
	if (changed)
		refill();
}

const struct iface *iftable_by_index(int index)
{
	if (index <= 0)
		return NULL;
	return slot_for(index);
}

const struct iface *iftable_by_name(const char *name)
{
	for (size_t i = 0; i < ntable; i++)
		if (strncmp(table[i].name, name, IFNAMSIZ) == 0)
			return &table[i];
	return NULL;
}

const struct iface *iftable_by_v4(struct in_addr addr)
{
	for (size_t i = 0; i < naddrs; i++)
		if (addrs[i].addr.s_addr == addr.s_addr)
			return slot_for(addrs[i].index);
	return NULL;
}

void iftable_close(void)
{
	if (nl_events != NULL)
		mnl_socket_close(nl_events);
	nl_events = NULL;
}
