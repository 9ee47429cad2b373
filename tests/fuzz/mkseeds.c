/*
 * mkseeds.c: writes the binary seed corpora of the fuzz targets (run.sh
 * --seeds builds and runs it; the files it writes are checked in).  Owns
 * only what a meaningful first input of each target is: real NFQUEUE
 * packet messages and rtnetlink dumps built with libmnl, as the kernel
 * sends them; valid and invalid writes; client sessions that bind, read,
 * write back, inject, and run divertctl's commands, through sockets and
 * shared-memory rings, honest and hostile; views of the rules, received
 * and built from config text.  fuzz_config's seeds are the
 * config files of tests/golden and contrib/nft-rules, copied by run.sh.
 *
 *     mkseeds CORPUS_DIR
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <net/if_arp.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#include "divert_wire.h"
#include "fuzz_client_ops.h"

#define SEQ_TIME 0x5eed0000u	/* the fake time() of fuzz_nfq / fuzz_rtnl */
#define RTNL_PORTID 4243u

struct out {
	uint8_t b[200000];
	size_t n;
};

static void put(struct out *o, const void *p, size_t len)
{
	if (o->n + len > sizeof(o->b))
		abort();
	memcpy(o->b + o->n, p, len);
	o->n += len;
}

static void u8(struct out *o, unsigned v)
{
	uint8_t b = (uint8_t)v;

	put(o, &b, 1);
}

static void u16(struct out *o, unsigned v)
{
	u8(o, v & 0xff);
	u8(o, (v >> 8) & 0xff);
}

static void u32(struct out *o, uint32_t v)
{
	u16(o, v & 0xffff);
	u16(o, v >> 16);
}

static const char *corpus;

static void save(const char *target, const char *name, const struct out *o)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", corpus, target);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/%s/%s", corpus, target, name);
	f = fopen(path, "wb");
	if (f == NULL || fwrite(o->b, 1, o->n, f) != o->n || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
}

/* ---- packets ---------------------------------------------------------- */

static uint16_t csum(const uint8_t *p, size_t len)
{
	uint32_t s = 0;

	for (size_t i = 0; i + 1 < len; i += 2)
		s += (uint32_t)p[i] << 8 | p[i + 1];
	if (len & 1)
		s += (uint32_t)p[len - 1] << 8;
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

/* IPv4 header, proto, payload of plen bytes (zeros but the first few). */
static size_t ip4(uint8_t *p, uint8_t proto, size_t plen, const char *src,
		  const char *dst)
{
	uint16_t c;

	memset(p, 0, 20 + plen);
	p[0] = 0x45;
	p[2] = (uint8_t)((20 + plen) >> 8);
	p[3] = (uint8_t)(20 + plen);
	p[4] = 0x12;
	p[5] = 0x34;
	p[6] = 0x40;		/* DF */
	p[8] = 64;
	p[9] = proto;
	inet_pton(AF_INET, src, p + 12);
	inet_pton(AF_INET, dst, p + 16);
	c = csum(p, 20);
	p[10] = (uint8_t)(c >> 8);
	p[11] = (uint8_t)c;
	return 20 + plen;
}

static size_t tcp4_syn(uint8_t *p)
{
	size_t n = ip4(p, 6, 20, "192.0.2.2", "198.51.100.1");

	p[20] = 0xc3;		/* sport 50000 */
	p[21] = 0x50;
	p[23] = 80;		/* dport 80 */
	p[32] = 0x50;		/* data offset 5 */
	p[33] = 0x02;		/* SYN */
	p[34] = 0xfa;		/* window */
	return n;
}

static size_t icmp4_echo(uint8_t *p)
{
	size_t n = ip4(p, 1, 16, "192.0.2.2", "192.0.2.1");
	uint16_t c;

	p[20] = 8;		/* echo request */
	p[24] = 0x12;
	p[27] = 1;
	memcpy(p + 28, "divertd!", 8);
	c = csum(p + 20, 16);
	p[22] = (uint8_t)(c >> 8);
	p[23] = (uint8_t)c;
	return n;
}

static size_t udp4(uint8_t *p)
{
	size_t n = ip4(p, 17, 12, "198.51.100.1", "192.0.2.53");

	p[21] = 53;
	p[23] = 53;
	p[25] = 12;
	memcpy(p + 28, "dns?", 4);
	return n;
}

/* IPv6 UDP with a hop-by-hop header in front. */
static size_t udp6_hbh(uint8_t *p)
{
	memset(p, 0, 40 + 8 + 12);
	p[0] = 0x60;
	p[5] = 8 + 12;
	p[6] = 0;		/* hop-by-hop */
	p[7] = 64;
	inet_pton(AF_INET6, "2001:db8::1", p + 8);
	inet_pton(AF_INET6, "2001:db8::2", p + 24);
	p[40] = 17;		/* next: UDP */
	p[41] = 0;		/* 8 bytes */
	p[42] = 1;		/* PadN */
	p[43] = 4;
	p[49] = 123;
	p[51] = 123;
	p[53] = 12;
	memcpy(p + 56, "ntp?", 4);
	return 60;
}

static size_t tcp6(uint8_t *p)
{
	memset(p, 0, 60);
	p[0] = 0x60;
	p[5] = 20;
	p[6] = 6;
	p[7] = 64;
	inet_pton(AF_INET6, "2001:db8::1", p + 8);
	inet_pton(AF_INET6, "2001:db8::2", p + 24);
	p[41] = 22;
	p[43] = 22;
	p[52] = 0x50;
	p[53] = 0x12;
	return 60;
}

/* ---- fuzz_nfq ------------------------------------------------------------ */

/* An NFQUEUE packet message as the kernel sends it. */
static size_t nfq_packet(uint8_t *buf, uint16_t queue, uint32_t id,
			 uint8_t hook, uint32_t mark, uint32_t indev,
			 uint32_t skbinfo, const uint8_t *pkt, size_t len,
			 uint32_t caplen)
{
	struct nlmsghdr *nlh = nfq_nlmsg_put((char *)buf, NFQNL_MSG_PACKET,
					     queue);
	struct nfqnl_msg_packet_hdr ph = {
		.packet_id = htonl(id),
		.hw_protocol = htons(pkt[0] >> 4 == 6 ? 0x86dd : 0x0800),
		.hook = hook,
	};
	struct nfgenmsg *g = mnl_nlmsg_get_payload(nlh);

	nlh->nlmsg_flags = 0;
	g->nfgen_family = pkt[0] >> 4 == 6 ? AF_INET6 : AF_INET;
	mnl_attr_put(nlh, NFQA_PACKET_HDR, sizeof(ph), &ph);
	if (mark)
		mnl_attr_put_u32(nlh, NFQA_MARK, htonl(mark));
	if (indev)
		mnl_attr_put_u32(nlh, NFQA_IFINDEX_INDEV, htonl(indev));
	else
		mnl_attr_put_u32(nlh, NFQA_IFINDEX_OUTDEV, htonl(2));
	if (skbinfo)
		mnl_attr_put_u32(nlh, NFQA_SKB_INFO, htonl(skbinfo));
	if (caplen)
		mnl_attr_put_u32(nlh, NFQA_CAP_LEN, htonl(caplen));
	mnl_attr_put(nlh, NFQA_PAYLOAD, len, pkt);
	return nlh->nlmsg_len;
}

static void record(struct out *o, unsigned kind, const void *p, size_t len)
{
	u8(o, kind);
	u16(o, (unsigned)len);
	put(o, p, len);
}

static void op(struct out *o, unsigned kind, unsigned b0, unsigned b1)
{
	u8(o, kind);
	u16(o, 2);
	u8(o, b0);
	u8(o, b1);
}

static void nfq_seeds(void)
{
	uint8_t pkt[200], msg[1024], msg2[1024];
	struct out o;
	size_t n, m;

	/* queue 100 bound; one IPv4 TCP packet whose checksum the kernel
	 * left for the NIC */
	o.n = 0;
	op(&o, 2, 100, 0);
	op(&o, 4, 0, 0);
	n = tcp4_syn(pkt);
	m = nfq_packet(msg, 100, 1, NF_INET_LOCAL_OUT, 0x00640000, 0,
		       NFQA_SKB_CSUMNOTREADY, pkt, n, 0);
	record(&o, 0, msg, m);
	op(&o, 6, 0, 0);
	save("fuzz_nfq", "tcp4-csum", &o);

	/* a batch of two datagrams: IPv6 UDP behind a hop-by-hop header,
	 * checksum not ready; an IPv4 ICMP echo coming in on eth0 */
	o.n = 0;
	op(&o, 2, 9, 0);
	op(&o, 4, 0, 0);
	n = udp6_hbh(pkt);
	m = nfq_packet(msg, 9, 2, NF_INET_LOCAL_OUT, 0x01900000, 0,
		       NFQA_SKB_CSUMNOTREADY, pkt, n, 0);
	record(&o, 0, msg, m);
	n = icmp4_echo(pkt);
	m = nfq_packet(msg, 9, 3, NF_INET_PRE_ROUTING, 0x00640000, 2, 0,
		       pkt, n, 0);
	record(&o, 0, msg, m);
	op(&o, 6, 0, 0);
	save("fuzz_nfq", "batch-v6-v4", &o);

	/* two messages in one datagram: a GSO packet cut short (CAP_LEN
	 * larger than the payload) and IPv6 TCP; a truncated datagram */
	o.n = 0;
	op(&o, 2, 11, 0);
	op(&o, 4, 0, 0);
	n = udp4(pkt);
	m = nfq_packet(msg, 11, 4, NF_INET_PRE_ROUTING, 0, 3,
		       NFQA_SKB_GSO | NFQA_SKB_CSUMNOTREADY, pkt, n, 70000);
	n = tcp6(pkt);
	m += nfq_packet(msg + m, 11, 5, NF_INET_FORWARD, 0, 2,
			NFQA_SKB_CSUMNOTREADY, pkt, n, 0);
	record(&o, 0, msg, m);
	record(&o, 8, msg, m);
	save("fuzz_nfq", "gso-cut-and-tcp6", &o);

	/* two queues; the second bound while a packet of the first arrives
	 * on its socket (the handler gets it), then the acknowledgement
	 * (the sequence: the fake clock's); the first paused, then resumed;
	 * the second unbound */
	o.n = 0;
	op(&o, 2, 7, 0);
	n = icmp4_echo(pkt);
	m = nfq_packet(msg, 7, 6, NF_INET_PRE_ROUTING, 0x00640000, 2, 0,
		       pkt, n, 0);
	u8(&o, 2);
	u16(&o, 1);
	u8(&o, 8);
	record(&o, 1, msg, m);
	{
		struct nlmsghdr *nlh = mnl_nlmsg_put_header(msg2);
		struct nlmsgerr *e;

		nlh->nlmsg_type = NLMSG_ERROR;
		nlh->nlmsg_seq = SEQ_TIME | 1;
		e = mnl_nlmsg_put_extra_header(nlh, sizeof(*e));
		e->error = 0;
		record(&o, 1, msg2, nlh->nlmsg_len);
	}
	op(&o, 5 | 8, 0, 3);	/* pause the first, keep 3 */
	op(&o, 4, 0, 0);	/* (not read: paused) */
	op(&o, 5, 0, 0);	/* resume */
	op(&o, 4, 0, 0);
	record(&o, 0, msg, m);
	op(&o, 6 | 8, 1, 9);	/* 9 verdicts of 60000 bytes: 3 batches */
	op(&o, 3, 1, 0);	/* unbind the second */
	save("fuzz_nfq", "two-queues-pause", &o);

	/* no handler yet: packets dropped; the kernel refuses a verdict
	 * (NLMSG_ERROR); a bind refused */
	o.n = 0;
	op(&o, 7 | 8, 0, 0);
	op(&o, 2, 9, 0);
	op(&o, 4, 0, 0);
	m = nfq_packet(msg, 9, 7, NF_INET_PRE_ROUTING, 0, 2, 0, pkt, n, 0);
	record(&o, 0, msg, m);
	{
		struct nlmsghdr *nlh = mnl_nlmsg_put_header(msg2);
		struct nlmsgerr *e;

		nlh->nlmsg_type = NLMSG_ERROR;
		nlh->nlmsg_seq = 0;
		e = mnl_nlmsg_put_extra_header(nlh, sizeof(*e));
		e->error = -ENOENT;
		record(&o, 0, msg2, nlh->nlmsg_len);
	}
	op(&o, 7, 0, 0);
	op(&o, 2 | 8, 10, 0);
	save("fuzz_nfq", "drop-refuse", &o);
}

/* ---- fuzz_rtnl ---------------------------------------------------------- */

static size_t rt_link(uint8_t *buf, int index, const char *name)
{
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct ifinfomsg *ifm;
	static const uint8_t mac[6] = { 2, 0, 0, 0, 0, 1 };

	nlh->nlmsg_type = RTM_NEWLINK;
	nlh->nlmsg_flags = NLM_F_MULTI;
	nlh->nlmsg_seq = SEQ_TIME;
	nlh->nlmsg_pid = RTNL_PORTID;
	ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifm));
	ifm->ifi_family = AF_UNSPEC;
	ifm->ifi_type = ARPHRD_ETHER;
	ifm->ifi_index = index;
	ifm->ifi_flags = 0x1043;
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	mnl_attr_put_u32(nlh, IFLA_MTU, 1500);
	mnl_attr_put(nlh, IFLA_ADDRESS, 6, mac);
	return nlh->nlmsg_len;
}

static size_t rt_addr(uint8_t *buf, int index, const char *addr,
		      const char *label)
{
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct ifaddrmsg *ifa;
	uint8_t a[4];

	nlh->nlmsg_type = RTM_NEWADDR;
	nlh->nlmsg_flags = NLM_F_MULTI;
	nlh->nlmsg_seq = SEQ_TIME;
	nlh->nlmsg_pid = RTNL_PORTID;
	ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
	ifa->ifa_family = AF_INET;
	ifa->ifa_prefixlen = 24;
	ifa->ifa_index = (unsigned)index;
	inet_pton(AF_INET, addr, a);
	mnl_attr_put(nlh, IFA_ADDRESS, 4, a);
	mnl_attr_put(nlh, IFA_LOCAL, 4, a);
	mnl_attr_put_strz(nlh, IFA_LABEL, label);
	return nlh->nlmsg_len;
}

static size_t rt_done(uint8_t *buf)
{
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);

	nlh->nlmsg_type = NLMSG_DONE;
	nlh->nlmsg_flags = NLM_F_MULTI;
	nlh->nlmsg_seq = SEQ_TIME;
	*(int *)mnl_nlmsg_put_extra_header(nlh, sizeof(int)) = 0;
	return nlh->nlmsg_len;
}

static void rtnl_seeds(void)
{
	uint8_t buf[4096];
	struct out o;
	size_t n;

	/* the link dump in one datagram with its end, then the addresses */
	o.n = 0;
	n = rt_link(buf, 1, "lo");
	n += rt_link(buf + n, 2, "eth0");
	n += rt_link(buf + n, 3, "veth-with-long1");
	n += rt_done(buf + n);
	record(&o, 0, buf, n);
	n = rt_addr(buf, 1, "127.0.0.1", "lo");
	n += rt_addr(buf + n, 2, "192.0.2.1", "eth0");
	n += rt_addr(buf + n, 2, "192.0.2.7", "eth0:1");
	record(&o, 0, buf, n);
	record(&o, 1, NULL, 0);		/* the kernel's NLMSG_DONE */
	save("fuzz_rtnl", "dump", &o);

	/* a notification, then a refill whose address dump fails: the
	 * table stays */
	o.n = 0;
	n = rt_link(buf, 4, "wlan0");
	record(&o, 3, buf, n);
	n = rt_link(buf, 4, "wlan0");
	n += rt_link(buf + n, 5, "br0");
	record(&o, 0, buf, n);
	record(&o, 1, NULL, 0);
	n = rt_addr(buf, 5, "198.51.100.1", "br0");
	record(&o, 0, buf, n);
	record(&o, 2, NULL, 0);		/* ENOBUFS */
	save("fuzz_rtnl", "notify-then-fail", &o);
}

/* ---- fuzz_wire_write ------------------------------------------------------ */

static void wire(const char *name, unsigned flags, int family, uint16_t tag,
		 const char *addr, const char *ifname, unsigned claimed,
		 const uint8_t *pkt, size_t len)
{
	struct out o;
	uint8_t a[16] = { 0 }, nm[16] = { 0 };

	o.n = 0;
	u8(&o, flags);
	a[0] = (uint8_t)family;
	a[2] = (uint8_t)tag;
	a[3] = (uint8_t)(tag >> 8);
	inet_pton(AF_INET, addr, a + 4);
	put(&o, a, 16);
	if (ifname)
		memcpy(nm, ifname, strlen(ifname));
	put(&o, nm, 16);
	u16(&o, claimed);
	put(&o, pkt, len);
	save("fuzz_wire_write", name, &o);
}

static void wire_seeds(void)
{
	uint8_t pkt[200];
	size_t n;

	n = tcp4_syn(pkt);
	wire("out-tcp4", 0, 0, 0, "0.0.0.0", NULL, 0, pkt, n);
	n = icmp4_echo(pkt);
	wire("in-icmp4-eth0", 1 | 16 << 1 | 0x20, AF_INET, 100, "192.0.2.1",
	     "eth0", 0, pkt, n);
	n = udp6_hbh(pkt);
	wire("out-udp6", 1 | 16 << 1, AF_INET, 300, "0.0.0.0", NULL, 0, pkt, n);
	n = tcp4_syn(pkt);
	wire("oversize", 0x80, 0, 0, "0.0.0.0", NULL, 30, pkt, n);
	wire("lying-length", 0x40, 0, 0, "0.0.0.0", NULL, 24, pkt, n);
	wire("family-inet6", 1 | 16 << 1, AF_INET6, 0, "0.0.0.0", NULL, 0, pkt,
	     n);
	wire("short-address", 1 | 1 << 1, AF_INET, 0, "0.0.0.0", NULL, 0, pkt,
	     n);
	pkt[0] = 0x55;		/* header length 20 bytes + options */
	wire("ip-options", 0, 0, 0, "0.0.0.0", NULL, 0, pkt, n);
}

/* ---- fuzz_client ------------------------------------------------------------ */

static void c_connect(struct out *o, unsigned ident)
{
	u8(o, OP_CONNECT);
	u8(o, ident);
}

static void c_packet(struct out *o, unsigned portsel, unsigned hook,
		     uint32_t mark, unsigned indev, unsigned flags,
		     const uint8_t *p, size_t len)
{
	u8(o, OP_PACKET);
	u8(o, portsel);
	u8(o, hook);
	u32(o, mark);
	u8(o, indev);
	u8(o, flags);
	u16(o, (unsigned)len);
	put(o, p, len);
}

/* A packet of padlen bytes: the first len given, zeros after. */
static void c_packet_pad(struct out *o, unsigned portsel, unsigned hook,
			 unsigned flags, const uint8_t *p, size_t len,
			 size_t padlen)
{
	u8(o, OP_PACKET);
	u8(o, portsel);
	u8(o, hook);
	u32(o, 0);
	u8(o, 0);
	u8(o, flags | 8);
	u16(o, (unsigned)len);
	u16(o, (unsigned)(padlen / 2));
	put(o, p, len);
}

/* count copies of a packet, the program reading between batches when
 * reads, as one stream */
static void c_packet_many(struct out *o, unsigned portsel, unsigned flags,
			  const uint8_t *p, size_t len, unsigned count,
			  int reads)
{
	u8(o, OP_PACKET);
	u8(o, portsel);
	u8(o, 0);
	u32(o, 0);
	u8(o, 1);
	u8(o, flags | 0x10 | (reads ? 0x20 : 0));
	u16(o, (unsigned)len);
	u16(o, count);
	put(o, p, len);
}

static void c_writeback(struct out *o, unsigned k, unsigned j, unsigned mode,
			unsigned tag, unsigned off, unsigned x)
{
	u8(o, OP_WRITEBACK);
	u8(o, k);
	u8(o, j);
	u8(o, mode);
	u16(o, tag);
	u16(o, off);
	u8(o, x);
}

static void c_ctl(struct out *o, unsigned k, unsigned flags, const char *text)
{
	u8(o, OP_CTL);
	u8(o, k);
	u8(o, flags);
	u8(o, (unsigned)strlen(text));
	put(o, text, strlen(text));
}

static void c_raw(struct out *o, unsigned k, unsigned fix,
		  const struct divert_wire_hdr *m, const void *tail,
		  size_t tlen, size_t total)
{
	size_t len = total && total < sizeof(*m) + tlen ? total : sizeof(*m) + tlen;

	u8(o, OP_RAW);
	u8(o, k);
	u8(o, fix | (total > len ? 8 : 0));
	u16(o, (unsigned)len);
	if (total > len)
		u16(o, (unsigned)(total / 2));
	put(o, m, len < sizeof(*m) ? len : sizeof(*m));
	if (len > sizeof(*m))
		put(o, tail, len - sizeof(*m));
}

static void client_seeds(void)
{
	uint8_t pkt[200];
	size_t n;
	struct out o;
	struct divert_wire_hdr m;

	/* natd's life: bind 8668, read an incoming ping, write it back as
	 * it is (sendto with the address read); then one going out,
	 * rewritten (TTL), written without an address */
	o.n = 0;
	c_connect(&o, 0);
	c_connect(&o, 0);
	u8(&o, OP_BIND);
	u8(&o, 1);
	u8(&o, 0);
	u8(&o, 0);		/* port 8668 */
	u8(&o, OP_PUMP);
	n = icmp4_echo(pkt);
	c_packet(&o, 0, 0, 0, 1, 4, pkt, n);
	n = tcp4_syn(pkt);
	c_packet(&o, 0, 1, 0, 0, 4 | 1, pkt, n);
	u8(&o, OP_FLUSH);
	u8(&o, OP_PUMP);
	c_writeback(&o, 0, 0, 2 | 1 << 2, 100, 0, 0);
	c_writeback(&o, 0, 1, 0, 0, 8, 0x01);
	u8(&o, OP_PUMP);
	u8(&o, OP_INFO);
	save("fuzz_client", "natd", &o);

	/* the direct path: a root client asks for its queue (k's high
	 * bit), gets it with the view; a rule change sends a new view; it
	 * hangs up and the queue is taken back */
	o.n = 0;
	c_connect(&o, 0);
	c_connect(&o, 0);
	u8(&o, OP_BIND);
	u8(&o, 1);
	u8(&o, 0x80);
	u8(&o, 0);		/* port 8668 */
	u8(&o, OP_PUMP);
	c_ctl(&o, 1, 0, "add 150 tee 8668 udp from any to any");
	u8(&o, OP_PUMP);
	save("fuzz_client", "direct", &o);

	/* a write channel: DW_WRITE naming the data connection: one that
	 * answers the held packet, then new ones (injected): outgoing,
	 * incoming by interface name, outgoing too big for the route and
	 * fragmented, incoming when tc fails, one naming the channel itself */
	o.n = 0;
	c_connect(&o, 0);
	c_connect(&o, 0);
	c_connect(&o, 0);
	u8(&o, OP_BIND);
	u8(&o, 1);
	u8(&o, 0);
	u8(&o, 2);		/* port 8669 */
	u8(&o, OP_PUMP);
	n = udp4(pkt);
	c_packet(&o, 2, 0, 0, 1, 4, pkt, n);
	u8(&o, OP_PUMP);
	c_writeback(&o, 2, 0, 1 | 2 | 1 << 2 | 0 << 4, 200, 0, 0);
	u8(&o, OP_PUMP);
	c_writeback(&o, 2, 0, 1 | 0 << 4, 200, 30, 0x55);
	u8(&o, OP_PUMP);
	c_writeback(&o, 2, 0, 1 | 2 | 3 << 2 | 0x40 | 0 << 4, 200, 0, 0);
	u8(&o, OP_PUMP);
	u8(&o, OP_RESULTS);
	u8(&o, 1);		/* EMSGSIZE: fragmented (DF cleared) */
	c_writeback(&o, 2, 0, 1 | 0 << 4, 200, 6, 0x40);
	u8(&o, OP_PUMP);
	u8(&o, OP_RESULTS);
	u8(&o, 0x80 | 2);	/* tc fails; sends ENETUNREACH */
	c_writeback(&o, 2, 0, 1 | 2 | 2 << 2 | 0 << 4, 200, 0, 0);
	c_writeback(&o, 2, 0, 1 | 0 << 4, 200, 0, 0);
	c_writeback(&o, 2, 0, 1 | 0x20, 200, 5, 0x77);	/* on itself */
	u8(&o, OP_PUMP);
	save("fuzz_client", "write-channel", &o);

	/* tee: the original goes on at once, the copy is read */
	o.n = 0;
	c_connect(&o, 0);
	u8(&o, OP_BIND);
	u8(&o, 0);
	u8(&o, 0);
	u8(&o, 1);		/* port 9000 */
	u8(&o, OP_PUMP);
	n = tcp4_syn(pkt);
	c_packet(&o, 1, 0, 0, 1, 2, pkt, n);
	n = tcp6(pkt);
	c_packet(&o, 3, 1, 0, 0, 4 | 1, pkt, n);	/* 9001: nobody */
	u8(&o, OP_PUMP);
	save("fuzz_client", "tee", &o);

	/* held packets expire; a client that never writes back */
	o.n = 0;
	c_connect(&o, 0);
	c_connect(&o, 0);
	u8(&o, OP_BIND);
	u8(&o, 1);
	u8(&o, 0);
	u8(&o, 0);
	u8(&o, OP_PUMP);
	n = icmp4_echo(pkt);
	c_packet(&o, 0, 0, 0, 1, 4, pkt, n);
	c_packet(&o, 0, 0, 0, 1, 4, pkt, n);
	u8(&o, OP_PUMP);
	u8(&o, OP_INFO);
	u8(&o, OP_TIME);
	u16(&o, 1500);
	u8(&o, OP_PUMP);
	u8(&o, OP_INFO);
	u8(&o, OP_HANGUP);
	u8(&o, 0);
	u8(&o, 1);
	u8(&o, OP_PUMP);
	save("fuzz_client", "expire", &o);

	/* the largest packets: 65534 bytes read (an IPv4 total length of
	 * 65534), written back changed: too big for a verdict, so sent as a
	 * new packet; and a written one of 65535 */
	o.n = 0;
	c_connect(&o, 0);
	c_connect(&o, 0);
	u8(&o, OP_BIND);
	u8(&o, 1);
	u8(&o, 0);
	u8(&o, 0);
	u8(&o, OP_PUMP);
	n = udp4(pkt);
	pkt[2] = 0xff;
	pkt[3] = 0xfe;
	c_packet_pad(&o, 0, 1, 4, pkt, n, 65534);
	u8(&o, OP_PUMP);
	c_writeback(&o, 0, 0, 0, 0, 8, 0x01);
	memset(&m, 0, sizeof(m));
	m.version = DIVERT_WIRE_VERSION;
	m.type = DW_PACKET;
	c_raw(&o, 0, 0, &m, pkt, n, sizeof(m) + 65535);
	u8(&o, OP_PUMP);
	save("fuzz_client", "largest", &o);

	/* a program that cannot keep up: a small buffer (SO_RCVBUF), not
	 * read; its port's queue is paused, packets dropped at once, then it
	 * reads again and the queue goes on */
	o.n = 0;
	c_connect(&o, 0);
	c_connect(&o, 0);
	u8(&o, OP_BIND);
	u8(&o, 1);
	u8(&o, 0);
	u8(&o, 2);		/* port 8669 */
	memset(&m, 0, sizeof(m));
	m.version = DIVERT_WIRE_VERSION;
	m.type = DW_SETOPT;
	m.arg = SO_RCVBUF;
	m.val = 2048;
	c_raw(&o, 0, 0, &m, NULL, 0, 0);
	u8(&o, OP_PUMP);
	u8(&o, OP_HANGUP);	/* stop reading */
	u8(&o, 0);
	u8(&o, 2);
	n = udp4(pkt);
	for (int i = 0; i < 12; i++)
		c_packet_pad(&o, 2, 0, 4, pkt, n, 1200);
	u8(&o, OP_FLUSH);
	u8(&o, OP_PUMP);
	c_packet(&o, 2, 0, 0, 1, 4, pkt, n);
	u8(&o, OP_FLUSH);
	u8(&o, OP_HANGUP);	/* read again */
	u8(&o, 0);
	u8(&o, 2);
	u8(&o, OP_PUMP);
	c_writeback(&o, 0, 0, 2 | 1 << 2, 200, 0, 0);
	u8(&o, OP_PUMP);
	save("fuzz_client", "slow-reader", &o);

	/* a program that reads everything and writes nothing back: past
	 * 4096 held packets the oldest are dropped (evicted); then one that
	 * reads nothing (its queue paused) */
	o.n = 0;
	c_connect(&o, 0);
	c_connect(&o, 0);
	u8(&o, OP_BIND);
	u8(&o, 1);
	u8(&o, 0);
	u8(&o, 0);		/* port 8668 */
	u8(&o, OP_PUMP);
	n = icmp4_echo(pkt);
	c_packet_many(&o, 0, 4, pkt, n, 4500, 1);
	u8(&o, OP_PUMP);
	u8(&o, OP_INFO);
	u8(&o, OP_HANGUP);	/* stop reading */
	u8(&o, 0);
	u8(&o, 2);
	c_packet_many(&o, 0, 4, pkt, n, 1000, 0);
	u8(&o, OP_PUMP);
	save("fuzz_client", "many", &o);

	/* divertctl, as root: every command, text and JSON */
	o.n = 0;
	c_connect(&o, 0);
	c_ctl(&o, 0, 0, "list");
	c_ctl(&o, 0, 1, "list 100 200");
	c_ctl(&o, 0, 0, "add 250 divert 7000 tcp from any to any 22 in");
	c_ctl(&o, 0, 0, "add deny udp from 203.0.113.0/24 to any");
	c_ctl(&o, 0, 1, "show");
	c_ctl(&o, 0, 0, "zero 250");
	c_ctl(&o, 0, 0, "delete 250");
	c_ctl(&o, 0, 1, "stats");
	c_ctl(&o, 0, 1, "sockets");
	c_ctl(&o, 0, 0, "rules --nft");
	c_ctl(&o, 0, 0, "rules --iptables");
	u8(&o, OP_PUMP);	/* the daemon reads them now */
	u8(&o, OP_TOGGLE);
	u8(&o, 3);
	c_ctl(&o, 0, 0, "flush");
	c_ctl(&o, 0, 0, "show");
	c_ctl(&o, 0, 0, "nonsense");
	u8(&o, OP_PUMP);
	save("fuzz_client", "divertctl", &o);

	/* who may connect: a group member (may divert, may not change the
	 * rules), one by a supplementary group, a stranger, one whose
	 * groups cannot be read, then more than the limit */
	o.n = 0;
	c_connect(&o, 1);
	c_ctl(&o, 0, 0, "flush");
	c_ctl(&o, 0, 0, "list");
	c_connect(&o, 2);
	c_connect(&o, 3);
	c_connect(&o, 4);
	c_connect(&o, 0);
	c_connect(&o, 0);
	c_connect(&o, 0);
	c_connect(&o, 0);
	c_connect(&o, 0);	/* the seventh: over the limit (6) */
	u8(&o, OP_PUMP);
	save("fuzz_client", "who", &o);

	/* malformed messages: short, wrong version, unknown type, SETOPT
	 * (good and too big), runt and lying and oversize packets, a bind
	 * to an unknown connection, a bind taken, DW_CTL unterminated */
	o.n = 0;
	c_connect(&o, 0);
	c_connect(&o, 0);
	memset(&m, 0, sizeof(m));
	m.version = DIVERT_WIRE_VERSION;
	m.type = DW_PACKET;
	c_raw(&o, 0, 0, &m, NULL, 0, 20);		/* cut short */
	m.version = 7;
	c_raw(&o, 0, 0, &m, NULL, 0, 0);
	m.version = DIVERT_WIRE_VERSION;
	m.type = 99;
	c_raw(&o, 0, 0, &m, NULL, 0, 0);
	m.type = DW_SETOPT;
	m.arg = SO_RCVBUF;
	m.val = 262144;
	c_raw(&o, 0, 0, &m, NULL, 0, 0);
	m.val = 0x7fffffff;
	c_raw(&o, 0, 0, &m, NULL, 0, 0);
	m.arg = SO_SNDBUF;
	c_raw(&o, 0, 0, &m, NULL, 0, 0);
	memset(&m, 0, sizeof(m));
	m.version = DIVERT_WIRE_VERSION;
	m.type = DW_PACKET;
	n = tcp4_syn(pkt);
	c_raw(&o, 0, 0, &m, pkt, 12, 0);		/* runt */
	pkt[3] = 200;					/* lies */
	c_raw(&o, 0, 0, &m, pkt, n, 0);
	pkt[3] = 40;
	pkt[0] = 0x4f;					/* 60-byte header */
	c_raw(&o, 0, 0, &m, pkt, n, 0);
	pkt[0] = 0x45;
	m.arg = 1;
	m.addr.sin_family = AF_INET6;
	c_raw(&o, 0, 0, &m, pkt, n, 0);
	m.addr.sin_family = AF_INET;
	inet_pton(AF_INET, "203.0.113.9", &m.addr.sin_addr);
	c_raw(&o, 0, 0, &m, pkt, n, 0);			/* no interface */
	c_raw(&o, 0, 0, &m, pkt, n, 70000);		/* too big */
	m.type = DW_BIND;
	m.arg = 0;
	m.val = 8668;
	m.conn = 12345;
	c_raw(&o, 1, 0, &m, NULL, 0, 0);		/* no such conn */
	c_raw(&o, 1, 2 | 0 << 4, &m, NULL, 0, 0);	/* bind 0 */
	c_raw(&o, 0, 2 | 1 << 4, &m, NULL, 0, 0);	/* taken */
	m.val = 70000;
	c_raw(&o, 1, 2, &m, NULL, 0, 0);
	c_ctl(&o, 0, 2, "list");
	u8(&o, OP_RAW);					/* empty message */
	u8(&o, 1);
	u8(&o, 0);
	u16(&o, 0);
	u8(&o, OP_PUMP);
	save("fuzz_client", "malformed", &o);
}

/* ---- fuzz_client: the shared-memory ring ---------------------------------- */

static void c_ring(struct out *o, unsigned k)
{
	u8(o, OP_RING);
	u8(o, k);
}

static void c_bind(struct out *o, unsigned ctl, unsigned k, unsigned portsel)
{
	u8(o, OP_BIND);
	u8(o, ctl);
	u8(o, k);
	u8(o, portsel);
}

static void c_poke(struct out *o, unsigned k, unsigned where, unsigned off,
		   const void *p, size_t len)
{
	u8(o, OP_RINGPOKE);
	u8(o, k);
	u8(o, where);
	u16(o, off);
	u16(o, (unsigned)len);
	put(o, p, len);
}

static void c_setopt(struct out *o, unsigned k, uint32_t rcvbuf)
{
	struct divert_wire_hdr m;

	memset(&m, 0, sizeof(m));
	m.version = DIVERT_WIRE_VERSION;
	m.type = DW_SETOPT;
	m.arg = SO_RCVBUF;
	m.val = rcvbuf;
	c_raw(o, k, 0, &m, NULL, 0, 0);
}

/* count copies of a packet of padlen bytes (at most 2048 each) */
static void c_packet_many_pad(struct out *o, unsigned portsel, unsigned flags,
			      const uint8_t *p, size_t len, size_t padlen,
			      unsigned count)
{
	u8(o, OP_PACKET);
	u8(o, portsel);
	u8(o, 0);
	u32(o, 0);
	u8(o, 1);
	u8(o, flags | 8 | 0x10);
	u16(o, (unsigned)len);
	u16(o, (unsigned)(padlen / 2));
	u16(o, count);
	put(o, p, len);
}

/* A ring session's start: connection 0 asks for a ring, as the shim does
 * at socket(), then connection 1 binds it to the port portsel picks. */
static void c_ring_start(struct out *o, unsigned portsel)
{
	c_connect(o, 0);
	c_connect(o, 0);
	c_ring(o, 0);
	u8(o, OP_PUMP);
	c_bind(o, 1, 0, portsel);
	u8(o, OP_PUMP);
}

/* The poke sessions: an incoming ping read off the ring and written
 * back into the tx ring (the daemon has not looked yet), the poke (then
 * maybe a DW_KICK, and the loop), another ping read and written back. */
static void ring_poke_seed(const char *name, unsigned where, size_t off,
			   const void *v, size_t len)
{
	uint8_t pkt[200];
	struct out o;
	size_t n = icmp4_echo(pkt);

	o.n = 0;
	c_ring_start(&o, 0);
	c_packet(&o, 0, 0, 0, 1, 4, pkt, n);
	u8(&o, OP_FLUSH);
	u8(&o, OP_PUMP);
	c_writeback(&o, 0, 0, 2 | 1 << 2, 100, 0, 0);
	c_poke(&o, 0, where, (unsigned)off, v, len);
	c_packet(&o, 0, 0, 0, 1, 4, pkt, n);
	u8(&o, OP_FLUSH);
	u8(&o, OP_PUMP);
	c_writeback(&o, 0, 1, 2 | 1 << 2, 100, 0, 0);
	u8(&o, OP_PUMP);
	save("fuzz_client", name, &o);
}

/* A forged tx record of rec's header and the packet, published (tx tail
 * moved past it by advance), after an outgoing SYN was read; kick: a
 * DW_KICK follows (else the loop finds it when it is idle). */
static void ring_forged_seed(const char *name, uint32_t size, uint32_t len,
			     uint32_t advance, int kick)
{
	uint8_t pkt[200], buf[300];
	struct dw_rec rec;
	struct out o;
	size_t n = tcp4_syn(pkt);

	o.n = 0;
	c_ring_start(&o, 0);
	c_packet(&o, 0, 1, 0, 0, 4, pkt, n);
	u8(&o, OP_FLUSH);
	u8(&o, OP_PUMP);
	memset(&rec, 0, sizeof(rec));
	rec.size = size;
	rec.len = len;
	rec.addr.sin_family = AF_INET;
	rec.addr.sin_port = 100;
	memcpy(buf, &rec, sizeof(rec));
	memcpy(buf + sizeof(rec), pkt, n);
	c_poke(&o, 0, 3 | (kick ? 4 : 0), advance, buf, sizeof(rec) + n);
	u8(&o, OP_PUMP);
	save("fuzz_client", name, &o);
}

static void ring_seeds(void)
{
	static const struct {
		const char *name;
		size_t off, len;
		uint64_t v;
	} words[] = {
		{ "ring-poke-magic", offsetof(struct dw_ring_map, magic), 4, 0 },
		{ "ring-poke-rx-head", offsetof(struct dw_ring_map, rx.head), 8,
		  1ull << 40 },
		{ "ring-poke-rx-tail", offsetof(struct dw_ring_map, rx.tail), 8,
		  0x1234567 },
		{ "ring-poke-rx-count", offsetof(struct dw_ring_map, rx.count), 8,
		  0x7fffffffffffffffull },
		{ "ring-poke-rx-wake", offsetof(struct dw_ring_map, rx.wake), 4, 1 },
		{ "ring-poke-rx-taken", offsetof(struct dw_ring_map, rx.taken), 8,
		  ~0ull },
		{ "ring-poke-tx-head", offsetof(struct dw_ring_map, tx.head), 8, 8 },
		{ "ring-poke-tx-tail", offsetof(struct dw_ring_map, tx.tail), 8, 3 },
		{ "ring-poke-tx-count", offsetof(struct dw_ring_map, tx.count), 8,
		  ~0ull },
		{ "ring-poke-tx-wake", offsetof(struct dw_ring_map, tx.wake), 4, 0 },
		{ "ring-poke-tx-taken", offsetof(struct dw_ring_map, tx.taken), 8,
		  1ull << 63 },
	};
	static const uint8_t garbage[16] = {
		0xff, 0xff, 0xff, 0xff, 0x39, 0x30, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,
	};
	uint8_t pkt[200];
	struct out o;
	size_t n;

	/* natd through a ring: an incoming ping and an outgoing SYN read off
	 * the rx ring; the ping written back unchanged into the tx ring
	 * (answered from the ring), the SYN rewritten (TTL: copied out);
	 * one written on the socket even so; and one left in the tx ring
	 * when the program closes (read before the daemon closes it) */
	o.n = 0;
	c_ring_start(&o, 0);
	n = icmp4_echo(pkt);
	c_packet(&o, 0, 0, 0, 1, 4, pkt, n);
	n = tcp4_syn(pkt);
	c_packet(&o, 0, 1, 0, 0, 4 | 1, pkt, n);
	u8(&o, OP_FLUSH);
	u8(&o, OP_PUMP);
	c_writeback(&o, 0, 0, 2 | 1 << 2, 100, 0, 0);
	c_writeback(&o, 0, 1, 0, 0, 8, 0x01);
	u8(&o, OP_PUMP);
	n = icmp4_echo(pkt);
	c_packet(&o, 0, 0, 0, 1, 4, pkt, n);
	c_packet(&o, 0, 0, 0, 1, 4, pkt, n);
	u8(&o, OP_FLUSH);
	u8(&o, OP_PUMP);
	c_writeback(&o, 0, 2, 0x80 | 2 | 1 << 2, 100, 0, 0);
	c_writeback(&o, 0, 3, 2 | 1 << 2, 100, 0, 0);
	u8(&o, OP_HANGUP);
	u8(&o, 0);
	u8(&o, 0);
	u8(&o, OP_PUMP);
	u8(&o, OP_INFO);
	save("fuzz_client", "ring-natd", &o);

	/* a ring that wraps: SO_RCVBUF 1 MiB, 700 packets of 2048 bytes
	 * read between batches (1.4 MiB through the 1 MiB rx ring), some
	 * written back */
	o.n = 0;
	c_ring_start(&o, 2);
	c_setopt(&o, 0, 1u << 20);
	u8(&o, OP_PUMP);
	n = udp4(pkt);
	c_packet_many_pad(&o, 2, 4 | 0x20, pkt, n, 2048, 700);
	u8(&o, OP_PUMP);
	c_writeback(&o, 0, 5, 2 | 1 << 2, 200, 0, 0);
	c_writeback(&o, 0, 6, 2 | 1 << 2, 200, 40, 0x10);
	u8(&o, OP_PUMP);
	save("fuzz_client", "ring-wrap", &o);

	/* a ring reader that cannot keep up: SO_RCVBUF 4096, not read; the
	 * ring is full, the queue paused, packets dropped at once; it reads
	 * again (and kicks the daemon that waits for room) */
	o.n = 0;
	c_ring_start(&o, 2);
	c_setopt(&o, 0, 4096);
	u8(&o, OP_PUMP);
	u8(&o, OP_HANGUP);	/* stop reading */
	u8(&o, 0);
	u8(&o, 2);
	n = udp4(pkt);
	c_packet_many_pad(&o, 2, 4, pkt, n, 1200, 6);
	u8(&o, OP_PUMP);
	c_packet(&o, 2, 0, 0, 1, 4, pkt, n);
	u8(&o, OP_FLUSH);
	u8(&o, OP_HANGUP);	/* read again */
	u8(&o, 0);
	u8(&o, 2);
	u8(&o, OP_PUMP);
	c_writeback(&o, 0, 0, 2 | 1 << 2, 200, 0, 0);
	u8(&o, OP_PUMP);
	save("fuzz_client", "ring-full", &o);

	/* the rx ring itself full: the largest SO_RCVBUF, not read, 600
	 * packets of 2048 bytes (more than its 1 MiB) */
	o.n = 0;
	c_ring_start(&o, 2);
	c_setopt(&o, 0, DIVERT_WIRE_SOCKBUF_MAX);
	u8(&o, OP_PUMP);
	u8(&o, OP_HANGUP);
	u8(&o, 0);
	u8(&o, 2);
	c_packet_many_pad(&o, 2, 4, pkt, n, 2048, 600);
	u8(&o, OP_PUMP);
	u8(&o, OP_HANGUP);
	u8(&o, 0);
	u8(&o, 2);
	u8(&o, OP_PUMP);
	save("fuzz_client", "ring-full-space", &o);

	/* DW_ATTACH: a data socket, then packets to it; a pipe; a ring
	 * adopted (a good one, one too short, one unsealed, one with no
	 * ring's header); nothing at all; a second attach */
	{
		static const uint8_t modes[] = { 1, 2, 3, 3 | 4, 3 | 8,
						 3 | 0x40, 0, 0x21, 0x23, 0x91,
						 0xf3 };

		for (size_t i = 0; i < sizeof(modes); i++) {
			char name[32];

			o.n = 0;
			c_connect(&o, 0);
			c_connect(&o, 0);
			u8(&o, OP_ATTACH);
			u8(&o, 0);
			u8(&o, modes[i]);
			c_bind(&o, 1, 0, 1);
			u8(&o, OP_PUMP);
			n = tcp4_syn(pkt);
			c_packet(&o, 1, 0, 0, 0, 4, pkt, n);
			u8(&o, OP_FLUSH);
			u8(&o, OP_PUMP);
			u8(&o, OP_ATTACH);
			u8(&o, 0);
			u8(&o, 1);
			u8(&o, OP_TIME);
			u16(&o, 6000);
			u8(&o, OP_PUMP);
			snprintf(name, sizeof(name), "attach-%02x", modes[i]);
			save("fuzz_client", name, &o);
		}
	}

	/* tee copies through a ring (port 9000 has a tee rule: never
	 * paused) */
	o.n = 0;
	c_ring_start(&o, 1);
	n = tcp4_syn(pkt);
	c_packet(&o, 1, 0, 0, 1, 2, pkt, n);
	c_packet(&o, 1, 1, 0, 0, 2 | 1, pkt, n);
	u8(&o, OP_FLUSH);
	u8(&o, OP_PUMP);
	c_writeback(&o, 0, 0, 2 | 1 << 2, 150, 0, 0);
	u8(&o, OP_PUMP);
	save("fuzz_client", "ring-tee", &o);

	/* rings refused: to a bound connection, a second one (EISCONN), no
	 * memfd (EMFILE), no mapping (ENOMEM); then given; a DW_KICK from a
	 * connection without one */
	o.n = 0;
	c_connect(&o, 0);
	c_connect(&o, 0);
	c_connect(&o, 0);
	c_bind(&o, 1, 0, 0);
	u8(&o, OP_PUMP);
	c_ring(&o, 0);
	c_ring(&o, 2);
	u8(&o, OP_PUMP);
	c_ring(&o, 2);
	u8(&o, OP_RESULTS);
	u8(&o, 8);
	c_connect(&o, 0);
	c_ring(&o, 3);
	u8(&o, OP_PUMP);
	u8(&o, OP_RESULTS);
	u8(&o, 0x10);
	c_ring(&o, 3);
	u8(&o, OP_PUMP);
	u8(&o, OP_RESULTS);
	u8(&o, 0);
	c_ring(&o, 3);
	{
		struct divert_wire_hdr m;

		memset(&m, 0, sizeof(m));
		m.version = DIVERT_WIRE_VERSION;
		m.type = DW_KICK;
		c_raw(&o, 1, 0, &m, NULL, 0, 0);
	}
	u8(&o, OP_PUMP);
	save("fuzz_client", "ring-refused", &o);

	/* hostile rings: each control word poked (then a DW_KICK) */
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		ring_poke_seed(words[i].name, 0 | 4, words[i].off, &words[i].v,
			       words[i].len);
	/* a record header the daemon has not read yet made garbage; one
	 * the program has not read yet */
	ring_poke_seed("ring-poke-tx-record", 2 | 4, 0, garbage, sizeof(garbage));
	ring_poke_seed("ring-poke-rx-record", 1, 0, garbage, sizeof(garbage));

	/* forged tx records: a good one (answers the SYN read), one whose
	 * size does not match its length, a wrap mark at the ring's start,
	 * a packet over 65535 bytes, a tail moved by an odd amount */
	ring_forged_seed("ring-forged-record", 72, 40, 72, 1);
	ring_forged_seed("ring-forged-idle", 72, 40, 72, 0);
	ring_forged_seed("ring-bogus-size", 72, 41, 72, 1);
	ring_forged_seed("ring-bogus-wrap", DW_REC_WRAP, 40, 72, 1);
	ring_forged_seed("ring-bogus-len", 72, 70000, 72, 1);
	ring_forged_seed("ring-bogus-tail", 72, 40, 75, 0);

	/* records of the largest packet, each read before the next: the
	 * eighth would end past the tx ring (and the mapping) */
	o.n = 0;
	c_connect(&o, 0);
	c_connect(&o, 0);
	c_ring(&o, 0);
	u8(&o, OP_PUMP);
	c_bind(&o, 1, 0, 0);
	u8(&o, OP_PUMP);
	for (unsigned i = 0; i < 8; i++) {
		struct dw_rec rec;
		uint64_t tail = (i + 1) * dw_rec_size(DIVERT_WIRE_MAXPKT);

		memset(&rec, 0, sizeof(rec));
		rec.size = (uint32_t)dw_rec_size(DIVERT_WIRE_MAXPKT);
		rec.len = DIVERT_WIRE_MAXPKT;
		rec.addr.sin_family = AF_INET;
		c_poke(&o, 0, 3 | 8, 0, &rec, sizeof(rec));
		c_poke(&o, 0, 4, offsetof(struct dw_ring_map, tx.tail), &tail,
		       sizeof(tail));
	}
	save("fuzz_client", "ring-bogus-past-end", &o);

	/* write-backs that do not kick (tx wake poked to 0, the loop not
	 * run): the loop finds them when it is about to sleep */
	o.n = 0;
	c_ring_start(&o, 0);
	n = icmp4_echo(pkt);
	c_packet(&o, 0, 0, 0, 1, 4, pkt, n);
	n = tcp4_syn(pkt);
	c_packet(&o, 0, 1, 0, 0, 4, pkt, n);
	u8(&o, OP_FLUSH);
	u8(&o, OP_PUMP);
	{
		uint32_t zero = 0;

		c_poke(&o, 0, 8, offsetof(struct dw_ring_map, tx.wake), &zero,
		       sizeof(zero));
	}
	c_writeback(&o, 0, 0, 2 | 1 << 2, 100, 0, 0);
	c_writeback(&o, 0, 1, 0, 0, 8, 0x01);
	u8(&o, OP_PUMP);
	save("fuzz_client", "ring-idle-write", &o);

	/* two ring readers given the same bytes; the second writes back the
	 * first one's packet: it answers its own */
	o.n = 0;
	c_connect(&o, 0);
	c_connect(&o, 0);
	c_connect(&o, 0);
	c_ring(&o, 0);
	c_ring(&o, 1);
	u8(&o, OP_PUMP);
	c_bind(&o, 2, 0, 0);
	c_bind(&o, 2, 1, 2);
	u8(&o, OP_PUMP);
	n = icmp4_echo(pkt);
	c_packet(&o, 0, 0, 0, 1, 4, pkt, n);
	c_packet(&o, 2, 0, 0, 1, 4, pkt, n);
	u8(&o, OP_FLUSH);
	u8(&o, OP_PUMP);
	c_writeback(&o, 1, 0, 2 | 1 << 2, 100, 0, 0);
	u8(&o, OP_PUMP);
	save("fuzz_client", "ring-two-readers", &o);
}

/* ---- fuzz_config (besides the tree's config files, run.sh copies) ---- */

static void text(const char *name, const char *t)
{
	struct out o;

	o.n = 0;
	put(&o, t, strlen(t));
	save("fuzz_config", name, &o);
}

static void config_seeds(void)
{
	text("extra-autonumber-top",
	     "65500 count ip from any to any\n"
	     "count ip from any to any\n");
	text("extra-tee-high-numbers",
	     "100 tee 9000 ip from any to any\n"
	     "65533 count ip from any to any\n"
	     "65534 skipto 65535 ip from any to any\n"
	     "200 tee 9001 udp from any 53 to any in\n");
	text("extra-every-option",
	     "10 divert 1 tcp from not 192.0.2.0/24 1-2,3:4,5 to not me "
	     "65535 out not via eth0 recv lo xmit a-b.c@d_e not xmit x\n"
	     "20 tee 65535 ipv6-icmp from 2001:db8::/32 to ::ffff:1.2.3.4 "
	     "not icmptypes 1,2,128,129\n"
	     "30 deny 0 from me to 0.0.0.0/0\n"
	     "40 allow 255 from any to any   # comment\n"
	     "\t\r\n"
	     "50 permit icmp6 from me6 to any in\n");
	text("extra-errors",
	     "100 divert 0 ip from any to any\n");
}

/* ---- fuzz_view ------------------------------------------------------------ */

static void view_config(const char *name, uint16_t port, const char *text)
{
	struct out o;

	o.n = 0;
	u8(&o, 1);
	u16(&o, port);
	put(&o, text, strlen(text));
	save("fuzz_view", name, &o);
}

static void view_seeds(void)
{
	struct out o;

	/* a view as divertd sends it: mask 0xffff0000, hold 5 s, rule
	 * numbers 100 200 300, tees 65531 -> 300 and 65532 -> 100 */
	o.n = 0;
	u8(&o, 0);
	u32(&o, 0xffff0000u);
	u32(&o, 16);
	u32(&o, 5000);
	u32(&o, 3);
	u32(&o, 2);
	u16(&o, 100);
	u16(&o, 200);
	u16(&o, 300);
	u16(&o, 65531);
	u16(&o, 300);
	u16(&o, 65532);
	u16(&o, 100);
	save("fuzz_view", "received-tees", &o);
	view_config("config-tees", 9000,
		    "100 tee 9000 udp from any to any\n"
		    "100 divert 8668 tcp from any to any\n"
		    "300 tee 9000 icmp from any to any\n"
		    "65534 count ip from any to any\n"
		    "65533 tee 9001 ip from any to any\n");
	view_config("config-skipto", 8668,
		    "10 count ip from any to any\n"
		    "20 skipto 40 ip from any to any\n"
		    "30 divert 8668 ip from any to any\n"
		    "40 tee 8668 udp from any to any\n");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: mkseeds CORPUS_DIR\n");
		return 2;
	}
	corpus = argv[1];
	mkdir(corpus, 0755);
	nfq_seeds();
	rtnl_seeds();
	wire_seeds();
	client_seeds();
	ring_seeds();
	config_seeds();
	view_seeds();
	return 0;
}
