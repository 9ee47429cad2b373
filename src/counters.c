/*
 * counters.c: each rule's packet and byte counts as divertctl show prints
 * them.  The only code that keeps counts across rule changes and zero.
 *
 * Theory of operation.  The kernel counts: every firewall rule a config
 * rule becomes has a counter and a comment naming the config rule
 * (rules_label()), and fw_counters() adds them up per config rule.  Two
 * things the kernel cannot do for us are kept here, per rule of the
 * running list, as an adjustment added to what the kernel says:
 *   - zero: the kernel's counters of an nft table cannot be reset in place
 *     by the nftables of Debian 12, so zeroing a rule subtracts what the
 *     kernel has counted so far;
 *   - rule changes: a divertctl add or delete, or a reload, puts a whole
 *     new table (or new chains) in place, whose counters start at 0.  As
 *     with ipfw, a rule that stays keeps its counts: before the change the
 *     counts are read, and after it each new rule that is the same as an
 *     old one (same number, same text; each old rule lends its counts
 *     once) starts from the old rule's counts.
 * So `nft list table inet divertd` or `iptables -t mangle -L -v` show what
 * the kernel counted since the rules were last put in place; divertctl
 * show is what an ipfw user expects.  Nothing here is on the packet path.
 *
 * Reading the kernel's counters is not cheap (iptables-save twice, or a
 * whole listing through libnftables: a few milliseconds), and it happens
 * inside the poll loop, where every packet waits for it.  So the last
 * reading is kept (snap), and a caller says how old a reading it takes:
 * root's show reads the kernel every time (exact, as ipfw show), a group
 * member's takes the last reading while it is younger than
 * COUNTERS_SHARED_MS, so a flood of show costs one reading per interval.
 * zero and rule changes always read the kernel; zero keeps what it read as
 * the reading (counts and adjustments agree), a rule change drops it (its
 * rules are gone).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "divertd.h"

struct adjust {
	int64_t packets, bytes;
};

static struct adjust *adj;	/* one per rule of daemon_rules(), or NULL */
static size_t nadj;

/* The kernel's counts at the last reading, one per rule of daemon_rules() */
static struct rule_count *snap;
static size_t nsnap;
static uint64_t snap_ms;	/* when it was read (CLOCK_MONOTONIC); 0: none */

static enum fw_backend backend(void)
{
	return daemon_uses_nft() ? FW_NFT : FW_IPT;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void snap_drop(void)
{
	free(snap);
	snap = NULL;
	nsnap = 0;
	snap_ms = 0;
}

/* The kernel's counts, read now or, when max_age_ms allows, the last
 * reading; NULL when they could not be read. */
static const struct rule_count *kernel_counts(unsigned max_age_ms)
{
	const struct ruleset *rs = daemon_rules();
	uint64_t now = now_ms();

	if (snap != NULL && nsnap == rs->n && snap_ms != 0 &&
	    now - snap_ms < max_age_ms)
		return snap;
	if (snap == NULL || nsnap != rs->n) {
		snap_drop();
		snap = calloc(rs->n > 0 ? rs->n : 1, sizeof(*snap));
		if (snap == NULL)
			return NULL;
		nsnap = rs->n;
	}
	snap_ms = 0;
	if (fw_counters(backend(), rs, snap) < 0)
		return NULL;
	snap_ms = now > 0 ? now : 1;
	return snap;
}

int counters_get(struct rule_count *c, unsigned max_age_ms)
{
	const struct ruleset *rs = daemon_rules();
	const struct rule_count *k = kernel_counts(max_age_ms);

	if (k == NULL)
		return -1;
	for (size_t i = 0; i < rs->n; i++) {
		c[i] = k[i];
		if (i < nadj) {
			c[i].packets += (uint64_t)adj[i].packets;
			c[i].bytes += (uint64_t)adj[i].bytes;
		}
	}
	return 0;
}

/* The adjustment array sized for the running rules (zeroed when new). */
static int adj_fit(size_t n)
{
	struct adjust *a;

	if (nadj == n && (adj != NULL || n == 0))
		return 0;
	a = calloc(n > 0 ? n : 1, sizeof(*a));
	if (a == NULL)
		return -1;
	for (size_t i = 0; i < n && i < nadj; i++)
		a[i] = adj[i];
	free(adj);
	adj = a;
	nadj = n;
	return 0;
}

int counters_zero(const bool *which)
{
	const struct ruleset *rs = daemon_rules();
	const struct rule_count *k;

	if (adj_fit(rs->n) < 0 || (k = kernel_counts(0)) == NULL)
		return -1;
	for (size_t i = 0; i < rs->n; i++) {
		if (which != NULL && !which[i])
			continue;
		adj[i].packets = -(int64_t)k[i].packets;
		adj[i].bytes = -(int64_t)k[i].bytes;
	}
	return 0;
}

struct rule_count *counters_save(void)
{
	const struct ruleset *rs = daemon_rules();
	struct rule_count *c = calloc(rs->n > 0 ? rs->n : 1, sizeof(*c));

	if (c != NULL && counters_get(c, 0) < 0) {
		log_warn("the rule counters could not be read; the rules' "
			 "counts start again from 0");
		free(c);
		return NULL;
	}
	return c;
}

/* Texts of every rule, for telling which rules stay; NULL entries when
 * memory ran out (those rules then start from 0). */
static char **texts(const struct ruleset *rs)
{
	char **t = calloc(rs->n > 0 ? rs->n : 1, sizeof(*t));

	for (size_t i = 0; t != NULL && i < rs->n; i++)
		t[i] = rules_format(&rs->rules[i]);
	return t;
}

static void texts_free(char **t, size_t n)
{
	for (size_t i = 0; t != NULL && i < n; i++)
		free(t[i]);
	free(t);
}

void counters_carry(const struct ruleset *old, struct rule_count *saved,
		    const struct ruleset *nrs)
{
	char **ot = texts(old), **nt = texts(nrs);
	bool *used = calloc(old->n > 0 ? old->n : 1, sizeof(*used));
	size_t from = 0;

	snap_drop();		/* of the rules before the change */
	free(adj);
	adj = NULL;
	nadj = 0;
	if (adj_fit(nrs->n) < 0 || saved == NULL || ot == NULL || nt == NULL ||
	    used == NULL)
		goto out;
	/* both lists are sorted by number: walk them side by side */
	for (size_t j = 0; j < nrs->n; j++) {
		const struct rule *r = &nrs->rules[j];

		while (from < old->n && old->rules[from].num < r->num)
			from++;
		for (size_t i = from; i < old->n && old->rules[i].num == r->num;
		     i++) {
			if (used[i] || ot[i] == NULL || nt[j] == NULL ||
			    strcmp(ot[i], nt[j]) != 0)
				continue;
			used[i] = true;
			adj[j].packets = (int64_t)saved[i].packets;
			adj[j].bytes = (int64_t)saved[i].bytes;
			break;
		}
	}
out:
	texts_free(ot, old->n);
	texts_free(nt, nrs->n);
	free(used);
	free(saved);
}

void counters_free(void)
{
	snap_drop();
	free(adj);
	adj = NULL;
	nadj = 0;
}
