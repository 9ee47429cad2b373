/*
 * fuzz_view.c: libFuzzer target for the view of the rules a program
 * reading its own queue gets (struct dw_view, src/divert_wire.h; built by
 * rules_view() in src/rules.c; docs/DIRECT.md), linked unchanged with
 * src/config.c and src/rules.c.
 *
 * Input: one byte of mode, then
 *   mode even: a view as a receiver gets it (the rest of the input, copied
 *     into a buffer of exactly its length).  dw_view_check() must read
 *     within it, and when it accepts, dw_view_resume() gives 0 or the
 *     largest number <= the tag and dw_view_tee() finds exactly the tees a
 *     linear search finds, for tags taken from the input and every tee;
 *   mode odd: 2 bytes of port, then a config text.  When config.c takes
 *     it, the view rules_view() builds for that port passes dw_view_check()
 *     and answers as the daemon does (rules_resume_tag(),
 *     rules_find_tee_rule()) for tags from the input's bytes and around
 *     each rule number and tee value.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "divertd.h"
#include "divert_wire.h"
#include "fuzz_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void received(const uint8_t *p, size_t len)
{
	uint8_t *b = malloc(len > 0 ? len : 1);
	const struct dw_view *v = (const struct dw_view *)(void *)b;

	FZ_CHECK(b != NULL, "out of memory");
	if (len > 0)
		memcpy(b, p, len);
	if (dw_view_check(b, len) == 0) {
		const uint16_t *nums = dw_view_nums(v);
		const struct dw_tee *tees = dw_view_tees(v);

		for (size_t i = 0; i + 1 < len; i += 2) {
			uint16_t tag = (uint16_t)(p[i] | p[i + 1] << 8), want = 0,
				 rule = 0, r2 = 0;
			int tee = 0;

			for (uint32_t k = 0; k < v->nnums && nums[k] <= tag; k++)
				want = nums[k];
			FZ_CHECK(dw_view_resume(v, tag) == want, "tag %u: %u, not %u",
				 tag, dw_view_resume(v, tag), want);
			for (uint32_t k = 0; k < v->ntees; k++)
				if (tees[k].value == tag) {
					tee = 1;
					r2 = tees[k].rule;
				}
			FZ_CHECK(dw_view_tee(v, tag, &rule) == tee &&
				 (!tee || rule == r2), "tag %u: tee", tag);
		}
	}
	free(b);
}

static void same(const struct ruleset *rs, const struct dw_view *v,
		 uint16_t port, uint16_t tag)
{
	const struct rule *r = rules_find_tee_rule(rs, tag, port);
	uint16_t rule = 0;
	int tee = dw_view_tee(v, tag, &rule);

	FZ_CHECK(dw_view_resume(v, tag) == rules_resume_tag(rs, tag),
		 "port %u tag %u: resume %u, daemon %u", port, tag,
		 dw_view_resume(v, tag), rules_resume_tag(rs, tag));
	FZ_CHECK(tee == (r != NULL) && (r == NULL || rule == r->num),
		 "port %u tag %u: tee %d rule %u", port, tag, tee, rule);
}

static void built(struct fz *f)
{
	uint16_t port = fz_u16(f);
	size_t n;
	const uint8_t *text = fz_bytes(f, f->n, &n);
	char *s = malloc(n + 1), err[256];
	struct ruleset rs;
	struct mark_layout ml;
	size_t len;
	void *buf;

	FZ_CHECK(s != NULL, "out of memory");
	memcpy(s, text, n);
	s[n] = '\0';
	if (config_parse_string(s, "fuzz", &rs, err, sizeof(err)) != 0) {
		free(s);
		return;
	}
	FZ_CHECK(mark_layout_init(&ml, 0xffff0000u) == 0, "mark layout");
	len = rules_view(&rs, &ml, port, 5000, NULL, 0);
	buf = malloc(len);
	FZ_CHECK(buf != NULL, "out of memory");
	FZ_CHECK(rules_view(&rs, &ml, port, 5000, buf, len) == len, "length");
	FZ_CHECK(dw_view_check(buf, len) == 0, "the view it built is refused");
	for (size_t i = 0; i < n; i++)
		same(&rs, buf, port, (uint16_t)(text[i] | (uint16_t)text[i] << 8));
	for (size_t i = 0; i < rs.n; i++) {
		uint16_t num = rs.rules[i].num;

		same(&rs, buf, port, num);
		same(&rs, buf, port, (uint16_t)(num - 1));
		same(&rs, buf, port, (uint16_t)(num + 1));
		if (rs.rules[i].action == ACT_TEE)
			same(&rs, buf, port, rules_tee_value(&rs, &rs.rules[i]));
	}
	free(buf);
	ruleset_free(&rs);
	free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f = { data, size };
	uint8_t mode = fz_u8(&f);

	if (mode % 2 == 0)
		received(f.p, f.n);
	else
		built(&f);
	return 0;
}
