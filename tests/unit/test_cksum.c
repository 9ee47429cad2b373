/*
 * test_cksum.c: cksum.c completes TCP/UDP checksums (IPv4, IPv6 with an
 * extension header), sets and verifies IPv4 header checksums, and leaves
 * what it cannot parse alone.  Expected values come from an independent
 * RFC 1071 sum written here, not from the code under test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <arpa/inet.h>
#include <cmocka.h>

#include "divertd.h"

static uint32_t sum16(const uint8_t *p, size_t len, uint32_t sum)
{
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (uint32_t)p[len - 1] << 8;
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* A valid L4 checksum sums, with the pseudo-header, to 0xffff. */
static int l4_valid(const uint8_t *pkt, size_t l4off, size_t l4len,
		    uint8_t proto, bool v6)
{
	uint32_t sum = 0;

	if (v6) {
		sum = sum16(pkt + 8, 32, 0);
	} else {
		sum = sum16(pkt + 12, 8, 0);
	}
	sum += proto;
	sum += (uint32_t)l4len;
	sum = sum16(pkt + l4off, l4len, sum);
	return fold(sum) == 0;
}

static size_t make_v4(uint8_t *p, uint8_t proto, size_t payload)
{
	size_t l4 = (proto == IPPROTO_TCP ? 20 : 8) + payload;
	size_t len = 20 + l4;

	memset(p, 0, len);
	p[0] = 0x45;
	p[2] = (uint8_t)(len >> 8);
	p[3] = (uint8_t)len;
	p[8] = 64;
	p[9] = proto;
	inet_pton(AF_INET, "192.0.2.1", p + 12);
	inet_pton(AF_INET, "198.51.100.7", p + 16);
	p[20] = 0x30; p[21] = 0x39;	/* ports 12345 -> 80 */
	p[23] = 80;
	if (proto == IPPROTO_TCP) {
		p[32] = 0x50;		/* data offset 5 */
		p[33] = 0x18;
	} else {
		p[24] = (uint8_t)(l4 >> 8);
		p[25] = (uint8_t)l4;
	}
	for (size_t i = 0; i < payload; i++)
		p[len - payload + i] = (uint8_t)(i * 7 + 3);
	return len;
}

static void tcp_v4_completed(void **state)
{
	uint8_t p[2000];
	size_t len = make_v4(p, IPPROTO_TCP, 1001);	/* odd length */

	(void)state;
	assert_false(l4_valid(p, 20, len - 20, IPPROTO_TCP, false));
	assert_int_equal(cksum_complete_l4(p, len), 0);
	assert_true(l4_valid(p, 20, len - 20, IPPROTO_TCP, false));
}

static void udp_v4_completed(void **state)
{
	uint8_t p[200];
	size_t len = make_v4(p, IPPROTO_UDP, 33);

	(void)state;
	assert_int_equal(cksum_complete_l4(p, len), 0);
	assert_true(l4_valid(p, 20, len - 20, IPPROTO_UDP, false));
}

static void udp_v6_after_hop_by_hop(void **state)
{
	uint8_t p[200] = { 0 };
	size_t payload = 11, l4 = 8 + payload, len = 40 + 8 + l4;

	(void)state;
	p[0] = 0x60;
	p[4] = (uint8_t)((8 + l4) >> 8);
	p[5] = (uint8_t)(8 + l4);
	p[6] = IPPROTO_HOPOPTS;
	p[7] = 64;
	inet_pton(AF_INET6, "2001:db8::1", p + 8);
	inet_pton(AF_INET6, "2001:db8::2", p + 24);
	p[40] = IPPROTO_UDP;		/* next header, length 0 (8 bytes) */
	p[42] = 1;			/* PadN option filling the rest */
	p[43] = 4;
	p[48] = 0x12; p[49] = 0x34; p[51] = 53;
	p[53] = (uint8_t)l4;
	for (size_t i = 0; i < payload; i++)
		p[56 + i] = (uint8_t)(i + 1);
	assert_int_equal(cksum_complete_l4(p, len), 0);
	assert_true(l4_valid(p, 48, l4, IPPROTO_UDP, true));
}

/* Every length around the word sizes the sum works in, up to a GSO
 * packet, with bytes that exercise the carries. */
static void every_length_to_gso(void **state)
{
	static uint8_t p[65535];
	static const size_t sizes[] = { 0, 1, 2, 3, 4, 5, 7, 8, 31, 32, 33,
					63, 64, 65, 1399, 1400, 1401, 65000,
					65535 - 40 };

	(void)state;
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		for (int proto = 0; proto < 2; proto++) {
			uint8_t pr = proto ? IPPROTO_UDP : IPPROTO_TCP;
			size_t len = make_v4(p, pr, sizes[k]);

			for (size_t i = 20; i < len; i++)
				if (i != 36 && i != 37 && i != 26 && i != 27)
					p[i] = (uint8_t)(0xff - (i * 13) % 7);
			assert_int_equal(cksum_complete_l4(p, len), 0);
			if (!l4_valid(p, 20, len - 20, pr, false))
				fail_msg("%s payload %zu: bad checksum",
					 proto ? "udp" : "tcp", sizes[k]);
		}
	}
}

static void fragments_and_junk_left_alone(void **state)
{
	uint8_t p[200], copy[200];
	size_t len = make_v4(p, IPPROTO_UDP, 20);

	(void)state;
	p[6] = 0x20;			/* more fragments */
	memcpy(copy, p, len);
	assert_int_equal(cksum_complete_l4(p, len), -1);
	assert_memory_equal(p, copy, len);
	p[0] = 0x4f;			/* header longer than the packet */
	assert_int_equal(cksum_complete_l4(p, 30), -1);
	p[0] = 0x45;
	p[6] = 0;
	assert_int_equal(cksum_complete_l4(p, len - 1), -1);	/* ip_len > len */
	p[9] = IPPROTO_ICMP;
	assert_int_equal(cksum_complete_l4(p, len), -1);
}

static void ipv4_header(void **state)
{
	uint8_t p[200];
	size_t len = make_v4(p, IPPROTO_UDP, 4);

	(void)state;
	assert_false(cksum_ipv4_header_ok(p, len));
	cksum_set_ipv4_header(p, len);
	assert_int_equal(fold(sum16(p, 20, 0)), 0);
	assert_true(cksum_ipv4_header_ok(p, len));
	p[8]--;				/* TTL changed, checksum not */
	assert_false(cksum_ipv4_header_ok(p, len));
	assert_false(cksum_ipv4_header_ok(p, 19));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(tcp_v4_completed),
		cmocka_unit_test(udp_v4_completed),
		cmocka_unit_test(udp_v6_after_hop_by_hop),
		cmocka_unit_test(fragments_and_junk_left_alone),
		cmocka_unit_test(ipv4_header),
		cmocka_unit_test(every_length_to_gso),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
