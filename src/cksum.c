/*
 * cksum.c: checksums a client must find valid.
 *
 * With NFQA_CFG_F_GSO the kernel hands over locally generated TCP and UDP
 * packets whose L4 checksum it left for the NIC (NFQA_SKB_CSUMNOTREADY).
 * A FreeBSD program always reads valid checksums, so the daemon completes
 * them first.  The arithmetic is libnetfilter_queue's; this file only finds
 * the headers, walking IPv6 extension headers to the transport header.
 */
#include <string.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <libnetfilter_queue/libnetfilter_queue_ipv4.h>
#include <libnetfilter_queue/libnetfilter_queue_tcp.h>
#include <libnetfilter_queue/libnetfilter_queue_udp.h>

#include "divertd.h"

/* Offset of the transport header and its protocol, or -1. */
static int l4_offset(const uint8_t *pkt, size_t len, uint8_t *proto)
{
	if (len < 1)
		return -1;
	if ((pkt[0] >> 4) == 4) {
		size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
		uint16_t frag;

		if (len < sizeof(struct iphdr) || ihl < 20 || ihl > len)
			return -1;
		frag = (uint16_t)((pkt[6] << 8) | pkt[7]);
		if (frag & 0x3fff)	/* a fragment: no whole L4 header */
			return -1;
		*proto = pkt[9];
		return (int)ihl;
	}
	if ((pkt[0] >> 4) == 6) {
		size_t off = sizeof(struct ip6_hdr);
		uint8_t nh;

		if (len < off)
			return -1;
		nh = pkt[6];
		for (;;) {
			switch (nh) {
			case IPPROTO_HOPOPTS:
			case IPPROTO_ROUTING:
			case IPPROTO_DSTOPTS:
				if (off + 8 > len)
					return -1;
				nh = pkt[off];
				off += ((size_t)pkt[off + 1] + 1) * 8;
				break;
			case IPPROTO_FRAGMENT:
				return -1;
			default:
				if (off > len)
					return -1;
				*proto = nh;
				return (int)off;
			}
		}
	}
	return -1;
}

int cksum_complete_l4(uint8_t *pkt, size_t len)
{
	uint8_t proto;
	int off = l4_offset(pkt, len, &proto);
	bool v4 = (pkt[0] >> 4) == 4;
	size_t l3len;

	if (off < 0)
		return -1;
	/* the length the checksum covers comes from the IP header */
	l3len = v4 ? (size_t)((pkt[2] << 8) | pkt[3])
		   : (size_t)((pkt[4] << 8) | pkt[5]) + sizeof(struct ip6_hdr);
	if (l3len > len)
		return -1;
	if (proto == IPPROTO_TCP && (size_t)off + sizeof(struct tcphdr) <= l3len) {
		struct tcphdr *th = (struct tcphdr *)(void *)(pkt + off);
		if (v4)
			nfq_tcp_compute_checksum_ipv4(th, (struct iphdr *)(void *)pkt);
		else
			nfq_tcp_compute_checksum_ipv6(th, (struct ip6_hdr *)(void *)pkt);
		return 0;
	}
	if (proto == IPPROTO_UDP && (size_t)off + sizeof(struct udphdr) <= l3len) {
		struct udphdr *uh = (struct udphdr *)(void *)(pkt + off);
		if (v4)
			nfq_udp_compute_checksum_ipv4(uh, (struct iphdr *)(void *)pkt);
		else
			nfq_udp_compute_checksum_ipv6(uh, (struct ip6_hdr *)(void *)pkt);
		return 0;
	}
	return -1;
}

void cksum_set_ipv4_header(uint8_t *pkt)
{
	nfq_ip_set_checksum((struct iphdr *)(void *)pkt);
}

bool cksum_ipv4_header_ok(const uint8_t *pkt, size_t len)
{
	size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
	uint8_t copy[60];

	if (len < 20 || ihl < 20 || ihl > len)
		return false;
	memcpy(copy, pkt, ihl);
	nfq_ip_set_checksum((struct iphdr *)(void *)copy);
	return memcmp(copy + 10, pkt + 10, 2) == 0;
}
