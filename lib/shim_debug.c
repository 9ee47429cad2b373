/*
 * shim_debug.c: the shim's only output.  dbg() writes one line on stderr,
 * prefixed "libdivert_shim: [pid] ", when $DIVERT_DEBUG is set and not
 * "0" (read once, with secure_getenv: never for a set-uid program, whose
 * stderr is its user's); otherwise nothing, on success or failure.
 *
 * In: a printf format and its arguments, from every file (none of which
 * ever passes a connection id: those are secrets).  Out: one write(2)
 * through the real write, at most 256 bytes; errno as it was.
 */
#include "shim.h"	/* first: it turns _FORTIFY_SOURCE off */

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_int debug_on = -1;

bool debug_enabled(void)
{
	int on = atomic_load_explicit(&debug_on, memory_order_relaxed);
	const char *v;

	if (on < 0) {
		/* not for a set-uid program: its user's stderr */
		v = secure_getenv("DIVERT_DEBUG");
		on = v != NULL && *v != '\0' && strcmp(v, "0") != 0;
		atomic_store_explicit(&debug_on, on, memory_order_relaxed);
	}
	return on;
}

__attribute__((format(printf, 1, 2)))
void dbg(const char *fmt, ...)
{
	char buf[256];
	int saved = errno;
	int n, m;
	va_list ap;

	if (!debug_enabled())
		return;
	n = snprintf(buf, sizeof(buf), "libdivert_shim: [%d] ", (int)getpid());
	va_start(ap, fmt);
	m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	n = m < 0 ? n : n + m;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (REAL(write) != NULL)
		(void)REAL(write)(STDERR_FILENO, buf, (size_t)n);
	errno = saved;
}
