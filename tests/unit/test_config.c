/*
 * test_config.c: unit tests for config.c, the rule file parser.
 *
 * Good lines check every field they set; bad lines check the exact message,
 * "NAME:LINE: what", with the line number the error is on.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <cmocka.h>

#include "divertd.h"

static struct ruleset parse_ok(const char *text)
{
	struct ruleset rs = { 0 };
	char err[512] = "";

	if (config_parse_string(text, "t", &rs, err, sizeof(err)) != 0)
		fail_msg("unexpected parse error: %s\n(text: %s)", err, text);
	assert_string_equal(err, "");
	return rs;
}

static struct rule parse_one(const char *text)
{
	struct ruleset rs = parse_ok(text);
	struct rule r;

	assert_int_equal(rs.n, 1);
	r = rs.rules[0];
	ruleset_free(&rs);
	return r;
}

/* The parse fails with exactly want, and leaves rs alone. */
static void parse_bad(const char *text, const char *want)
{
	struct rule sentinel[1] = { { .num = 4242 } };
	struct ruleset rs = { .rules = sentinel, .n = 1 };
	char err[512] = "";

	if (config_parse_string(text, "t", &rs, err, sizeof(err)) != -1)
		fail_msg("parse of %s succeeded, wanted: %s", text, want);
	if (strcmp(err, want) != 0)
		fail_msg("for: %s\n  want: %s\n  got:  %s", text, want, err);
	assert_ptr_equal(rs.rules, sentinel);
	assert_int_equal(rs.n, 1);
	assert_int_equal(sentinel[0].num, 4242);
}

static void assert_v4(const struct rule_addr *a, const char *addr, int plen)
{
	char buf[INET_ADDRSTRLEN];

	assert_int_equal(a->kind, ADDR_PREFIX);
	assert_int_equal(a->family, AF_INET);
	assert_non_null(inet_ntop(AF_INET, &a->addr.v4, buf, sizeof(buf)));
	assert_string_equal(buf, addr);
	assert_int_equal(a->plen, plen);
}

static void assert_v6(const struct rule_addr *a, const char *addr, int plen)
{
	char buf[INET6_ADDRSTRLEN];

	assert_int_equal(a->kind, ADDR_PREFIX);
	assert_int_equal(a->family, AF_INET6);
	assert_non_null(inet_ntop(AF_INET6, &a->addr.v6, buf, sizeof(buf)));
	assert_string_equal(buf, addr);
	assert_int_equal(a->plen, plen);
}

/* ---- good lines ---------------------------------------------------------- */

static void test_full_rule(void **state)
{
	struct rule r = parse_one(
		"  300 divert 8668 tcp from not 192.0.2.77/24 1024-65535,80 "
		"to me 22 in via eth0 not xmit eth1   # all of it\n");

	(void)state;
	assert_int_equal(r.num, 300);
	assert_int_equal(r.line, 1);
	assert_int_equal(r.action, ACT_DIVERT);
	assert_int_equal(r.arg, 8668);
	assert_int_equal(r.proto, IPPROTO_TCP);
	assert_int_equal(r.families, FAM_V4);
	assert_int_equal(r.dirs, DIR_IN);
	assert_true(r.src.neg);
	assert_v4(&r.src, "192.0.2.0", 24);
	assert_int_equal(r.src.nports, 2);
	assert_int_equal(r.src.ports[0].lo, 1024);
	assert_int_equal(r.src.ports[0].hi, 65535);
	assert_int_equal(r.src.ports[1].lo, 80);
	assert_int_equal(r.src.ports[1].hi, 80);
	assert_int_equal(r.dst.kind, ADDR_ME);
	assert_false(r.dst.neg);
	assert_int_equal(r.dst.nports, 1);
	assert_int_equal(r.dst.ports[0].lo, 22);
	assert_int_equal(r.nifaces, 2);
	assert_int_equal(r.ifaces[0].kind, IFACE_VIA);
	assert_false(r.ifaces[0].neg);
	assert_string_equal(r.ifaces[0].name, "eth0");
	assert_int_equal(r.ifaces[1].kind, IFACE_XMIT);
	assert_true(r.ifaces[1].neg);
	assert_string_equal(r.ifaces[1].name, "eth1");
	assert_int_equal(r.nicmptypes, 0);
}

static void test_actions(void **state)
{
	static const struct {
		const char *word;
		enum rule_action act;
		uint16_t arg;
	} cases[] = {
		{ "divert 1", ACT_DIVERT, 1 },
		{ "divert 65535", ACT_DIVERT, 65535 },
		{ "tee 9000", ACT_TEE, 9000 },
		{ "allow", ACT_ALLOW, 0 },
		{ "accept", ACT_ALLOW, 0 },
		{ "pass", ACT_ALLOW, 0 },
		{ "permit", ACT_ALLOW, 0 },
		{ "deny", ACT_DENY, 0 },
		{ "drop", ACT_DENY, 0 },
		{ "count", ACT_COUNT, 0 },
		{ "skipto 101", ACT_SKIPTO, 101 },
		{ "skipto 65535", ACT_SKIPTO, 65535 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		char text[128];
		struct rule r;

		snprintf(text, sizeof(text),
			 "100 %s ip from any to any\n", cases[i].word);
		r = parse_one(text);
		assert_int_equal(r.action, cases[i].act);
		assert_int_equal(r.arg, cases[i].arg);
		assert_int_equal(r.families, FAM_V4 | FAM_V6);
		assert_int_equal(r.dirs, DIR_IN | DIR_OUT);
		assert_int_equal(r.src.kind, ADDR_ANY);
		assert_int_equal(r.dst.kind, ADDR_ANY);
	}
}

static void test_protocols(void **state)
{
	static const struct {
		const char *word;
		int proto;
		unsigned fams;
	} cases[] = {
		{ "ip", PROTO_ANY, FAM_V4 | FAM_V6 },
		{ "all", PROTO_ANY, FAM_V4 | FAM_V6 },
		{ "ip4", PROTO_ANY, FAM_V4 },
		{ "ipv4", PROTO_ANY, FAM_V4 },
		{ "ip6", PROTO_ANY, FAM_V6 },
		{ "ipv6", PROTO_ANY, FAM_V6 },
		{ "tcp", 6, FAM_V4 | FAM_V6 },
		{ "udp", 17, FAM_V4 | FAM_V6 },
		{ "icmp", 1, FAM_V4 },
		{ "ipv6-icmp", 58, FAM_V6 },
		{ "icmp6", 58, FAM_V6 },
		{ "gre", 47, FAM_V4 | FAM_V6 },
		{ "sctp", 132, FAM_V4 | FAM_V6 },
		{ "0", PROTO_ANY, FAM_V4 | FAM_V6 },
		{ "1", 1, FAM_V4 },
		{ "6", 6, FAM_V4 | FAM_V6 },
		{ "58", 58, FAM_V6 },
		{ "47", 47, FAM_V4 | FAM_V6 },
		{ "255", 255, FAM_V4 | FAM_V6 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		char text[128];
		struct rule r;

		snprintf(text, sizeof(text), "100 count %s from any to any",
			 cases[i].word);
		r = parse_one(text);
		assert_int_equal(r.proto, cases[i].proto);
		assert_int_equal(r.families, cases[i].fams);
	}
	/* numbered tcp takes ports like the name does */
	assert_int_equal(parse_one("100 count 6 from any to any 80")
			 .dst.nports, 1);
}

static void test_addresses(void **state)
{
	struct rule r;

	(void)state;
	r = parse_one("100 count ip from 10.1.2.3 to 10.255.255.255/9");
	assert_v4(&r.src, "10.1.2.3", 32);
	assert_v4(&r.dst, "10.128.0.0", 9);
	assert_int_equal(r.families, FAM_V4);

	r = parse_one("100 count ip from 0.0.0.0/0 to 1.2.3.4/0");
	assert_v4(&r.src, "0.0.0.0", 0);
	assert_v4(&r.dst, "0.0.0.0", 0);

	r = parse_one("100 count ip from 2001:db8:ffff::1/35 to ::1");
	assert_v6(&r.src, "2001:db8:e000::", 35);
	assert_v6(&r.dst, "::1", 128);
	assert_int_equal(r.families, FAM_V6);

	r = parse_one("100 count ip from fe80::1:2:3:4/64 to not ::/0");
	assert_v6(&r.src, "fe80::", 64);
	assert_v6(&r.dst, "::", 0);
	assert_true(r.dst.neg);

	r = parse_one("100 count ip from me to not me");
	assert_int_equal(r.src.kind, ADDR_ME);
	assert_false(r.src.neg);
	assert_int_equal(r.dst.kind, ADDR_ME);
	assert_true(r.dst.neg);
	assert_int_equal(r.families, FAM_V4);

	r = parse_one("100 count ip from any to me6");
	assert_int_equal(r.dst.kind, ADDR_ME6);
	assert_int_equal(r.families, FAM_V6);

	r = parse_one("100 count ip6 from any to any");
	assert_int_equal(r.families, FAM_V6);
	r = parse_one("100 count ipv6-icmp from me6 to 2001:db8::/32");
	assert_int_equal(r.families, FAM_V6);
	r = parse_one("100 count icmp from 192.0.2.0/24 to me");
	assert_int_equal(r.families, FAM_V4);
}

static void test_ports(void **state)
{
	struct rule r;
	char text[512];
	int len;

	(void)state;
	r = parse_one("100 count udp from any 0 to any 1:2,3-3,65535");
	assert_int_equal(r.src.nports, 1);
	assert_int_equal(r.src.ports[0].lo, 0);
	assert_int_equal(r.src.ports[0].hi, 0);
	assert_int_equal(r.dst.nports, 3);
	assert_int_equal(r.dst.ports[0].lo, 1);
	assert_int_equal(r.dst.ports[0].hi, 2);
	assert_int_equal(r.dst.ports[1].lo, 3);
	assert_int_equal(r.dst.ports[1].hi, 3);
	assert_int_equal(r.dst.ports[2].lo, 65535);
	assert_int_equal(r.dst.ports[2].hi, 65535);

	/* exactly RULE_MAX_PORTS entries */
	len = snprintf(text, sizeof(text), "100 count tcp from any to any ");
	for (int i = 1; i <= RULE_MAX_PORTS; i++)
		len += snprintf(text + len, sizeof(text) - (size_t)len, "%s%d",
				i > 1 ? "," : "", i);
	r = parse_one(text);
	assert_int_equal(r.dst.nports, RULE_MAX_PORTS);
	assert_int_equal(r.dst.ports[RULE_MAX_PORTS - 1].lo, RULE_MAX_PORTS);
}

static void test_options(void **state)
{
	struct rule r;

	(void)state;
	r = parse_one("100 count ip from any to any out");
	assert_int_equal(r.dirs, DIR_OUT);
	r = parse_one("100 count ip from any to any not in");
	assert_int_equal(r.dirs, DIR_OUT);
	r = parse_one("100 count ip from any to any not out");
	assert_int_equal(r.dirs, DIR_IN);
	r = parse_one("100 count ip from any to any in in not out");
	assert_int_equal(r.dirs, DIR_IN);

	r = parse_one("100 count ip from any to any recv eth0 not via x "
		      "xmit a-b_c.1@2 not recv eth0123456789a");
	assert_int_equal(r.nifaces, 4);
	assert_int_equal(r.ifaces[0].kind, IFACE_RECV);
	assert_false(r.ifaces[0].neg);
	assert_int_equal(r.ifaces[1].kind, IFACE_VIA);
	assert_true(r.ifaces[1].neg);
	assert_string_equal(r.ifaces[1].name, "x");
	assert_int_equal(r.ifaces[2].kind, IFACE_XMIT);
	assert_string_equal(r.ifaces[2].name, "a-b_c.1@2");
	assert_int_equal(r.ifaces[3].kind, IFACE_RECV);
	assert_true(r.ifaces[3].neg);
	assert_string_equal(r.ifaces[3].name, "eth0123456789a");

	r = parse_one("100 count icmp from any to any icmptypes 0,8,255");
	assert_int_equal(r.nicmptypes, 3);
	assert_int_equal(r.icmptypes[0], 0);
	assert_int_equal(r.icmptypes[1], 8);
	assert_int_equal(r.icmptypes[2], 255);
	assert_false(r.icmptypes_neg);
	r = parse_one("100 count ipv6-icmp from any to any not icmptypes 128");
	assert_int_equal(r.nicmptypes, 1);
	assert_int_equal(r.icmptypes[0], 128);
	assert_true(r.icmptypes_neg);
}

static void test_comments_and_blanks(void **state)
{
	struct ruleset rs = parse_ok(
		"# header\n"
		"\n"
		"   \t \n"
		"100 count tcp from any to any 80#443 a comment glued on\n"
		"#200 count ip from any to any\n"
		"\t200 count ip from any to any # trailing\r\n"
		"300 count ip from any to any\r\n"
		"   # indented comment\n"
		"400 count ip from any to any");	/* no final newline */

	(void)state;
	assert_int_equal(rs.n, 4);
	assert_int_equal(rs.rules[0].num, 100);
	assert_int_equal(rs.rules[0].line, 4);
	assert_int_equal(rs.rules[0].dst.nports, 1);
	assert_int_equal(rs.rules[0].dst.ports[0].lo, 80);
	assert_int_equal(rs.rules[1].num, 200);
	assert_int_equal(rs.rules[1].line, 6);
	assert_int_equal(rs.rules[2].line, 7);
	assert_int_equal(rs.rules[3].num, 400);
	assert_int_equal(rs.rules[3].line, 9);
	ruleset_free(&rs);
	assert_null(rs.rules);
	assert_int_equal(rs.n, 0);

	rs = parse_ok("");
	assert_int_equal(rs.n, 0);
	ruleset_free(&rs);
	rs = parse_ok("# only\n\n#comments\n");
	assert_int_equal(rs.n, 0);
	ruleset_free(&rs);
}

static void test_stable_order(void **state)
{
	struct ruleset rs = parse_ok(
		"300 count ip from any to any\n"	/* line 1 */
		"100 divert 1 ip from any to any\n"	/* 2 */
		"200 count ip from any to any\n"	/* 3 */
		"100 divert 2 ip from any to any\n"	/* 4 */
		"300 count ip from any to any\n"	/* 5 */
		"100 divert 3 ip from any to any\n"	/* 6 */
		"1 count ip from any to any\n");	/* 7 */
	static const int want_num[] = { 1, 100, 100, 100, 200, 300, 300 };
	static const int want_line[] = { 7, 2, 4, 6, 3, 1, 5 };

	(void)state;
	assert_int_equal(rs.n, 7);
	for (size_t i = 0; i < rs.n; i++) {
		assert_int_equal(rs.rules[i].num, want_num[i]);
		assert_int_equal(rs.rules[i].line, want_line[i]);
	}
	assert_int_equal(rs.rules[1].arg, 1);
	assert_int_equal(rs.rules[2].arg, 2);
	assert_int_equal(rs.rules[3].arg, 3);
	ruleset_free(&rs);
}

static void test_autonumber(void **state)
{
	struct ruleset rs = parse_ok(
		"count ip from any to any\n"		/* 100 */
		"count ip from any to any\n"		/* 200 */
		"1000 count ip from any to any\n"
		"50 count ip from any to any\n"
		"count ip from any to any\n"		/* 1100: highest + 100 */
		"65434 count ip from any to any\n"
		"count ip from any to any\n");		/* 65534 */
	static const struct { int num, line; } want[] = {
		{ 50, 4 }, { 100, 1 }, { 200, 2 }, { 1000, 3 }, { 1100, 5 },
		{ 65434, 6 }, { 65534, 7 },
	};

	(void)state;
	assert_int_equal(rs.n, 7);
	for (size_t i = 0; i < rs.n; i++) {
		assert_int_equal(rs.rules[i].num, want[i].num);
		assert_int_equal(rs.rules[i].line, want[i].line);
	}
	ruleset_free(&rs);
	/* an unnumbered skipto is checked against its automatic number */
	assert_int_equal(parse_one("skipto 101 ip from any to any").num, 100);
}

static void test_long_lines(void **state)
{
	size_t big = 200000;
	char *text = malloc(big + 200);
	struct ruleset rs;
	char err[256];
	int rc;

	(void)state;
	assert_non_null(text);
	/* a rule after a huge run of blanks, then a huge comment */
	memset(text, ' ', big);
	strcpy(text + big, "100 count ip from any to any #");
	memset(text + strlen(text), 'x', 100);
	strcpy(text + big + 130, "\n200 count ip from any to any\n");
	rs = parse_ok(text);
	assert_int_equal(rs.n, 2);
	assert_int_equal(rs.rules[1].line, 2);
	ruleset_free(&rs);

	/* a huge token: an error, quoted short */
	memset(text, '9', big);
	strcpy(text + big, " count ip from any to any\n");
	memset(&rs, 0, sizeof(rs));
	rc = config_parse_string(text, "t", &rs, err, sizeof(err));
	assert_int_equal(rc, -1);
	{
		char want[128];

		snprintf(want, sizeof(want), "t:1: rule number %.45s... out "
			 "of range (1..65534)", text);
		assert_string_equal(err, want);
	}
	free(text);
}

static void test_small_err_buffer(void **state)
{
	struct ruleset rs = { 0 };
	char err[8];

	(void)state;
	assert_int_equal(config_parse_string("100 bogus", "name", &rs, err,
					     sizeof(err)), -1);
	assert_string_equal(err, "name:1:");
	assert_int_equal(config_parse_string("100 bogus", "name", &rs, NULL,
					     0), -1);
}

/* ---- bad lines ------------------------------------------------------------ */

static void test_bad_lines(void **state)
{
	static const struct {
		const char *line;
		const char *err;
	} cases[] = {
		{ "100 divrt 8668 ip from any to any",
		  "unknown action 'divrt'" },
		{ "100 divert 70000 ip from any to any",
		  "port 70000 out of range (1..65535)" },
		{ "100 divert 0 ip from any to any",
		  "port 0 out of range (1..65535)" },
		{ "100 tee abc ip from any to any",
		  "port 'abc' is not a number" },
		{ "100 divert", "missing port after 'divert'" },
		{ "100 tee", "missing port after 'tee'" },
		{ "100", "missing action" },
		{ "100   # just a number", "missing action" },
		{ "0 count ip from any to any",
		  "rule number 0 out of range (1..65534)" },
		{ "65535 count ip from any to any",
		  "rule number 65535 out of range (1..65534)" },
		{ "99999999999999999999999 count ip from any to any",
		  "rule number 99999999999999999999999 out of range "
		  "(1..65534)" },
		{ "100x count ip from any to any",
		  "rule number '100x' is not a number" },
		{ "100 skipto 50 ip from any to any",
		  "skipto must jump forward: 50 is not above this rule's "
		  "number 100" },
		{ "100 skipto 100 ip from any to any",
		  "skipto must jump forward: 100 is not above this rule's "
		  "number 100" },
		{ "100 skipto", "missing rule number after 'skipto'" },
		{ "100 skipto 0 ip from any to any",
		  "skipto target 0 out of range (1..65535)" },
		{ "100 skipto 65536 ip from any to any",
		  "skipto target 65536 out of range (1..65535)" },
		{ "100 skipto x ip from any to any",
		  "skipto target 'x' is not a number" },
		{ "100 count", "missing protocol after the action" },
		{ "100 count foo from any to any", "unknown protocol 'foo'" },
		{ "100 count 256 from any to any",
		  "protocol 256 out of range (0..255)" },
		{ "100 count 6x from any to any",
		  "protocol '6x' is not a number" },
		{ "100 count ip", "expected 'from' after the protocol" },
		{ "100 count ip frm any to any",
		  "expected 'from' after the protocol, got 'frm'" },
		{ "100 count ip from", "missing source address" },
		{ "100 count ip from not", "missing source address" },
		{ "100 count ip from any", "expected 'to' after the source" },
		{ "100 count ip from any too any",
		  "expected 'to' after the source, got 'too'" },
		{ "100 count tcp from any 80 81 to any",
		  "expected 'to' after the source, got '81'" },
		{ "100 count ip from any to", "missing destination address" },
		{ "100 count ip from 10.0.0.300 to any",
		  "bad source address '10.0.0.300'" },
		{ "100 count ip from any to 10.0.0",
		  "bad destination address '10.0.0'" },
		{ "100 count ip from any to 2001:db8:::1",
		  "bad destination address '2001:db8:::1'" },
		{ "100 count ip from any to eth0",
		  "bad destination address 'eth0'" },
		{ "100 count ip from /8 to any", "bad source address '/8'" },
		{ "100 count ip from any to 10.0.0.0/33",
		  "prefix length 33 out of range for IPv4 (0..32)" },
		{ "100 count ip from any to 2001:db8::/129",
		  "prefix length 129 out of range for IPv6 (0..128)" },
		{ "100 count ip from 10.0.0.0/ab to any",
		  "bad prefix length in '10.0.0.0/ab'" },
		{ "100 count ip from 10.0.0.0/ to any",
		  "bad prefix length in '10.0.0.0/'" },
		{ "100 count ip from not any to any",
		  "'not any' as source matches nothing" },
		{ "100 count ip from any to not any",
		  "'not any' as destination matches nothing" },
		{ "100 count ip from any to any 80",
		  "ports '80' need protocol tcp or udp" },
		{ "100 count icmp from any 1-2 to any",
		  "ports '1-2' need protocol tcp or udp" },
		{ "100 count tcp from any to any 70000",
		  "port 70000 out of range (0..65535)" },
		{ "100 count tcp from any to any 1-70000",
		  "port 70000 out of range (0..65535)" },
		{ "100 count tcp from any to any 90-80",
		  "port range 90-80 is backwards" },
		{ "100 count tcp from any to any 1-",
		  "bad port range '1-'" },
		{ "100 count tcp from any to any 1,-5",
		  "bad port range '-5'" },
		{ "100 count tcp from any to any 80,,90",
		  "empty entry in port list '80,,90'" },
		{ "100 count tcp from any to any 80,",
		  "empty entry in port list '80,'" },
		{ "100 count tcp from any to any 8x",
		  "port '8x' is not a number" },
		{ "100 count tcp from any to any 1-2-3",
		  "port '2-3' is not a number" },
		{ "100 count ip6 from 10.0.0.1 to any",
		  "ip6 rule with IPv4 source '10.0.0.1'" },
		{ "100 count ipv4 from any to ::1",
		  "ipv4 rule with IPv6 destination '::1'" },
		{ "100 count icmp from any to 2001:db8::1",
		  "icmp rule with IPv6 destination '2001:db8::1'" },
		{ "100 count 58 from 10.0.0.0/8 to any",
		  "58 rule with IPv4 source '10.0.0.0/8'" },
		{ "100 count ip from 10.0.0.1 to 2001:db8::1",
		  "IPv4 source '10.0.0.1' with IPv6 destination '2001:db8::1'" },
		{ "100 count ip from me to me6",
		  "source 'me' (IPv4 only) with destination 'me6' (IPv6 only)" },
		{ "100 count ip from not me6 to 10.0.0.0/8",
		  "source 'me6' (IPv6 only) with IPv4 destination "
		  "'10.0.0.0/8'" },
		{ "100 count ip6 from me to any",
		  "ip6 rule with source 'me' (IPv4 only)" },
		{ "100 count ipv6-icmp from any to 10.0.0.0/8",
		  "ipv6-icmp rule with IPv4 destination '10.0.0.0/8'" },
		{ "100 count icmp from any to me6",
		  "icmp rule with destination 'me6' (IPv6 only)" },
		{ "100 count ip from any to any in out",
		  "'in' and 'out' together match nothing" },
		{ "100 count ip from any to any not in in",
		  "'in' and 'out' together match nothing" },
		{ "100 count ip from any to any via",
		  "missing interface name after 'via'" },
		{ "100 count ip from any to any not recv",
		  "missing interface name after 'recv'" },
		{ "100 count ip from any to any xmit abcdefghijklmnop",
		  "interface name 'abcdefghijklmnop' too long (at most 15 "
		  "characters)" },
		{ "100 count ip from any to any via eth\"0",
		  "bad character '\"' in interface name 'eth\"0'" },
		{ "100 count ip from any to any via eth+",
		  "bad character '+' in interface name 'eth+'" },
		{ "100 count ip from any to any via a via b via c via d via e",
		  "too many interface options (at most 4)" },
		{ "100 count tcp from any to any icmptypes 8",
		  "icmptypes needs protocol icmp or ipv6-icmp" },
		{ "100 count icmp from any to any icmptypes 256",
		  "icmp type 256 out of range (0..255)" },
		{ "100 count icmp from any to any icmptypes a",
		  "icmp type 'a' is not a number" },
		{ "100 count icmp from any to any icmptypes",
		  "missing type list after 'icmptypes'" },
		{ "100 count icmp from any to any icmptypes 8 icmptypes 0",
		  "icmptypes given twice" },
		{ "100 count icmp from any to any icmptypes 8,,0",
		  "empty entry in icmptypes list '8,,0'" },
		{ "100 count icmp from any to any icmptypes 8,",
		  "empty entry in icmptypes list '8,'" },
		{ "100 count ip from any to any keep-state",
		  "unknown option 'keep-state'" },
		{ "100 count ip from any to any via eth0 eth1",
		  "unknown option 'eth1'" },
		{ "100 count ip from any to any not",
		  "'not' at end of line" },
		{ "100 count ip from any to any not frag",
		  "unknown option 'frag'" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		char text[512], want[512];

		/* two lines before it, so the line number is checked */
		snprintf(text, sizeof(text),
			 "# leading comment\n"
			 "100 count ip from any to any\n"
			 "%s\n"
			 "200 count ip from any to any\n", cases[i].line);
		snprintf(want, sizeof(want), "t:3: %s", cases[i].err);
		parse_bad(text, want);
	}
}

static void test_bad_limits(void **state)
{
	char text[1024], want[512];
	int len;

	(void)state;
	len = snprintf(text, sizeof(text), "100 count tcp from any to any ");
	for (int i = 1; i <= RULE_MAX_PORTS + 1; i++)
		len += snprintf(text + len, sizeof(text) - (size_t)len, "%s%d",
				i > 1 ? "," : "", i);
	snprintf(want, sizeof(want), "t:1: too many ports in '%.45s...' (at "
		 "most %d entries)", text + 30, RULE_MAX_PORTS);
	parse_bad(text, want);

	len = snprintf(text, sizeof(text),
		       "100 count icmp from any to any icmptypes ");
	for (int i = 1; i <= RULE_MAX_ICMPTYPES + 1; i++)
		len += snprintf(text + len, sizeof(text) - (size_t)len, "%s%d",
				i > 1 ? "," : "", i);
	snprintf(want, sizeof(want), "t:1: too many icmptypes (at most %d)",
		 RULE_MAX_ICMPTYPES);
	parse_bad(text, want);

	parse_bad("65500 count ip from any to any\n"
		  "\n"
		  "count ip from any to any\n",
		  "t:3: automatic rule number 65600 is above 65534: give this "
		  "rule a number");
	parse_bad("65434 count ip from any to any\n"
		  "count ip from any to any\n"
		  "skipto 65535 ip from any to any\n",
		  "t:3: automatic rule number 65634 is above 65534: give this "
		  "rule a number");
}

/* Each divert or tee port is a queue: the one past the limit is refused
 * at its line; ports used again, and other rules, do not count. */
static void test_too_many_divert_ports(void **state)
{
	static char text[RULES_MAX_DIVERT_PORTS * 64];
	struct ruleset rs;
	char want[256];
	size_t len = 0;

	(void)state;
	for (unsigned i = 0; i < RULES_MAX_DIVERT_PORTS; i++)
		len += (size_t)snprintf(text + len, sizeof(text) - len,
					"%u %s %u ip from any to any\n", i + 1,
					i % 2 ? "tee" : "divert", 1000 + i);
	len += (size_t)snprintf(text + len, sizeof(text) - len,
				"divert 1000 ip from any to any\n"
				"count ip from any to any\n");
	rs = parse_ok(text);
	assert_int_equal(rs.n, RULES_MAX_DIVERT_PORTS + 2);
	ruleset_free(&rs);

	snprintf(text + len, sizeof(text) - len,
		 "tee 7 ip from any to any\n");
	snprintf(want, sizeof(want), "t:%u: divert port 7 is one too many: at "
		 "most %u divert and tee ports (each is a queue of its own)",
		 RULES_MAX_DIVERT_PORTS + 3, RULES_MAX_DIVERT_PORTS);
	parse_bad(text, want);
}

/* ---- files ------------------------------------------------------------------ */

static void test_file(void **state)
{
	char path[] = "/tmp/test_config.XXXXXX", want[512];
	struct ruleset rs = { 0 };
	char err[512];
	int fd = mkstemp(path);
	static const char good[] = "100 divert 8668 ip from any to any\n";
	static const char bad[] = "# x\n100 divrt 8668 ip from any to any\n";

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, good, strlen(good)), (ssize_t)strlen(good));
	assert_int_equal(config_parse_file(path, &rs, err, sizeof(err)), 0);
	assert_int_equal(rs.n, 1);
	assert_int_equal(rs.rules[0].arg, 8668);
	ruleset_free(&rs);

	assert_int_equal(ftruncate(fd, 0), 0);
	assert_int_equal(pwrite(fd, bad, strlen(bad), 0), (ssize_t)strlen(bad));
	assert_int_equal(config_parse_file(path, &rs, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "%s:2: unknown action 'divrt'", path);
	assert_string_equal(err, want);
	assert_null(rs.rules);
	close(fd);
	unlink(path);

	assert_int_equal(config_parse_file(path, &rs, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "%s: cannot read: %s", path,
		 strerror(ENOENT));
	assert_string_equal(err, want);

	assert_int_equal(config_parse_file("/", &rs, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "/: cannot read: %s", strerror(EISDIR));
	assert_string_equal(err, want);
	assert_null(rs.rules);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_rule),
		cmocka_unit_test(test_actions),
		cmocka_unit_test(test_protocols),
		cmocka_unit_test(test_addresses),
		cmocka_unit_test(test_ports),
		cmocka_unit_test(test_options),
		cmocka_unit_test(test_comments_and_blanks),
		cmocka_unit_test(test_stable_order),
		cmocka_unit_test(test_autonumber),
		cmocka_unit_test(test_long_lines),
		cmocka_unit_test(test_small_err_buffer),
		cmocka_unit_test(test_bad_lines),
		cmocka_unit_test(test_bad_limits),
		cmocka_unit_test(test_too_many_divert_ports),
		cmocka_unit_test(test_file),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
