/*
 * control.c: divertctl's commands.  The only code that runs them.
 *
 * Theory of operation.  divertctl(8) is ipfw's habits for divertd: it
 * connects to divertd's UNIX socket like any client, sends its command line
 * as one DW_CTL message and prints the DW_CTLREPLY text it gets back, with
 * the exit status the reply carries.  divert_sock.c speaks that protocol;
 * it hands the strings here and sends back what comes out.  Only root gets
 * that far: divert_sock.c refuses any peer (SO_PEERCRED) that is neither
 * root nor in divertd's group, and group members may only look: add,
 * delete, flush and zero take root (CTL_ROOT).
 *
 * What flows through here, one request at a time, inside the poll loop (so
 * nothing else runs while a command does):
 *   - reads of the daemon's state: the rules in force (daemon_rules(),
 *     printed back as ipfw lines by rules_format()), the generated firewall
 *     text (rules.c), the counters (divert_sock.c, nfq_bridge.c), the bound
 *     ports and who holds them (divert_sock.c; a program's name is read
 *     from /proc/PID/comm now, never kept);
 *   - changes to the rules (add, delete, flush): a new ruleset is built from
 *     the one in force and put in place by daemon_apply(), the same path a
 *     SIGHUP reload takes (queues bound first, one transaction per backend
 *     table, the ruleset swapped, unused queues unbound).  A rule that does
 *     not parse, or rules the kernel refuses, change nothing and come back
 *     as exit status 1 with the reason.  As with ipfw, the config file is
 *     not written: the next SIGHUP (or start) puts the file's rules back.
 *   - the rules' counters (show, zero): counters.c.
 * With DW_CTL_JSON, list, show, stats and sockets answer in JSON (jansson);
 * the other commands print the same text either way.
 * Status 0: done; 1: refused (the text says why); 2: not a command.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "divertd.h"
#include "divert_wire.h"

#define RULE_NUM_MAX 65534u
#define AUTOINC_STEP 100u	/* ipfw's net.inet.ip.fw.autoinc_step */
#define MAX_SOCKETS 65536

/* The reply being written: text (or JSON) into a memory stream. */
struct ctl {
	FILE *f;
	bool json;
	bool root;	/* the peer is root (CTL_ROOT) */
};

static int usage_error(struct ctl *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int usage_error(struct ctl *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfprintf(c->f, fmt, ap);
	va_end(ap);
	fputs("\ncommands: list [NUM...], show [NUM...], zero [NUM...], "
	      "add [NUM] RULE, delete NUM..., flush, stats, sockets, "
	      "rules [--nft | --iptables]\n", c->f);
	return 2;
}

/* Print root as JSON; 0, or 1 when memory ran out. */
static int put_json(struct ctl *c, json_t *root)
{
	char *s = root != NULL ? json_dumps(root, JSON_INDENT(2)) : NULL;

	json_decref(root);
	if (s == NULL) {
		fputs("divertd: out of memory\n", c->f);
		return 1;
	}
	fprintf(c->f, "%s\n", s);
	free(s);
	return 0;
}

/* ---- list ------------------------------------------------------------- */

static bool all_digits(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

static const char *action_word(enum rule_action a)
{
	switch (a) {
	case ACT_DIVERT: return "divert";
	case ACT_TEE: return "tee";
	case ACT_ALLOW: return "allow";
	case ACT_DENY: return "deny";
	case ACT_COUNT: return "count";
	case ACT_SKIPTO: return "skipto";
	}
	return "?";
}

/* Which rules a command names: NUM... (each must name a rule), or all
 * when there are none.  Fills want[] (one flag per rule); 0, or 1 with the
 * reason printed, then tail. */
static int pick_rules(struct ctl *c, const char *cmd, const char *tail,
		      int argc, char **argv, bool *want)
{
	const struct ruleset *rs = daemon_rules();

	for (size_t k = 0; k < rs->n; k++)
		want[k] = argc < 2;
	for (int i = 1; i < argc; i++) {
		unsigned long v = all_digits(argv[i]) && strlen(argv[i]) < 6
				  ? strtoul(argv[i], NULL, 10) : 0;
		bool found = false;

		if (v < 1 || v > RULE_NUM_MAX) {
			fprintf(c->f, "%s: '%s' is not a rule number (1..%u)%s\n",
				cmd, argv[i], RULE_NUM_MAX, tail);
			return 1;
		}
		for (size_t k = 0; k < rs->n; k++)
			if (rs->rules[k].num == v)
				found = want[k] = true;
		if (!found) {
			fprintf(c->f, "%s: no rule numbered %lu%s\n", cmd, v,
				tail);
			return 1;
		}
	}
	return 0;
}

static unsigned digits(uint64_t v)
{
	unsigned n = 1;

	while (v >= 10) {
		v /= 10;
		n++;
	}
	return n;
}

/*
 * list [NUM...] and show [NUM...]: the rules in force as ipfw lines; show
 * puts each rule's packet and byte counts in front, in columns as wide as
 * the largest count, as ipfw show does.  For a group member they may be up
 * to COUNTERS_SHARED_MS old: a member cannot make the loop read the
 * kernel's counters more often than that.
 */
static int cmd_list(struct ctl *c, int argc, char **argv, bool counts)
{
	const struct ruleset *rs = daemon_rules();
	size_t n = rs->n > 0 ? rs->n : 1;
	bool *want = calloc(n, sizeof(*want));
	struct rule_count *cnt = counts ? calloc(n, sizeof(*cnt)) : NULL;
	json_t *arr = c->json ? json_array() : NULL;
	unsigned pw = 1, bw = 1;
	int rc = 1;

	if (want == NULL || (counts && cnt == NULL))
		goto nomem;
	if (pick_rules(c, counts ? "show" : "list", "", argc, argv, want) != 0)
		goto out;
	/* root's counts are read now; a group member's may come from a
	 * reading up to COUNTERS_SHARED_MS old (counters.c says why) */
	if (counts && counters_get(cnt, c->root ? 0 : COUNTERS_SHARED_MS) < 0) {
		fputs("show: the kernel's counters could not be read\n", c->f);
		goto out;
	}
	for (size_t i = 0; counts && i < rs->n; i++) {
		if (want[i] && digits(cnt[i].packets) > pw)
			pw = digits(cnt[i].packets);
		if (want[i] && digits(cnt[i].bytes) > bw)
			bw = digits(cnt[i].bytes);
	}
	for (size_t i = 0; i < rs->n; i++) {
		const struct rule *r = &rs->rules[i];
		char *line;

		if (!want[i])
			continue;
		line = rules_format(r);
		if (line == NULL)
			goto nomem;
		if (arr != NULL) {
			json_t *o = json_pack("{s:i, s:s, s:s}", "number",
					      (int)r->num, "action",
					      action_word(r->action), "rule", line);

			if (o != NULL && (r->action == ACT_DIVERT || r->action == ACT_TEE))
				json_object_set_new(o, "port", json_integer(r->arg));
			if (o != NULL && r->action == ACT_SKIPTO)
				json_object_set_new(o, "target", json_integer(r->arg));
			if (o != NULL && counts) {
				json_object_set_new(o, "packets",
					json_integer((json_int_t)cnt[i].packets));
				json_object_set_new(o, "bytes",
					json_integer((json_int_t)cnt[i].bytes));
			}
			json_array_append_new(arr, o);
		} else if (counts) {
			/* "00100 divert ..." -> "00100 PKTS BYTES divert ..." */
			fprintf(c->f, "%.5s %*llu %*llu %s\n", line, (int)pw,
				(unsigned long long)cnt[i].packets, (int)bw,
				(unsigned long long)cnt[i].bytes, line + 6);
		} else {
			fprintf(c->f, "%s\n", line);
		}
		free(line);
	}
	if (arr != NULL) {
		rc = put_json(c, arr);
		arr = NULL;
	} else {
		rc = 0;
	}
	goto out;
nomem:
	fputs("divertd: out of memory\n", c->f);
	rc = 1;
out:
	json_decref(arr);
	free(want);
	free(cnt);
	return rc;
}

/* zero [NUM...]: the counts of the rules with those numbers, or of all,
 * start again from 0. */
static int cmd_zero(struct ctl *c, int argc, char **argv)
{
	const struct ruleset *rs = daemon_rules();
	bool *want = calloc(rs->n > 0 ? rs->n : 1, sizeof(*want));
	int rc = 1;

	if (want == NULL) {
		fputs("divertd: out of memory\n", c->f);
		return 1;
	}
	if (pick_rules(c, "zero", "; nothing changed", argc, argv, want) != 0)
		goto out;
	if (counters_zero(want) < 0) {
		fputs("zero: the kernel's counters could not be read; nothing "
		      "changed\n", c->f);
		goto out;
	}
	/* what ipfw zero says */
	if (argc < 2)
		fputs("Accounting cleared.\n", c->f);
	for (int i = 1; i < argc; i++)
		fprintf(c->f, "Entry %s cleared\n", argv[i]);
	rc = 0;
out:
	free(want);
	return rc;
}

/* ---- add, delete, flush ------------------------------------------------ */

/* Put nrs in force; what the change was goes into the log. */
static int apply(struct ctl *c, struct ruleset *nrs, const char *cmd,
		 const char *what)
{
	char err[512], logged[128];

	snprintf(logged, sizeof(logged), "divertctl %s", what);
	if (daemon_apply(nrs, logged, err, sizeof(err)) < 0) {
		fprintf(c->f, "%s: %s; nothing changed\n", cmd, err);
		return 1;
	}
	return 0;
}

/* add [NUM] ACTION ...: one rule in the config's syntax, after every rule
 * with its number; without a number, the last rule's number plus 100. */
static int cmd_add(struct ctl *c, int argc, char **argv)
{
	const struct ruleset *rs = daemon_rules();
	struct ruleset one = { 0 }, nrs = { 0 };
	char *text = NULL, err[512], what[32];
	size_t len = 0, at;
	FILE *t;
	int rc = 1;

	if (argc < 2) {
		fputs("add: missing rule (add [NUM] ACTION PROTO from SRC to "
		      "DST [OPTIONS])\n", c->f);
		return 1;
	}
	t = open_memstream(&text, &len);
	if (t == NULL)
		goto nomem;
	if (!all_digits(argv[1])) {
		unsigned last = rs->n > 0 ? rs->rules[rs->n - 1].num : 0;

		if (last + AUTOINC_STEP > RULE_NUM_MAX) {
			fclose(t);
			free(text);
			fprintf(c->f, "add: automatic rule number %u is above "
				"%u: give the rule a number\n",
				last + AUTOINC_STEP, RULE_NUM_MAX);
			return 1;
		}
		fprintf(t, "%u", last + AUTOINC_STEP);
	}
	for (int i = 1; i < argc; i++) {
		if (strpbrk(argv[i], "\n#") != NULL) {
			fclose(t);
			free(text);
			fputs("add: a rule is one line without comments\n",
			      c->f);
			return 1;
		}
		fprintf(t, "%s%s", ftell(t) > 0 ? " " : "", argv[i]);
	}
	if (fclose(t) != 0)
		goto nomem;
	if (config_parse_string(text, "add", &one, err, sizeof(err)) < 0) {
		/* "add:1: what" -> "add: what" */
		const char *msg = strncmp(err, "add:1: ", 7) == 0 ? err + 7 : err;

		fprintf(c->f, "add: %s\n", msg);
		goto out;
	}
	if (one.n != 1) {
		fputs("add: missing rule\n", c->f);
		goto out;
	}
	nrs.rules = calloc(rs->n + 1, sizeof(*nrs.rules));
	if (nrs.rules == NULL)
		goto nomem;
	for (at = 0; at < rs->n && rs->rules[at].num <= one.rules[0].num; at++)
		;
	if (rs->n > 0) {	/* an empty list may have no array at all */
		memcpy(nrs.rules, rs->rules, at * sizeof(*nrs.rules));
		memcpy(nrs.rules + at + 1, rs->rules + at,
		       (rs->n - at) * sizeof(*nrs.rules));
	}
	nrs.rules[at] = one.rules[0];
	nrs.rules[at].line = 0;
	nrs.n = rs->n + 1;
	snprintf(what, sizeof(what), "add %05u", one.rules[0].num);
	rc = apply(c, &nrs, "add", what);
	if (rc == 0) {
		char *line = rules_format(&one.rules[0]);

		/* ipfw add prints the rule it added */
		if (line != NULL)
			fprintf(c->f, "%s\n", line);
		free(line);
	}
	goto out;
nomem:
	fputs("divertd: out of memory\n", c->f);
	rc = 1;
out:
	free(text);
	ruleset_free(&one);
	return rc;
}

/* delete NUM...: every rule with each number; a number no rule has is an
 * error, and then nothing is deleted. */
static int cmd_delete(struct ctl *c, int argc, char **argv)
{
	const struct ruleset *rs = daemon_rules();
	struct ruleset nrs = { 0 };
	bool *gone;
	char what[32];

	if (argc < 2) {
		fputs("delete: missing rule number\n", c->f);
		return 1;
	}
	gone = calloc(rs->n > 0 ? rs->n : 1, sizeof(*gone));
	nrs.rules = calloc(rs->n > 0 ? rs->n : 1, sizeof(*nrs.rules));
	if (gone == NULL || nrs.rules == NULL) {
		free(gone);
		free(nrs.rules);
		fputs("divertd: out of memory\n", c->f);
		return 1;
	}
	if (pick_rules(c, "delete", "; nothing changed", argc, argv, gone) != 0) {
		free(gone);
		free(nrs.rules);
		return 1;
	}
	for (size_t k = 0; k < rs->n; k++)
		if (!gone[k])
			nrs.rules[nrs.n++] = rs->rules[k];
	free(gone);
	snprintf(what, sizeof(what), "delete %s%s", argv[1],
		 argc > 2 ? " ..." : "");
	return apply(c, &nrs, "delete", what);
}

static int cmd_flush(struct ctl *c)
{
	struct ruleset nrs = { 0 };

	return apply(c, &nrs, "flush", "flush");
}

/* ---- stats and sockets ------------------------------------------------- */

static int cmd_stats(struct ctl *c)
{
	const struct divert_stats *s = divert_sock_stats();
	const struct nfqb_stats *q = nfqb_stats();
	const struct {
		const char *name;
		uint64_t v;
	} counters[] = {
		{ "received", q->received },
		{ "diverted", s->diverted },
		{ "teed", s->teed },
		{ "no_socket", s->noport },
		{ "full", s->full },
		{ "reinjected_out", s->reinjected_out },
		{ "reinjected_in", s->reinjected_in },
		{ "injected_out", s->injected_out },
		{ "injected_in", s->injected_in },
		{ "inject_errors", s->inject_errors },
		{ "expired", s->expired },
		{ "evicted", s->evicted },
		{ "bad_writes", s->bad_writes },
		{ "bad_checksums", s->bad_cksum_in },
		{ "no_interface", s->no_iface },
		{ "channel_writes", s->channel_writes },
		{ "reattached", s->reattached },
		{ "away_refused", s->away_refused },
		{ "no_divertd", daemon_lost_before() },
		{ "verdicts", q->verdicts },
		{ "verdict_errors", q->verdict_errors },
		{ "malformed", q->malformed },
		{ "kernel_drops", q->kernel_drops },
		{ "held", divert_sock_held() },
		{ "clients", divert_sock_clients() },
		{ "rules", daemon_rules()->n },
	};
	const char *backend = daemon_uses_nft() ? "nftables" : "iptables";
	size_t n = sizeof(counters) / sizeof(counters[0]);

	if (c->json) {
		json_t *o = json_object();

		for (size_t i = 0; i < n && o != NULL; i++)
			json_object_set_new(o, counters[i].name,
					    json_integer((json_int_t)counters[i].v));
		if (o != NULL)
			json_object_set_new(o, "backend", json_string(backend));
		return put_json(c, o);
	}
	for (size_t i = 0; i < n; i++)
		fprintf(c->f, "%-16s %llu\n", counters[i].name,
			(unsigned long long)counters[i].v);
	fprintf(c->f, "%-16s %s\n", "backend", backend);
	return 0;
}

/* The program's name as the kernel has it now ("?" when it is gone). */
static void program_name(pid_t pid, char *buf, size_t len)
{
	char path[64];
	FILE *f;

	snprintf(buf, len, "?");
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	f = fopen(path, "re");
	if (f == NULL)
		return;
	if (fgets(buf, (int)len, f) == NULL)
		snprintf(buf, len, "?");
	buf[strcspn(buf, "\n")] = '\0';
	fclose(f);
}

static int cmd_sockets(struct ctl *c)
{
	struct divert_sock_info *info = calloc(MAX_SOCKETS, sizeof(*info));
	json_t *arr = c->json ? json_array() : NULL;
	size_t n;
	char name[64];

	if (info == NULL) {
		json_decref(arr);
		fputs("divertd: out of memory\n", c->f);
		return 1;
	}
	n = divert_sock_ports(info, MAX_SOCKETS);
	if (arr == NULL)
		fprintf(c->f, "%5s %8s %-16s %6s\n", "PORT", "PID", "PROGRAM",
			"HELD");
	for (size_t i = 0; i < n; i++) {
		program_name(info[i].pid, name, sizeof(name));
		if (arr != NULL)
			json_array_append_new(arr, json_pack("{s:i, s:i, s:s, s:i}",
				"port", (int)info[i].port,
				"pid", (int)info[i].pid,
				"program", name,
				"held", (int)info[i].held));
		else
			fprintf(c->f, "%5u %8d %-16s %6u\n", info[i].port,
				(int)info[i].pid, name, info[i].held);
	}
	free(info);
	return arr != NULL ? put_json(c, arr) : 0;
}

/* ---- rules: the generated firewall text -------------------------------- */

static int cmd_rules(struct ctl *c, int argc, char **argv)
{
	const struct ruleset *rs = daemon_rules();
	const struct mark_layout *ml = daemon_layout();
	bool nft = daemon_uses_nft();
	char *t1, *t2 = NULL;
	int rc = 0;

	if (argc > 2)
		return usage_error(c, "rules: one of --nft or --iptables");
	if (argc == 2) {
		if (strcmp(argv[1], "--nft") == 0 || strcmp(argv[1], "--nftables") == 0)
			nft = true;
		else if (strcmp(argv[1], "--iptables") == 0)
			nft = false;
		else
			return usage_error(c, "rules: unknown option '%s'", argv[1]);
	}
	if (nft) {
		t1 = rules_nft_text(rs, ml);
		if (t1 != NULL)
			fprintf(c->f, "# nftables: nft -f -\n%s", t1);
	} else {
		char *lost = ml->lost ? rules_nft_lost_text(ml) : NULL;

		t1 = rules_ipt_text(rs, ml, 4);
		t2 = rules_ipt_text(rs, ml, 6);
		if (t1 != NULL && t2 != NULL)
			/* as divertd -n prints them */
			fprintf(c->f, "# iptables: iptables-restore --noflush\n%s\n"
				"# ip6tables: ip6tables-restore --noflush\n%s",
				t1, t2);
		else
			rc = 1;
		if (lost != NULL)
			fprintf(c->f, "\n# with iptables, also (what finds no "
				"divertd): nft -f -\n%s", lost);
		free(lost);
	}
	if (t1 == NULL || rc != 0) {
		fputs("divertd: out of memory\n", c->f);
		rc = 1;
	}
	free(t1);
	free(t2);
	return rc;
}

/* ---- one request ------------------------------------------------------- */

int control_run(int argc, char **argv, unsigned flags, char **out)
{
	struct ctl c = { .json = (flags & DW_CTL_JSON) != 0,
			 .root = (flags & CTL_ROOT) != 0 };
	static const char *const changes[] = { "add", "delete", "flush", "zero" };
	size_t len = 0;
	const char *cmd;
	int rc;

	*out = NULL;
	c.f = open_memstream(out, &len);
	if (c.f == NULL)
		return 1;
	cmd = argc > 0 ? argv[0] : "";
	for (size_t i = 0; i < sizeof(changes) / sizeof(changes[0]); i++)
		if (strcmp(cmd, changes[i]) == 0 && !(flags & CTL_ROOT)) {
			fprintf(c.f, "%s: permission denied: only root changes "
				"the rules and counters\n", cmd);
			fclose(c.f);
			return 1;
		}
	if (strcmp(cmd, "list") == 0)
		rc = cmd_list(&c, argc, argv, false);
	else if (strcmp(cmd, "show") == 0)
		rc = cmd_list(&c, argc, argv, true);
	else if (strcmp(cmd, "zero") == 0)
		rc = cmd_zero(&c, argc, argv);
	else if (strcmp(cmd, "add") == 0)
		rc = cmd_add(&c, argc, argv);
	else if (strcmp(cmd, "delete") == 0)
		rc = cmd_delete(&c, argc, argv);
	else if (strcmp(cmd, "flush") == 0 && argc == 1)
		rc = cmd_flush(&c);
	else if (strcmp(cmd, "stats") == 0 && argc == 1)
		rc = cmd_stats(&c);
	else if (strcmp(cmd, "sockets") == 0 && argc == 1)
		rc = cmd_sockets(&c);
	else if (strcmp(cmd, "rules") == 0)
		rc = cmd_rules(&c, argc, argv);
	else if (argc == 0)
		rc = usage_error(&c, "missing command");
	else
		rc = usage_error(&c, "unknown command or arguments: '%s'", cmd);
	if (fclose(c.f) != 0) {
		free(*out);
		*out = NULL;
		return 1;
	}
	return rc;
}
