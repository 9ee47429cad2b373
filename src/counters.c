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
 */
#include <stdlib.h>
#include <string.h>

#include "divertd.h"

struct adjust {
	int64_t packets, bytes;
};

static struct adjust *adj;	/* one per rule of daemon_rules(), or NULL */
static size_t nadj;

static enum fw_backend backend(void)
{
	return daemon_uses_nft() ? FW_NFT : FW_IPT;
}

int counters_get(struct rule_count *c)
{
	const struct ruleset *rs = daemon_rules();

	if (fw_counters(backend(), rs, c) < 0)
		return -1;
	for (size_t i = 0; i < rs->n && i < nadj; i++) {
		c[i].packets += (uint64_t)adj[i].packets;
		c[i].bytes += (uint64_t)adj[i].bytes;
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
	struct rule_count *k = calloc(rs->n > 0 ? rs->n : 1, sizeof(*k));

	if (k == NULL || adj_fit(rs->n) < 0 || fw_counters(backend(), rs, k) < 0) {
		free(k);
		return -1;
	}
	for (size_t i = 0; i < rs->n; i++) {
		if (which != NULL && !which[i])
			continue;
		adj[i].packets = -(int64_t)k[i].packets;
		adj[i].bytes = -(int64_t)k[i].bytes;
	}
	free(k);
	return 0;
}

struct rule_count *counters_save(void)
{
	const struct ruleset *rs = daemon_rules();
	struct rule_count *c = calloc(rs->n > 0 ? rs->n : 1, sizeof(*c));

	if (c != NULL && counters_get(c) < 0) {
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
	free(adj);
	adj = NULL;
	nadj = 0;
}
