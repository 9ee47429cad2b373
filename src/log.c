/*
 * log.c: the daemon's messages, on stderr.
 *
 * Under systemd ($JOURNAL_STREAM set) each line starts with the "<N>"
 * priority prefix that journald turns into the message priority; on a
 * terminal it starts with a word instead.  The per-packet path only ever
 * logs through log_limited(), which lets a burst through and then counts
 * what it suppressed.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>

#include "divertd.h"

#define RATELIMIT_BURST 10
#define RATELIMIT_WINDOW_NS (5ULL * 1000000000ULL)

static const char *log_progname = "divertd";
static int log_max_priority = 6;
static bool log_journal;

void log_init(const char *progname, int max_priority)
{
	log_progname = progname;
	log_max_priority = max_priority;
	log_journal = getenv("JOURNAL_STREAM") != NULL;
}

static void log_vmsg(int priority, const char *fmt, va_list ap)
{
	static const char *const words[] = {
		"emergency: ", "alert: ", "critical: ", "error: ",
		"warning: ", "", "", "debug: ",
	};
	char line[1024];
	int saved_errno = errno;

	if (priority > log_max_priority)
		return;
	vsnprintf(line, sizeof(line), fmt, ap);
	if (log_journal)
		fprintf(stderr, "<%d>%s\n", priority & 7, line);
	else
		fprintf(stderr, "%s: %s%s\n", log_progname,
			words[priority & 7], line);
	errno = saved_errno;
}

void log_msg(int priority, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(priority, fmt, ap);
	va_end(ap);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void log_limited(struct log_ratelimit *rl, int priority, const char *fmt, ...)
{
	uint64_t now = now_ns();
	va_list ap;

	if (priority > log_max_priority)
		return;
	if (now - rl->window_start > RATELIMIT_WINDOW_NS) {
		if (rl->suppressed)
			log_msg(priority, "(%u similar messages suppressed)",
				rl->suppressed);
		rl->window_start = now;
		rl->count = 0;
		rl->suppressed = 0;
	}
	if (rl->count >= RATELIMIT_BURST) {
		rl->suppressed++;
		return;
	}
	rl->count++;
	va_start(ap, fmt);
	log_vmsg(priority, fmt, ap);
	va_end(ap);
}
