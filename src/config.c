/*
 * config.c: the rule file, into a struct ruleset.
 *
 * Theory of operation.  The administrator writes ipfw(8) rules without the
 * leading "ipfw add", one per line:
 *
 *	[NUM] ACTION PROTO from SRC to DST [OPTIONS...]
 *
 * docs/RULES.md is the full grammar.  This file owns only the text -> struct
 * step: it reads the whole text, splits it into lines ('#' starts a comment
 * anywhere), reads each line token by token with a cursor (so there is no
 * limit on line length or on the number of tokens), and fills one struct rule
 * per non-blank line.  Each rule is checked on its own (ranges, which options
 * fit which protocol, which address families the rule can still match); the
 * first problem stops the parse with "NAME:LINE: message" and leaves the
 * caller's ruleset alone.  On success the rules are sorted by number, equal
 * numbers keeping file order, and handed over.  Nothing here knows about
 * nftables or iptables: rules.c turns the ruleset into firewall text.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "divertd.h"

#define RULE_NUM_MIN 1u
#define RULE_NUM_MAX 65534u
#define SKIPTO_MAX 65535u	/* ipfw's default rule: skipto it = end */
#define AUTOINC_STEP 100u	/* ipfw's net.inet.ip.fw.autoinc_step */
#define TOKEN_SHOW 48		/* longest token quoted whole in a message */

struct token {
	const char *s;
	size_t len;			/* 0: end of line */
};

struct parser {
	const char *name;
	int line;
	const char *p, *end;		/* the rest of the current line */
	char *err;
	size_t errlen;
	/* the rule being read */
	struct token proto_tok;
	unsigned proto_fams;
};

/* ---- errors and tokens ---------------------------------------------- */

static int perr(struct parser *ps, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int perr(struct parser *ps, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (ps->errlen == 0)
		return -1;
	n = snprintf(ps->err, ps->errlen, "%s:%d: ", ps->name, ps->line);
	if (n < 0 || (size_t)n >= ps->errlen)
		return -1;
	va_start(ap, fmt);
	vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

/* A token as it may appear inside a message: cut short if very long. */
struct shown {
	char s[TOKEN_SHOW + 4];
};

static struct shown show(struct token t)
{
	struct shown sh;

	if (t.len > TOKEN_SHOW)
		snprintf(sh.s, sizeof(sh.s), "%.*s...", TOKEN_SHOW - 3, t.s);
	else
		snprintf(sh.s, sizeof(sh.s), "%.*s", (int)t.len, t.s);
	return sh;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static struct token next_token(struct parser *ps)
{
	struct token t;

	while (ps->p < ps->end && is_space(*ps->p))
		ps->p++;
	t.s = ps->p;
	while (ps->p < ps->end && !is_space(*ps->p))
		ps->p++;
	t.len = (size_t)(ps->p - t.s);
	return t;
}

static struct token peek_token(struct parser *ps)
{
	const char *save = ps->p;
	struct token t = next_token(ps);

	ps->p = save;
	return t;
}

static bool tok_is(struct token t, const char *word)
{
	size_t n = strlen(word);

	return t.len == n && memcmp(t.s, word, n) == 0;
}

static bool all_digits(const char *s, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!is_digit(s[i]))
			return false;
	return true;
}

/* Decimal digits to a number, saturating far above any range we accept. */
static unsigned long digits_value(const char *s, size_t len)
{
	unsigned long v = 0;

	for (size_t i = 0; i < len; i++) {
		v = v * 10 + (unsigned long)(s[i] - '0');
		if (v > 0xffffffffUL)
			return 0xffffffffUL + 1;
	}
	return v;
}

/* A number in [lo, hi] from t.s[0..len), "what" naming it in messages. */
static int parse_num(struct parser *ps, const char *s, size_t len,
		     unsigned long lo, unsigned long hi, const char *what,
		     unsigned long *out)
{
	struct token t = { s, len };
	unsigned long v;

	if (!all_digits(s, len))
		return perr(ps, "%s '%s' is not a number", what, show(t).s);
	v = digits_value(s, len);
	if (v < lo || v > hi)
		return perr(ps, "%s %s out of range (%lu..%lu)", what,
			    show(t).s, lo, hi);
	*out = v;
	return 0;
}

/* ---- protocols -------------------------------------------------------- */

static const struct {
	const char *name;
	int proto;
	unsigned fams;
} protos[] = {
	{ "ip", PROTO_ANY, FAM_V4 | FAM_V6 },
	{ "all", PROTO_ANY, FAM_V4 | FAM_V6 },
	{ "ip4", PROTO_ANY, FAM_V4 },
	{ "ipv4", PROTO_ANY, FAM_V4 },
	{ "ip6", PROTO_ANY, FAM_V6 },
	{ "ipv6", PROTO_ANY, FAM_V6 },
	{ "tcp", IPPROTO_TCP, FAM_V4 | FAM_V6 },
	{ "udp", IPPROTO_UDP, FAM_V4 | FAM_V6 },
	{ "icmp", IPPROTO_ICMP, FAM_V4 },
	{ "ipv6-icmp", IPPROTO_ICMPV6, FAM_V6 },
	{ "icmp6", IPPROTO_ICMPV6, FAM_V6 },
	{ "icmpv6", IPPROTO_ICMPV6, FAM_V6 },
	{ "gre", IPPROTO_GRE, FAM_V4 | FAM_V6 },
	{ "esp", IPPROTO_ESP, FAM_V4 | FAM_V6 },
	{ "ah", IPPROTO_AH, FAM_V4 | FAM_V6 },
	{ "sctp", IPPROTO_SCTP, FAM_V4 | FAM_V6 },
	{ "udplite", IPPROTO_UDPLITE, FAM_V4 | FAM_V6 },
};

static unsigned proto_number_fams(int proto)
{
	if (proto == IPPROTO_ICMP)
		return FAM_V4;
	if (proto == IPPROTO_ICMPV6)
		return FAM_V6;
	return FAM_V4 | FAM_V6;
}

static int parse_proto(struct parser *ps, struct rule *r)
{
	struct token t = next_token(ps);
	unsigned long v;

	if (t.len == 0)
		return perr(ps, "missing protocol after the action");
	ps->proto_tok = t;
	if (is_digit(t.s[0])) {
		if (parse_num(ps, t.s, t.len, 0, 255, "protocol", &v) < 0)
			return -1;
		/* ipfw: protocol 0 ("ip") matches every protocol */
		r->proto = v == 0 ? PROTO_ANY : (int)v;
		ps->proto_fams = proto_number_fams(r->proto);
		return 0;
	}
	for (size_t i = 0; i < sizeof(protos) / sizeof(protos[0]); i++) {
		if (tok_is(t, protos[i].name)) {
			r->proto = protos[i].proto;
			ps->proto_fams = protos[i].fams;
			return 0;
		}
	}
	return perr(ps, "unknown protocol '%s'", show(t).s);
}

/* ---- actions ---------------------------------------------------------- */

static int parse_action(struct parser *ps, struct rule *r)
{
	struct token t = next_token(ps), a;
	unsigned long v;

	if (t.len == 0)
		return perr(ps, "missing action");
	if (tok_is(t, "divert") || tok_is(t, "tee")) {
		r->action = tok_is(t, "divert") ? ACT_DIVERT : ACT_TEE;
		a = next_token(ps);
		if (a.len == 0)
			return perr(ps, "missing port after '%s'", show(t).s);
		if (parse_num(ps, a.s, a.len, 1, 65535, "port", &v) < 0)
			return -1;
		r->arg = (uint16_t)v;
	} else if (tok_is(t, "allow") || tok_is(t, "accept") ||
		   tok_is(t, "pass") || tok_is(t, "permit")) {
		r->action = ACT_ALLOW;
	} else if (tok_is(t, "deny") || tok_is(t, "drop")) {
		r->action = ACT_DENY;
	} else if (tok_is(t, "count")) {
		r->action = ACT_COUNT;
	} else if (tok_is(t, "skipto")) {
		r->action = ACT_SKIPTO;
		a = next_token(ps);
		if (a.len == 0)
			return perr(ps, "missing rule number after 'skipto'");
		if (parse_num(ps, a.s, a.len, RULE_NUM_MIN, SKIPTO_MAX,
			      "skipto target", &v) < 0)
			return -1;
		if (v <= r->num)
			return perr(ps, "skipto must jump forward: %lu is not "
				    "above this rule's number %u", v, r->num);
		r->arg = (uint16_t)v;
	} else {
		return perr(ps, "unknown action '%s'", show(t).s);
	}
	return 0;
}

/* ---- addresses and ports ---------------------------------------------- */

static int parse_ports(struct parser *ps, struct rule *r, struct rule_addr *a,
		       struct token list)
{
	const char *p = list.s, *end = list.s + list.len;

	if (r->proto != IPPROTO_TCP && r->proto != IPPROTO_UDP)
		return perr(ps, "ports '%s' need protocol tcp or udp",
			    show(list).s);
	while (p <= end) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *e = comma ? comma : end, *dash;
		struct token item = { p, (size_t)(e - p) };
		unsigned long lo, hi;

		if (item.len == 0)
			return perr(ps, "empty entry in port list '%s'",
				    show(list).s);
		if (a->nports == RULE_MAX_PORTS)
			return perr(ps, "too many ports in '%s' (at most %d "
				    "entries)", show(list).s, RULE_MAX_PORTS);
		dash = memchr(p, '-', item.len);
		if (!dash)
			dash = memchr(p, ':', item.len);
		if (dash) {
			if (dash == p || dash == e - 1)
				return perr(ps, "bad port range '%s'",
					    show(item).s);
			if (parse_num(ps, p, (size_t)(dash - p), 0, 65535,
				      "port", &lo) < 0 ||
			    parse_num(ps, dash + 1, (size_t)(e - dash - 1), 0,
				      65535, "port", &hi) < 0)
				return -1;
			if (lo > hi)
				return perr(ps, "port range %s is backwards",
					    show(item).s);
		} else {
			if (parse_num(ps, p, item.len, 0, 65535, "port",
				      &lo) < 0)
				return -1;
			hi = lo;
		}
		a->ports[a->nports].lo = (uint16_t)lo;
		a->ports[a->nports].hi = (uint16_t)hi;
		a->nports++;
		if (!comma)
			break;
		p = comma + 1;
	}
	return 0;
}

static void clear_host_bits(unsigned char *bytes, int nbytes, int plen)
{
	for (int i = 0; i < nbytes; i++) {
		int keep = plen - 8 * i;

		if (keep <= 0)
			bytes[i] = 0;
		else if (keep < 8)
			bytes[i] &= (unsigned char)(0xff00u >> keep);
	}
}

static int parse_prefix(struct parser *ps, struct rule_addr *a,
			struct token t, const char *where)
{
	char buf[INET6_ADDRSTRLEN + 8];
	const char *slash = memchr(t.s, '/', t.len);
	size_t alen = slash ? (size_t)(slash - t.s) : t.len;
	bool v6 = memchr(t.s, ':', alen) != NULL;
	int maxlen = v6 ? 128 : 32;
	unsigned long plen = (unsigned long)maxlen;

	if (alen == 0 || alen >= sizeof(buf))
		return perr(ps, "bad %s address '%s'", where, show(t).s);
	memcpy(buf, t.s, alen);
	buf[alen] = '\0';
	a->kind = ADDR_PREFIX;
	a->family = v6 ? AF_INET6 : AF_INET;
	if (inet_pton(a->family, buf, &a->addr) != 1)
		return perr(ps, "bad %s address '%s'", where, show(t).s);
	if (slash) {
		size_t plen_len = t.len - alen - 1;

		if (!all_digits(slash + 1, plen_len))
			return perr(ps, "bad prefix length in '%s'",
				    show(t).s);
		plen = digits_value(slash + 1, plen_len);
		if (plen > (unsigned long)maxlen)
			return perr(ps, "prefix length %s out of range for "
				    "%s (0..%d)",
				    show((struct token){ slash + 1, plen_len }).s,
				    v6 ? "IPv6" : "IPv4", maxlen);
	}
	a->plen = (int)plen;
	clear_host_bits((unsigned char *)&a->addr, v6 ? 16 : 4, a->plen);
	return 0;
}

static unsigned addr_fams(const struct rule_addr *a)
{
	switch (a->kind) {
	case ADDR_ME:
		return FAM_V4;
	case ADDR_ME6:
		return FAM_V6;
	case ADDR_PREFIX:
		return a->family == AF_INET ? FAM_V4 : FAM_V6;
	case ADDR_ANY:
		break;
	}
	return FAM_V4 | FAM_V6;
}

/* "IPv4 source '10.0.0.1'", "source 'me' (IPv4 only)" */
static void addr_desc(char *buf, size_t len, const struct rule_addr *a,
		      struct token t, const char *where)
{
	if (a->kind == ADDR_PREFIX)
		snprintf(buf, len, "%s %s '%s'",
			 a->family == AF_INET ? "IPv4" : "IPv6", where,
			 show(t).s);
	else
		snprintf(buf, len, "%s '%s' (%s only)", where, show(t).s,
			 a->kind == ADDR_ME ? "IPv4" : "IPv6");
}

/* [not] (any | me | me6 | ADDR[/PLEN]) [PORTS] */
static int parse_endpoint(struct parser *ps, struct rule *r,
			  struct rule_addr *a, const char *where,
			  struct token *addr_tok)
{
	struct token t = next_token(ps), ports;

	if (tok_is(t, "not")) {
		a->neg = true;
		t = next_token(ps);
	}
	if (t.len == 0)
		return perr(ps, "missing %s address", where);
	*addr_tok = t;
	if (tok_is(t, "any")) {
		if (a->neg)
			return perr(ps, "'not any' as %s matches nothing",
				    where);
		a->kind = ADDR_ANY;
	} else if (tok_is(t, "me")) {
		a->kind = ADDR_ME;
	} else if (tok_is(t, "me6")) {
		a->kind = ADDR_ME6;
	} else if (parse_prefix(ps, a, t, where) < 0) {
		return -1;
	}
	ports = peek_token(ps);
	if (ports.len > 0 && is_digit(ports.s[0])) {
		next_token(ps);
		return parse_ports(ps, r, a, ports);
	}
	return 0;
}

static int expect_word(struct parser *ps, const char *word, const char *after)
{
	struct token t = next_token(ps);

	if (t.len == 0)
		return perr(ps, "expected '%s' after %s", word, after);
	if (!tok_is(t, word))
		return perr(ps, "expected '%s' after %s, got '%s'", word,
			    after, show(t).s);
	return 0;
}

/* ---- options ------------------------------------------------------------ */

static bool iface_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       is_digit(c) || c == '-' || c == '_' || c == '.' || c == '@';
}

static int parse_iface(struct parser *ps, struct rule *r, struct token kw,
		       bool neg)
{
	struct token t = next_token(ps);
	struct rule_iface *ifc;

	if (t.len == 0)
		return perr(ps, "missing interface name after '%s'",
			    show(kw).s);
	if (t.len >= IFNAMSIZ)
		return perr(ps, "interface name '%s' too long (at most %d "
			    "characters)", show(t).s, IFNAMSIZ - 1);
	for (size_t i = 0; i < t.len; i++)
		if (!iface_char_ok(t.s[i]))
			return perr(ps, "bad character '%c' in interface "
				    "name '%s'", t.s[i], show(t).s);
	if (r->nifaces == RULE_MAX_IFACES)
		return perr(ps, "too many interface options (at most %d)",
			    RULE_MAX_IFACES);
	ifc = &r->ifaces[r->nifaces++];
	ifc->kind = tok_is(kw, "via") ? IFACE_VIA :
		    tok_is(kw, "recv") ? IFACE_RECV : IFACE_XMIT;
	ifc->neg = neg;
	memcpy(ifc->name, t.s, t.len);
	ifc->name[t.len] = '\0';
	return 0;
}

static int parse_icmptypes(struct parser *ps, struct rule *r, bool neg)
{
	struct token list = next_token(ps);
	const char *p = list.s, *end = list.s + list.len;

	if (list.len == 0)
		return perr(ps, "missing type list after 'icmptypes'");
	if (r->proto != IPPROTO_ICMP && r->proto != IPPROTO_ICMPV6)
		return perr(ps, "icmptypes needs protocol icmp or ipv6-icmp");
	if (r->nicmptypes > 0)
		return perr(ps, "icmptypes given twice");
	while (p <= end) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *e = comma ? comma : end;
		unsigned long v;

		if (e == p)
			return perr(ps, "empty entry in icmptypes list '%s'",
				    show(list).s);
		if (r->nicmptypes == RULE_MAX_ICMPTYPES)
			return perr(ps, "too many icmptypes (at most %d)",
				    RULE_MAX_ICMPTYPES);
		if (parse_num(ps, p, (size_t)(e - p), 0, 255, "icmp type",
			      &v) < 0)
			return -1;
		r->icmptypes[r->nicmptypes++] = (uint8_t)v;
		if (!comma)
			break;
		p = comma + 1;
	}
	r->icmptypes_neg = neg;
	return 0;
}

static int parse_options(struct parser *ps, struct rule *r)
{
	for (;;) {
		struct token t = next_token(ps);
		bool neg = false;

		if (t.len == 0)
			break;
		if (tok_is(t, "not")) {
			neg = true;
			t = next_token(ps);
			if (t.len == 0)
				return perr(ps, "'not' at end of line");
		}
		if (tok_is(t, "in")) {
			r->dirs &= neg ? DIR_OUT : DIR_IN;
		} else if (tok_is(t, "out")) {
			r->dirs &= neg ? DIR_IN : DIR_OUT;
		} else if (tok_is(t, "via") || tok_is(t, "recv") ||
			   tok_is(t, "xmit")) {
			if (parse_iface(ps, r, t, neg) < 0)
				return -1;
		} else if (tok_is(t, "icmptypes")) {
			if (parse_icmptypes(ps, r, neg) < 0)
				return -1;
		} else {
			return perr(ps, "unknown option '%s'", show(t).s);
		}
		if (r->dirs == 0)
			return perr(ps, "'in' and 'out' together match "
				    "nothing");
	}
	return 0;
}

/* ---- a line ------------------------------------------------------------ */

/* 1: blank line, 0: *r filled, -1: error */
static int parse_line(struct parser *ps, struct rule *r, unsigned highest)
{
	struct token t = peek_token(ps), src_tok, dst_tok;
	unsigned long v;
	char d1[128], d2[128];

	if (t.len == 0)
		return 1;
	memset(r, 0, sizeof(*r));
	r->line = ps->line;
	r->dirs = DIR_IN | DIR_OUT;
	if (is_digit(t.s[0])) {
		next_token(ps);
		if (parse_num(ps, t.s, t.len, RULE_NUM_MIN, RULE_NUM_MAX,
			      "rule number", &v) < 0)
			return -1;
		r->num = (uint16_t)v;
	} else {
		v = highest + AUTOINC_STEP;
		if (v > RULE_NUM_MAX)
			return perr(ps, "automatic rule number %lu is above "
				    "%u: give this rule a number", v,
				    RULE_NUM_MAX);
		r->num = (uint16_t)v;
	}
	if (parse_action(ps, r) < 0 || parse_proto(ps, r) < 0 ||
	    expect_word(ps, "from", "the protocol") < 0 ||
	    parse_endpoint(ps, r, &r->src, "source", &src_tok) < 0)
		return -1;
	r->families = ps->proto_fams & addr_fams(&r->src);
	if (r->families == 0) {
		addr_desc(d1, sizeof(d1), &r->src, src_tok, "source");
		return perr(ps, "%s rule with %s", show(ps->proto_tok).s, d1);
	}
	if (expect_word(ps, "to", "the source") < 0 ||
	    parse_endpoint(ps, r, &r->dst, "destination", &dst_tok) < 0)
		return -1;
	if ((r->families & addr_fams(&r->dst)) == 0) {
		addr_desc(d2, sizeof(d2), &r->dst, dst_tok, "destination");
		if ((ps->proto_fams & addr_fams(&r->dst)) == 0)
			return perr(ps, "%s rule with %s",
				    show(ps->proto_tok).s, d2);
		addr_desc(d1, sizeof(d1), &r->src, src_tok, "source");
		return perr(ps, "%s with %s", d1, d2);
	}
	r->families &= addr_fams(&r->dst);
	return parse_options(ps, r);
}

static int rule_cmp(const void *a, const void *b)
{
	const struct rule *x = a, *y = b;

	if (x->num != y->num)
		return x->num < y->num ? -1 : 1;
	return (x->line > y->line) - (x->line < y->line);
}

int config_parse_string(const char *text, const char *name,
			struct ruleset *rs, char *err, size_t errlen)
{
	struct parser ps = { .name = name, .err = err, .errlen = errlen };
	struct rule *rules = NULL, r;
	size_t n = 0, cap = 0;
	unsigned highest = 0, nports = 0;
	uint8_t port_seen[65536 / 8] = { 0 };
	const char *p = text;

	if (errlen > 0)
		err[0] = '\0';
	while (*p) {
		const char *nl = strchr(p, '\n');
		const char *eol = nl ? nl : p + strlen(p);
		const char *hash = memchr(p, '#', (size_t)(eol - p));
		int rc;

		ps.line++;
		ps.p = p;
		ps.end = hash ? hash : eol;
		rc = parse_line(&ps, &r, highest);
		if (rc < 0)
			goto fail;
		if (rc == 0 && (r.action == ACT_DIVERT || r.action == ACT_TEE) &&
		    !(port_seen[r.arg / 8] & (1u << (r.arg % 8)))) {
			port_seen[r.arg / 8] |= (uint8_t)(1u << (r.arg % 8));
			if (++nports > RULES_MAX_DIVERT_PORTS) {
				perr(&ps, "divert port %u is one too many: at "
				     "most %u divert and tee ports (each is a "
				     "queue of its own)", r.arg,
				     RULES_MAX_DIVERT_PORTS);
				goto fail;
			}
		}
		if (rc == 0) {
			if (n == cap) {
				size_t ncap = cap ? 2 * cap : 16;
				struct rule *nr = reallocarray(rules, ncap,
							       sizeof(*nr));

				if (!nr) {
					perr(&ps, "out of memory");
					goto fail;
				}
				rules = nr;
				cap = ncap;
			}
			rules[n++] = r;
			if (r.num > highest)
				highest = r.num;
		}
		if (!nl)
			break;
		p = nl + 1;
	}
	if (n > 1)
		qsort(rules, n, sizeof(*rules), rule_cmp);
	rs->rules = rules;
	rs->n = n;
	return 0;
fail:
	free(rules);
	return -1;
}

int config_parse_file(const char *path, struct ruleset *rs,
		      char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int rc = -1, saved = 0;

	if (!f)
		goto out;
	for (;;) {
		size_t got;

		if (cap - len < 4096) {
			size_t ncap = cap ? 2 * cap : 65536;
			char *nb = realloc(buf, ncap);

			if (!nb) {
				errno = ENOMEM;
				goto out;
			}
			buf = nb;
			cap = ncap;
		}
		got = fread(buf + len, 1, cap - len - 1, f);
		len += got;
		if (got == 0) {
			if (ferror(f))
				goto out;
			break;
		}
	}
	buf[len] = '\0';
	rc = config_parse_string(buf, path, rs, err, errlen);
	free(buf);
	fclose(f);
	return rc;
out:
	saved = errno ? errno : EIO;
	free(buf);
	if (f)
		fclose(f);
	if (errlen > 0)
		snprintf(err, errlen, "%s: cannot read: %s", path,
			 strerror(saved));
	return -1;
}

void ruleset_free(struct ruleset *rs)
{
	if (!rs)
		return;
	free(rs->rules);
	rs->rules = NULL;
	rs->n = 0;
}
