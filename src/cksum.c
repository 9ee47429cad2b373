/*
 * cksum.c: checksums a client must find valid.
 *
 * With NFQA_CFG_F_GSO the kernel hands over locally generated TCP and UDP
 * packets whose L4 checksum it left for the NIC (NFQA_SKB_CSUMNOTREADY).
 * A FreeBSD program always reads valid checksums, so the daemon completes
 * them first: this file finds the headers, walking IPv6 extension headers
 * to the transport header, and sums.
 *
 * The sum is RFC 1071's, over 32-bit words into a 64-bit accumulator (the
 * compiler vectorizes the loop), in memory order: summing the bytes as
 * they lie and storing the folded result the same way is correct on
 * either byte order.  libnetfilter_queue has the same arithmetic a 16-bit
 * word at a time; on 64 KiB GSO packets that loop was 12% of divertd's
 * time in the TCP benchmark (docs/PERFORMANCE.md), which is why it is not
 * used here.
 */
#include <string.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>

#include "divertd.h"

/* Add len bytes at p, as they lie in memory, to a one's complement sum. */
static uint64_t sum_bytes(const uint8_t *p, size_t len, uint64_t acc)
{
	uint32_t w[8];
	uint16_t h = 0;

	for (; len >= sizeof(w); p += sizeof(w), len -= sizeof(w)) {
		memcpy(w, p, sizeof(w));
		for (size_t i = 0; i < 8; i++)
			acc += w[i];
	}
	for (; len >= 4; p += 4, len -= 4) {
		memcpy(w, p, 4);
		acc += w[0];
	}
	if (len >= 2) {
		memcpy(&h, p, 2);
		acc += h;
		p += 2;
		len -= 2;
	}
	if (len == 1) {
		h = 0;
		memcpy(&h, p, 1);	/* the odd byte, then a zero byte */
		acc += h;
	}
	return acc;
}

/* Fold to 16 bits and complement: the checksum, in memory order. */
static uint16_t sum_fold(uint64_t acc)
{
	acc = (acc & 0xffffffffu) + (acc >> 32);
	acc = (acc & 0xffffffffu) + (acc >> 32);
	acc = (acc & 0xffffu) + (acc >> 16);
	acc = (acc & 0xffffu) + (acc >> 16);
	acc = (acc & 0xffffu) + (acc >> 16);
	return (uint16_t)~acc;
}

/* Fill in the checksum at pkt + off + at of the transport segment
 * [off, l3len), with the pseudo-header of the IPv4 or IPv6 header. */
static void l4_checksum(uint8_t *pkt, size_t off, size_t l3len, uint8_t proto,
			size_t at, bool v4)
{
	uint16_t field = 0, n;
	uint64_t acc;
	uint8_t pseudo[4] = { 0, proto, (uint8_t)((l3len - off) >> 8),
			      (uint8_t)(l3len - off) };

	memcpy(pkt + off + at, &field, 2);
	acc = v4 ? sum_bytes(pkt + 12, 8, 0) : sum_bytes(pkt + 8, 32, 0);
	acc = sum_bytes(pseudo, sizeof(pseudo), acc);
	acc = sum_bytes(pkt + off, l3len - off, acc);
	field = sum_fold(acc);
	n = 0;
	if (proto == IPPROTO_UDP && memcmp(&field, &n, 2) == 0)
		field = 0xffff;		/* UDP: 0 means "no checksum" */
	memcpy(pkt + off + at, &field, 2);
}

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
	bool v4;
	size_t l3len;

	if (off < 0)
		return -1;
	v4 = (pkt[0] >> 4) == 4;	/* len >= 20 now */
	/* the length the checksum covers comes from the IP header */
	l3len = v4 ? (size_t)((pkt[2] << 8) | pkt[3])
		   : (size_t)((pkt[4] << 8) | pkt[5]) + sizeof(struct ip6_hdr);
	if (l3len > len)
		return -1;
	if (proto == IPPROTO_TCP && (size_t)off + sizeof(struct tcphdr) <= l3len) {
		l4_checksum(pkt, (size_t)off, l3len, proto,
			    offsetof(struct tcphdr, check), v4);
		return 0;
	}
	if (proto == IPPROTO_UDP && (size_t)off + sizeof(struct udphdr) <= l3len) {
		l4_checksum(pkt, (size_t)off, l3len, proto,
			    offsetof(struct udphdr, check), v4);
		return 0;
	}
	return -1;
}

void cksum_set_ipv4_header(uint8_t *pkt, size_t len)
{
	size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
	uint16_t field = 0;

	if (len < 20 || ihl < 20 || ihl > len)
		return;

	memcpy(pkt + 10, &field, 2);
	field = sum_fold(sum_bytes(pkt, ihl, 0));
	memcpy(pkt + 10, &field, 2);
}

bool cksum_ipv4_header_ok(const uint8_t *pkt, size_t len)
{
	size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;

	if (len < 20 || ihl < 20 || ihl > len)
		return false;
	/* a valid header sums, checksum included, to all ones */
	return sum_fold(sum_bytes(pkt, ihl, 0)) == 0;
}
