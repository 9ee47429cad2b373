/*
 * test_rules.c: unit tests for rules.c, and the golden files.
 *
 * The golden files pin the generated firewall text byte for byte:
 * tests/golden/NAME.conf is compiled with mark mask 0xffff0000 and compared
 * with NAME.nft, NAME.ipt4 and NAME.ipt6; contrib/nft-rules/ holds the
 * documented examples, checked the same way so they cannot go stale.
 * DIVERTD_SRCDIR (set by ctest) locates them.  After a deliberate change to
 * the generator run once with DIVERTD_GOLDEN_WRITE=1 to rewrite the files,
 * review `git diff`, and run tests/golden/check-syntax.sh against the kernel.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "divertd.h"
#include "divert_wire.h"

static const char *const golden_cases[] = {
	"tests/golden/empty",
	"tests/golden/icmp-echo-in",
	"tests/golden/icmp-echo-out",
	"tests/golden/router",
	"tests/golden/same-number",
	"tests/golden/skipto",
	"tests/golden/tee-count",
	"tests/golden/allow-deny",
	"tests/golden/ports",
	"tests/golden/negations",
	"tests/golden/me",
	"tests/golden/ipv6",
	"tests/golden/interfaces",
	"tests/golden/protocols",
	"tests/golden/autonumber",
	"contrib/nft-rules/natd",
	"contrib/nft-rules/ids-tee",
	"contrib/nft-rules/dns-inspect",
};

/* ---- helpers ------------------------------------------------------------ */

static struct mark_layout layout(uint32_t mask)
{
	struct mark_layout ml;

	assert_int_equal(mark_layout_init(&ml, mask), 0);
	return ml;
}

static struct ruleset parse(const char *text)
{
	struct ruleset rs = { 0 };
	char err[256];

	if (config_parse_string(text, "t", &rs, err, sizeof(err)) != 0)
		fail_msg("parse failed: %s", err);
	return rs;
}

static char *read_all(const char *path)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t len = 0, cap = 0, got;

	if (!f)
		return NULL;
	do {
		if (cap - len < 4096) {
			cap = cap ? cap * 2 : 65536;
			buf = realloc(buf, cap);
			assert_non_null(buf);
		}
		got = fread(buf + len, 1, cap - len - 1, f);
		len += got;
	} while (got > 0);
	fclose(f);
	buf[len] = '\0';
	return buf;
}

static void write_all(const char *path, const char *text)
{
	FILE *f = fopen(path, "we");

	if (!f)
		fail_msg("cannot write %s", path);
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}

/* Count the lines of text that contain needle. */
static int count_lines(const char *text, const char *needle)
{
	int n = 0;

	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		char *line = strndup(p, len);

		if (strstr(line, needle))
			n++;
		free(line);
		p += len + (nl ? 1 : 0);
	}
	return n;
}

/*
 * A copy of one generated line without what counts it (golden files and
 * test_counter_labels check that part): the iptables comment match, and
 * nft's counter before the verdict and comment at the end.
 */
static char *unlabeled(const char *line, size_t len)
{
	static const char *const cut[] = {
		" -m comment --comment \"rule ", " comment \"rule ",
	};
	char *s = strndup(line, len), *p;

	assert_non_null(s);
	for (size_t i = 0; i < 2; i++) {
		p = strstr(s, cut[i]);
		if (p != NULL) {
			char *end = strchr(p + strlen(cut[i]), '"');

			assert_non_null(end);
			memmove(p, end + 1, strlen(end + 1) + 1);
		}
	}
	p = strstr(s, "counter ");
	if (p != NULL && (p == s || p[-1] == ' ' || p[-1] == '\t') &&
	    strncmp(p, "counter packets", 15) != 0)
		memmove(p, p + 8, strlen(p + 8) + 1);
	return s;
}

/* True when text has line as a whole line, counter labels aside. */
static bool has_line(const char *text, const char *line)
{
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		char *got = unlabeled(p, len);
		bool same = strcmp(got, line) == 0;

		free(got);
		if (same)
			return true;
		p += len + (nl ? 1 : 0);
	}
	return false;
}

#define assert_has_line(text, line)                                     \
	do {                                                            \
		if (!has_line((text), (line)))                          \
			fail_msg("missing line:\n%s\nin:\n%s", (line), (text)); \
	} while (0)

/* ---- golden files ------------------------------------------------------- */

/* Compare, and on mismatch name the first differing line of each. */
static int golden_compare(const char *path, const char *want, const char *got)
{
	int line = 1;
	const char *w = want, *g = got;

	if (strcmp(want, got) == 0)
		return 0;
	while (*w && *w == *g) {
		if (*w == '\n')
			line++;
		w++;
		g++;
	}
	while (w > want && w[-1] != '\n')
		w--;
	while (g > got && g[-1] != '\n')
		g--;
	print_error("%s:%d: generated text differs\n"
		    "  expected: %.*s\n"
		    "  got:      %.*s\n"
		    "  (after a deliberate change: DIVERTD_GOLDEN_WRITE=1 "
		    "test_rules, then review git diff)\n",
		    path, line, (int)strcspn(w, "\n"), w,
		    (int)strcspn(g, "\n"), g);
	return 1;
}

static void test_golden(void **state)
{
	const char *srcdir = getenv("DIVERTD_SRCDIR");
	const char *write = getenv("DIVERTD_GOLDEN_WRITE");
	struct mark_layout ml = layout(0xffff0000u);
	int failures = 0;

	(void)state;
	if (!srcdir)
		srcdir = ".";
	for (size_t i = 0; i < sizeof(golden_cases) / sizeof(*golden_cases);
	     i++) {
		static const char *const ext[] = { "nft", "ipt4", "ipt6" };
		struct ruleset rs = { 0 };
		char path[4096], err[512];
		char *got[3];

		snprintf(path, sizeof(path), "%s/%s.conf", srcdir,
			 golden_cases[i]);
		if (config_parse_file(path, &rs, err, sizeof(err)) != 0)
			fail_msg("%s", err);
		got[0] = rules_nft_text(&rs, &ml);
		got[1] = rules_ipt_text(&rs, &ml, 4);
		got[2] = rules_ipt_text(&rs, &ml, 6);
		for (int k = 0; k < 3; k++) {
			char *want;

			assert_non_null(got[k]);
			snprintf(path, sizeof(path), "%s/%s.%s", srcdir,
				 golden_cases[i], ext[k]);
			if (write && strcmp(write, "1") == 0)
				write_all(path, got[k]);
			want = read_all(path);
			if (!want) {
				print_error("%s: missing (create it with "
					    "DIVERTD_GOLDEN_WRITE=1)\n", path);
				failures++;
			} else {
				failures += golden_compare(path, want, got[k]);
			}
			free(want);
			free(got[k]);
		}
		ruleset_free(&rs);
	}
	assert_int_equal(failures, 0);
}

/* ---- mark layout -------------------------------------------------------- */

static void test_mark_layout(void **state)
{
	struct mark_layout ml = { .mask = 7, .shift = 7 };

	(void)state;
	assert_int_equal(mark_layout_init(&ml, 0xffff0000u), 0);
	assert_int_equal(ml.mask, 0xffff0000u);
	assert_int_equal(ml.shift, 16);
	assert_int_equal(mark_layout_init(&ml, 0x0000ffffu), 0);
	assert_int_equal(ml.shift, 0);
	assert_int_equal(mark_layout_init(&ml, 0x00ffff00u), 0);
	assert_int_equal(ml.shift, 8);
	assert_int_equal(mark_layout_init(&ml, 0xffffffffu), 0);
	assert_int_equal(ml.shift, 0);
	assert_int_equal(mark_layout_init(&ml, 0x7fff8000u), 0);
	assert_int_equal(ml.shift, 15);

	assert_int_equal(mark_layout_init(&ml, 0), -1);
	assert_int_equal(mark_layout_init(&ml, 0x7fff0000u), -1); /* 15 bits */
	assert_int_equal(mark_layout_init(&ml, 0xff00ff00u), -1); /* gap */
	assert_int_equal(mark_layout_init(&ml, 0xfffe0001u), -1);
	assert_int_equal(mark_layout_init(&ml, 0x1u), -1);
	/* failures left the last good layout alone */
	assert_int_equal(ml.mask, 0x7fff8000u);
	assert_int_equal(ml.shift, 15);

	ml = layout(0x00ffff00u);
	assert_int_equal(mark_with_tag(&ml, 0xaa0000bbu, 100), 0xaa0064bbu);
	assert_int_equal(mark_tag(&ml, 0xaa0064bbu), 100);
}

/* ---- tags and ports ----------------------------------------------------- */

static void test_resume_tag(void **state)
{
	struct ruleset rs = parse("100 count ip from any to any\n"
				  "100 count ip from any to any\n"
				  "300 count ip from any to any\n"
				  "65534 count ip from any to any\n");
	struct ruleset empty = { 0 };

	(void)state;
	assert_int_equal(rules_resume_tag(&rs, 0), 0);
	assert_int_equal(rules_resume_tag(&rs, 99), 0);
	assert_int_equal(rules_resume_tag(&rs, 100), 100);
	assert_int_equal(rules_resume_tag(&rs, 101), 100);
	assert_int_equal(rules_resume_tag(&rs, 299), 100);
	assert_int_equal(rules_resume_tag(&rs, 300), 300);
	assert_int_equal(rules_resume_tag(&rs, 65533), 300);
	assert_int_equal(rules_resume_tag(&rs, 65534), 65534);
	assert_int_equal(rules_resume_tag(&rs, 65535), 65534);
	assert_int_equal(rules_resume_tag(&empty, 500), 0);
	ruleset_free(&rs);
}

static void test_find_queue_rule(void **state)
{
	struct ruleset rs = parse("100 count ip from any to any\n"
				  "100 divert 8668 tcp from any to any\n"
				  "100 tee 9000 udp from any to any\n"
				  "200 divert 8668 ip from any to any\n");
	const struct rule *r;

	(void)state;
	r = rules_find_queue_rule(&rs, 100, 8668);
	assert_non_null(r);
	assert_int_equal(r->line, 2);
	r = rules_find_queue_rule(&rs, 100, 9000);
	assert_non_null(r);
	assert_int_equal(r->action, ACT_TEE);
	r = rules_find_queue_rule(&rs, 200, 8668);
	assert_non_null(r);
	assert_int_equal(r->line, 4);
	assert_null(rules_find_queue_rule(&rs, 200, 9000));
	assert_null(rules_find_queue_rule(&rs, 150, 8668));
	assert_null(rules_find_queue_rule(&rs, 300, 8668));
	ruleset_free(&rs);
}

/* Tee rules mark with values that are no rule numbers, counting down from
 * 65535, and the values lead back to their rules. */
static void test_tee_values(void **state)
{
	struct ruleset rs = parse("100 tee 9000 udp from any to any\n"
				  "100 divert 8668 tcp from any to any\n"
				  "65534 count ip from any to any\n"
				  "65533 tee 9001 ip from any to any\n");
	const struct rule *tee1, *tee2;

	(void)state;
	tee1 = &rs.rules[0];
	tee2 = &rs.rules[2];
	assert_int_equal(tee1->action, ACT_TEE);
	assert_int_equal(tee2->action, ACT_TEE);
	/* 65535 means "done"; 65534 and 65533 are rule numbers */
	assert_int_equal(rules_tee_value(&rs, tee1), 65532);
	assert_int_equal(rules_tee_value(&rs, tee2), 65531);
	assert_ptr_equal(rules_find_tee_rule(&rs, 65532, 9000), tee1);
	assert_ptr_equal(rules_find_tee_rule(&rs, 65531, 9001), tee2);
	assert_null(rules_find_tee_rule(&rs, 65532, 9001));	/* other port */
	assert_null(rules_find_tee_rule(&rs, 65535, 9000));	/* done */
	assert_null(rules_find_tee_rule(&rs, 100, 9000));	/* a rule number */
	assert_null(rules_find_tee_rule(&rs, 65530, 9000));	/* no such tee */
	assert_null(rules_find_tee_rule(&rs, 0, 9000));
	ruleset_free(&rs);
}

/* The view a program reading its own queue gets (rules_view, dw_view_*)
 * answers as the daemon does, for every tag and every port of a list. */
static void check_view(const char *text, const uint16_t *ports, size_t nports)
{
	struct ruleset rs = parse(text);
	struct mark_layout ml;
	static uint16_t buf[65536 + 4 * 65536];

	assert_int_equal(mark_layout_init(&ml, 0x0fffff00u), 0);
	for (size_t p = 0; p < nports; p++) {
		size_t len = rules_view(&rs, &ml, ports[p], 5000, NULL, 0);
		const struct dw_view *v = (const struct dw_view *)(void *)buf;

		assert_true(len <= sizeof(buf));
		assert_int_equal(rules_view(&rs, &ml, ports[p], 5000, buf, len - 1), len);
		assert_int_equal(rules_view(&rs, &ml, ports[p], 5000, buf, len), len);
		assert_int_equal(dw_view_check(buf, len), 0);
		assert_int_equal(dw_view_check(buf, len - 1), EINVAL);
		assert_int_equal(v->mask, ml.mask);
		assert_int_equal(v->shift, ml.shift);
		assert_int_equal(v->hold_ms, 5000);
		for (unsigned tag = 0; tag <= 65535; tag++) {
			const struct rule *r = rules_find_tee_rule(&rs, (uint16_t)tag, ports[p]);
			uint16_t rule = 0;
			int tee = dw_view_tee(v, (uint16_t)tag, &rule);

			if (dw_view_resume(v, (uint16_t)tag) != rules_resume_tag(&rs, (uint16_t)tag))
				fail_msg("port %u tag %u: resumes after %u, the daemon says %u",
					 ports[p], tag, dw_view_resume(v, (uint16_t)tag),
					 rules_resume_tag(&rs, (uint16_t)tag));
			if (tee != (r != NULL) || (r != NULL && rule != r->num))
				fail_msg("port %u tag %u: tee %d (rule %u), the daemon says %s",
					 ports[p], tag, tee, rule, r != NULL ? "a tee" : "none");
		}
	}
	ruleset_free(&rs);
}

static void test_view(void **state)
{
	static const uint16_t p1[] = { 9000, 9001, 8668, 1 };
	static const uint16_t p2[] = { 8668, 8669 };

	(void)state;
	check_view("100 tee 9000 udp from any to any\n"
		   "100 divert 8668 tcp from any to any\n"
		   "100 tee 9000 tcp from any to any\n"
		   "65534 count ip from any to any\n"
		   "65533 tee 9001 ip from any to any\n"
		   "300 tee 9000 icmp from any to any\n", p1, 4);
	check_view("10 count ip from any to any\n"
		   "20 skipto 40 ip from any to any\n"
		   "30 divert 8668 ip from any to any\n"
		   "30 divert 8669 udp from any to any\n"
		   "40 tee 8669 ip from any to any\n"
		   "50 allow ip from any to any\n", p2, 2);
	check_view("", p2, 1);		/* no rules: resume 0, no tees */
}

static void test_view_check(void **state)
{
	struct {
		struct dw_view v;
		uint16_t nums[3];
		struct dw_tee tees[2];
	} b = {
		{ 0xffff0000u, 16, 5000, 3, 2 },
		{ 100, 200, 300 },
		{ { 65531, 300 }, { 65532, 100 } },
	};
	uint16_t rule = 0;
	size_t len = dw_view_len(3, 2);	/* 34: no padding after the tees */

	(void)state;
	assert_true(len + 2 <= sizeof(b));
	assert_int_equal(dw_view_check(&b, len), 0);
	assert_int_equal(dw_view_resume(&b.v, 99), 0);
	assert_int_equal(dw_view_resume(&b.v, 100), 100);
	assert_int_equal(dw_view_resume(&b.v, 299), 200);
	assert_int_equal(dw_view_resume(&b.v, 65535), 300);
	assert_true(dw_view_tee(&b.v, 65532, &rule));
	assert_int_equal(rule, 100);
	assert_false(dw_view_tee(&b.v, 65533, &rule));
	assert_int_equal(dw_view_check(&b, len + 2), EINVAL);	/* trailing */
	assert_int_equal(dw_view_check(&b, 19), EINVAL);		/* short */
	b.v.nnums = 4;						/* counts too big */
	assert_int_equal(dw_view_check(&b, len), EINVAL);
	b.v.nnums = 3;
	b.nums[1] = 100;					/* not ascending */
	assert_int_equal(dw_view_check(&b, len), EINVAL);
	b.nums[1] = 200;
	b.tees[1].value = 65531;				/* a value twice */
	assert_int_equal(dw_view_check(&b, len), EINVAL);
	b.tees[1].value = 65532;
	b.v.mask = 0x00ff0000u;					/* 8 bits */
	assert_int_equal(dw_view_check(&b, len), EINVAL);
	b.v.mask = 0xfff0f000u;					/* a hole */
	b.v.shift = 12;
	assert_int_equal(dw_view_check(&b, len), EINVAL);
	b.v.mask = 0xffff0000u;					/* shift wrong */
	b.v.shift = 15;
	assert_int_equal(dw_view_check(&b, len), EINVAL);
	b.v.mask = 0xffffffffu;					/* all 32 bits */
	b.v.shift = 0;
	assert_int_equal(dw_view_check(&b, len), 0);
}

static void test_ports(void **state)
{
	struct ruleset rs = parse("100 divert 9000 ip from any to any\n"
				  "200 tee 80 ip from any to any\n"
				  "300 divert 9000 ip from any to any\n"
				  "400 skipto 500 ip from any to any\n"
				  "500 divert 65535 ip from any to any\n"
				  "600 divert 1 ip from any to any\n");
	uint16_t ports[8] = { 0 };

	(void)state;
	assert_int_equal(rules_ports(&rs, ports, 8), 4);
	assert_int_equal(ports[0], 1);
	assert_int_equal(ports[1], 80);
	assert_int_equal(ports[2], 9000);
	assert_int_equal(ports[3], 65535);
	memset(ports, 0, sizeof(ports));
	assert_int_equal(rules_ports(&rs, ports, 2), 2);
	assert_int_equal(ports[0], 1);
	assert_int_equal(ports[1], 80);
	assert_int_equal(ports[2], 0);
	ruleset_free(&rs);
}

/* ---- generated text, piece by piece -------------------------------------- */

static void test_tag_in_other_mask(void **state)
{
	struct ruleset rs = parse("100 divert 8668 ip from any to any in\n");
	struct mark_layout ml = layout(0x00ffff00u);
	char *ipt = rules_ipt_text(&rs, &ml, 4), *nft = rules_nft_text(&rs, &ml);

	(void)state;
	assert_has_line(ipt, "-A divertd-in-100 -j MARK --set-xmark "
			"0x6400/0xffff00");
	assert_has_line(ipt, "-A divertd-in-100 -m mark --mark "
			"0x6400/0xffff00 -j NFQUEUE --queue-num 8668 "
			"--queue-bypass");
	assert_has_line(ipt, "-A divertd-in -j MARK --set-xmark 0x0/0xffff00");
	assert_has_line(nft, "\t\tmeta mark set meta mark & 0xff0000ff | "
			"0x6400 queue num 8668 bypass");
	assert_int_equal(count_lines(nft, "\t\tmeta mark & 0xffff00 != 0x0 "
				     "counter drop comment \"no divertd\""), 3);
	assert_has_line(nft, "\t\tmeta mark & 0xffff00 < 0x6400 jump in_100");
	assert_has_line(nft, "\t\tmeta mark set meta mark & 0xff0000ff");
	free(ipt);
	free(nft);
	ruleset_free(&rs);
}

static void test_multiport_split(void **state)
{
	/* 20 single ports: 15 + 5.  Ranges weigh 2: 7 ranges + 1 port, then
	 * the rest. */
	struct ruleset rs = parse(
		"100 deny tcp from any to any "
		"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20\n"
		"200 count udp from any 10-11,20-21,30-31,40-41,50-51,60-61,"
		"70-71,80,90-91 to any 53\n"
		"300 count tcp from any 1,2 to any 3,4,5,6,7,8,9,10,11,12,"
		"13,14,15,16,17,18\n");
	struct mark_layout ml = layout(0xffff0000u);
	char *ipt = rules_ipt_text(&rs, &ml, 4);

	(void)state;
	assert_has_line(ipt, "-A divertd-in-100 -p tcp -m multiport --dports "
			"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 -j DROP");
	assert_has_line(ipt, "-A divertd-in-100 -p tcp -m multiport --dports "
			"16,17,18,19,20 -j DROP");
	assert_int_equal(count_lines(ipt, "-A divertd-in-100 -p tcp"), 2);
	assert_has_line(ipt, "-A divertd-in-200 -p udp -m udp --dport 53 "
			"-m multiport --sports 10:11,20:21,30:31,40:41,50:51,"
			"60:61,70:71,80");
	assert_has_line(ipt, "-A divertd-in-200 -p udp -m udp --dport 53 "
			"-m multiport --sports 90:91");
	/* sports 1 chunk x dports 2 chunks */
	assert_int_equal(count_lines(ipt, "-A divertd-out-300 -p tcp"), 2);
	assert_has_line(ipt, "-A divertd-out-300 -p tcp -m multiport --sports "
			"1,2 -m multiport --dports 3,4,5,6,7,8,9,10,11,12,13,"
			"14,15,16,17");
	free(ipt);
	ruleset_free(&rs);
}

static void test_port_overlaps_merged(void **state)
{
	struct ruleset rs = parse("100 count tcp from any to any "
				  "80,1-100,443,443,90-200\n");
	struct mark_layout ml = layout(0xffff0000u);
	char *ipt = rules_ipt_text(&rs, &ml, 6), *nft = rules_nft_text(&rs, &ml);

	(void)state;
	assert_has_line(ipt, "-A divertd-in-100 -p tcp -m multiport --dports "
			"1:200,443");
	assert_has_line(nft, "\t\tmeta l4proto tcp tcp dport { 1-200, 443 } "
			"counter");
	free(ipt);
	free(nft);
	ruleset_free(&rs);
}

static void test_icmptypes(void **state)
{
	struct ruleset rs = parse(
		"100 count icmp from any to any icmptypes 8,0,8\n"
		"200 count icmp from any to any not icmptypes 0,8\n"
		"300 count ipv6-icmp from any to any icmptypes 128\n");
	struct mark_layout ml = layout(0xffff0000u);
	char *ipt4 = rules_ipt_text(&rs, &ml, 4);
	char *ipt6 = rules_ipt_text(&rs, &ml, 6);
	char *nft = rules_nft_text(&rs, &ml);

	(void)state;
	assert_int_equal(count_lines(ipt4, "-A divertd-in-100 -p icmp"), 2);
	assert_has_line(ipt4, "-A divertd-in-100 -p icmp -m icmp --icmp-type 0");
	assert_has_line(ipt4, "-A divertd-in-100 -p icmp -m icmp --icmp-type 8");
	assert_has_line(ipt4, "-A divertd-out-200 -p icmp -m icmp ! "
			"--icmp-type 0 -m icmp ! --icmp-type 8");
	assert_int_equal(count_lines(ipt4, "icmpv6"), 0);
	assert_int_equal(count_lines(ipt6, "--icmp-type"), 0);
	assert_has_line(ipt6, "-A divertd-in-300 -p ipv6-icmp -m icmp6 "
			"--icmpv6-type 128");
	assert_has_line(nft, "\t\tmeta nfproto ipv4 meta l4proto icmp "
			"icmp type { 0, 8 } counter");
	assert_has_line(nft, "\t\tmeta nfproto ipv4 meta l4proto icmp "
			"icmp type != { 0, 8 } counter");
	assert_has_line(nft, "\t\tmeta nfproto ipv6 meta l4proto ipv6-icmp "
			"icmpv6 type { 128 } counter");
	free(ipt4);
	free(ipt6);
	free(nft);
	ruleset_free(&rs);
}

static void test_families_split(void **state)
{
	struct ruleset rs = parse(
		"100 count ip from 192.0.2.0/24 to any\n"
		"200 count ip from 2001:db8::/32 to any\n"
		"300 count ip from me to any\n"
		"400 count ip from any to me6\n");
	struct mark_layout ml = layout(0xffff0000u);
	char *ipt4 = rules_ipt_text(&rs, &ml, 4);
	char *ipt6 = rules_ipt_text(&rs, &ml, 6);

	(void)state;
	assert_has_line(ipt4, ":divertd-in-100 - [0:0]");
	assert_has_line(ipt4, ":divertd-in-300 - [0:0]");
	assert_false(has_line(ipt4, ":divertd-in-200 - [0:0]"));
	assert_false(has_line(ipt4, ":divertd-in-400 - [0:0]"));
	assert_has_line(ipt6, ":divertd-in-200 - [0:0]");
	assert_has_line(ipt6, ":divertd-in-400 - [0:0]");
	assert_false(has_line(ipt6, ":divertd-in-100 - [0:0]"));
	/* each family's driver guards its own segments: tag < number */
	assert_has_line(ipt4, "-A divertd-in -m bpf --bytecode \"5,32 0 0 "
			"4294963220,84 0 0 4294901760,53 1 0 19660800,6 0 0 1,"
			"6 0 0 0\" -j divertd-in-300");
	assert_has_line(ipt6, "-A divertd-in -m bpf --bytecode \"5,32 0 0 "
			"4294963220,84 0 0 4294901760,53 1 0 13107200,6 0 0 1,"
			"6 0 0 0\" -j divertd-in-200");
	assert_false(strstr(ipt6, "-j divertd-in-100\n"));
	assert_has_line(ipt4, "-A divertd-in-300 -m addrtype --src-type LOCAL");
	assert_has_line(ipt6, "-A divertd-in-400 -m addrtype --dst-type LOCAL");
	free(ipt4);
	free(ipt6);
	ruleset_free(&rs);
}

static void test_interfaces(void **state)
{
	struct ruleset rs = parse(
		"100 count ip from any to any xmit eth0\n"
		"200 count ip from any to any not xmit eth0\n"
		"300 count ip from any to any via eth0 via eth1\n"
		"400 count ip from any to any via eth0 not recv eth0\n"
		"500 count ip from any to any not via a not via b\n"
		"500 deny ip from any to any\n"
		"600 count ip from any to any recv eth1 xmit eth2\n");
	struct mark_layout ml = layout(0xffff0000u);
	char *ipt = rules_ipt_text(&rs, &ml, 4), *nft = rules_nft_text(&rs, &ml);

	(void)state;
	/* xmit never matches incoming */
	assert_false(has_line(ipt, ":divertd-in-100 - [0:0]"));
	assert_has_line(ipt, "-A divertd-out-100 -o eth0");
	assert_has_line(ipt, "-A divertd-in-200");
	assert_has_line(ipt, "-A divertd-out-200 ! -o eth0");
	/* contradictions are left out */
	assert_false(has_line(ipt, ":divertd-in-300 - [0:0]"));
	assert_false(has_line(ipt, ":divertd-out-300 - [0:0]"));
	assert_false(has_line(ipt, ":divertd-in-400 - [0:0]"));
	assert_has_line(ipt, "-A divertd-out-400 ! -i eth0 -o eth0");
	assert_false(has_line(nft, "\tchain in_300 {"));
	/* two negated names: escape into a continuation chain */
	assert_has_line(ipt, ":divertd-in-500.1 - [0:0]");
	assert_has_line(ipt, "-A divertd-in-500 -i a -g divertd-in-500.1");
	assert_has_line(ipt, "-A divertd-in-500 -i b -g divertd-in-500.1");
	assert_has_line(ipt, "-A divertd-in-500");
	assert_has_line(ipt, "-A divertd-in-500 -g divertd-in-500.1");
	assert_has_line(ipt, "-A divertd-in-500.1 -j DROP");
	assert_false(strstr(ipt, "divertd-in-end"));
	assert_has_line(nft, "\t\tiifname != { \"a\", \"b\" } counter");
	assert_has_line(ipt, "-A divertd-out-600 -i eth1 -o eth2");
	assert_has_line(nft, "\t\tiifname \"eth1\" oifname \"eth2\" counter");
	free(ipt);
	free(nft);
	ruleset_free(&rs);
}

static void test_skipto_targets(void **state)
{
	struct ruleset rs = parse(
		"100 skipto 250 ip from any to any\n"
		"110 skipto 300 ip from any to any\n"
		"120 skipto 65535 ip from any to any\n"
		"300 count ip from any to any in\n"
		"400 count ip from any to any\n");
	struct mark_layout ml = layout(0xffff0000u);
	char *ipt = rules_ipt_text(&rs, &ml, 4), *nft = rules_nft_text(&rs, &ml);

	(void)state;
	/* a skipto raises the tag to the last number below its target and
	 * returns to the driver, whose guards go on from there */
	assert_has_line(ipt, "-A divertd-in-100 -j MARK --set-xmark "
			"0x780000/0xffff0000");		/* 250: after 120 */
	assert_has_line(ipt, "-A divertd-in-100 -m mark --mark "
			"0x780000/0xffff0000 -j RETURN");
	assert_has_line(ipt, "-A divertd-out-110 -j MARK --set-xmark "
			"0x780000/0xffff0000");		/* 300: after 120 */
	assert_has_line(ipt, "-A divertd-in-120 -j MARK --set-xmark "
			"0x1900000/0xffff0000");	/* past the last */
	assert_has_line(nft, "\t\tmeta mark set meta mark & 0x0000ffff | "
			"0x780000 return");
	assert_has_line(nft, "\t\tmeta mark set meta mark & 0x0000ffff | "
			"0x1900000 return");
	free(ipt);
	free(nft);
	ruleset_free(&rs);
}

static void test_empty_ruleset(void **state)
{
	struct ruleset rs = { 0 };
	struct mark_layout ml = layout(0xffff0000u);
	char *ipt = rules_ipt_text(&rs, &ml, 6), *nft = rules_nft_text(&rs, &ml);

	(void)state;
	assert_string_equal(ipt,
		"*mangle\n"
		":divertd-in - [0:0]\n"
		":divertd-out - [0:0]\n"
		"-A divertd-in -m conntrack --ctstate UNTRACKED -m comment "
		"--comment \"activates defragmentation\"\n"
		"-A divertd-in -j MARK --set-xmark 0x0/0xffff0000\n"
		"-A divertd-out -m conntrack --ctstate UNTRACKED -m comment "
		"--comment \"activates defragmentation\"\n"
		"-A divertd-out -j MARK --set-xmark 0x0/0xffff0000\n"
		"-I PREROUTING 1 -j divertd-in\n"
		"-I OUTPUT 1 -j divertd-out\n"
		"-I FORWARD 1 -j divertd-out\n"
		"COMMIT\n");
	assert_false(strstr(nft, "jump"));
	assert_has_line(nft, "\t\tmeta mark set meta mark & 0x0000ffff");
	assert_null(rules_ipt_text(&rs, &ml, 5));
	free(ipt);
	free(nft);
}

/* ---- rules_format: back to ipfw text ------------------------------------ */

static void assert_addr_equal(const struct rule_addr *a, const struct rule_addr *b)
{
	assert_int_equal(a->kind, b->kind);
	assert_int_equal(a->neg, b->neg);
	if (a->kind == ADDR_PREFIX) {
		assert_int_equal(a->family, b->family);
		assert_int_equal(a->plen, b->plen);
		assert_memory_equal(&a->addr, &b->addr,
				    a->family == AF_INET ? 4 : 16);
	}
	assert_int_equal(a->nports, b->nports);
	for (int i = 0; i < a->nports; i++) {
		assert_int_equal(a->ports[i].lo, b->ports[i].lo);
		assert_int_equal(a->ports[i].hi, b->ports[i].hi);
	}
}

static void assert_rule_equal(const struct rule *a, const struct rule *b)
{
	assert_int_equal(a->num, b->num);
	assert_int_equal(a->action, b->action);
	assert_int_equal(a->arg, b->arg);
	assert_int_equal(a->proto, b->proto);
	assert_int_equal(a->families, b->families);
	assert_int_equal(a->dirs, b->dirs);
	assert_addr_equal(&a->src, &b->src);
	assert_addr_equal(&a->dst, &b->dst);
	assert_int_equal(a->nifaces, b->nifaces);
	for (int i = 0; i < a->nifaces; i++) {
		assert_int_equal(a->ifaces[i].kind, b->ifaces[i].kind);
		assert_int_equal(a->ifaces[i].neg, b->ifaces[i].neg);
		assert_string_equal(a->ifaces[i].name, b->ifaces[i].name);
	}
	assert_int_equal(a->nicmptypes, b->nicmptypes);
	assert_memory_equal(a->icmptypes, b->icmptypes, (size_t)a->nicmptypes);
	if (a->nicmptypes > 0)
		assert_int_equal(a->icmptypes_neg, b->icmptypes_neg);
}

/* Parse, format every rule, parse that text again: the same rules, and
 * formatting the second parse gives the same text. */
static void round_trip(const char *text)
{
	struct ruleset a = parse(text), b;
	char *out = NULL, *again = NULL;
	size_t len = 0, len2 = 0;

	for (size_t i = 0; i < a.n; i++) {
		char *line = rules_format(&a.rules[i]);

		assert_non_null(line);
		out = realloc(out, len + strlen(line) + 2);
		assert_non_null(out);
		len += (size_t)sprintf(out + len, "%s\n", line);
		free(line);
	}
	b = parse(out ? out : "");
	assert_int_equal(a.n, b.n);
	for (size_t i = 0; i < a.n; i++) {
		char *line = rules_format(&b.rules[i]);

		assert_rule_equal(&a.rules[i], &b.rules[i]);
		again = realloc(again, len2 + strlen(line) + 2);
		assert_non_null(again);
		len2 += (size_t)sprintf(again + len2, "%s\n", line);
		free(line);
	}
	if (a.n > 0)
		assert_string_equal(out, again);
	free(out);
	free(again);
	ruleset_free(&a);
	ruleset_free(&b);
}

static void test_format_text(void **state)
{
	struct ruleset rs = parse(
		"100 divert 8668 icmp from any to any in icmptypes 8\n"
		"tee 9000 tcp from not 10.1.2.3/8 80,443,1000-2000 to me 22 out\n"
		"300 allow ip4 from any to any not via eth0 recv lo\n"
		"400 deny ip from 2001:db8::1 to 2001:db8::/32\n"
		"500 skipto 700 ipv6-icmp from any to me6 not icmptypes 128,129\n"
		"600 count 47 from any to any\n"
		"650 allow ip6 from any to any\n"
		"660 allow 253 from 192.0.2.1/32 to any\n");
	static const char *const want[] = {
		"00100 divert 8668 icmp from any to any in icmptypes 8",
		"00200 tee 9000 tcp from not 10.0.0.0/8 80,443,1000-2000 to me 22 out",
		"00300 allow ip4 from any to any not via eth0 recv lo",
		"00400 deny ip from 2001:db8::1 to 2001:db8::/32",
		"00500 skipto 700 ipv6-icmp from any to me6 not icmptypes 128,129",
		"00600 count gre from any to any",
		"00650 allow ip6 from any to any",
		"00660 allow 253 from 192.0.2.1 to any",
	};

	(void)state;
	assert_int_equal(rs.n, sizeof(want) / sizeof(want[0]));
	for (size_t i = 0; i < rs.n; i++) {
		char *line = rules_format(&rs.rules[i]);

		assert_string_equal(line, want[i]);
		free(line);
	}
	ruleset_free(&rs);
}

static void test_format_round_trip(void **state)
{
	const char *srcdir = getenv("DIVERTD_SRCDIR");
	char path[4096];

	(void)state;
	round_trip("100 divert 8668 icmp from any to any in icmptypes 8\n");
	round_trip("1 allow udp from any 0,53,65535 to not ::/0 1-2 not out\n"
		   "65534 deny ipv6 from me6 to any xmit veth0 via eth0.5\n"
		   "10 skipto 65535 ip from me to 198.51.100.0/24 not recv a@b\n"
		   "20 tee 1 icmp from any to any not icmptypes 0,3,8\n"
		   "30 count 0 from any to any\n"
		   "40 divert 65535 udplite from any to any in\n"
		   "50 allow ip4 from not me to any\n"
		   "60 allow ip from 2001:db8::/127 to any\n");
	if (srcdir == NULL)
		srcdir = ".";
	/* every config the golden tests know */
	for (size_t i = 0; i < sizeof(golden_cases) / sizeof(golden_cases[0]); i++) {
		char *text;

		snprintf(path, sizeof(path), "%s/%s.conf", srcdir, golden_cases[i]);
		text = read_all(path);
		if (text == NULL)
			fail_msg("cannot read %s", path);
		round_trip(text);
		free(text);
	}
}

/* Every firewall rule that a config rule becomes names it, and the name
 * leads back to it: divertctl show adds the counts up by this. */
static void test_counter_labels(void **state)
{
	struct ruleset rs = parse("100 count tcp from any to any\n"
				  "100 deny udp from any to any 1,2,3,4,5,6,7,8,"
				  "9,10,11,12,13,14,15,16,17\n"
				  "200 tee 9000 ip from any to any\n"
				  "100 allow icmp from any to any icmptypes 0,8\n");
	struct mark_layout ml = layout(0xffff0000u);
	char *ipt = rules_ipt_text(&rs, &ml, 4), *nft = rules_nft_text(&rs, &ml);
	char label[32];

	(void)state;
	rules_label(&rs, &rs.rules[0], label, sizeof(label));
	assert_string_equal(label, "rule 100 #1");
	rules_label(&rs, &rs.rules[2], label, sizeof(label));
	assert_string_equal(label, "rule 100 #3");
	rules_label(&rs, &rs.rules[3], label, sizeof(label));
	assert_string_equal(label, "rule 200 #1");
	for (size_t i = 0; i < rs.n; i++) {
		rules_label(&rs, &rs.rules[i], label, sizeof(label));
		assert_int_equal(rules_label_index(&rs, label), (long)i);
	}
	assert_int_equal(rules_label_index(&rs, "rule 100 #4"), -1);
	assert_int_equal(rules_label_index(&rs, "rule 300 #1"), -1);
	assert_int_equal(rules_label_index(&rs, "rule 100 #0"), -1);
	assert_int_equal(rules_label_index(&rs, "rule 100 #1 "), -1);
	assert_int_equal(rules_label_index(&rs, "activates defragmentation"), -1);

	/* iptables: the udp rule's 17 ports take two lines, icmptypes one
	 * line per type; each counts for its rule, in both passes */
	assert_int_equal(count_lines(ipt, "--comment \"rule 100 #2\" -j DROP"), 4);
	assert_int_equal(count_lines(ipt, "--comment \"rule 100 #3\" -j MARK"), 4);
	assert_int_equal(count_lines(ipt, "--comment \"rule 100 #1\""), 2);
	/* the tee's mark line counts it, not the NFQUEUE line after it */
	assert_int_equal(count_lines(ipt, "--comment \"rule 200 #1\" -j MARK"), 2);
	assert_int_equal(count_lines(ipt, "NFQUEUE"), 2);
	assert_int_equal(count_lines(ipt, "-m comment --comment \"rule "), 12);
	/* nft: one rule per pass, each with a counter ahead of its verdict */
	assert_int_equal(count_lines(nft, "\t\tmeta l4proto tcp counter comment "
				     "\"rule 100 #1\""), 2);
	assert_int_equal(count_lines(nft, "counter meta mark set meta mark & "
				     "0x0000ffff | 0xfffe0000 queue num 9000 "
				     "bypass comment \"rule 200 #1\""), 2);
	assert_int_equal(count_lines(nft, " counter drop comment \"rule 100 #2\""), 2);
	assert_int_equal(count_lines(nft, "comment \"rule "), 8);
	free(ipt);
	free(nft);
	ruleset_free(&rs);
}

/*
 * Every queue rule bypasses a queue nobody reads, and a chain right after
 * ours on each hook catches what it let through (our bits still set):
 * counted and dropped, or with -F counted and passed with our bits
 * cleared.  The iptables backend loads those chains with nft; where it
 * cannot, the queue rules do not bypass (but with -F).
 */
static void test_fail_open(void **state)
{
	struct ruleset rs = parse("100 divert 8668 udp from any to any\n"
				  "200 tee 9000 tcp from any to any\n"
				  "300 deny icmp from any to any\n");
	struct mark_layout ml = layout(0xffff0000u);
	char *ipt, *nft, *lost, *plain, *plain_nft, *plain_lost, *bare, *bare_nft;

	(void)state;
	assert_true(ml.lost);
	plain = rules_ipt_text(&rs, &ml, 4);
	plain_nft = rules_nft_text(&rs, &ml);
	plain_lost = rules_nft_lost_text(&ml);
	ml.fail_open = true;
	ipt = rules_ipt_text(&rs, &ml, 4);
	nft = rules_nft_text(&rs, &ml);
	lost = rules_nft_lost_text(&ml);
	for (int k = 0; k < 2; k++) {
		const char *i = k ? ipt : plain, *n = k ? nft : plain_nft;
		const char *l = k ? lost : plain_lost;

		assert_int_equal(count_lines(i, "-j NFQUEUE --queue-num 8668 --queue-bypass"), 2);
		assert_int_equal(count_lines(i, "-j NFQUEUE --queue-num 9000 --queue-bypass"), 2);
		assert_int_equal(count_lines(i, "NFQUEUE"), 4);
		assert_int_equal(count_lines(n, "queue num 8668 bypass comment"), 2);
		assert_int_equal(count_lines(n, "queue num 9000 bypass comment"), 2);
		/* on each hook, right after ours; the same chains alone for
		 * the iptables backend; nothing of them in iptables' text */
		assert_int_equal(count_lines(n, "priority mangle + 1; policy accept;"), 3);
		assert_int_equal(count_lines(l, "priority mangle + 1; policy accept;"), 3);
		assert_int_equal(count_lines(l, "comment \"no divertd\""), 3);
		assert_non_null(strstr(n, strchr(l, '\n') + 1 + strlen("\tchain")));
		assert_null(strstr(i, "no divertd"));
	}
	assert_int_equal(count_lines(plain_nft, "\t\tmeta mark & 0xffff0000 != 0x0 "
				     "counter drop comment \"no divertd\""), 3);
	assert_int_equal(count_lines(nft, "\t\tmeta mark & 0xffff0000 != 0x0 "
				     "counter meta mark set meta mark & 0x0000ffff "
				     "comment \"no divertd\""), 3);
	/* nothing else changes */
	assert_string_equal(ipt, plain);

	/* no counting chains: the kernel drops what finds no divertd, or
	 * with -F bypass passes it */
	ml.fail_open = false;
	ml.lost = false;
	bare = rules_ipt_text(&rs, &ml, 4);
	bare_nft = rules_nft_text(&rs, &ml);
	assert_int_equal(count_lines(bare, "bypass"), 0);
	assert_int_equal(count_lines(bare_nft, "bypass"), 0);
	assert_null(strstr(bare_nft, "no divertd"));
	assert_int_equal(strlen(bare), strlen(plain) - 4 * strlen(" --queue-bypass"));
	free(plain);
	free(plain_nft);
	free(plain_lost);
	free(ipt);
	free(nft);
	free(lost);
	free(bare);
	free(bare_nft);
	ruleset_free(&rs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mark_layout),
		cmocka_unit_test(test_resume_tag),
		cmocka_unit_test(test_find_queue_rule),
		cmocka_unit_test(test_tee_values),
		cmocka_unit_test(test_view),
		cmocka_unit_test(test_view_check),
		cmocka_unit_test(test_ports),
		cmocka_unit_test(test_tag_in_other_mask),
		cmocka_unit_test(test_multiport_split),
		cmocka_unit_test(test_port_overlaps_merged),
		cmocka_unit_test(test_icmptypes),
		cmocka_unit_test(test_families_split),
		cmocka_unit_test(test_interfaces),
		cmocka_unit_test(test_skipto_targets),
		cmocka_unit_test(test_empty_ruleset),
		cmocka_unit_test(test_golden),
		cmocka_unit_test(test_format_text),
		cmocka_unit_test(test_format_round_trip),
		cmocka_unit_test(test_counter_labels),
		cmocka_unit_test(test_fail_open),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
