/*
 * test_wire.c: the shared wire-protocol helpers of src/divert_wire.h.
 *
 * divert_wire_check_write() must give the errno FreeBSD 14 gives, and the
 * first one in FreeBSD's order when a packet breaks several rules, so each
 * check is tested alone and then against every later one.
 * divert_wire_make_addr() must build the address FreeBSD's div_input hands
 * a reader: the tag raw in sin_port, INADDR_ANY for outgoing packets, the
 * interface name truncated to 7 characters and a NUL.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <arpa/inet.h>
#include <cmocka.h>

#include "divert.h"
#include "divert_wire.h"

#define SNDBUF DIVERT_SOCKBUF_DEFAULT

static uint8_t pkt[70000];

/* A 20-byte IPv4 header claiming tot_len, version v, header length ihl. */
static void *ip4(unsigned v, unsigned ihl, unsigned tot_len)
{
	memset(pkt, 0, sizeof(pkt));
	pkt[0] = (uint8_t)(v << 4 | ihl);
	pkt[2] = (uint8_t)(tot_len >> 8);
	pkt[3] = (uint8_t)tot_len;
	return pkt;
}

/* An IPv6 header with payload length plen. */
static void *ip6(unsigned plen)
{
	memset(pkt, 0, sizeof(pkt));
	pkt[0] = 0x60;
	pkt[4] = (uint8_t)(plen >> 8);
	pkt[5] = (uint8_t)plen;
	return pkt;
}

static struct sockaddr_in sin_to(const char *addr)
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = 100;
	inet_pton(AF_INET, addr, &sin.sin_addr);
	return sin;
}

static int check(const void *p, size_t len, const struct sockaddr_in *sin,
		 size_t addrlen)
{
	return divert_wire_check_write(p, len, (const struct sockaddr *)sin,
				       addrlen, SNDBUF);
}

/* ---- each check alone ----------------------------------------------------- */

static void test_valid(void **state)
{
	struct sockaddr_in out = sin_to("0.0.0.0"), in = sin_to("10.0.0.1");

	(void)state;
	assert_int_equal(check(ip4(4, 5, 20), 20, &out, sizeof(out)), 0);
	assert_int_equal(check(ip4(4, 5, 84), 84, &in, sizeof(in)), 0);
	assert_int_equal(check(ip4(4, 5, 84), 84, NULL, 0), 0);
	/* ip_len may claim less than was written */
	assert_int_equal(check(ip4(4, 5, 20), 84, &out, sizeof(out)), 0);
	assert_int_equal(check(ip6(40), 80, &out, sizeof(out)), 0);
	assert_int_equal(check(ip6(40), 80, &in, sizeof(in)), 0);
	/* exactly the send buffer, exactly the largest packet */
	assert_int_equal(divert_wire_check_write(ip4(4, 5, 100), 100, NULL, 0,
						 100), 0);
	assert_int_equal(check(ip4(4, 5, 65535), DIVERT_WIRE_MAXPKT, &out,
			       sizeof(out)), 0);
}

static void test_short_addr(void **state)
{
	struct sockaddr_in out = sin_to("0.0.0.0");

	(void)state;
	assert_int_equal(check(ip4(4, 5, 20), 20, &out, 0), EINVAL);
	assert_int_equal(check(ip4(4, 5, 20), 20, &out, 1), EINVAL);
}

static void test_too_big(void **state)
{
	struct sockaddr_in out = sin_to("0.0.0.0");

	(void)state;
	assert_int_equal(check(ip4(4, 5, 0), SNDBUF + 1, &out, sizeof(out)),
			 EMSGSIZE);
	assert_int_equal(check(ip4(4, 5, 0), 70000, NULL, 0), EMSGSIZE);
	/* a smaller SO_SNDBUF */
	assert_int_equal(divert_wire_check_write(ip4(4, 5, 101), 101, NULL, 0,
						 100), EMSGSIZE);
	/* a larger SO_SNDBUF still cannot carry more than an IP packet */
	assert_int_equal(divert_wire_check_write(ip4(4, 5, 0), 65536, NULL, 0,
						 200000), EMSGSIZE);
}

static void test_too_short(void **state)
{
	struct sockaddr_in out = sin_to("0.0.0.0");

	(void)state;
	assert_int_equal(check(ip4(4, 5, 10), 10, &out, sizeof(out)), EINVAL);
	assert_int_equal(check(ip4(4, 5, 19), 19, NULL, 0), EINVAL);
	assert_int_equal(check(NULL, 0, &out, sizeof(out)), EINVAL);
}

static void test_family(void **state)
{
	struct sockaddr_in6 six;

	(void)state;
	memset(&six, 0, sizeof(six));
	six.sin6_family = AF_INET6;
	assert_int_equal(divert_wire_check_write(ip4(4, 5, 20), 20,
						 (struct sockaddr *)&six,
						 sizeof(six), SNDBUF),
			 EAFNOSUPPORT);
}

static void test_addrlen(void **state)
{
	struct sockaddr_in out = sin_to("0.0.0.0");

	(void)state;
	assert_int_equal(check(ip4(4, 5, 20), 20, &out, 8), EINVAL);
	assert_int_equal(check(ip4(4, 5, 20), 20, &out, 15), EINVAL);
	assert_int_equal(check(ip4(4, 5, 20), 20, &out, 17), EINVAL);
}

static void test_version(void **state)
{
	struct sockaddr_in out = sin_to("0.0.0.0"), in = sin_to("10.0.0.1");

	(void)state;
	assert_int_equal(check(ip4(5, 5, 20), 20, &out, sizeof(out)),
			 EAFNOSUPPORT);
	assert_int_equal(check(ip4(0, 5, 20), 20, &in, sizeof(in)),
			 EAFNOSUPPORT);
	assert_int_equal(check(ip4(15, 5, 20), 20, NULL, 0), EAFNOSUPPORT);
}

static void test_outgoing_len(void **state)
{
	struct sockaddr_in out = sin_to("0.0.0.0"), in = sin_to("10.0.0.1");

	(void)state;
	/* ip_len claims more than was written: outgoing only */
	assert_int_equal(check(ip4(4, 5, 100), 84, &out, sizeof(out)), EINVAL);
	assert_int_equal(check(ip4(4, 5, 100), 84, NULL, 0), EINVAL);
	assert_int_equal(check(ip4(4, 5, 100), 84, &in, sizeof(in)), 0);
	/* an IPv4 header shorter than 20 bytes */
	assert_int_equal(check(ip4(4, 4, 20), 20, &out, sizeof(out)), EINVAL);
	assert_int_equal(check(ip4(4, 0, 20), 20, NULL, 0), EINVAL);
	/* an IPv4 header longer than the write (found by fuzz_wire_write:
	 * the daemon would set a checksum past the end) */
	assert_int_equal(check(ip4(4, 6, 20), 20, &out, sizeof(out)), EINVAL);
	assert_int_equal(check(ip4(4, 15, 56), 56, NULL, 0), EINVAL);
	assert_int_equal(check(ip4(4, 15, 60), 60, NULL, 0), 0);
	/* IPv6: the payload length against the whole packet, as FreeBSD */
	assert_int_equal(check(ip6(81), 80, &out, sizeof(out)), EINVAL);
	assert_int_equal(check(ip6(80), 80, &out, sizeof(out)), 0);
	assert_int_equal(check(ip6(81), 80, &in, sizeof(in)), 0);
}

/* ---- the order: each error wins over every later one ------------------- */

static void test_order(void **state)
{
	struct sockaddr_in out = sin_to("0.0.0.0");
	struct sockaddr_in6 six;
	const struct sockaddr *s6 = (const struct sockaddr *)&six;

	(void)state;
	memset(&six, 0, sizeof(six));
	six.sin6_family = AF_INET6;

	/* 1. a short address beats a packet too big */
	assert_int_equal(check(ip4(5, 5, 0), 70000, &out, 1), EINVAL);
	/* 2. too big beats every check on the packet and its address:
	 *    family, address length, version */
	assert_int_equal(divert_wire_check_write(ip4(5, 5, 0), 70000, s6,
						 sizeof(six), SNDBUF),
			 EMSGSIZE);
	assert_int_equal(check(ip4(5, 5, 0), 70000, &out, 8), EMSGSIZE);
	assert_int_equal(check(ip4(5, 5, 0), 70000, &out, sizeof(out)),
			 EMSGSIZE);
	/* 3. too short beats the address and the version */
	assert_int_equal(divert_wire_check_write(ip4(5, 5, 0), 10, s6,
						 sizeof(six), SNDBUF), EINVAL);
	assert_int_equal(check(ip4(5, 5, 0), 10, &out, 8), EINVAL);
	/* 4. the family beats the address length and the version */
	assert_int_equal(divert_wire_check_write(ip4(5, 5, 20), 20, s6, 8,
						 SNDBUF), EAFNOSUPPORT);
	/* 5. the address length beats the version and ip_len */
	assert_int_equal(check(ip4(5, 5, 20), 20, &out, 8), EINVAL);
	assert_int_equal(check(ip4(4, 5, 999), 20, &out, 8), EINVAL);
	/* 6. the version beats the outgoing length checks */
	assert_int_equal(check(ip4(5, 0, 999), 20, &out, sizeof(out)),
			 EAFNOSUPPORT);
}

static void test_outgoing(void **state)
{
	struct sockaddr_in out = sin_to("0.0.0.0"), in = sin_to("10.0.0.1");

	(void)state;
	assert_true(divert_wire_is_outgoing(NULL));
	assert_true(divert_wire_is_outgoing(&out));
	assert_false(divert_wire_is_outgoing(&in));
}

/* ---- the address a reader gets ------------------------------------------- */

static void test_addr_incoming(void **state)
{
	struct sockaddr_in sin;
	struct in_addr ifaddr;
	static const uint8_t name[8] = { 'e', 't', 'h', '0', 0, 0, 0, 0 };

	(void)state;
	inet_pton(AF_INET, "192.0.2.7", &ifaddr);
	memset(&sin, 0xa5, sizeof(sin));
	divert_wire_make_addr(&sin, 0x1234, 1, ifaddr, "eth0");
	assert_int_equal(sin.sin_family, AF_INET);
	/* the tag raw, host order: not htons */
	assert_int_equal(sin.sin_port, 0x1234);
	assert_int_equal(sin.sin_addr.s_addr, ifaddr.s_addr);
	assert_memory_equal(sin.sin_zero, name, sizeof(name));
}

static void test_addr_outgoing(void **state)
{
	struct sockaddr_in sin;
	struct in_addr ifaddr;

	(void)state;
	inet_pton(AF_INET, "192.0.2.7", &ifaddr);
	memset(&sin, 0xa5, sizeof(sin));
	divert_wire_make_addr(&sin, 100, 0, ifaddr, "eth0");
	assert_int_equal(sin.sin_family, AF_INET);
	assert_int_equal(sin.sin_port, 100);
	assert_int_equal(sin.sin_addr.s_addr, htonl(INADDR_ANY));
	assert_string_equal((const char *)sin.sin_zero, "eth0");
}

static void test_addr_names(void **state)
{
	static const uint8_t zero[8];
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "lo", "lo" },
		{ "veth0ab", "veth0ab" },	/* 7: fits exactly */
		{ "enp0s31f", "enp0s31" },	/* 8: truncated */
		{ "enp0s31f6", "enp0s31" },
		{ "a-very-long-ifname", "a-very-" },
	};
	struct sockaddr_in sin;
	struct in_addr any = { INADDR_ANY };
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memset(&sin, 0xa5, sizeof(sin));
		divert_wire_make_addr(&sin, 1, 1, any, cases[i].in);
		assert_string_equal((const char *)sin.sin_zero, cases[i].out);
		assert_int_equal(sin.sin_zero[7], 0);
		/* and zero after the name, never stale bytes */
		assert_memory_equal(sin.sin_zero + strlen(cases[i].out), zero,
				    8 - strlen(cases[i].out));
	}

	memset(&sin, 0xa5, sizeof(sin));
	divert_wire_make_addr(&sin, 65535, 1, any, NULL);
	assert_memory_equal(sin.sin_zero, zero, sizeof(zero));
	assert_int_equal(sin.sin_port, 65535);

	memset(&sin, 0xa5, sizeof(sin));
	divert_wire_make_addr(&sin, 0, 0, any, "");
	assert_memory_equal(sin.sin_zero, zero, sizeof(zero));
	assert_int_equal(sin.sin_port, 0);
}

static void test_header_layout(void **state)
{
	(void)state;
	assert_int_equal(sizeof(struct divert_wire_hdr), 40);
	assert_int_equal(offsetof(struct divert_wire_hdr, conn), 8);
	assert_int_equal(offsetof(struct divert_wire_hdr, addr), 24);
	assert_int_equal(sizeof(((struct divert_wire_hdr *)0)->addr), 16);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_short_addr),
		cmocka_unit_test(test_too_big),
		cmocka_unit_test(test_too_short),
		cmocka_unit_test(test_family),
		cmocka_unit_test(test_addrlen),
		cmocka_unit_test(test_version),
		cmocka_unit_test(test_outgoing_len),
		cmocka_unit_test(test_order),
		cmocka_unit_test(test_outgoing),
		cmocka_unit_test(test_addr_incoming),
		cmocka_unit_test(test_addr_outgoing),
		cmocka_unit_test(test_addr_names),
		cmocka_unit_test(test_header_layout),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
