/*
 * rules.c: a struct ruleset into firewall text, and the tag arithmetic.
 *
 * Theory of operation.  ipfw runs one ordered rule list per packet and
 * direction; a packet written back by a divert client re-enters that list
 * just after the rule number it carries as its tag.  Netfilter has no rule
 * numbers, so the list is rebuilt as chains:
 *
 *   - Two passes.  IN is what ipfw sees on input (PREROUTING); OUT is what
 *     it sees on output (OUTPUT for local packets, FORWARD for routed ones).
 *     A rule runs in the passes its in/out options allow.
 *   - Each pass is cut into SEGMENTS, one chain per distinct rule number, in
 *     number order.  A DRIVER chain per pass jumps to each segment in turn,
 *     behind a guard that lets in only packets whose tag is below the
 *     segment's number, and ends by clearing the tag; the packet then goes
 *     on through the host's own rules.
 *   - The tag lives in the packet mark, under a configurable mask
 *     (struct mark_layout).  A packet whose tag is N passes the guards of
 *     every segment up to N and enters the first one above, so a re-injected
 *     packet resumes after every rule sharing its number; tag 0 starts at
 *     the first segment.  allow and skipto only raise the tag and return.
 *   - divert sets the tag to its own rule number (tee to a value of its own,
 *     below) and hands the packet to NFQUEUE queue PORT.  divertd answers with the packet and a mark, and
 *     NF_REPEAT runs the hook again, through the driver.  (Whether the
 *     queued packet is a copy, for tee, is divertd's business, not ours.)
 *   - Every firewall rule a config rule becomes counts, and names the config
 *     rule in a comment (rules_label()), for divertctl show.
 *
 * Two dialects come out of one walk over the same segments: one nftables
 * "table inet divertd" for both families, and iptables-restore text for
 * the mangle table of each family (iptables-nft's NFQUEUE works where the
 * native nft queue statement is not built).  The generated text is plain
 * and stable so that tests/golden can compare it byte for byte; docs/RULES.md
 * describes it for administrators.
 *
 * Details the mapping has to get right, each handled below: ipfw ORs the
 * entries of a port or icmptypes list, iptables' multiport takes at most 15
 * ports; iptables allows one -i and one -o per rule, ipfw as many interface
 * options as it likes; "xmit" can never match an incoming packet.
 */
#include <arpa/inet.h>
#include <linux/filter.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "divertd.h"
#include "divert_wire.h"

#define MULTIPORT_MAX 15	/* xt_multiport: ports per match, a range is 2 */

/* ---- mark layout and tags --------------------------------------------- */

int mark_layout_init(struct mark_layout *ml, uint32_t mask)
{
	unsigned shift;
	uint32_t m;

	if (mask == 0)
		return -1;
	shift = (unsigned)__builtin_ctz(mask);
	m = mask >> shift;
	if ((m & (m + 1)) != 0)		/* not one run of ones */
		return -1;
	if (__builtin_popcount(mask) < 16)
		return -1;
	ml->mask = mask;
	ml->shift = shift;
	ml->fail_open = false;
	ml->lost = true;
	return 0;
}

static uint32_t tagmark(const struct mark_layout *ml, unsigned num)
{
	return ((uint32_t)num << ml->shift) & ml->mask;
}

uint16_t rules_resume_tag(const struct ruleset *rs, uint16_t tag)
{
	uint16_t best = 0;

	for (size_t i = 0; i < rs->n && rs->rules[i].num <= tag; i++)
		best = rs->rules[i].num;
	return best;
}

const struct rule *rules_find_queue_rule(const struct ruleset *rs,
					 uint16_t num, uint16_t port)
{
	for (size_t i = 0; i < rs->n; i++) {
		const struct rule *r = &rs->rules[i];

		if (r->num > num)
			break;
		if (r->num == num && r->arg == port &&
		    (r->action == ACT_DIVERT || r->action == ACT_TEE))
			return r;
	}
	return NULL;
}

size_t rules_ports(const struct ruleset *rs, uint16_t *ports, size_t max)
{
	uint8_t seen[65536 / 8] = { 0 };
	size_t n = 0;

	for (size_t i = 0; i < rs->n; i++) {
		const struct rule *r = &rs->rules[i];

		if (r->action == ACT_DIVERT || r->action == ACT_TEE)
			seen[r->arg / 8] |= (uint8_t)(1u << (r->arg % 8));
	}
	for (unsigned p = 0; p < 65536 && n < max; p++)
		if (seen[p / 8] & (1u << (p % 8)))
			ports[n++] = (uint16_t)p;
	return n;
}

/* ---- tee ----------------------------------------------------------------- */

/* The tag of a packet that is done with our rules (allow, or a skipto past
 * the last rule): no guard lets it into another segment. */
#define TAG_DONE 65535u

/*
 * A tee lets the original go on at the very next rule, which may share the
 * tee's number; a rule number in the mark could only resume after all of
 * them.  So each tee rule marks its packets with a value of its own that is
 * no rule number (written packets only ever resume at rule numbers):
 * counting down from 65535, the k-th such value for the k-th tee rule.  The
 * dispatch sends that value to the chain holding the rules after the tee.
 */
static bool is_rule_number(const struct ruleset *rs, unsigned v)
{
	size_t lo = 0, hi = rs->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (rs->rules[mid].num < v)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < rs->n && rs->rules[lo].num == v;
}

/* Index of r among the tee rules, in list order. */
static unsigned tee_index(const struct ruleset *rs, const struct rule *r)
{
	unsigned k = 0;

	for (const struct rule *q = rs->rules; q < r; q++)
		if (q->action == ACT_TEE)
			k++;
	return k;
}

static uint16_t tee_value_k(const struct ruleset *rs, unsigned k)
{
	unsigned v = TAG_DONE, left = k + 1;

	while (left > 0) {
		v--;
		if (!is_rule_number(rs, v))
			left--;
	}
	return (uint16_t)v;
}

uint16_t rules_tee_value(const struct ruleset *rs, const struct rule *r)
{
	return tee_value_k(rs, tee_index(rs, r));
}

/*
 * The view of the rules a program reading port's queue itself needs
 * (struct dw_view, divert_wire.h): len bytes, written to buf only when
 * they fit in cap.  Returns len.
 */
size_t rules_view(const struct ruleset *rs, const struct mark_layout *ml,
		  uint16_t port, uint32_t hold_ms, void *buf, size_t cap)
{
	uint32_t nnums = 0, ntees = 0;
	size_t len;

	for (size_t i = 0; i < rs->n; i++) {
		if (i == 0 || rs->rules[i].num != rs->rules[i - 1].num)
			nnums++;
		if (rs->rules[i].action == ACT_TEE && rs->rules[i].arg == port)
			ntees++;
	}
	len = dw_view_len(nnums, ntees);
	if (buf == NULL || cap < len)
		return len;

	struct dw_view *v = buf;
	uint16_t *nums = (uint16_t *)(void *)(v + 1);
	struct dw_tee *tees = (struct dw_tee *)(void *)(nums + nnums);
	uint32_t k = 0;

	v->mask = ml->mask;
	v->shift = ml->shift;
	v->hold_ms = hold_ms;
	v->nnums = nnums;
	v->ntees = ntees;
	for (size_t i = 0; i < rs->n; i++)
		if (i == 0 || rs->rules[i].num != rs->rules[i - 1].num)
			nums[k++] = rs->rules[i].num;
	/* tee values count down in list order: the last tee first */
	k = ntees;
	for (size_t i = 0; i < rs->n; i++) {
		const struct rule *r = &rs->rules[i];

		if (r->action == ACT_TEE && r->arg == port) {
			k--;
			tees[k].value = rules_tee_value(rs, r);
			tees[k].rule = r->num;
		}
	}
	return len;
}

const struct rule *rules_find_tee_rule(const struct ruleset *rs,
				       uint16_t value, uint16_t port)
{
	unsigned above = 0, k;

	if (value == 0 || is_rule_number(rs, value))
		return NULL;
	for (size_t i = rs->n; i > 0 && rs->rules[i - 1].num > value; i--)
		if (i == rs->n || rs->rules[i].num != rs->rules[i - 1].num)
			above++;	/* distinct rule numbers above value */
	if (value >= TAG_DONE)
		return NULL;
	k = (TAG_DONE - 1u) - value - above;
	for (size_t i = 0; i < rs->n; i++) {
		const struct rule *r = &rs->rules[i];

		if (r->action != ACT_TEE)
			continue;
		if (k-- == 0)
			return r->arg == port ? r : NULL;
	}
	return NULL;
}

/* ---- counter labels ------------------------------------------------------ */

/*
 * Every firewall rule a config rule becomes carries a counter and the
 * comment "rule NUM #K" (the K-th rule numbered NUM, from 1), so that
 * divertctl show can add up what the kernel counted for each config rule,
 * and an administrator reading `nft list table inet divertd` sees which
 * rule a line comes from.
 */
void rules_label(const struct ruleset *rs, const struct rule *r, char *buf,
		 size_t len)
{
	unsigned k = 1;

	for (const struct rule *q = r; q > rs->rules && q[-1].num == r->num; q--)
		k++;
	snprintf(buf, len, "rule %u #%u", r->num, k);
}

long rules_label_index(const struct ruleset *rs, const char *label)
{
	unsigned num, k;
	int end = -1;

	if (sscanf(label, "rule %5u #%5u%n", &num, &k, &end) != 2 ||
	    label[end] != '\0' || k == 0)
		return -1;
	for (size_t i = 0; i < rs->n; i++)
		if (rs->rules[i].num == num && --k == 0)
			return (long)i;
	return -1;
}

/* ---- a growing string -------------------------------------------------- */

struct sbuf {
	char *p;
	size_t len, cap;
	bool failed;
};

static void sb_printf(struct sbuf *sb, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *sb, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (sb->failed)
		return;
	for (;;) {
		size_t room = sb->cap - sb->len;

		va_start(ap, fmt);
		n = vsnprintf(sb->p ? sb->p + sb->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			sb->failed = true;
			return;
		}
		if ((size_t)n < room) {
			sb->len += (size_t)n;
			return;
		}
		size_t ncap = sb->cap ? sb->cap : 1024;
		while (ncap - sb->len <= (size_t)n)
			ncap *= 2;
		char *np = realloc(sb->p, ncap);
		if (!np) {
			sb->failed = true;
			return;
		}
		sb->p = np;
		sb->cap = ncap;
	}
}

static void sb_cat(struct sbuf *dst, const struct sbuf *src)
{
	if (src->failed)
		dst->failed = true;
	else if (src->len > 0)
		sb_printf(dst, "%.*s", (int)src->len, src->p);
}

static void sb_free(struct sbuf *sb)
{
	free(sb->p);
	memset(sb, 0, sizeof(*sb));
}

/* The finished string, or NULL if anything failed; sb is spent. */
static char *sb_take(struct sbuf *sb)
{
	char *p;

	sb_printf(sb, "%s", "");	/* makes an empty result non-NULL */
	if (sb->failed) {
		sb_free(sb);
		return NULL;
	}
	p = sb->p;
	memset(sb, 0, sizeof(*sb));
	return p;
}

/* ---- what a rule needs, whatever the dialect ---------------------------- */

enum pass { PASS_IN, PASS_OUT };

static const char *const pass_word[] = { "in", "out" };
static const unsigned pass_dir[] = { DIR_IN, DIR_OUT };

/* One interface direction of a rule in one pass, simplified: at most one
 * name the interface must have, or names it must not have. */
struct iface_side {
	const char *pos;
	const char *neg[RULE_MAX_IFACES];
	int nneg;
};

struct iface_plan {
	struct iface_side in, out;	/* -i / iifname, -o / oifname */
};

static bool side_add(struct iface_side *s, const struct rule_iface *ifc)
{
	if (!ifc->neg) {
		if (s->pos && strcmp(s->pos, ifc->name) != 0)
			return false;	/* two different names: never */
		s->pos = ifc->name;
		return true;
	}
	for (int i = 0; i < s->nneg; i++)
		if (strcmp(s->neg[i], ifc->name) == 0)
			return true;
	s->neg[s->nneg++] = ifc->name;
	return true;
}

static bool side_finish(struct iface_side *s)
{
	if (!s->pos)
		return true;
	for (int i = 0; i < s->nneg; i++)
		if (strcmp(s->neg[i], s->pos) == 0)
			return false;	/* "eth0 and not eth0": never */
	s->nneg = 0;			/* implied by the positive name */
	return true;
}

/*
 * Which interface conditions the rule has in this pass.  IN: via and recv
 * name the receiving interface; there is no transmit interface yet, so a
 * positive xmit never matches and a negated one always does.  OUT: via and
 * xmit name the transmit interface, recv the receiving one (none for locally
 * generated packets: a positive recv fails, a negated one holds).  Returns
 * false when the conditions can never all hold: the rule is left out.
 */
static bool iface_plan(const struct rule *r, enum pass pass,
		       struct iface_plan *pl)
{
	memset(pl, 0, sizeof(*pl));
	for (int i = 0; i < r->nifaces; i++) {
		const struct rule_iface *ifc = &r->ifaces[i];
		struct iface_side *s;

		if (pass == PASS_IN) {
			if (ifc->kind == IFACE_XMIT) {
				if (!ifc->neg)
					return false;
				continue;
			}
			s = &pl->in;
		} else {
			s = ifc->kind == IFACE_RECV ? &pl->in : &pl->out;
		}
		if (!side_add(s, ifc))
			return false;
	}
	return side_finish(&pl->in) && side_finish(&pl->out);
}

/* fam: 0 for the nft table (both families), else FAM_V4 or FAM_V6 */
static bool rule_present(const struct rule *r, enum pass pass, unsigned fam)
{
	struct iface_plan pl;

	if (!(r->dirs & pass_dir[pass]))
		return false;
	if (fam && !(r->families & fam))
		return false;
	return iface_plan(r, pass, &pl);
}

/* Distinct numbers of the rules present in a pass, ascending.  segs has
 * room for rs->n. */
static size_t collect_numbers(const struct ruleset *rs, enum pass pass,
			      unsigned fam, uint16_t *segs)
{
	size_t n = 0;

	for (size_t i = 0; i < rs->n; i++) {
		const struct rule *r = &rs->rules[i];

		if (!rule_present(r, pass, fam))
			continue;
		if (n == 0 || segs[n - 1] != r->num)
			segs[n++] = r->num;
	}
	return n;
}

/* Port lists and icmptypes, sorted, overlaps merged, duplicates removed, so
 * that splitting a list across several rules never counts a packet twice. */
static int port_cmp(const void *a, const void *b)
{
	const struct port_range *x = a, *y = b;

	if (x->lo != y->lo)
		return x->lo < y->lo ? -1 : 1;
	return (x->hi > y->hi) - (x->hi < y->hi);
}

static int norm_ports(const struct rule_addr *a, struct port_range *out)
{
	int n = 0;

	memcpy(out, a->ports, sizeof(a->ports[0]) * (size_t)a->nports);
	qsort(out, (size_t)a->nports, sizeof(out[0]), port_cmp);
	for (int i = 0; i < a->nports; i++) {
		if (n > 0 && out[i].lo <= out[n - 1].hi) {
			if (out[i].hi > out[n - 1].hi)
				out[n - 1].hi = out[i].hi;
		} else {
			out[n++] = out[i];
		}
	}
	return n;
}

static int norm_icmptypes(const struct rule *r, uint8_t *out)
{
	bool seen[256] = { false };
	int n = 0;

	for (int i = 0; i < r->nicmptypes; i++)
		seen[r->icmptypes[i]] = true;
	for (int t = 0; t < 256; t++)
		if (seen[t])
			out[n++] = (uint8_t)t;
	return n;
}

static const char *proto_name(int proto, char *buf, size_t len)
{
	switch (proto) {
	case IPPROTO_TCP:
		return "tcp";
	case IPPROTO_UDP:
		return "udp";
	case IPPROTO_ICMP:
		return "icmp";
	case IPPROTO_ICMPV6:
		return "ipv6-icmp";
	}
	snprintf(buf, len, "%d", proto);
	return buf;
}

static void addr_text(const struct rule_addr *a, char *buf, size_t len)
{
	char s[INET6_ADDRSTRLEN];

	inet_ntop(a->family, &a->addr, s, sizeof(s));
	snprintf(buf, len, "%s/%d", s, a->plen);
}

/* ---- iptables-restore ----------------------------------------------------- */

struct ipt_ctx {
	const struct ruleset *rs;
	const struct mark_layout *ml;
	unsigned fam;
	enum pass pass;
	const uint16_t *segs;		/* this pass and family */
	size_t nsegs;
	struct sbuf *decl, *body;
};

static void ipt_chain(char *buf, size_t len, enum pass pass, size_t seg,
		      const uint16_t *segs)
{
	snprintf(buf, len, "divertd-%s-%u", pass_word[pass], segs[seg]);
}

/* Greedy cut of a port list into multiport-sized pieces: start indexes. */
static int ipt_port_chunks(const struct port_range *p, int n, int *starts)
{
	int nchunks = 0, weight = MULTIPORT_MAX;

	for (int i = 0; i < n; i++) {
		int w = p[i].lo == p[i].hi ? 1 : 2;

		if (weight + w > MULTIPORT_MAX) {
			starts[nchunks++] = i;
			weight = 0;
		}
		weight += w;
	}
	starts[nchunks] = n;
	return nchunks;
}

static void ipt_port(struct sbuf *sb, const struct port_range *p)
{
	if (p->lo == p->hi)
		sb_printf(sb, "%u", p->lo);
	else
		sb_printf(sb, "%u:%u", p->lo, p->hi);
}

static void ipt_addr(struct sbuf *sb, const struct rule_addr *a, bool src)
{
	char buf[INET6_ADDRSTRLEN + 8];
	const char *neg = a->neg ? " !" : "";

	switch (a->kind) {
	case ADDR_ANY:
		break;
	case ADDR_ME:
	case ADDR_ME6:
		sb_printf(sb, " -m addrtype%s --%s-type LOCAL", neg,
			  src ? "src" : "dst");
		break;
	case ADDR_PREFIX:
		addr_text(a, buf, sizeof(buf));
		sb_printf(sb, "%s -%c %s", neg, src ? 's' : 'd', buf);
		break;
	}
}

static void ipt_side(struct sbuf *sb, const struct iface_side *s, char opt)
{
	if (s->pos)
		sb_printf(sb, " -%c %s", opt, s->pos);
	else if (s->nneg == 1)
		sb_printf(sb, " ! -%c %s", opt, s->neg[0]);
	/* two or more negated names: escape lines, see ipt_rule() */
}

/* The tag a skipto sets: the last rule number below its target, so the
 * driver's guards resume at the first rule numbered >= the target. */
static unsigned skipto_tag(const struct ruleset *rs, const struct rule *r)
{
	return rules_resume_tag(rs, (uint16_t)(r->arg - 1u));
}

/* The mark a divert or tee rule puts on the packets it queues. */
static unsigned mark_value(const struct ruleset *rs, const struct rule *r)
{
	return r->action == ACT_TEE ? rules_tee_value(rs, r) : r->num;
}

static void ipt_tee_chain(char *buf, size_t len, enum pass pass,
			  const struct ruleset *rs, const struct rule *r)
{
	snprintf(buf, len, "divertd-%s-%u.t%u", pass_word[pass], r->num,
		 tee_index(rs, r));
}

static void ipt_rule(struct ipt_ctx *c, const struct rule *r, char *chain,
		     size_t chainlen, unsigned *nconts)
{
	const struct mark_layout *ml = c->ml;
	struct iface_plan pl;
	struct port_range sp[RULE_MAX_PORTS], dp[RULE_MAX_PORTS];
	int sstart[RULE_MAX_PORTS + 1], dstart[RULE_MAX_PORTS + 1];
	int nsp = norm_ports(&r->src, sp), ndp = norm_ports(&r->dst, dp);
	int nsc = 1, ndc = 1, nic, nexp;
	uint8_t types[RULE_MAX_ICMPTYPES];
	char pbuf[8], target[64], cont[64], label[32];
	const char *pname = r->proto == PROTO_ANY ? NULL :
			    proto_name(r->proto, pbuf, sizeof(pbuf));
	const char *pw = pass_word[c->pass];
	bool v6 = c->fam == FAM_V6;

	rules_label(c->rs, r, label, sizeof(label));
	iface_plan(r, c->pass, &pl);
	if (nsp > 1)
		nsc = ipt_port_chunks(sp, nsp, sstart);
	if (ndp > 1)
		ndc = ipt_port_chunks(dp, ndp, dstart);
	nic = norm_icmptypes(r, types);
	nexp = nic == 0 || r->icmptypes_neg ? 1 : nic;

	/* iptables takes one -i and one -o per rule: "not via a not via b"
	 * becomes lines that skip this rule for a and for b, by going to a
	 * continuation chain holding the rest of the segment. */
	if (pl.in.nneg > 1 || pl.out.nneg > 1) {
		snprintf(cont, sizeof(cont), "divertd-%s-%u.%u", pw, r->num,
			 ++*nconts);
		sb_printf(c->decl, ":%s - [0:0]\n", cont);
		for (int i = 0; pl.in.nneg > 1 && i < pl.in.nneg; i++)
			sb_printf(c->body, "-A %s -i %s -g %s\n", chain,
				  pl.in.neg[i], cont);
		for (int i = 0; pl.out.nneg > 1 && i < pl.out.nneg; i++)
			sb_printf(c->body, "-A %s -o %s -g %s\n", chain,
				  pl.out.neg[i], cont);
	}

	switch (r->action) {
	case ACT_DIVERT:
	case ACT_TEE:
		snprintf(target, sizeof(target),
			 " -j MARK --set-xmark 0x%x/0x%x",
			 tagmark(ml, mark_value(c->rs, r)), ml->mask);
		break;
	case ACT_ALLOW:
		snprintf(target, sizeof(target),
			 " -j MARK --set-xmark 0x%x/0x%x",
			 tagmark(ml, TAG_DONE), ml->mask);
		break;
	case ACT_DENY:
		snprintf(target, sizeof(target), " -j DROP");
		break;
	case ACT_COUNT:
		target[0] = '\0';
		break;
	case ACT_SKIPTO:
		snprintf(target, sizeof(target),
			 " -j MARK --set-xmark 0x%x/0x%x",
			 tagmark(ml, skipto_tag(c->rs, r)), ml->mask);
		break;
	}

	for (int s = 0; s < nsc; s++)
	for (int d = 0; d < ndc; d++)
	for (int e = 0; e < nexp; e++) {
		struct sbuf *b = c->body;

		sb_printf(b, "-A %s", chain);
		if (pname)
			sb_printf(b, " -p %s", pname);
		ipt_addr(b, &r->src, true);
		ipt_addr(b, &r->dst, false);
		if (nsp == 1 || ndp == 1) {
			sb_printf(b, " -m %s", pname);
			if (nsp == 1) {
				sb_printf(b, " --sport ");
				ipt_port(b, &sp[0]);
			}
			if (ndp == 1) {
				sb_printf(b, " --dport ");
				ipt_port(b, &dp[0]);
			}
		}
		if (nsp > 1) {
			sb_printf(b, " -m multiport --sports ");
			for (int i = sstart[s]; i < sstart[s + 1]; i++) {
				sb_printf(b, "%s", i > sstart[s] ? "," : "");
				ipt_port(b, &sp[i]);
			}
		}
		if (ndp > 1) {
			sb_printf(b, " -m multiport --dports ");
			for (int i = dstart[d]; i < dstart[d + 1]; i++) {
				sb_printf(b, "%s", i > dstart[d] ? "," : "");
				ipt_port(b, &dp[i]);
			}
		}
		ipt_side(b, &pl.in, 'i');
		ipt_side(b, &pl.out, 'o');
		if (nic > 0 && r->icmptypes_neg) {
			for (int i = 0; i < nic; i++)
				sb_printf(b, v6 ? " -m icmp6 ! --icmpv6-type %u"
					  : " -m icmp ! --icmp-type %u",
					  types[i]);
		} else if (nic > 0) {
			sb_printf(b, v6 ? " -m icmp6 --icmpv6-type %u" :
				  " -m icmp --icmp-type %u", types[e]);
		}
		sb_printf(b, " -m comment --comment \"%s\"%s\n", label, target);
	}
	if (r->action == ACT_DIVERT || r->action == ACT_TEE)
		sb_printf(c->body, "-A %s -m mark --mark 0x%x/0x%x -j NFQUEUE "
			  "--queue-num %u%s\n", chain,
			  tagmark(ml, mark_value(c->rs, r)), ml->mask, r->arg,
			  ml->lost || ml->fail_open ? " --queue-bypass" : "");
	if (r->action == ACT_ALLOW || r->action == ACT_SKIPTO)
		/* back to the driver, whose guards now pass it on */
		sb_printf(c->body, "-A %s -m mark --mark 0x%x/0x%x -j RETURN\n",
			  chain, tagmark(ml, r->action == ACT_ALLOW ? TAG_DONE :
					 skipto_tag(c->rs, r)), ml->mask);

	if (pl.in.nneg > 1 || pl.out.nneg > 1) {
		sb_printf(c->body, "-A %s -g %s\n", chain, cont);
		snprintf(chain, chainlen, "%s", cont);
	}
	if (r->action == ACT_TEE) {
		/* the rest of the segment, where the original resumes: its
		 * tag becomes the rule number again, so the driver's later
		 * guards let it on */
		ipt_tee_chain(cont, sizeof(cont), c->pass, c->rs, r);
		sb_printf(c->decl, ":%s - [0:0]\n", cont);
		sb_printf(c->body, "-A %s -g %s\n", chain, cont);
		sb_printf(c->body, "-A %s -j MARK --set-xmark 0x%x/0x%x\n", cont,
			  tagmark(ml, r->num), ml->mask);
		snprintf(chain, chainlen, "%s", cont);
	}
}

/*
 * One pass: a driver chain that runs the segments in order, each behind a
 * guard that lets in only packets whose tag is below the segment's number
 * (a classic BPF program reading the mark: xt_mark only compares for
 * equality), so a packet written back with tag N resumes at the first
 * segment above N, and allow / skipto only have to raise the tag.  Every
 * segment is one jump deep: nf_tables refuses chains of jumps and gotos
 * deeper than 16, which a chain of segments each going to the next would
 * reach at 14 rule numbers.
 */
static void ipt_pass(struct ipt_ctx *c)
{
	const char *pw = pass_word[c->pass];
	char chain[64], next[64];
	size_t i = 0;

	sb_printf(c->decl, ":divertd-%s - [0:0]\n", pw);
	sb_printf(c->body, "-A divertd-%s -m conntrack --ctstate UNTRACKED "
		  "-m comment --comment \"activates defragmentation\"\n", pw);
	for (size_t s = 0; s < c->nsegs; s++) {
		ipt_chain(chain, sizeof(chain), c->pass, s, c->segs);
		sb_printf(c->body, "-A divertd-%s -m bpf --bytecode \"5,32 0 0 "
			  "%u,84 0 0 %u,53 1 0 %u,6 0 0 1,6 0 0 0\" -j %s\n", pw,
			  (unsigned)(SKF_AD_OFF + SKF_AD_MARK),
			  c->ml->mask, tagmark(c->ml, c->segs[s]), chain);
		for (size_t k = 0; k < c->rs->n; k++) {
			const struct rule *r = &c->rs->rules[k];

			if (r->num != c->segs[s] || r->action != ACT_TEE ||
			    !rule_present(r, c->pass, c->fam))
				continue;
			ipt_tee_chain(next, sizeof(next), c->pass, c->rs, r);
			sb_printf(c->body, "-A divertd-%s -m mark --mark 0x%x/0x%x "
				  "-j %s\n", pw,
				  tagmark(c->ml, rules_tee_value(c->rs, r)),
				  c->ml->mask, next);
		}
	}
	sb_printf(c->body, "-A divertd-%s -j MARK --set-xmark 0x0/0x%x\n", pw,
		  c->ml->mask);

	for (size_t s = 0; s < c->nsegs; s++) {
		unsigned nconts = 0;

		ipt_chain(chain, sizeof(chain), c->pass, s, c->segs);
		sb_printf(c->decl, ":%s - [0:0]\n", chain);
		for (; i < c->rs->n && c->rs->rules[i].num <= c->segs[s]; i++) {
			const struct rule *r = &c->rs->rules[i];

			if (r->num == c->segs[s] &&
			    rule_present(r, c->pass, c->fam))
				ipt_rule(c, r, chain, sizeof(chain), &nconts);
		}
	}
}

char *rules_ipt_text(const struct ruleset *rs, const struct mark_layout *ml,
		     int family)
{
	struct sbuf out = { 0 }, decl[2] = { { 0 } }, body[2] = { { 0 } };
	uint16_t *segs[2];
	char *text = NULL;
	unsigned fam = family == 6 ? FAM_V6 : FAM_V4;

	if (family != 4 && family != 6)
		return NULL;
	segs[0] = calloc(rs->n + 1, sizeof(*segs[0]));
	segs[1] = calloc(rs->n + 1, sizeof(*segs[1]));
	if (!segs[0] || !segs[1])
		goto out;
	for (int p = PASS_IN; p <= PASS_OUT; p++) {
		struct ipt_ctx c = {
			.rs = rs, .ml = ml, .fam = fam, .pass = (enum pass)p,
			.segs = segs[p],
			.nsegs = collect_numbers(rs, (enum pass)p, fam, segs[p]),
			.decl = &decl[p], .body = &body[p],
		};

		ipt_pass(&c);
	}
	sb_printf(&out, "*mangle\n");
	sb_cat(&out, &decl[0]);
	sb_cat(&out, &decl[1]);
	sb_cat(&out, &body[0]);
	sb_cat(&out, &body[1]);
	sb_printf(&out, "-I PREROUTING 1 -j divertd-in\n"
		  "-I OUTPUT 1 -j divertd-out\n"
		  "-I FORWARD 1 -j divertd-out\n"
		  "COMMIT\n");
	text = sb_take(&out);
out:
	for (int p = 0; p < 2; p++) {
		sb_free(&decl[p]);
		sb_free(&body[p]);
		free(segs[p]);
	}
	sb_free(&out);
	return text;
}

/* ---- nftables ------------------------------------------------------------- */

static void nft_target(char *buf, size_t len, enum pass pass, size_t seg,
		       const uint16_t *segs)
{
	snprintf(buf, len, "%s_%u", pass_word[pass], segs[seg]);
}

static void nft_addr(struct sbuf *sb, const struct rule_addr *a, bool src)
{
	char buf[INET6_ADDRSTRLEN + 8];
	const char *neg = a->neg ? "!= " : "";

	switch (a->kind) {
	case ADDR_ANY:
		break;
	case ADDR_ME:
	case ADDR_ME6:
		sb_printf(sb, " fib %s type %slocal", src ? "saddr" : "daddr",
			  neg);
		break;
	case ADDR_PREFIX:
		addr_text(a, buf, sizeof(buf));
		sb_printf(sb, " %s %s %s%s", a->family == AF_INET ? "ip" : "ip6",
			  src ? "saddr" : "daddr", neg, buf);
		break;
	}
}

static void nft_ports(struct sbuf *sb, const char *pname, const char *dir,
		      const struct port_range *p, int n)
{
	if (n == 0)
		return;
	sb_printf(sb, " %s %s %s", pname, dir, n > 1 ? "{ " : "");
	for (int i = 0; i < n; i++) {
		sb_printf(sb, "%s", i ? ", " : "");
		if (p[i].lo == p[i].hi)
			sb_printf(sb, "%u", p[i].lo);
		else
			sb_printf(sb, "%u-%u", p[i].lo, p[i].hi);
	}
	sb_printf(sb, "%s", n > 1 ? " }" : "");
}

static void nft_side(struct sbuf *sb, const struct iface_side *s,
		     const char *key)
{
	if (s->pos) {
		sb_printf(sb, " %s \"%s\"", key, s->pos);
	} else if (s->nneg == 1) {
		sb_printf(sb, " %s != \"%s\"", key, s->neg[0]);
	} else if (s->nneg > 1) {
		sb_printf(sb, " %s != {", key);
		for (int i = 0; i < s->nneg; i++)
			sb_printf(sb, "%s \"%s\"", i ? "," : "", s->neg[i]);
		sb_printf(sb, " }");
	}
}

static bool implies_family(const struct rule_addr *a, int family)
{
	return a->kind == ADDR_PREFIX && a->family == family;
}

static void nft_rule(struct sbuf *b, const struct ruleset *rs,
		     const struct rule *r, enum pass pass,
		     const struct mark_layout *ml)
{
	struct iface_plan pl;
	struct port_range sp[RULE_MAX_PORTS], dp[RULE_MAX_PORTS];
	int nsp = norm_ports(&r->src, sp), ndp = norm_ports(&r->dst, dp);
	uint8_t types[RULE_MAX_ICMPTYPES];
	int nic = norm_icmptypes(r, types);
	char pbuf[8], label[32];
	const char *pname = r->proto == PROTO_ANY ? NULL :
			    proto_name(r->proto, pbuf, sizeof(pbuf));
	struct sbuf m = { 0 };

	iface_plan(r, pass, &pl);
	if (r->families == FAM_V4 && !implies_family(&r->src, AF_INET) &&
	    !implies_family(&r->dst, AF_INET))
		sb_printf(&m, " meta nfproto ipv4");
	if (r->families == FAM_V6 && !implies_family(&r->src, AF_INET6) &&
	    !implies_family(&r->dst, AF_INET6))
		sb_printf(&m, " meta nfproto ipv6");
	if (pname)
		sb_printf(&m, " meta l4proto %s", pname);
	nft_addr(&m, &r->src, true);
	nft_addr(&m, &r->dst, false);
	nft_ports(&m, pname, "sport", sp, nsp);
	nft_ports(&m, pname, "dport", dp, ndp);
	nft_side(&m, &pl.in, "iifname");
	nft_side(&m, &pl.out, "oifname");
	if (nic > 0) {
		sb_printf(&m, " %s type %s{", r->proto == IPPROTO_ICMP ?
			  "icmp" : "icmpv6", r->icmptypes_neg ? "!= " : "");
		for (int i = 0; i < nic; i++)
			sb_printf(&m, "%s %u", i ? "," : "", types[i]);
		sb_printf(&m, " }");
	}

	sb_printf(&m, " counter");
	switch (r->action) {
	case ACT_DIVERT:
	case ACT_TEE:
		sb_printf(&m, " meta mark set meta mark & 0x%08x | 0x%x "
			  "queue num %u%s", ~ml->mask,
			  tagmark(ml, mark_value(rs, r)), r->arg,
			  ml->lost || ml->fail_open ? " bypass" : "");
		break;
	case ACT_ALLOW:
		sb_printf(&m, " meta mark set meta mark & 0x%08x | 0x%x return",
			  ~ml->mask, tagmark(ml, TAG_DONE));
		break;
	case ACT_DENY:
		sb_printf(&m, " drop");
		break;
	case ACT_COUNT:
		break;
	case ACT_SKIPTO:
		sb_printf(&m, " meta mark set meta mark & 0x%08x | 0x%x return",
			  ~ml->mask, tagmark(ml, skipto_tag(rs, r)));
		break;
	}
	rules_label(rs, r, label, sizeof(label));
	sb_printf(&m, " comment \"%s\"", label);
	if (m.failed)
		b->failed = true;
	else
		sb_printf(b, "\t\t%s\n", m.p + 1);	/* drop leading blank */
	sb_free(&m);
}

static void nft_tee_chain(char *buf, size_t len, enum pass pass,
			  const struct ruleset *rs, const struct rule *r)
{
	snprintf(buf, len, "%s_%u_t%u", pass_word[pass], r->num,
		 tee_index(rs, r));
}

/* A base chain is the pass's driver, as in ipt_pass(): each segment behind
 * a guard that lets in tags below its number, each tee's rest of segment
 * behind its own value, and our bits cleared at the end. */
static void nft_base_chain(struct sbuf *b, const struct ruleset *rs,
			   const char *name,
			   const char *type, const char *hook, enum pass pass,
			   const struct mark_layout *ml,
			   const uint16_t *segs, size_t nsegs)
{
	char target[32];

	sb_printf(b, "\tchain %s {\n"
		  "\t\ttype %s hook %s priority mangle; policy accept;\n"
		  "\t\tct state untracked counter comment "
		  "\"activates defragmentation\"\n", name, type, hook);
	for (size_t s = 0; s < nsegs; s++) {
		nft_target(target, sizeof(target), pass, s, segs);
		sb_printf(b, "\t\tmeta mark & 0x%x < 0x%x jump %s\n", ml->mask,
			  tagmark(ml, segs[s]), target);
		for (size_t k = 0; k < rs->n; k++) {
			const struct rule *r = &rs->rules[k];

			if (r->num != segs[s] || r->action != ACT_TEE ||
			    !rule_present(r, pass, 0))
				continue;
			nft_tee_chain(target, sizeof(target), pass, rs, r);
			sb_printf(b, "\t\tmeta mark & 0x%x == 0x%x jump %s\n",
				  ml->mask, tagmark(ml, rules_tee_value(rs, r)),
				  target);
		}
	}
	sb_printf(b, "\t\tmeta mark set meta mark & 0x%08x\n\t}\n", ~ml->mask);
}

static void nft_pass_chains(struct sbuf *b, const struct ruleset *rs,
			    enum pass pass, const struct mark_layout *ml,
			    const uint16_t *segs, size_t nsegs)
{
	char name[32];
	size_t i = 0;

	for (size_t s = 0; s < nsegs; s++) {
		nft_target(name, sizeof(name), pass, s, segs);
		sb_printf(b, "\tchain %s {\n", name);
		for (; i < rs->n && rs->rules[i].num <= segs[s]; i++) {
			const struct rule *r = &rs->rules[i];

			if (r->num != segs[s] || !rule_present(r, pass, 0))
				continue;
			nft_rule(b, rs, r, pass, ml);
			if (r->action == ACT_TEE) {
				/* the rest of the segment, where the
				 * original resumes, its tag the rule
				 * number again */
				nft_tee_chain(name, sizeof(name), pass, rs, r);
				sb_printf(b, "\t\tgoto %s\n\t}\n\tchain %s {\n"
					  "\t\tmeta mark set meta mark & 0x%08x"
					  " | 0x%x\n", name, name, ~ml->mask,
					  tagmark(ml, r->num));
			}
		}
		sb_printf(b, "\t}\n");
	}
}

/*
 * Packets that found no divertd.  A queue rule bypasses a queue nobody
 * reads: the packet leaves our base chain there, with our bits still set
 * (every packet that goes through the chain leaves it with them clear), and
 * goes on to the next chain of the hook.  This one, right after ours,
 * counts it and drops it, or with -F clears our bits and lets it go on.
 * Without it the kernel would drop it and count it nowhere; with it the
 * next divertd finds the count (fw_lost()).  The same chains serve the
 * iptables backend (rules_nft_lost_text()): no iptables table comes after
 * mangle at PREROUTING for every packet, and a chain on a later hook
 * would meet the packets a verdict sends round the hook again, their tag
 * rightly set.
 */
static void nft_lost_chain(struct sbuf *b, const char *hook,
			   const struct mark_layout *ml)
{
	sb_printf(b, "\tchain lost_%s {\n"
		  "\t\ttype filter hook %s priority mangle + 1; policy accept;\n"
		  "\t\tmeta mark & 0x%x != 0x0 counter ", hook, hook, ml->mask);
	if (ml->fail_open)
		sb_printf(b, "meta mark set meta mark & 0x%08x", ~ml->mask);
	else
		sb_printf(b, "drop");
	sb_printf(b, " comment \"%s\"\n\t}\n", RULES_LOST_LABEL);
}

char *rules_nft_lost_text(const struct mark_layout *ml)
{
	struct sbuf b = { 0 };

	sb_printf(&b, "table inet divertd {\n");
	nft_lost_chain(&b, "prerouting", ml);
	nft_lost_chain(&b, "output", ml);
	nft_lost_chain(&b, "forward", ml);
	sb_printf(&b, "}\n");
	return sb_take(&b);
}

char *rules_nft_text(const struct ruleset *rs, const struct mark_layout *ml)
{
	struct sbuf b = { 0 };
	uint16_t *in = calloc(rs->n + 1, sizeof(*in));
	uint16_t *out = calloc(rs->n + 1, sizeof(*out));
	size_t nin, nout;
	char *text = NULL;

	if (!in || !out)
		goto done;
	nin = collect_numbers(rs, PASS_IN, 0, in);
	nout = collect_numbers(rs, PASS_OUT, 0, out);

	sb_printf(&b, "table inet divertd {\n");
	nft_base_chain(&b, rs, "prerouting", "filter", "prerouting", PASS_IN, ml,
		       in, nin);
	nft_base_chain(&b, rs, "output", "route", "output", PASS_OUT, ml,
		       out, nout);
	nft_base_chain(&b, rs, "forward", "filter", "forward", PASS_OUT, ml,
		       out, nout);
	nft_pass_chains(&b, rs, PASS_IN, ml, in, nin);
	nft_pass_chains(&b, rs, PASS_OUT, ml, out, nout);
	if (ml->lost) {
		nft_lost_chain(&b, "prerouting", ml);
		nft_lost_chain(&b, "output", ml);
		nft_lost_chain(&b, "forward", ml);
	}
	sb_printf(&b, "}\n");
	text = sb_take(&b);
done:
	sb_free(&b);
	free(in);
	free(out);
	return text;
}

/* ---- back to ipfw text (divertctl list) ---------------------------------- */

/*
 * One rule as an ipfw line, "00100 divert 8668 icmp from any to any in
 * icmptypes 8": what config.c reads gives the same struct rule back (the
 * protocol word names the families the rule matches when its addresses do
 * not already say so; a host prefix is written without /32 or /128).
 */
static void fmt_endpoint(struct sbuf *sb, const struct rule_addr *a)
{
	char s[INET6_ADDRSTRLEN];

	sb_printf(sb, " %s", a->neg ? "not " : "");
	switch (a->kind) {
	case ADDR_ANY:
		sb_printf(sb, "any");
		break;
	case ADDR_ME:
		sb_printf(sb, "me");
		break;
	case ADDR_ME6:
		sb_printf(sb, "me6");
		break;
	case ADDR_PREFIX:
		inet_ntop(a->family, &a->addr, s, sizeof(s));
		if (a->plen == (a->family == AF_INET ? 32 : 128))
			sb_printf(sb, "%s", s);
		else
			sb_printf(sb, "%s/%d", s, a->plen);
		break;
	}
	for (int i = 0; i < a->nports; i++) {
		sb_printf(sb, "%s%u", i == 0 ? " " : ",", a->ports[i].lo);
		if (a->ports[i].hi != a->ports[i].lo)
			sb_printf(sb, "-%u", a->ports[i].hi);
	}
}

static unsigned endpoint_fams(const struct rule_addr *a)
{
	if (a->kind == ADDR_ME)
		return FAM_V4;
	if (a->kind == ADDR_ME6)
		return FAM_V6;
	if (a->kind == ADDR_PREFIX)
		return a->family == AF_INET ? FAM_V4 : FAM_V6;
	return FAM_V4 | FAM_V6;
}

static const char *fmt_proto(const struct rule *r, char *buf, size_t len)
{
	static const struct { int proto; const char *name; } names[] = {
		{ IPPROTO_TCP, "tcp" }, { IPPROTO_UDP, "udp" },
		{ IPPROTO_ICMP, "icmp" }, { IPPROTO_ICMPV6, "ipv6-icmp" },
		{ IPPROTO_GRE, "gre" }, { IPPROTO_ESP, "esp" },
		{ IPPROTO_AH, "ah" }, { IPPROTO_SCTP, "sctp" },
		{ IPPROTO_UDPLITE, "udplite" },
	};

	if (r->proto == PROTO_ANY) {
		unsigned implied = endpoint_fams(&r->src) & endpoint_fams(&r->dst);

		if (implied == r->families)
			return "ip";
		return r->families == FAM_V4 ? "ip4" : "ip6";
	}
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i].proto == r->proto)
			return names[i].name;
	snprintf(buf, len, "%d", r->proto);
	return buf;
}

char *rules_format(const struct rule *r)
{
	static const char *const iface_word[] = {
		[IFACE_VIA] = "via", [IFACE_RECV] = "recv",
		[IFACE_XMIT] = "xmit",
	};
	struct sbuf sb = { 0 };
	char pbuf[8];

	sb_printf(&sb, "%05u ", r->num);
	switch (r->action) {
	case ACT_DIVERT:
		sb_printf(&sb, "divert %u", r->arg);
		break;
	case ACT_TEE:
		sb_printf(&sb, "tee %u", r->arg);
		break;
	case ACT_ALLOW:
		sb_printf(&sb, "allow");
		break;
	case ACT_DENY:
		sb_printf(&sb, "deny");
		break;
	case ACT_COUNT:
		sb_printf(&sb, "count");
		break;
	case ACT_SKIPTO:
		sb_printf(&sb, "skipto %u", r->arg);
		break;
	}
	sb_printf(&sb, " %s from", fmt_proto(r, pbuf, sizeof(pbuf)));
	fmt_endpoint(&sb, &r->src);
	sb_printf(&sb, " to");
	fmt_endpoint(&sb, &r->dst);
	if (r->dirs == DIR_IN)
		sb_printf(&sb, " in");
	else if (r->dirs == DIR_OUT)
		sb_printf(&sb, " out");
	for (int i = 0; i < r->nifaces; i++)
		sb_printf(&sb, " %s%s %s", r->ifaces[i].neg ? "not " : "",
			  iface_word[r->ifaces[i].kind], r->ifaces[i].name);
	for (int i = 0; i < r->nicmptypes; i++)
		sb_printf(&sb, "%s%u",
			  i > 0 ? "," : r->icmptypes_neg ? " not icmptypes "
							 : " icmptypes ",
			  r->icmptypes[i]);
	return sb_take(&sb);
}
