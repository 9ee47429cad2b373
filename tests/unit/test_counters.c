/*
 * test_counters.c: src/counters.c, the counts divertctl show prints.
 *
 * The kernel's counters (fw_counters()) and the running rules
 * (daemon_rules()) are stand-ins here, so that what counters.c adds is
 * tested alone: zero subtracts what the kernel has counted, a rule change
 * lends each rule that stays its old counts (same number and text, each
 * old rule once), and everything else starts from 0.  A reading of the
 * kernel's counters is kept: a caller that accepts counts up to N ms old
 * (a group member's show) gets it without a new reading, and zero and rule
 * changes keep it exact.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "divertd.h"

/* ---- stand-ins for the daemon and the kernel ---------------------------- */

static struct ruleset running;
static struct rule_count kernel[16];	/* what the kernel says, per rule */
static bool kernel_fails;
static unsigned reads;			/* fw_counters() calls */

const struct ruleset *daemon_rules(void) { return &running; }
bool daemon_uses_nft(void) { return true; }

int fw_counters(enum fw_backend b, const struct ruleset *rs,
		struct rule_count *c)
{
	(void)b;
	reads++;
	if (kernel_fails)
		return -1;
	memcpy(c, kernel, rs->n * sizeof(*c));
	return 0;
}

void log_msg(int priority, const char *fmt, ...)
{
	(void)priority;
	(void)fmt;
}

static struct ruleset parse(const char *text)
{
	struct ruleset rs = { 0 };
	char err[256];

	if (config_parse_string(text, "t", &rs, err, sizeof(err)) != 0)
		fail_msg("parse failed: %s", err);
	return rs;
}

static void set_kernel(size_t i, uint64_t p, uint64_t b)
{
	kernel[i].packets = p;
	kernel[i].bytes = b;
}

/* rule i's counts as show prints them, read with max_age ms allowed */
static void assert_count_aged(size_t i, unsigned max_age, uint64_t p,
			      uint64_t b)
{
	struct rule_count c[16];

	assert_int_equal(counters_get(c, max_age), 0);
	assert_int_equal(c[i].packets, p);
	assert_int_equal(c[i].bytes, b);
}

/* ... and read from the kernel now, as root's show */
static void assert_count(size_t i, uint64_t p, uint64_t b)
{
	assert_count_aged(i, 0, p, b);
}

static int setup(void **state)
{
	(void)state;
	memset(kernel, 0, sizeof(kernel));
	kernel_fails = false;
	reads = 0;
	running = parse("100 count ip from any to any\n"
			"200 divert 8668 tcp from any to any\n"
			"200 divert 8668 tcp from any to any\n"
			"300 deny udp from any to any\n");
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	counters_free();
	ruleset_free(&running);
	return 0;
}

/* A rule change: save, the kernel starts again at 0, carry. */
static void change_to(const char *text)
{
	struct ruleset nrs = parse(text);
	struct rule_count *saved = counters_save();

	memset(kernel, 0, sizeof(kernel));
	counters_carry(&running, saved, &nrs);
	ruleset_free(&running);
	running = nrs;
}

static void test_kernel_counts_pass_through(void **state)
{
	(void)state;
	set_kernel(0, 5, 500);
	set_kernel(3, 7, 700);
	assert_count(0, 5, 500);
	assert_count(1, 0, 0);
	assert_count(3, 7, 700);
}

static void test_zero_some_and_all(void **state)
{
	bool which[4] = { false, false, false, true };

	(void)state;
	set_kernel(0, 5, 500);
	set_kernel(3, 7, 700);
	assert_int_equal(counters_zero(which), 0);
	assert_count(0, 5, 500);
	assert_count(3, 0, 0);
	set_kernel(3, 9, 900);		/* two more packets */
	assert_count(3, 2, 200);
	assert_int_equal(counters_zero(NULL), 0);
	assert_count(0, 0, 0);
	assert_count(3, 0, 0);
	kernel_fails = true;
	assert_int_equal(counters_zero(NULL), -1);
	assert_int_equal(counters_get((struct rule_count[16]){ { 0 } }, 0), -1);
}

static void test_change_keeps_rules_that_stay(void **state)
{
	(void)state;
	set_kernel(0, 5, 500);
	set_kernel(1, 1, 60);
	set_kernel(2, 2, 120);
	set_kernel(3, 7, 700);
	/* 150 is new; 300 changed its text; one 200 went */
	change_to("100 count ip from any to any\n"
		  "150 count udp from any to any\n"
		  "200 divert 8668 tcp from any to any\n"
		  "300 deny tcp from any to any\n");
	assert_count(0, 5, 500);
	assert_count(1, 0, 0);
	assert_count(2, 1, 60);		/* the first 200 lends its counts */
	assert_count(3, 0, 0);
	set_kernel(0, 1, 100);		/* counting goes on from there */
	assert_count(0, 6, 600);
}

static void test_change_after_zero(void **state)
{
	(void)state;
	set_kernel(0, 5, 500);
	assert_int_equal(counters_zero(NULL), 0);
	set_kernel(0, 8, 800);
	change_to("100 count ip from any to any\n");
	assert_count(0, 3, 300);
}

static void test_change_unreadable_starts_from_zero(void **state)
{
	(void)state;
	set_kernel(0, 5, 500);
	kernel_fails = true;
	change_to("100 count ip from any to any\n");
	kernel_fails = false;
	assert_count(0, 0, 0);
}

static void test_same_number_each_lent_once(void **state)
{
	(void)state;
	set_kernel(1, 1, 60);
	set_kernel(2, 2, 120);
	change_to("200 divert 8668 tcp from any to any\n"
		  "200 divert 8668 tcp from any to any\n"
		  "200 divert 8668 tcp from any to any\n");
	assert_count(0, 1, 60);
	assert_count(1, 2, 120);
	assert_count(2, 0, 0);
}

/* A group member's show: the last reading serves while it is young enough,
 * however many ask; root's reads the kernel each time. */
static void test_shared_reading_serves_a_flood(void **state)
{
	(void)state;
	set_kernel(0, 5, 500);
	assert_count(0, 5, 500);
	assert_int_equal(reads, 1);
	set_kernel(0, 9, 900);
	for (int i = 0; i < 1000; i++)
		assert_count_aged(0, 60000, 5, 500);
	assert_int_equal(reads, 1);
	assert_count(0, 9, 900);		/* root: read now */
	assert_int_equal(reads, 2);
	assert_count_aged(0, 60000, 9, 900);	/* root's reading serves */
	assert_int_equal(reads, 2);
}

static void test_shared_reading_expires(void **state)
{
	struct timespec ts = { 0, 30 * 1000000L };

	(void)state;
	set_kernel(3, 7, 700);
	assert_count_aged(3, 20, 7, 700);
	set_kernel(3, 8, 800);
	assert_count_aged(3, 20, 7, 700);
	nanosleep(&ts, NULL);
	assert_count_aged(3, 20, 8, 800);
	assert_int_equal(reads, 2);
}

/* zero reads the kernel and keeps that reading: a member's show right
 * after it says 0, never a negative count from an older reading. */
static void test_zero_keeps_its_reading(void **state)
{
	(void)state;
	set_kernel(0, 5, 500);
	assert_count_aged(0, 60000, 5, 500);
	set_kernel(0, 8, 800);
	assert_int_equal(counters_zero(NULL), 0);
	assert_count_aged(0, 60000, 0, 0);
	set_kernel(0, 10, 1000);
	assert_count_aged(0, 60000, 0, 0);	/* the reading at zero */
	assert_count(0, 2, 200);
	assert_count_aged(0, 60000, 2, 200);
}

/* A rule change drops the reading: it was of the rules before. */
static void test_change_drops_the_reading(void **state)
{
	(void)state;
	set_kernel(0, 5, 500);
	set_kernel(3, 7, 700);
	assert_count_aged(0, 60000, 5, 500);
	/* as many rules as before, so only the drop tells the readings apart */
	change_to("100 count ip from any to any\n"
		  "150 count udp from any to any\n"
		  "200 divert 8668 tcp from any to any\n"
		  "300 deny udp from any to any\n");
	set_kernel(0, 1, 100);
	set_kernel(3, 2, 200);
	assert_count_aged(0, 60000, 6, 600);
	assert_count_aged(1, 60000, 0, 0);
	assert_count_aged(3, 60000, 9, 900);
}

/* A reading that failed is no reading. */
static void test_failed_reading_is_not_kept(void **state)
{
	(void)state;
	set_kernel(0, 5, 500);
	kernel_fails = true;
	assert_int_equal(counters_get((struct rule_count[16]){ { 0 } }, 60000),
			 -1);
	kernel_fails = false;
	assert_count_aged(0, 60000, 5, 500);
	assert_int_equal(reads, 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_kernel_counts_pass_through,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_zero_some_and_all, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_change_keeps_rules_that_stay,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_change_after_zero, setup,
						teardown),
		cmocka_unit_test_setup_teardown(
			test_change_unreadable_starts_from_zero, setup, teardown),
		cmocka_unit_test_setup_teardown(test_same_number_each_lent_once,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_shared_reading_serves_a_flood, setup, teardown),
		cmocka_unit_test_setup_teardown(test_shared_reading_expires,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_zero_keeps_its_reading,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_change_drops_the_reading,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_reading_is_not_kept,
						setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
