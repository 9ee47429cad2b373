/*
 * firewall.c: puts the compiled rules into the kernel and takes them out.
 *
 * Two backends take the same ruleset (rules.c makes the text):
 *  - FW_NFT: a table of our own, "inet divertd", loaded with libnftables in
 *    one transaction.  Needs the nft `queue` expression (CONFIG_NFT_QUEUE).
 *  - FW_IPT: chains named divertd-* in the mangle tables of iptables and
 *    ip6tables, loaded with iptables-restore --noflush (one transaction per
 *    family), for kernels without nft `queue`.  iptables-nft's NFQUEUE goes
 *    through nft_compat and works there.
 * fw_probe() picks: a dry-run nft transaction holding a `queue` rule tells
 * whether the kernel has it.
 *
 * Removal finds what is ours by name (the table, chains named divertd-*,
 * and the jumps to them), so it also clears what a crashed divertd left.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>
#include <nftables/libnftables.h>

#include "divertd.h"

const char *fw_backend_name(enum fw_backend b)
{
	switch (b) {
	case FW_NFT:
		return "nftables";
	case FW_IPT:
		return "iptables";
	default:
		return "auto";
	}
}

/*
 * One libnftables context for the daemon's life, made by fw_open() before
 * the queues and the clients take descriptors.  libnftables (1.0.6) waits
 * on its netlink socket with select(), which aborts the process
 * (_FORTIFY_SOURCE: "bit out of range 0 - FD_SETSIZE") when that socket's
 * descriptor is 1024 or more, and a context opens its socket when it is
 * made: made early, it keeps a low one however many descriptors follow.
 */
static struct nft_ctx *nft;

int fw_open(void)
{
	nft = nft_ctx_new(NFT_CTX_DEFAULT);
	if (nft == NULL)
		return -1;
	nft_ctx_buffer_output(nft);
	nft_ctx_buffer_error(nft);
	return 0;
}

void fw_close(void)
{
	if (nft != NULL)
		nft_ctx_free(nft);
	nft = NULL;
}

/* Run one nft command text; 0 or -1 with the error logged unless quiet.
 * With json, the output (JSON) is in *out until the next run. */
static int nft_cmd(const char *text, bool dry_run, bool json, bool quiet,
		   const char **out)
{
	const char *errs;
	int ret;

	if (nft == NULL)
		return -1;
	nft_ctx_set_dry_run(nft, dry_run);
	nft_ctx_output_set_flags(nft, json ? NFT_CTX_OUTPUT_JSON : 0);
	ret = nft_run_cmd_from_buffer(nft, text);
	errs = nft_ctx_get_error_buffer(nft);	/* read: emptied for the next */
	if (ret != 0 && !quiet)
		log_err("nft: %s", errs);
	if (out != NULL)
		*out = nft_ctx_get_output_buffer(nft);
	else
		(void)nft_ctx_get_output_buffer(nft);
	return ret == 0 ? 0 : -1;
}

static int nft_run(const char *text, bool dry_run, bool quiet)
{
	return nft_cmd(text, dry_run, false, quiet, NULL);
}

enum fw_backend fw_probe(void)
{
	static const char probe[] =
		"add table inet divertd_probe\n"
		"add chain inet divertd_probe c "
		"{ type filter hook prerouting priority 0; }\n"
		"add rule inet divertd_probe c queue num 0\n";

	return nft_run(probe, true, true) == 0 ? FW_NFT : FW_IPT;
}

static char iptables_restore[] = "iptables-restore";
static char ip6tables_restore[] = "ip6tables-restore";
static char opt_wait[] = "-w", opt_noflush[] = "--noflush";

static char *restore_cmd(int family)
{
	return family == 4 ? iptables_restore : ip6tables_restore;
}

/* What iptables-save shows of ours in one family's mangle table: the
 * divertd-* chains, and the jumps into them from the built-in chains. */
struct ipt_state {
	char *saved;			/* iptables-save's output, cut up */
	char *chains[4096];		/* "divertd-in-100" */
	size_t nchains;
	char *jumps[16];		/* "PREROUTING -j divertd-in" */
	size_t njumps;
};

static int ipt_read(int family, struct ipt_state *st)
{
	static char save4[] = "iptables-save", save6[] = "ip6tables-save";
	static char opt_t[] = "-t", mangle[] = "mangle";
	char *argv[] = { family == 4 ? save4 : save6, opt_t, mangle, NULL };
	char *line, *next;

	memset(st, 0, sizeof(*st));
	if (spawn_run(argv, NULL, &st->saved) != 0 || st->saved == NULL)
		return -1;
	for (line = st->saved; *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		else
			next = line + strlen(line);
		if (strncmp(line, ":divertd-", 9) == 0 &&
		    st->nchains < sizeof(st->chains) / sizeof(st->chains[0])) {
			line[strcspn(line, " ")] = '\0';
			st->chains[st->nchains++] = line + 1;
		} else if (strncmp(line, "-A ", 3) == 0 &&
			   strncmp(line + 3, "divertd-", 8) != 0 &&
			   (strstr(line, " -j divertd-") || strstr(line, " -g divertd-")) &&
			   st->njumps < sizeof(st->jumps) / sizeof(st->jumps[0])) {
			st->jumps[st->njumps++] = line + 3;
		}
	}
	return 0;
}

static int ipt_restore(int family, const char *text)
{
	char *argv[] = { restore_cmd(family), opt_wait, opt_noflush, NULL };

	return spawn_run(argv, text, NULL);
}

/* Close a stream open_memstream() made: 0 when everything written is in
 * its buffer, -1 when memory ran out on the way (the text is incomplete). */
static int memstream_close(FILE *f)
{
	bool failed = ferror(f) != 0;

	return fclose(f) != 0 || failed ? -1 : 0;
}

/* Remove our chains from one family's mangle table, in one restore.  The
 * text grows as it is written (open_memstream): a jump line is whatever a
 * third party wrote, comments and all, of any length. */
static void ipt_remove(int family)
{
	struct ipt_state st;
	char *text = NULL;
	size_t len = 0;
	FILE *f = NULL;

	if (ipt_read(family, &st) < 0 || (st.nchains == 0 && st.njumps == 0))
		goto out;
	f = open_memstream(&text, &len);
	if (f == NULL)
		goto out;
	fputs("*mangle\n", f);
	for (size_t i = 0; i < st.njumps; i++)
		fprintf(f, "-D %s\n", st.jumps[i]);
	for (size_t i = 0; i < st.nchains; i++)
		fprintf(f, "-F %s\n", st.chains[i]);
	for (size_t i = 0; i < st.nchains; i++)
		fprintf(f, "-X %s\n", st.chains[i]);
	fputs("COMMIT\n", f);
	if (memstream_close(f) < 0)
		goto out;
	if (ipt_restore(family, text) != 0)
		log_warn("%s could not remove the divertd chains",
			 restore_cmd(family));
out:
	free(st.saved);
	free(text);
}

static bool declares(const char *text, const char *chain)
{
	size_t n = strlen(chain);

	for (const char *p = text; (p = strstr(p, chain)) != NULL; p += n)
		if (p > text + 1 && p[-1] == ':' && p[-2] == '\n' && p[n] == ' ')
			return true;
	return false;
}

static bool has_jump(const struct ipt_state *st, const char *builtin,
		     const char *target)
{
	char want[128];

	snprintf(want, sizeof(want), "%s -j %s", builtin, target);
	for (size_t i = 0; i < st->njumps; i++)
		if (strcmp(st->jumps[i], want) == 0)
			return true;
	return false;
}

/*
 * Replace one family's chains with text (rules_ipt_text()) in ONE restore,
 * so that no packet ever sees a half-built list: every chain the new text
 * declares is flushed and refilled, chains only the old list had are
 * flushed and deleted, and the jumps from the built-in chains stay.
 */
static int ipt_replace(int family, const char *text)
{
	struct ipt_state st;
	char *out = NULL, *copy = NULL, *line, *next;
	size_t len = 0;
	FILE *f = NULL;
	bool ok;
	int ret = -1;

	if (ipt_read(family, &st) < 0)
		goto done;
	copy = strdup(text);
	f = open_memstream(&out, &len);	/* chain names come from the kernel */
	if (f == NULL || copy == NULL)
		goto done;
	fputs("*mangle\n", f);
	for (size_t i = 0; i < st.nchains; i++)
		if (!declares(text, st.chains[i]))
			fprintf(f, ":%s - [0:0]\n", st.chains[i]);
	for (line = copy; *line; line = next) {
		char builtin[32], target[64];

		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		else
			next = line + strlen(line);
		if (strcmp(line, "*mangle") == 0 || strcmp(line, "COMMIT") == 0)
			continue;
		if (sscanf(line, "-I %31s 1 -j %63s", builtin, target) == 2 &&
		    has_jump(&st, builtin, target))
			continue;	/* already in place */
		fprintf(f, "%s\n", line);
	}
	for (size_t i = 0; i < st.nchains; i++)
		if (!declares(text, st.chains[i]))
			fprintf(f, "-X %s\n", st.chains[i]);
	fputs("COMMIT\n", f);
	ok = memstream_close(f) == 0;
	f = NULL;
	if (!ok)
		goto done;
	ret = ipt_restore(family, out) == 0 ? 0 : -1;
	if (ret < 0)
		log_err("%s refused the new rules", restore_cmd(family));
done:
	if (f != NULL)
		fclose(f);
	free(st.saved);
	free(out);
	free(copy);
	return ret;
}

void fw_remove(void)
{
	/* "add" first makes the delete succeed when there is no table */
	nft_run("add table inet divertd\ndelete table inet divertd\n", false, true);
	ipt_remove(4);
	ipt_remove(6);
}

/* "delete chain inet divertd NAME" for each chain of our table that no
 * hook calls (the ones rules jump to); "" when there is no table; NULL
 * when it cannot be read. */
static char *nft_jump_chains(void)
{
	json_t *root, *items, *item;
	const char *out;
	char *text = NULL;
	size_t len = 0, i;
	FILE *f;

	if (nft_cmd("list table inet divertd\n", false, true, true, &out) < 0)
		return strdup("");	/* none yet */
	if ((root = json_loads(out, 0, NULL)) == NULL)
		return NULL;
	if ((f = open_memstream(&text, &len)) == NULL) {
		json_decref(root);
		return NULL;
	}
	items = json_object_get(root, "nftables");
	json_array_foreach(items, i, item) {
		json_t *chain = json_object_get(item, "chain");
		const char *name = json_string_value(json_object_get(chain, "name"));

		if (name != NULL && json_object_get(chain, "hook") == NULL)
			fprintf(f, "delete chain inet divertd %s\n", name);
	}
	json_decref(root);
	if (ferror(f) | fclose(f)) {
		free(text);
		return NULL;
	}
	return text;
}

int fw_replace(enum fw_backend b, const struct ruleset *rs,
	       const struct mark_layout *ml)
{
	int ret = -1;

	if (b == FW_NFT) {
		/* one transaction in which the base chains stay: every rule
		 * goes, the chains they jump to go, the new ones come.
		 * Deleting the table would unregister its hooks, and the
		 * kernel drops every packet queued on a hook that goes,
		 * those the programs hold included */
		char *table = rules_nft_text(rs, ml), *dels = nft_jump_chains();
		char *text = NULL;

		if (table != NULL && dels != NULL &&
		    asprintf(&text, "add table inet divertd\n"
			     "flush table inet divertd\n%s%s", dels, table) >= 0)
			ret = nft_run(text, false, false);
		free(table);
		free(dels);
		free(text);
		return ret;
	}
	for (int family = 4; family <= 6; family += 2) {
		char *text = rules_ipt_text(rs, ml, family);

		ret = text != NULL ? ipt_replace(family, text) : -1;
		free(text);
		if (ret < 0)
			return -1;
	}
	return 0;
}

/* ---- counters ------------------------------------------------------------ */

/* What a counter walk hands each labelled rule: its comment and counts. */
typedef void counter_fn(const char *label, uint64_t packets, uint64_t bytes,
			void *arg);

/* nft's JSON listing of our table: each rule with a comment has a counter
 * expression.  quiet: no table is no error worth a log line. */
static int nft_walk(counter_fn *fn, void *arg, bool quiet)
{
	json_t *root = NULL, *items;
	const char *out;
	size_t i;
	json_t *item;
	int ret = -1;

	if (nft_cmd("list table inet divertd\n", false, true, quiet, &out) < 0)
		goto out;
	root = json_loads(out, 0, NULL);
	items = json_object_get(root, "nftables");
	if (!json_is_array(items))
		goto out;
	json_array_foreach(items, i, item) {
		json_t *rule = json_object_get(item, "rule"), *e;
		const char *comment = json_string_value(json_object_get(rule,
								       "comment"));
		uint64_t pk = 0, by = 0;
		size_t j;

		if (comment == NULL)
			continue;
		json_array_foreach(json_object_get(rule, "expr"), j, e) {
			json_t *ctr = json_object_get(e, "counter");

			pk += (uint64_t)json_integer_value(
				json_object_get(ctr, "packets"));
			by += (uint64_t)json_integer_value(
				json_object_get(ctr, "bytes"));
		}
		fn(comment, pk, by, arg);
	}
	ret = 0;
out:
	json_decref(root);
	return ret;
}

/* iptables-save -c: "[PACKETS:BYTES] -A divertd-... --comment "LABEL"". */
static int ipt_walk(int family, counter_fn *fn, void *arg)
{
	static char save4[] = "iptables-save", save6[] = "ip6tables-save";
	static char opt_c[] = "-c", opt_t[] = "-t", mangle[] = "mangle";
	static const char key[] = "--comment \"";
	char *argv[] = { family == 4 ? save4 : save6, opt_c, opt_t, mangle,
			 NULL };
	char *saved = NULL, *line, *next;

	if (spawn_run(argv, NULL, &saved) != 0 || saved == NULL) {
		free(saved);
		return -1;
	}
	for (line = saved; *line; line = next) {
		unsigned long long pk, by;
		char *lab, *end;

		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		else
			next = line + strlen(line);
		if (sscanf(line, "[%llu:%llu] -A divertd-", &pk, &by) != 2 ||
		    (lab = strstr(line, key)) == NULL)
			continue;
		lab += sizeof(key) - 1;
		end = strchr(lab, '"');
		if (end == NULL)
			continue;
		*end = '\0';
		fn(lab, pk, by, arg);
	}
	free(saved);
	return 0;
}

struct rule_counts {
	const struct ruleset *rs;
	struct rule_count *c;
};

/* "rule N #K": the counts of the K-th rule */
static void count_rule(const char *label, uint64_t pk, uint64_t by, void *arg)
{
	struct rule_counts *rc = arg;
	long k = rules_label_index(rc->rs, label);

	if (k < 0)
		return;
	rc->c[k].packets += pk;
	rc->c[k].bytes += by;
}

int fw_counters(enum fw_backend b, const struct ruleset *rs,
		struct rule_count *c)
{
	struct rule_counts rc = { rs, c };

	memset(c, 0, rs->n * sizeof(*c));
	if (b == FW_NFT)
		return nft_walk(count_rule, &rc, false);
	if (ipt_walk(4, count_rule, &rc) < 0 || ipt_walk(6, count_rule, &rc) < 0)
		return -1;
	return 0;
}

static void count_lost(const char *label, uint64_t pk, uint64_t by, void *arg)
{
	(void)by;
	if (strcmp(label, RULES_LOST_LABEL) == 0)
		*(uint64_t *)arg += pk;
}

uint64_t fw_lost(void)
{
	uint64_t n = 0;

	(void)nft_walk(count_lost, &n, true);
	(void)ipt_walk(4, count_lost, &n);
	(void)ipt_walk(6, count_lost, &n);
	return n;
}

int fw_install(enum fw_backend b, const struct ruleset *rs,
	       struct mark_layout *ml)
{
	int ret = -1;

	fw_remove();
	if (b == FW_IPT && ml->lost) {
		/* the chains that count what finds no divertd are nft's; if
		 * nft cannot have them, the queue rules must not bypass */
		char *lost = rules_nft_lost_text(ml);

		if (lost == NULL || nft_run(lost, false, false) < 0) {
			log_warn("packets that find no divertd will not be "
				 "counted: nft refused the chains that count "
				 "them");
			ml->lost = false;
		}
		free(lost);
	}
	if (b == FW_NFT) {
		char *text = rules_nft_text(rs, ml);
		if (text != NULL)
			ret = nft_run(text, false, false);
		free(text);
		return ret;
	}
	for (int family = 4; family <= 6; family += 2) {
		char *argv[] = { restore_cmd(family), opt_wait, opt_noflush, NULL };
		char *text = rules_ipt_text(rs, ml, family);
		int st;

		if (text == NULL)
			return -1;
		st = spawn_run(argv, text, NULL);
		free(text);
		if (st != 0) {
			log_err("%s failed (exit %d)", argv[0], st);
			fw_remove();
			return -1;
		}
	}
	return 0;
}
