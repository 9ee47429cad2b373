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

/* Run one nft command text; 0 or -1 with the error logged unless quiet. */
static int nft_run(const char *text, bool dry_run, bool quiet)
{
	struct nft_ctx *ctx = nft_ctx_new(NFT_CTX_DEFAULT);
	int ret;

	if (ctx == NULL)
		return -1;
	nft_ctx_buffer_output(ctx);
	nft_ctx_buffer_error(ctx);
	nft_ctx_set_dry_run(ctx, dry_run);
	ret = nft_run_cmd_from_buffer(ctx, text);
	if (ret != 0 && !quiet)
		log_err("nft: %s", nft_ctx_get_error_buffer(ctx));
	nft_ctx_free(ctx);
	return ret == 0 ? 0 : -1;
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

/*
 * Remove our chains from one family's mangle table: read it with
 * iptables-save, delete each jump into a divertd-* chain from the built-in
 * chains, then flush and delete those chains, in one restore.
 */
static void ipt_remove(int family)
{
	static char save4[] = "iptables-save", save6[] = "ip6tables-save";
	static char opt_t[] = "-t", mangle[] = "mangle";
	char *save_argv[] = { family == 4 ? save4 : save6, opt_t, mangle, NULL };
	char *restore_argv[] = { restore_cmd(family), opt_wait, opt_noflush, NULL };
	char *saved = NULL, *text = NULL, *line, *next;
	size_t cap, len = 0;
	bool any = false;

	if (spawn_run(save_argv, NULL, &saved) != 0 || saved == NULL)
		goto out;
	cap = strlen(saved) * 2 + 64;
	text = malloc(cap);
	if (text == NULL)
		goto out;
	len += (size_t)snprintf(text + len, cap - len, "*mangle\n");
	/* jumps first: "-A PREROUTING -j divertd-in" -> "-D PREROUTING ..." */
	for (line = saved; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (strncmp(line, "-A ", 3) == 0 && strncmp(line + 3, "divertd-", 8) != 0 &&
		    (strstr(line, " -j divertd-") || strstr(line, " -g divertd-"))) {
			len += (size_t)snprintf(text + len, cap - len, "-D %s\n", line + 3);
			any = true;
		}
		if (next)
			next[-1] = '\n';
	}
	for (line = saved; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (strncmp(line, ":divertd-", 9) == 0) {
			char *sp = strchr(line, ' ');
			if (sp)
				*sp = '\0';
			len += (size_t)snprintf(text + len, cap - len, "-F %s\n", line + 1);
			any = true;
			if (sp)
				*sp = ' ';
		}
		if (next)
			next[-1] = '\n';
	}
	for (line = saved; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (strncmp(line, ":divertd-", 9) == 0) {
			char *sp = strchr(line, ' ');
			if (sp)
				*sp = '\0';
			len += (size_t)snprintf(text + len, cap - len, "-X %s\n", line + 1);
		}
		if (next)
			next[-1] = '\n';
	}
	snprintf(text + len, cap - len, "COMMIT\n");
	if (any && spawn_run(restore_argv, text, NULL) != 0)
		log_warn("%s could not remove the divertd chains", restore_argv[0]);
out:
	free(saved);
	free(text);
}

void fw_remove(void)
{
	/* "add" first makes the delete succeed when there is no table */
	nft_run("add table inet divertd\ndelete table inet divertd\n", false, true);
	ipt_remove(4);
	ipt_remove(6);
}

int fw_install(enum fw_backend b, const struct ruleset *rs,
	       const struct mark_layout *ml)
{
	int ret = -1;

	fw_remove();
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
