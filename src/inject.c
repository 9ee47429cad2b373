/*
 * inject.c: packets written that answer no held packet.
 *
 * A written packet that answers a held one goes back to the kernel as that
 * packet's NFQUEUE verdict (client.c, held.c).  Anything else is a new packet,
 * as every write is on FreeBSD, and enters the stack here:
 *
 *  - outgoing (sin_addr INADDR_ANY): a raw IP socket (IPPROTO_RAW, so the
 *    header is the program's).  The kernel fills a zero source address and
 *    recomputes the IPv4 header checksum, as FreeBSD does.  The packet runs
 *    the OUTPUT hook, where the mark (SO_MARK control message, the tag in
 *    our bits) makes the outgoing pass resume after the tag.
 *
 *  - incoming: a veth pair of our own.  We write an Ethernet frame on the
 *    peer (INJECT_PEER) with an AF_PACKET socket; INJECT_IFNAME receives it
 *    and its tc ingress hook redirects it (mirred ingress redirect) to the
 *    interface the program named, so the stack sees it arrive there:
 *    PREROUTING with that interface (where the mark makes the incoming pass
 *    resume after the tag), reverse-path checks, local delivery (IP_PKTINFO
 *    names it) or forwarding.  Which interface: the first four bytes of
 *    the frame's source MAC address carry its ifindex, and one u32 filter
 *    per interface matches them; filters are added the first time an
 *    interface is named (one `tc` run, not on the per-packet path after
 *    that).  (A raw socket to a local address would also run the outgoing
 *    pass and arrive on lo.)  Everything stays in this network namespace,
 *    so the mark survives.
 *
 * Neither path allocates; each packet is one sendmsg().
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <linux/if_link.h>
#include <linux/if_packet.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <linux/filter.h>
#include <libmnl/libmnl.h>
#include <sys/socket.h>

#include "divertd.h"

/* The receiving side's address: locally administered, fixed, so the frames
 * we write need no lookup. */
static const uint8_t inject_mac[ETH_ALEN] = { 0x02, 0xd1, 0x5e, 0x27, 0x00, 0x01 };

#define REDIRECTS_MAX 1024
#define INJECT_MTU 65535

static int raw4 = -1, raw6 = -1, packet_fd = -1;
static int proto_fd[256];		/* IPv4 raw sockets by protocol, for
					 * packets the kernel must fragment */
static int peer_index;
static struct {
	int index;			/* ifindex with a tc filter, or */
	bool failed;			/* one tc refused: not tried again */
} redirects[REDIRECTS_MAX];
static size_t nredirects;

/* One rtnetlink request, waiting for its acknowledgement.  Returns 0 or
 * -errno. */
static int rtnl_request(struct nlmsghdr *nlh)
{
	char buf[NL_BUFSIZE];
	struct mnl_socket *nl;
	uint32_t portid;
	ssize_t n;
	int ret;

	nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	if (nl == NULL)
		return -errno;
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		ret = -errno;
		goto out;
	}
	portid = mnl_socket_get_portid(nl);
	nlh->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
	nlh->nlmsg_seq = 1;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		ret = -errno;
		goto out;
	}
	n = mnl_socket_recvfrom(nl, buf, sizeof(buf));
	if (n < 0) {
		ret = -errno;
		goto out;
	}
	ret = !nl_lengths_ok(buf, (size_t)n) ? -EPROTO :
	      mnl_cb_run(buf, (size_t)n, 1, portid, NULL, NULL) < 0 ? -errno : 0;
out:
	mnl_socket_close(nl);
	return ret;
}

static int link_delete(const char *name)
{
	char buf[NL_BUFSIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct ifinfomsg *ifm;

	nlh->nlmsg_type = RTM_DELLINK;
	ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifm));
	ifm->ifi_family = AF_UNSPEC;
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	return rtnl_request(nlh);
}

static int link_create_veth(void)
{
	char buf[NL_BUFSIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct nlattr *linkinfo, *data, *peer;
	struct ifinfomsg *ifm, *pifm;

	nlh->nlmsg_type = RTM_NEWLINK;
	nlh->nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
	ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifm));
	ifm->ifi_family = AF_UNSPEC;
	mnl_attr_put_strz(nlh, IFLA_IFNAME, INJECT_IFNAME);
	mnl_attr_put(nlh, IFLA_ADDRESS, sizeof(inject_mac), inject_mac);
	/* a written packet may be as large as an IP packet can be */
	mnl_attr_put_u32(nlh, IFLA_MTU, INJECT_MTU);
	linkinfo = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
	mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "veth");
	data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
	peer = mnl_attr_nest_start(nlh, VETH_INFO_PEER);
	pifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*pifm));
	pifm->ifi_family = AF_UNSPEC;
	mnl_attr_put_strz(nlh, IFLA_IFNAME, INJECT_PEER);
	mnl_attr_put_u32(nlh, IFLA_MTU, INJECT_MTU);
	mnl_attr_nest_end(nlh, peer);
	mnl_attr_nest_end(nlh, data);
	mnl_attr_nest_end(nlh, linkinfo);
	return rtnl_request(nlh);
}

static int link_up(const char *name)
{
	char buf[NL_BUFSIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct ifinfomsg *ifm;

	nlh->nlmsg_type = RTM_NEWLINK;
	ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifm));
	ifm->ifi_family = AF_UNSPEC;
	ifm->ifi_flags = IFF_UP;
	ifm->ifi_change = IFF_UP;
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	return rtnl_request(nlh);
}

/* One tc command, its words separated by blanks. */
static int tc_run(const char *cmd)
{
	char buf[256], *argv[32], *save = NULL;
	static char tc[] = "tc";
	int argc = 0;

	snprintf(buf, sizeof(buf), "%s", cmd);
	argv[argc++] = tc;
	for (char *w = strtok_r(buf, " ", &save); w && argc < 31;
	     w = strtok_r(NULL, " ", &save))
		argv[argc++] = w;
	argv[argc] = NULL;
	return spawn_run(argv, NULL, NULL);
}

/* Make sure frames marked for ifc are redirected to its ingress. */
static int redirect_to(const struct iface *ifc)
{
	char cmd[256];

	for (size_t i = 0; i < nredirects; i++)
		if (redirects[i].index == ifc->index)
			return redirects[i].failed ? -EADDRNOTAVAIL : 0;
	if (nredirects == REDIRECTS_MAX)
		return -ENOSPC;
	snprintf(cmd, sizeof(cmd),
		 "filter add dev " INJECT_IFNAME " ingress protocol all pref 10 "
		 "u32 match u32 0x%08x 0xffffffff at -8 "
		 "action mirred ingress redirect dev %s",
		 (unsigned)ifc->index, ifc->name);
	redirects[nredirects].index = ifc->index;
	redirects[nredirects].failed = tc_run(cmd) != 0;
	if (redirects[nredirects++].failed) {
		log_warn("cannot redirect injected packets to %s", ifc->name);
		return -EADDRNOTAVAIL;
	}
	return 0;
}

/* Injected packets come from anywhere: the receiving side must not apply
 * reverse-path filtering, and may see our own source addresses. */
static void set_sysctl(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0 || write(fd, value, strlen(value)) < 0)
		log_warn("cannot set %s to %s: %s", path, value, strerror(errno));
	if (fd >= 0)
		close(fd);
}

int inject_open(void)
{
	struct sockaddr_ll sll;
	int r;

	for (size_t i = 0; i < 256; i++)
		proto_fd[i] = -1;
	raw4 = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
	raw6 = socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
	if (raw4 < 0 || raw6 < 0) {
		log_err("cannot open raw IP sockets: %s", strerror(errno));
		return -1;
	}
	link_delete(INJECT_IFNAME);	/* left by an earlier instance */
	r = link_create_veth();
	if (r < 0) {
		log_err("cannot create the veth pair %s/%s: %s", INJECT_IFNAME,
			INJECT_PEER, strerror(-r));
		return -1;
	}
	/* up only once both ends exist (veth refuses before) */
	if ((r = link_up(INJECT_PEER)) < 0 || (r = link_up(INJECT_IFNAME)) < 0) {
		log_err("cannot bring %s up: %s", INJECT_IFNAME, strerror(-r));
		return -1;
	}
	set_sysctl("/proc/sys/net/ipv4/conf/" INJECT_IFNAME "/rp_filter", "0");
	set_sysctl("/proc/sys/net/ipv4/conf/" INJECT_IFNAME "/accept_local", "1");
	peer_index = (int)if_nametoindex(INJECT_PEER);
	if (peer_index == 0) {
		log_err("veth peer %s vanished: %s", INJECT_PEER, strerror(errno));
		return -1;
	}
	if (tc_run("qdisc add dev " INJECT_IFNAME " ingress") != 0) {
		log_err("cannot add an ingress qdisc to %s", INJECT_IFNAME);
		return -1;
	}
	packet_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (packet_fd < 0) {
		log_err("cannot open a packet socket: %s", strerror(errno));
		return -1;
	}
	memset(&sll, 0, sizeof(sll));
	sll.sll_family = AF_PACKET;
	sll.sll_ifindex = peer_index;
	sll.sll_protocol = 0;	/* send only: receive nothing */
	if (bind(packet_fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
		log_err("cannot bind the packet socket: %s", strerror(errno));
		return -1;
	}
	return 0;
}

void inject_close(void)
{
	if (raw4 >= 0)
		close(raw4);
	if (raw6 >= 0)
		close(raw6);
	if (packet_fd >= 0)
		close(packet_fd);
	raw4 = raw6 = packet_fd = -1;
	for (size_t i = 0; i < 256; i++) {
		if (proto_fd[i] >= 0)
			close(proto_fd[i]);
		proto_fd[i] = -1;
	}
	if (peer_index)
		link_delete(INJECT_IFNAME);	/* takes qdisc and filters along */
	peer_index = 0;
	nredirects = 0;
}

/* sendmsg with the mark as an SO_MARK control message. */
static int send_marked(int fd, struct iovec *iov, size_t iovlen, void *name,
		       socklen_t namelen, uint32_t mark)
{
	union {
		char buf[CMSG_SPACE(sizeof(uint32_t))];
		struct cmsghdr align;
	} ctl;
	struct msghdr msg = {
		.msg_name = name, .msg_namelen = namelen,
		.msg_iov = iov, .msg_iovlen = iovlen,
		.msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
	};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SO_MARK;
	cm->cmsg_len = CMSG_LEN(sizeof(uint32_t));
	memcpy(CMSG_DATA(cm), &mark, sizeof(mark));
	if (sendmsg(fd, &msg, MSG_DONTWAIT) < 0)
		return -errno;
	return 0;
}

/*
 * Linux never fragments what an IPPROTO_RAW socket sends; FreeBSD's output
 * path fragments a written packet without DF.  Such a packet goes out
 * through a raw socket of its protocol instead, whose header the kernel
 * builds (and fragments) from the program's: source (IP_PKTINFO, any
 * address thanks to IP_TRANSPARENT), TOS and TTL (control messages; a TTL
 * of 0, which the kernel refuses there, becomes its default), the mark.
 * The identification is the kernel's.  These sockets only send: a filter
 * that accepts nothing keeps the kernel from queueing every packet of
 * their protocol to them.
 */
static int proto_socket(uint8_t proto)
{
	static struct sock_filter none[] = { BPF_STMT(BPF_RET | BPF_K, 0) };
	struct sock_fprog prog = { .len = 1, .filter = none };
	int one = 1, dont = IP_PMTUDISC_DONT, fd;

	/* IP_TRANSPARENT (not IP_FREEBIND) lets the route lookup take any
	 * source, as IPPROTO_RAW does: forwarded packets keep theirs */

	if (proto_fd[proto] >= 0)
		return proto_fd[proto];
	fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, proto);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0 ||
	    setsockopt(fd, IPPROTO_IP, IP_TRANSPARENT, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &dont, sizeof(dont)) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	return proto_fd[proto] = fd;
}

static int send_fragmented(const uint8_t *pkt, size_t len, uint32_t mark)
{
	union {
		char buf[CMSG_SPACE(sizeof(uint32_t)) + 2 * CMSG_SPACE(sizeof(int)) +
			 CMSG_SPACE(sizeof(struct in_pktinfo))];
		struct cmsghdr align;
	} ctl;
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct iovec iov = { .iov_base = (void *)(uintptr_t)(pkt + 20),
			     .iov_len = len - 20 };
	struct msghdr msg = {
		.msg_name = &sin, .msg_namelen = sizeof(sin),
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
	};
	struct in_pktinfo pi = { 0 };
	struct cmsghdr *cm;
	int fd = proto_socket(pkt[9]), tos = pkt[1], ttl = pkt[8];

	if (fd < 0)
		return fd;
	memset(&ctl, 0, sizeof(ctl));
	memcpy(&sin.sin_addr, pkt + 16, 4);
	memcpy(&pi.ipi_spec_dst, pkt + 12, 4);
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SO_MARK;
	cm->cmsg_len = CMSG_LEN(sizeof(mark));
	memcpy(CMSG_DATA(cm), &mark, sizeof(mark));
	cm = CMSG_NXTHDR(&msg, cm);
	cm->cmsg_level = IPPROTO_IP;
	cm->cmsg_type = IP_TOS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &tos, sizeof(int));
	if (ttl != 0) {
		cm = CMSG_NXTHDR(&msg, cm);
		cm->cmsg_level = IPPROTO_IP;
		cm->cmsg_type = IP_TTL;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &ttl, sizeof(int));
	}
	cm = CMSG_NXTHDR(&msg, cm);
	cm->cmsg_level = IPPROTO_IP;
	cm->cmsg_type = IP_PKTINFO;
	cm->cmsg_len = CMSG_LEN(sizeof(pi));
	memcpy(CMSG_DATA(cm), &pi, sizeof(pi));
	msg.msg_controllen = (size_t)((char *)cm - ctl.buf) + CMSG_SPACE(sizeof(pi));
	if (sendmsg(fd, &msg, MSG_DONTWAIT) < 0)
		return -errno;
	return 0;
}

int inject_out(const uint8_t *pkt, size_t len, uint32_t mark)
{
	struct iovec iov = { .iov_base = (void *)(uintptr_t)pkt, .iov_len = len };

	if ((pkt[0] >> 4) == 4) {
		struct sockaddr_in sin = { .sin_family = AF_INET };
		int r;

		memcpy(&sin.sin_addr, pkt + 16, 4);
		r = send_marked(raw4, &iov, 1, &sin, sizeof(sin), mark);
		/* too big for the route, DF clear, no IP options, a whole
		 * datagram of a protocol a raw socket can carry: fragment */
		if (r == -EMSGSIZE && !(pkt[6] & 0x40) && (pkt[0] & 0x0f) == 5 &&
		    (pkt[6] & 0x3f) == 0 && pkt[7] == 0 &&
		    pkt[9] != 0 && pkt[9] != IPPROTO_RAW)
			r = send_fragmented(pkt, len, mark);
		return r;
	} else {
		struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
		if (len < sizeof(struct ip6_hdr))
			return -EINVAL;
		memcpy(&sin6.sin6_addr, pkt + 24, 16);
		return send_marked(raw6, &iov, 1, &sin6, sizeof(sin6), mark);
	}
}

int inject_in(const uint8_t *pkt, size_t len, uint32_t mark,
	      const struct iface *ifc)
{
	struct sockaddr_ll sll = {
		.sll_family = AF_PACKET,
		.sll_ifindex = peer_index,
	};
	struct ether_header eh;
	struct iovec iov[2] = {
		{ .iov_base = &eh, .iov_len = sizeof(eh) },
		{ .iov_base = (void *)(uintptr_t)pkt, .iov_len = len },
	};
	uint32_t index_be = htonl((uint32_t)ifc->index);
	int r = redirect_to(ifc);

	if (r < 0)
		return r;
	sll.sll_protocol = htons((pkt[0] >> 4) == 4 ? ETH_P_IP : ETH_P_IPV6);
	memcpy(eh.ether_dhost, inject_mac, ETH_ALEN);
	memset(eh.ether_shost, 0, ETH_ALEN);
	memcpy(eh.ether_shost, &index_be, sizeof(index_be));
	eh.ether_type = sll.sll_protocol;
	return send_marked(packet_fd, iov, 2, &sll, sizeof(sll), mark);
}
