/*
 * fuzz_config.c: libFuzzer target for the rule compiler, src/config.c and
 * src/rules.c, linked unchanged (no stubs: neither touches the kernel).
 *
 * The input is a config file.  config_parse_string() must refuse it with
 * "NAME:LINE: problem" in a buffer of any size, or accept it; both runs
 * (a large and a tiny, exact-size error buffer) must agree.  An accepted
 * ruleset must then hold what the rest of the daemon relies on, checked
 * here property by property (an abort names the one that broke):
 *   - the struct: numbers 1..65534, sorted, equal numbers in file order;
 *     families, directions, list sizes, interface names in range;
 *   - rules_nft_text(), rules_ipt_text() for both families: text for any
 *     accepted ruleset, balanced braces and quotes, iptables chain names
 *     of at most 28 characters (iptables-restore refuses longer ones);
 *   - rules_format() of every rule parses back (config_parse_string) to
 *     the same struct rule, which formats to the same line: divertctl list
 *     and the counters' carry-over (counters.c) depend on that;
 *   - the tag arithmetic: rules_resume_tag(), rules_find_queue_rule(),
 *     rules_tee_value() / rules_find_tee_rule() (each tee rule's value is
 *     no rule number, distinct, and leads back to that rule), rules_label()
 *     / rules_label_index(), rules_ports(), mark_with_tag() / mark_tag();
 * under a mark layout picked from the input (0xffff0000 most often), with
 * or without fail-open (bypass); and mark_layout_init() takes a mask
 * exactly when it is one run of 16 or more ones.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "divertd.h"
#include "fuzz_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint32_t masks[] = {
	0xffff0000u, 0xffff0000u, 0xffff0000u, 0xffff0000u,
	0x0000ffffu, 0x00ffff00u, 0xffffffffu, 0x7fff8000u,
};

static void check_rule_struct(const struct rule *r)
{
	FZ_CHECK(r->num >= 1 && r->num <= 65534, "rule number %u", r->num);
	FZ_CHECK(r->families != 0 && (r->families & ~(FAM_V4 | FAM_V6)) == 0,
		 "rule %u families %#x", r->num, r->families);
	FZ_CHECK(r->dirs != 0 && (r->dirs & ~(DIR_IN | DIR_OUT)) == 0,
		 "rule %u dirs %#x", r->num, r->dirs);
	FZ_CHECK(r->src.nports >= 0 && r->src.nports <= RULE_MAX_PORTS &&
		 r->dst.nports >= 0 && r->dst.nports <= RULE_MAX_PORTS,
		 "rule %u nports", r->num);
	for (int i = 0; i < r->src.nports; i++)
		FZ_CHECK(r->src.ports[i].lo <= r->src.ports[i].hi,
			 "rule %u source port range", r->num);
	for (int i = 0; i < r->dst.nports; i++)
		FZ_CHECK(r->dst.ports[i].lo <= r->dst.ports[i].hi,
			 "rule %u destination port range", r->num);
	FZ_CHECK(r->nifaces >= 0 && r->nifaces <= RULE_MAX_IFACES,
		 "rule %u nifaces %d", r->num, r->nifaces);
	for (int i = 0; i < r->nifaces; i++) {
		size_t l = strnlen(r->ifaces[i].name, IFNAMSIZ);

		FZ_CHECK(l > 0 && l < IFNAMSIZ, "rule %u interface name", r->num);
	}
	FZ_CHECK(r->nicmptypes >= 0 && r->nicmptypes <= RULE_MAX_ICMPTYPES,
		 "rule %u nicmptypes %d", r->num, r->nicmptypes);
	switch (r->action) {
	case ACT_DIVERT:
	case ACT_TEE:
		FZ_CHECK(r->arg >= 1, "rule %u port 0", r->num);
		break;
	case ACT_SKIPTO:
		FZ_CHECK(r->arg > r->num, "rule %u skipto %u backwards",
			 r->num, r->arg);
		break;
	case ACT_ALLOW:
	case ACT_DENY:
	case ACT_COUNT:
		break;
	default:
		FZ_CHECK(0, "rule %u action %d", r->num, (int)r->action);
	}
}

static bool addr_same(const struct rule_addr *a, const struct rule_addr *b)
{
	if (a->kind != b->kind || a->neg != b->neg || a->nports != b->nports)
		return false;
	if (a->kind == ADDR_PREFIX &&
	    (a->family != b->family || a->plen != b->plen ||
	     memcmp(&a->addr, &b->addr, a->family == AF_INET ? 4 : 16) != 0))
		return false;
	return memcmp(a->ports, b->ports,
		      sizeof(a->ports[0]) * (size_t)a->nports) == 0;
}

/* Everything but the line number. */
static bool rule_same(const struct rule *a, const struct rule *b)
{
	if (a->num != b->num || a->action != b->action || a->arg != b->arg ||
	    a->proto != b->proto || a->families != b->families ||
	    a->dirs != b->dirs || !addr_same(&a->src, &b->src) ||
	    !addr_same(&a->dst, &b->dst) || a->nifaces != b->nifaces ||
	    a->nicmptypes != b->nicmptypes ||
	    a->icmptypes_neg != b->icmptypes_neg ||
	    memcmp(a->icmptypes, b->icmptypes, (size_t)a->nicmptypes) != 0)
		return false;
	for (int i = 0; i < a->nifaces; i++)
		if (a->ifaces[i].kind != b->ifaces[i].kind ||
		    a->ifaces[i].neg != b->ifaces[i].neg ||
		    strcmp(a->ifaces[i].name, b->ifaces[i].name) != 0)
			return false;
	return true;
}

/* rules_format(r) parses back to r, and formats the same again. */
static void check_round_trip(const struct rule *r)
{
	char *line = rules_format(r), *again;
	struct ruleset one = { 0 };
	char err[512];

	FZ_CHECK(line != NULL, "rules_format: NULL");
	FZ_CHECK(strchr(line, '\n') == NULL && strchr(line, '#') == NULL,
		 "rules_format: not one line: '%s'", line);
	FZ_CHECK(config_parse_string(line, "format", &one, err,
				     sizeof(err)) == 0,
		 "rules_format gave '%s', which does not parse: %s", line, err);
	FZ_CHECK(one.n == 1, "'%s' parsed to %zu rules", line, one.n);
	FZ_CHECK(rule_same(r, &one.rules[0]),
		 "'%s' parses back to a different rule", line);
	again = rules_format(&one.rules[0]);
	FZ_CHECK(again != NULL && strcmp(line, again) == 0,
		 "'%s' formats back as '%s'", line, again ? again : "(null)");
	free(again);
	free(line);
	ruleset_free(&one);
}

static void check_balanced(const char *text, const char *what)
{
	long depth = 0, quotes = 0;

	for (const char *p = text; *p; p++) {
		if (*p == '{')
			depth++;
		else if (*p == '}')
			depth--;
		else if (*p == '"')
			quotes++;
		FZ_CHECK(depth >= 0, "%s: '}' without '{'", what);
	}
	FZ_CHECK(depth == 0, "%s: unbalanced braces", what);
	FZ_CHECK(quotes % 2 == 0, "%s: unbalanced quotes", what);
}

/* Every line of iptables-restore input is one it takes, and each chain it
 * declares has a name iptables accepts (28 characters at most). */
static void check_ipt(const char *text)
{
	const char *p = text;

	check_balanced(text, "iptables text");
	FZ_CHECK(strncmp(text, "*mangle\n", 8) == 0, "iptables text start");
	while (*p) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);

		FZ_CHECK(nl != NULL, "iptables text: last line unterminated");
		if (p[0] == ':') {
			const char *sp = memchr(p, ' ', len);

			FZ_CHECK(sp != NULL && sp - p - 1 <= 28,
				 "iptables chain name too long: %.*s",
				 (int)len, p);
		} else {
			FZ_CHECK(p[0] == '*' || strncmp(p, "-A ", 3) == 0 ||
				 strncmp(p, "-I ", 3) == 0 ||
				 strncmp(p, "COMMIT", 6) == 0,
				 "iptables text line: %.*s", (int)len, p);
		}
		p += len + 1;
	}
}

static void check_tags(const struct ruleset *rs, const struct mark_layout *ml)
{
	uint16_t ports[1024];
	size_t nports = rules_ports(rs, ports, 1024);
	uint16_t *tee_values = calloc(rs->n + 1, sizeof(*tee_values));
	size_t ntee = 0;
	char label[64];

	FZ_CHECK(tee_values != NULL, "out of memory");
	for (size_t i = 1; i < nports; i++)
		FZ_CHECK(ports[i - 1] < ports[i], "rules_ports not ascending");
	for (size_t i = 0; i < rs->n; i++) {
		const struct rule *r = &rs->rules[i];
		const struct rule *q;
		uint32_t m;

		if (i > 0)
			FZ_CHECK(rs->rules[i - 1].num < r->num ||
				 (rs->rules[i - 1].num == r->num &&
				  rs->rules[i - 1].line < r->line),
				 "rules not sorted at %zu", i);
		check_rule_struct(r);

		FZ_CHECK(rules_resume_tag(rs, r->num) == r->num,
			 "resume tag of %u", r->num);
		FZ_CHECK(rules_resume_tag(rs, (uint16_t)(r->num - 1)) < r->num,
			 "resume tag below %u", r->num);

		rules_label(rs, r, label, sizeof(label));
		FZ_CHECK(rules_label_index(rs, label) == (long)i,
			 "label '%s' names rule %ld, not %zu", label,
			 rules_label_index(rs, label), i);

		m = mark_with_tag(ml, 0xa5a5a5a5u, r->num);
		FZ_CHECK(mark_tag(ml, m) == r->num, "mark tag %u", r->num);
		FZ_CHECK((m & ~ml->mask) == (0xa5a5a5a5u & ~ml->mask),
			 "mark_with_tag touched other bits");

		/* a rule number is never a tee value */
		FZ_CHECK(rules_find_tee_rule(rs, r->num, r->arg) == NULL,
			 "rule number %u taken for a tee value", r->num);

		if (r->action == ACT_DIVERT || r->action == ACT_TEE) {
			bool listed = false;

			q = rules_find_queue_rule(rs, r->num, r->arg);
			FZ_CHECK(q != NULL && q->num == r->num &&
				 q->arg == r->arg &&
				 (q->action == ACT_DIVERT || q->action == ACT_TEE),
				 "queue rule %u port %u", r->num, r->arg);
			for (size_t k = 0; k < nports; k++)
				listed |= ports[k] == r->arg;
			FZ_CHECK(listed || nports == 1024,
				 "port %u missing from rules_ports", r->arg);
		}
		if (r->action == ACT_TEE) {
			uint16_t v = rules_tee_value(rs, r);

			FZ_CHECK(v != 0 && v != 65535, "tee value %u", v);
			FZ_CHECK(rules_find_tee_rule(rs, v, r->arg) == r,
				 "tee value %u of rule %u leads elsewhere", v,
				 r->num);
			for (size_t k = 0; k < ntee; k++)
				FZ_CHECK(tee_values[k] != v,
					 "tee value %u used twice", v);
			tee_values[ntee++] = v;
			FZ_CHECK(rules_resume_tag(rs, v) <= v, "resume tag");
		}
	}
	free(tee_values);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ruleset rs = { 0 }, rs2 = { 0 };
	struct mark_layout ml;
	char err[512], *text, *small;
	size_t smalllen;
	uint32_t h = 2166136261u;
	int rc, rc2;

	if (size > 65536)
		return -1;
	text = malloc(size + 1);
	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	for (size_t i = 0; i < size; i++)
		h = (h ^ data[i]) * 16777619u;

	rc = config_parse_string(text, "fuzz", &rs, err, sizeof(err));
	/* the same text with a tiny error buffer, exactly its size */
	smalllen = h % 12;
	small = malloc(smalllen > 0 ? smalllen : 1);
	FZ_CHECK(small != NULL, "out of memory");
	rc2 = config_parse_string(text, "fuzz", &rs2, small, smalllen);
	FZ_CHECK(rc == rc2, "parse result depends on the error buffer");
	if (smalllen > 0)
		FZ_CHECK(memchr(small, '\0', smalllen) != NULL,
			 "error message not terminated");
	free(small);
	ruleset_free(&rs2);

	if (rc < 0) {
		FZ_CHECK(strncmp(err, "fuzz:", 5) == 0 && strlen(err) > 7,
			 "error message '%s'", err);
		FZ_CHECK(rs.rules == NULL && rs.n == 0, "ruleset touched");
		free(text);
		return 0;
	}

	FZ_CHECK(mark_layout_init(&ml, masks[h % 8]) == 0, "mark layout");
	ml.fail_open = h & 0x100;
	{
		/* any mask: taken exactly when it is one run of >= 16 ones */
		struct mark_layout any;
		uint32_t m = h * 2654435761u;
		bool run = m != 0 &&
			   (((m >> __builtin_ctz(m)) & ((m >> __builtin_ctz(m)) + 1)) == 0);

		FZ_CHECK((mark_layout_init(&any, m) == 0) ==
			 (run && __builtin_popcount(m) >= 16), "mask %#x", m);
		m = ~0u << (h % 17);	/* 16..32 ones at the top */
		FZ_CHECK(mark_layout_init(&any, m) == 0 && any.mask == m &&
			 any.shift == h % 17, "mask %#x", m);
	}
	{
		char *nft = rules_nft_text(&rs, &ml);
		char *ipt4 = rules_ipt_text(&rs, &ml, 4);
		char *ipt6 = rules_ipt_text(&rs, &ml, 6);

		FZ_CHECK(nft != NULL && ipt4 != NULL && ipt6 != NULL,
			 "no firewall text");
		FZ_CHECK(strncmp(nft, "table inet divertd {\n", 21) == 0,
			 "nft text start");
		check_balanced(nft, "nft text");
		check_ipt(ipt4);
		check_ipt(ipt6);
		FZ_CHECK(rules_ipt_text(&rs, &ml, 5) == NULL, "family 5");
		free(nft);
		free(ipt4);
		free(ipt6);
	}
	check_tags(&rs, &ml);
	for (size_t i = 0; i < rs.n; i++)
		check_round_trip(&rs.rules[i]);
	ruleset_free(&rs);
	free(text);
	return 0;
}
